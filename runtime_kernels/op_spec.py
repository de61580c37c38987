"""The ai.edgepack operator set, declared once: every op's inputs, attributes (type, default, valid
range per runtime), output-shape rule, stored and dense bytes, MACs, and the work and weight
bytes one run really costs (per inference and once, at load) for the energy estimate.

Everything else is derived from it: the torch schemas, fallback functions, TFLite options,
validator, ``inspect``, the energy estimate and the converter's shapes in Python, and the
generated ``include/edgepack/ops.inc`` and docs/ops.md tables (``make generate``, or
``python -m edgepack.runtime_kernels.op_spec --write``). Plain Python, so any layer can import it.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

DOMAIN = "ai.edgepack"
OPSET_VERSION = 1

U32_MAX = 0xFFFFFFFF
INT_MAX = 0x7FFFFFFF
# Limits the C kernels enforce on inputs (kernels.c and the op layer src/ops.c), and the default
# decode limits (docs/ops.md "Limits") of the C library and runtime_kernels/limits.py.
LIMITS = {
    "MAX_RANK": (16, "most dims of HashedWeight's shape"),
    "MAX_HASHES": (64, "largest num_hashes (EP_MAX_HASHES)"),
    "MAX_RECON_HIDDEN": (1 << 20, "most hidden units H of a recon MLP"),
    "MAX_BUCKETS": (INT_MAX, "most buckets B"),
    "MIN_POW2": (4, "smallest FFT size (circulant block b, LDR n)"),
    "MAX_POW2": (1 << 30, "largest FFT size (circulant block b, LDR n)"),
    "DEFAULT_MAX_VIRTUAL_WEIGHTS": (1 << 28, "virtual weights one node may decode (EDGEPACK_MAX_VIRTUAL_WEIGHTS)"),
    "DEFAULT_MAX_DECODED_BYTES": (1 << 30, "decoded bytes per session / interpreter (EDGEPACK_MAX_DECODED_BYTES)"),
    "MFCC_MAX_FFT": (1 << 16, "largest MFCC fft_length (EP_MFCC_MAX_FFT)"),
    "MFCC_MAX_MEL_BINS": (1024, "most MFCC num_mel_bins (EP_MFCC_MAX_MEL_BINS)"),
}
(MAX_RANK, MAX_HASHES, MAX_RECON_HIDDEN, MAX_BUCKETS, MIN_POW2, MAX_POW2, DEFAULT_MAX_VIRTUAL_WEIGHTS,
 DEFAULT_MAX_DECODED_BYTES, MFCC_MAX_FFT, MFCC_MAX_MEL_BINS) = (v for v, _ in LIMITS.values())

# the decoder input an int8 model may store as int8, read through Cast(to=FLOAT) (docs/ops.md "int8 storage")
INT8_STORED_INPUTS = {"HashedWeight": "buckets", "CodebookWeight": "codebook"}

Shape = tuple[int, ...]
ShapeOf = Callable[[str], Shape]  # an input's static shape by its spec name (KeyError: unknown)


@dataclass(frozen=True)
class Input:
    """One input slot. ``kind``: "activation" (computed at run time), "weight" (the stored, compressed
    weight that stands for a dense one) or "bias" (stored, not part of the weight)."""

    name: str
    required: bool
    kind: str
    meaning: str
    dtype: str = "float32"
    folded: bool = False  # written only by the exporter's epilogue pass: the torch op takes it as optional


@dataclass(frozen=True)
class Attribute:
    """One attribute: ``default`` None means required; ranges are [lo, hi] per runtime (for
    ``ints``: of every element, with 1..MAX_RANK elements)."""

    name: str
    type: str  # "int" or "ints"
    default: int | None
    ort: tuple[int, int]
    tflite: tuple[int, int]
    meaning: str

    @property
    def required(self) -> bool:
        return self.default is None

    def valid(self, runtime: str = "ort") -> tuple[int, int]:
        """The valid range in ``runtime`` ("ort": the ORT library, "tflite": the delegate)."""
        return self.tflite if runtime == "tflite" else self.ort


@dataclass(frozen=True)
class Op:
    """One ai.edgepack operator and the rules every runtime and tool applies to it."""

    name: str
    torch_name: str  # edgepack::<torch_name> in torch.library
    kind: str  # "decoder", "compute" or "frontend" (no weights: MFCC)
    inputs: tuple[Input, ...]
    attributes: tuple[Attribute, ...]
    output_rule: str
    output_shape: Callable[[dict, ShapeOf], Shape]  # (attributes with defaults, input shapes)
    virtual_weights: Callable[[dict], int]  # elements of the dense weight it stands for
    macs: Callable[[dict, ShapeOf], float] | None  # per inference; None: decoded once, at load
    macs_rule: str
    work: Callable[[dict, ShapeOf], Work]  # per inference, in the mode the attributes choose
    load_work: Callable[[dict, ShapeOf], Work]  # once, when the model is loaded (decode, spectra)
    work_rule: str

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def required_inputs(self) -> int:
        """How many leading inputs must be present (the optional ones come last)."""
        return sum(i.required for i in self.inputs)

    @property
    def weight_inputs(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.kind == "weight")

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def defaults(self) -> dict[str, int]:
        return {a.name: a.default for a in self.attributes if not a.required}

    def attribute(self, name: str) -> Attribute:
        return next(a for a in self.attributes if a.name == name)

    def dense_bytes(self, attributes: dict) -> int:
        """Bytes of the float32 dense weight this op replaces."""
        return 4 * self.virtual_weights(self.defaults | attributes)


@dataclass(frozen=True)
class Work:
    """What one op run costs: fp32 MACs, weight bytes moved (read per inference; read and written at
    load), the key hash's 32-bit integer multiplies and other integer ops (add, xor, shift, rotate,
    and), and bucket gathers (32-bit table reads). Activations, bias and outputs are counted from
    the graph by the estimate, not here."""

    macs: float = 0.0
    weight_bytes: int = 0
    int_mults: float = 0.0
    int_ops: float = 0.0
    gathers: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple:
        """The counts in field order."""
        return (self.macs, self.weight_bytes, self.int_mults, self.int_ops, self.gathers)


# The key hash's integer work, (multiplies, other ops), as the kernels run it (src/internal.h):
# XXH32 of the 8-byte key u32le(i) ‖ u32le(j) (xxHash spec, input < 16 bytes) is 6 multiplies and
# 12 other ops (seed + P5, + len; per 4-byte word: mult, add, rotate, mult; avalanche: 3 shifts,
# 3 xors, 2 mults). The kernels absorb the row word i once per row and hash (ep_xxh_key_head: seed
# + P5 + 8 folded into one add, then add, rotate, 2 mults), leaving per weight and hash the column
# word and the avalanche (ep_xxh_key_tail). Then the bucket index h mod B (a mask when B is a power
# of two; else q = ⌊h·(1/B)⌋ and h − q·B, kernels_avx2.c mod8) and, when signed, bit 31 of h moved
# into the value's sign (and, xor).
HASH_HEAD = (2, 3)  # per row and hash
HASH_TAIL = (4, 8)  # per weight and hash
HASH_MOD = {True: (0, 1), False: (2, 1)}  # B a power of two: True
HASH_SIGN = (0, 2)


def fft_macs(n: int) -> float:
    """MACs of one real FFT of size n: 2.5·n·log2(n) flops (half a complex FFT's 5·n·log2 n), 2 per MAC."""
    return 1.25 * n * math.log2(n) if n > 1 else 0.0


def _batch(shape: ShapeOf) -> int:
    return math.prod(shape("X")[:-1])


def _matmul_output(attributes: dict, shape: ShapeOf) -> Shape:
    return (*shape("X")[:-1], attributes["out_features"])


def _dense(attributes: dict) -> int:
    return attributes["in_features"] * attributes["out_features"]


def _circulant_macs(attributes: dict, shape: ShapeOf) -> float:
    p, q, b = shape("blocks")
    return _batch(shape) * ((p + q) * fft_macs(b) + 4 * p * q * (b // 2 + 1))


def _ldr_macs(attributes: dict, shape: ShapeOf) -> float:
    r, n = shape("G")
    return _batch(shape) * 2 * r * (2 * fft_macs(n) + 4 * (n // 2 + 1))


def _recon_hidden(attributes: dict, shape: ShapeOf) -> int:
    """H of the reconstruction MLP the kernels apply: none for K = 1 (the exporter's identity
    stand-in, skipped by the kernels), else from recon's length H·(K+2)+1."""
    k = attributes["num_hashes"]
    try:
        length = math.prod(shape("recon"))
    except KeyError:
        return 0
    return (length - 1) // (k + 2) if k > 1 else 0


def _decode_work(attributes: dict, shape: ShapeOf, rows: int, weights: int) -> Work:
    """Hashing ``weights`` virtual weights in ``rows`` rows, without the bytes: K key hashes, bucket
    indices, signs and gathers per weight, and the recon MLP's H·(K+1) MACs per weight when K > 1."""
    k, buckets = attributes["num_hashes"], math.prod(shape("buckets"))
    per_weight = [t + m + s * attributes["signed"]
                  for t, m, s in zip(HASH_TAIL, HASH_MOD[buckets & (buckets - 1) == 0], HASH_SIGN)]
    mults, ops = (k * (rows * h + weights * w) for h, w in zip(HASH_HEAD, per_weight))
    hidden = _recon_hidden(attributes, shape)
    return Work(macs=weights * hidden * (k + 1), int_mults=mults, int_ops=ops, gathers=weights * k)


def _stored_hash_bytes(attributes: dict, shape: ShapeOf) -> int:
    """buckets, and recon when the kernels apply it."""
    hidden = _recon_hidden(attributes, shape)
    k = attributes["num_hashes"]
    return 4 * (math.prod(shape("buckets")) + (hidden * (k + 2) + 1 if hidden else 0))


def _decoded(attributes: dict, shape: ShapeOf, rows: int, weights: int) -> Work:
    """Decoding once, at load: hash every weight, read buckets (+ recon), write the dense weight."""
    return _decode_work(attributes, shape, rows, weights) + Work(
        weight_bytes=_stored_hash_bytes(attributes, shape) + 4 * weights)


def _hashed_work(attributes: dict, shape: ShapeOf) -> Work:
    """Expand: the dense GEMM on the weight decoded at load. Stream: the GEMM plus hashing every
    weight once per run (not per batch row), reading only buckets (+ recon)."""
    macs, weights = _batch(shape) * _dense(attributes), _dense(attributes)
    if attributes["mode"] == 0:
        return Work(macs=macs, weight_bytes=4 * weights)
    return Work(macs=macs, weight_bytes=_stored_hash_bytes(attributes, shape)) + _decode_work(
        attributes, shape, attributes["out_features"], weights)


def _hashed_load(attributes: dict, shape: ShapeOf) -> Work:
    """Expand decodes the weight once, at load; stream keeps nothing to decode."""
    if attributes["mode"] == 0:
        return _decoded(attributes, shape, attributes["out_features"], _dense(attributes))
    return Work()


def _weight_decoded(attributes: dict, shape: ShapeOf) -> Work:
    """HashedWeight decoded at load: rows = shape[0], every element a virtual weight."""
    dims = attributes["shape"]
    return _decoded(attributes, shape, dims[0], math.prod(dims))


def _circulant_spectra(shape: ShapeOf) -> int:
    """Bytes of the p·q block spectra the plan keeps: b/2+1 complex floats each (kernels.c)."""
    p, q, b = shape("blocks")
    return 8 * p * q * (b // 2 + 1)


def _ldr_spectra(shape: ShapeOf) -> int:
    """Bytes of the LDR plan's spectra: r real-FFT spectra of g (n/2+1 complex) and r complex
    n-point spectra of the twisted h (kernels.c)."""
    r, n = shape("G")
    return 8 * r * (n // 2 + 1) + 8 * r * n


def _circulant_load(attributes: dict, shape: ShapeOf) -> Work:
    """The plan: one real FFT per block, blocks read, spectra written."""
    p, q, b = shape("blocks")
    return Work(macs=p * q * fft_macs(b), weight_bytes=4 * p * q * b + _circulant_spectra(shape))


def _ldr_load(attributes: dict, shape: ShapeOf) -> Work:
    """The plan: a real FFT of each g and a complex FFT (2·F(n)) of each twisted h."""
    r, n = shape("G")
    return Work(macs=r * 3 * fft_macs(n), weight_bytes=2 * 4 * r * n + _ldr_spectra(shape))


X = Input("X", True, "activation", "the activations; the op acts on the last axis (in_features)")
RECON = Input("recon", False, "weight", "reconstruction MLP [W1 (H×K), b1 (H), W2 (H), b2], length H·(K+2)+1; "
              "required when num_hashes > 1")
BIAS = Input("bias", False, "bias", "[out_features], added to the output (after `scale`)")
SCALE = Input("scale", False, "bias", "[out_features], multiplies the product before the bias "
              "(a folded BatchNorm or Mul: Y = activation((X·Wᵀ)·scale + bias))", folded=True)
IN_FEATURES = Attribute("in_features", "int", None, (1, U32_MAX), (1, INT_MAX),
                        "cols of the weight; X's last axis must equal it")
OUT_FEATURES = Attribute("out_features", "int", None, (1, U32_MAX), (1, INT_MAX),
                         "rows of the weight, the output's last axis")
ACTIVATION = Attribute("activation", "int", 0, (0, 2), (0, 2),
                        "fused epilogue after the bias: 0 = none, 1 = ReLU, 2 = ReLU6 (min(max(y, 0), 6))")
ACTIVATIONS = {0: "none", 1: "relu", 2: "relu6"}
HASH_ATTRIBUTES = (
    Attribute("num_hashes", "int", None, (1, MAX_HASHES), (1, MAX_HASHES),
              "K hashes per weight (recon required when K > 1)"),
    Attribute("seed", "int", None, (0, U32_MAX), (0, U32_MAX), "hash k uses seed + k (mod 2³²)"),
    Attribute("signed", "int", 1, (0, 1), (0, 1), "1: random ±1 sign per hash; 0: always +1"),
)

ITEMSIZE = {"float32": 4, "int32": 4, "uint8": 1}


def _input_bytes(inputs: tuple[Input, ...], shape: ShapeOf) -> int:
    """Real bytes of the present ``inputs`` (elements × their dtype's size)."""
    total = 0
    for i in inputs:
        try:
            total += math.prod(shape(i.name)) * ITEMSIZE[i.dtype]
        except KeyError:
            pass
    return total


def _entries(shape: ShapeOf) -> int:
    """n, the stored entries of a codebook weight: col_gaps' length when sparse, else prod(`shape`)."""
    return math.prod(shape("col_gaps"))


CODEBOOK = Input("codebook", True, "weight", "the J shared values, 1-D, 1 ≤ J ≤ 256 (entry 0 is 0.0 when "
                 "the sparse form needs fillers)")
INDICES = Input("indices", True, "weight", "n codebook indices of `bits` bits, packed LSB first: "
                "ceil(n·`bits`/8) bytes, unused high bits of the last byte 0, every index < J", "uint8")
ROW_PTR = Input("row_ptr", False, "weight", "CSR row starts [rows+1]: 0, non-decreasing, ending at n", "int32")
COL_GAPS = Input("col_gaps", False, "weight", "[n] relative column indices (each ≥ 1; a row's m-th column is "
                 "the sum of its first m+1 gaps − 1; gaps > 255 bridged by filler entries of value 0)",
                 "uint8")
BITS = Attribute("bits", "int", 8, (1, 8), (1, 8),
                 "bits per packed index: 1, 2, 4 or 8 (indices reach entries 0 … 2^`bits` − 1 only)")
CODEBOOK_INPUTS = (CODEBOOK, INDICES, ROW_PTR, COL_GAPS)


def _codebook_load(attributes: dict, shape: ShapeOf) -> Work:
    """CodebookWeight decoded once, at load: read the compressed form, one codebook gather per entry,
    write the dense weight."""
    dims = attributes["shape"]
    try:
        entries = _entries(shape)
    except KeyError:
        entries = math.prod(dims)
    return Work(weight_bytes=_input_bytes(CODEBOOK_INPUTS, shape) + 4 * math.prod(dims), gathers=entries)


def _sparse_codebook_macs(attributes: dict, shape: ShapeOf) -> float:
    return _batch(shape) * _entries(shape)


def sparse_plan_bytes(attributes: dict, shape: ShapeOf) -> int:
    """What the sparse kernel's plan keeps (codebook.c): the rows sorted by length in S = ceil(out/16)
    slices (order and its inverse, lengths, slice starts) and per entry its codebook value and its
    column (c = 2 bytes up to 65536 columns, else 4; 16 more after the last): 8·out + 64·S + 4·(S+1) +
    4·n + c·(n+16)."""
    rows, n = attributes["out_features"], _entries(shape)
    slices, c = -(-rows // 16), 2 if attributes["in_features"] <= 65536 else 4
    return 8 * rows + 64 * slices + 4 * (slices + 1) + 4 * n + c * (n + 16)


def _sparse_codebook_work(attributes: dict, shape: ShapeOf) -> Work:
    """Per inference: N·n MACs straight from the plan (every entry read once per run), n gathers."""
    return Work(macs=_sparse_codebook_macs(attributes, shape), weight_bytes=sparse_plan_bytes(attributes, shape),
                gathers=_entries(shape))


def _sparse_codebook_load(attributes: dict, shape: ShapeOf) -> Work:
    """At load: read the compressed inputs, write the plan."""
    return Work(weight_bytes=_input_bytes(CODEBOOK_INPUTS, shape) + sparse_plan_bytes(attributes, shape))


HYPER_INPUTS = (
    Input("indices", True, "weight", "g = ceil(V/`group`) point indices of `bits` bits, a bit stream LSB first "
          "(index m is stream bits m·`bits` … m·`bits`+`bits`−1; stream bit b is bit b mod 8 of byte b div 8): "
          "ceil(g·`bits`/8) bytes, unused high bits of the last byte 0, every index < (`rings`+1)·(`points`+1)",
          "uint8"),
    Input("center", True, "weight", "[`group`] the groups' centroid c, finite"),
    Input("side", True, "weight", "[1] the square's side L, finite and > 0, with L·(float)`points` finite in "
          "float32"),
    Input("scales", False, "weight", "[`rings`] ring r's expansion factor s_r (r = 1 … `rings`), finite and > 0; "
          "present iff `rings` > 0 (a zero-length `scales` counts as absent)"),
)


def _hyper_load(attributes: dict, shape: ShapeOf) -> Work:
    """HyperWeight decoded once, at load: the (R+1)·(n+1)·k point table (one multiply and add per
    value), per group an index unpacked (shift, mask) and one table gather, 4·prod(`shape`) written."""
    weights, k = math.prod(attributes["shape"]), attributes["group"]
    groups = -(-weights // k)
    table = (attributes["rings"] + 1) * (attributes["points"] + 1) * k
    return Work(macs=table, weight_bytes=_input_bytes(HYPER_INPUTS, shape) + 4 * weights,
                int_ops=2 * groups, gathers=groups)


def _mfcc_frames(attributes: dict, shape: ShapeOf) -> int:
    samples = shape("audio")[-1]
    return max(0, 1 + (samples - attributes["window_length"]) // attributes["hop_length"])


def _mfcc_output(attributes: dict, shape: ShapeOf) -> Shape:
    return (*shape("audio")[:-1], _mfcc_frames(attributes, shape), attributes["num_coefficients"])


def _mfcc_table_bytes(attributes: dict) -> int:
    """The plan's tables (src/mfcc.c): the window, at most 2·(n/2+1) mel weights with a start and
    count per band, the DCT matrix."""
    bins = attributes["fft_length"] // 2 + 1
    mels = attributes["num_mel_bins"]
    return 4 * (attributes["window_length"] + 2 * bins + 2 * mels + mels * attributes["num_coefficients"])


def _mfcc_macs(attributes: dict, shape: ShapeOf) -> float:
    """Per frame: the window, a real FFT, the magnitudes, the mel weights, the DCT."""
    bins = attributes["fft_length"] // 2 + 1
    per_frame = (attributes["window_length"] + fft_macs(attributes["fft_length"]) + 2 * bins + 2 * bins
                 + attributes["num_mel_bins"] * attributes["num_coefficients"])
    return math.prod(shape("audio")[:-1]) * _mfcc_frames(attributes, shape) * per_frame


MFCC_ATTRIBUTES = (
    Attribute("sample_rate", "int", 16000, (1, INT_MAX), (1, INT_MAX), "Hz of the audio"),
    Attribute("window_length", "int", 480, (1, MFCC_MAX_FFT), (1, MFCC_MAX_FFT),
              "samples per frame, ≤ `fft_length` (30 ms)"),
    Attribute("hop_length", "int", 320, (1, INT_MAX), (1, INT_MAX), "samples between frame starts (20 ms)"),
    Attribute("fft_length", "int", 512, (MIN_POW2, MFCC_MAX_FFT), (MIN_POW2, MFCC_MAX_FFT),
              "a power of two; each windowed frame is zero-padded to it"),
    Attribute("num_mel_bins", "int", 40, (1, MFCC_MAX_MEL_BINS), (1, MFCC_MAX_MEL_BINS),
              "triangular HTK-mel bands over [`lower_hz`, `upper_hz`]"),
    Attribute("num_coefficients", "int", 10, (1, MFCC_MAX_MEL_BINS), (1, MFCC_MAX_MEL_BINS),
              "DCT coefficients kept, ≤ `num_mel_bins`"),
    Attribute("lower_hz", "int", 20, (0, INT_MAX), (0, INT_MAX), "lower edge of the lowest band, < `upper_hz`"),
    Attribute("upper_hz", "int", 4000, (1, INT_MAX), (1, INT_MAX),
              "upper edge of the highest band, ≤ `sample_rate` / 2"),
)

OPS: dict[str, Op] = {op.name: op for op in (
    Op("HashedWeight", "hashed_weight", "decoder",
       (Input("buckets", True, "weight", "the B shared values, 1-D, 1 ≤ B < 2³¹"), RECON),
       (Attribute("shape", "ints", None, (1, U32_MAX), (1, INT_MAX),
                  "shape of W; rows = shape[0], cols = product of the rest (< 2³²)"), *HASH_ATTRIBUTES),
       "`shape`", lambda a, shape: tuple(a["shape"]), lambda a: math.prod(a["shape"]),
       None, "0 per inference (decoded once, at load; its consumer counts the MACs)",
       lambda a, shape: Work(), _weight_decoded,
       "per inference nothing: decoded at load into a constant that its consumer reads (4·prod(`shape`) "
       "bytes, counted there). At load: the hash work over V = prod(`shape`) weights (see below), "
       "reading buckets (+ recon when K > 1) and writing 4·V bytes"),
    Op("HashedMatMul", "hashed_matmul", "compute",
       (X, Input("buckets", True, "weight", "the B shared values, 1-D, 1 ≤ B < 2³¹"), RECON, BIAS, SCALE),
       (IN_FEATURES, OUT_FEATURES, *HASH_ATTRIBUTES,
        Attribute("mode", "int", 0, (0, 1), (0, 1),
                  "kernel only: 0 = expand (decode V once, dense GEMM), 1 = stream (hash on the fly, O(B) memory)"),
        ACTIVATION),
       "X's shape with the last axis `out_features`", _matmul_output, _dense,
       lambda a, shape: _batch(shape) * _dense(a), "N·in·out, as the dense layer it stands for",
       _hashed_work, _hashed_load,
       "`mode` 0 (expand): per inference N·in·out MACs reading the dense 4·in·out weight bytes (decoded at "
       "load, as HashedWeight). `mode` 1 (stream): per inference N·in·out MACs plus the hash work over "
       "V = in·out weights once per run, reading only buckets (+ recon when K > 1); nothing at load"),
    Op("CirculantMatMul", "circulant_matmul", "compute",
       (X, Input("blocks", True, "weight", "first columns of the p×q circulant blocks of size b "
                 "(a power of two ≥ 4; in_features ≤ q·b, out_features ≤ p·b)"), BIAS, SCALE),
       (IN_FEATURES, OUT_FEATURES, ACTIVATION),
       "X's shape with the last axis `out_features`", _matmul_output, _dense,
       _circulant_macs, "N·((p+q)·F(b) + 4·p·q·(b/2+1)), F(n) = 1.25·n·log2 n (a real FFT)",
       lambda a, shape: Work(macs=_circulant_macs(a, shape), weight_bytes=_circulant_spectra(shape)),
       _circulant_load,
       "per inference the MACs above, reading the block spectra, 8·p·q·(b/2+1) bytes. At load: "
       "p·q·F(b) MACs, reading 4·p·q·b bytes of blocks and writing the spectra"),
    Op("LDRMatMul", "ldr_matmul", "compute",
       (X, Input("G", True, "weight", "generators of the Z₁ circulants, [r, n], n a power of two ≥ 4"),
        Input("H", True, "weight", "generators of the Z₋₁ skew-circulants, the same shape as G"), BIAS,
        SCALE),
       (IN_FEATURES, OUT_FEATURES, ACTIVATION),
       "X's shape with the last axis `out_features`", _matmul_output, _dense,
       _ldr_macs, "N·2r·(2·F(n) + 4·(n/2+1))",
       lambda a, shape: Work(macs=_ldr_macs(a, shape), weight_bytes=_ldr_spectra(shape)), _ldr_load,
       "per inference the MACs above, reading the spectra, 8·r·(n/2+1) + 8·r·n bytes. At load: "
       "3·r·F(n) MACs, reading 8·r·n bytes of G and H and writing the spectra"),
    Op("CodebookWeight", "codebook_weight", "decoder", CODEBOOK_INPUTS,
       (Attribute("shape", "ints", None, (1, U32_MAX), (1, INT_MAX),
                  "shape of W; sparse form: rows = shape[0], cols = product of the rest (< 2³²)"), BITS),
       "`shape`", lambda a, shape: tuple(a["shape"]), lambda a: math.prod(a["shape"]),
       None, "0 per inference (decoded once, at load; its consumer counts the MACs)",
       lambda a, shape: Work(), _codebook_load,
       "per inference nothing: decoded at load into a constant that its consumer reads (4·prod(`shape`) "
       "bytes, counted there). At load: reading the inputs' real bytes (4·J + ceil(n·`bits`/8) "
       "[+ 4·(rows+1) + n]), one codebook gather per entry, writing 4·prod(`shape`) bytes"),
    Op("SparseCodebookMatMul", "sparse_codebook_matmul", "compute",
       (X, CODEBOOK, INDICES, replace(ROW_PTR, required=True), replace(COL_GAPS, required=True), BIAS, SCALE),
       (IN_FEATURES, OUT_FEATURES, BITS, ACTIVATION),
       "X's shape with the last axis `out_features`", _matmul_output, _dense,
       _sparse_codebook_macs, "N·n (n = the stored entries, fillers included)",
       _sparse_codebook_work, _sparse_codebook_load,
       "per inference N·n MACs and n gathers of X, reading the plan: 8·out + 64·S + 4·(S+1) + 4·n + "
       "c·(n+16) bytes, S = ceil(out/16) (the rows sorted by length in slices of 16; per entry its codebook "
       "value and its column, c = 2 bytes up to 65536 columns, else 4). At load: reading the inputs' real "
       "bytes and writing that plan"),
    Op("MFCC", "mfcc", "frontend",
       (Input("audio", True, "activation", "float audio [..., samples] in [-1, 1] at `sample_rate`; "
              "at least `window_length` samples"),),
       MFCC_ATTRIBUTES,
       "audio's shape with the last axis replaced by [frames, `num_coefficients`], frames = "
       "1 + (samples − `window_length`) // `hop_length`", _mfcc_output, lambda a: 0,
       _mfcc_macs, "per frame `window_length` + F(`fft_length`) + 4·(`fft_length`/2+1) + "
       "`num_mel_bins`·`num_coefficients`",
       lambda a, shape: Work(macs=_mfcc_macs(a, shape), weight_bytes=_mfcc_table_bytes(a)),
       lambda a, shape: Work(weight_bytes=_mfcc_table_bytes(a)),
       "per inference the MACs above, reading the plan's tables (window, mel weights, DCT: "
       "4·(`window_length` + 2·(`fft_length`/2+1) + 2·`num_mel_bins` + `num_mel_bins`·`num_coefficients`) "
       "bytes). At load: writing those tables"),
    Op("HyperWeight", "hyper_weight", "decoder", HYPER_INPUTS,
       (Attribute("shape", "ints", None, (1, U32_MAX), (1, INT_MAX), "shape of W; V = prod(`shape`) weights"),
        Attribute("points", "int", None, (1, 65536), (1, 65536), "n, the trajectory's points (codebook entries "
                  "1 … n; entry 0 is the centroid)"),
        Attribute("group", "int", 2, (1, 4), (1, 4), "k, consecutive weights per point (the last group padded)"),
        Attribute("rings", "int", 0, (0, 15), (0, 15), "R, the concentric rings (index v: ring v div (n+1), "
                  "point v mod (n+1))"),
        Attribute("bits", "int", None, (1, 24), (1, 24), "bits per stored index")),
       "`shape`", lambda a, shape: tuple(a["shape"]), lambda a: math.prod(a["shape"]),
       None, "0 per inference (decoded once, at load; its consumer counts the MACs)",
       lambda a, shape: Work(), _hyper_load,
       "per inference nothing: decoded at load into a constant that its consumer reads (4·prod(`shape`) "
       "bytes, counted there). At load: reading the inputs' real bytes (ceil(g·`bits`/8) + 4·(k + 1 + R)), "
       "the (R+1)·(n+1)·k point table (one multiply-add per value), per group g an index unpacked "
       "(2 integer ops) and one table gather, writing 4·prod(`shape`) bytes"),
)}


# ---- generated files --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
HEADER = Path(__file__).resolve().parent / "include" / "edgepack" / "ops.inc"
DOCS = ROOT / "docs" / "ops.md"
GENERATOR = "python -m edgepack.runtime_kernels.op_spec --write (make generate)"


def c_header() -> str:
    """include/edgepack/ops.inc: X-macros over the ops, their inputs and attributes."""
    lines = [f"/* Generated from runtime_kernels/op_spec.py by {GENERATOR}; do not edit. */",
             "/* Define the macros you use before including this file; it undefines them all.",
             " *   EP_OP_DOMAIN(domain, opset_version)   EP_OP_LIMIT(name, value)",
             " *   EP_OP(op, n_inputs, n_required, n_attributes)",
             " *   EP_OP_INPUT(op, index, name, required, kind, dtype)   kind: \"activation\", \"weight\" or \"bias\";",
             " *     dtype: \"float32\", \"uint8\" or \"int32\"",
             " *   EP_OP_ATTR(op, name, is_ints, required, default, ort_lo, ort_hi, tflite_lo, tflite_hi)",
             " */",
             "#ifndef EP_OP_DOMAIN", "#define EP_OP_DOMAIN(domain, version)", "#endif",
             "#ifndef EP_OP_LIMIT", "#define EP_OP_LIMIT(name, value)", "#endif",
             "#ifndef EP_OP", "#define EP_OP(op, n_inputs, n_required, n_attributes)", "#endif",
             "#ifndef EP_OP_INPUT", "#define EP_OP_INPUT(op, index, name, required, kind, dtype)", "#endif",
             "#ifndef EP_OP_ATTR",
             "#define EP_OP_ATTR(op, name, is_ints, required, default, ort_lo, ort_hi, tflite_lo, tflite_hi)",
             "#endif", "",
             f'EP_OP_DOMAIN("{DOMAIN}", {OPSET_VERSION})']
    lines += [f"EP_OP_LIMIT({name}, {value}LL) /* {what} */" for name, (value, what) in LIMITS.items()]
    for op in OPS.values():
        lines += ["", f"EP_OP({op.name}, {len(op.inputs)}, {op.required_inputs}, {len(op.attributes)})"]
        lines += [f'EP_OP_INPUT({op.name}, {i}, "{x.name}", {int(x.required)}, "{x.kind}", "{x.dtype}")'
                  for i, x in enumerate(op.inputs)]
        lines += [f'EP_OP_ATTR({op.name}, "{a.name}", {int(a.type == "ints")}, {int(a.required)}, '
                  f'{a.default or 0}, {a.ort[0]}LL, {a.ort[1]}LL, {a.tflite[0]}LL, {a.tflite[1]}LL)'
                  for a in op.attributes]
    lines += ["", *(f"#undef {m}" for m in ("EP_OP_DOMAIN", "EP_OP_LIMIT", "EP_OP", "EP_OP_INPUT", "EP_OP_ATTR"))]
    return "\n".join(lines) + "\n"


HASH_RULE = (f"Hash work per weight and hash: {HASH_TAIL[0]} integer multiplies and {HASH_TAIL[1]} other "
             f"integer ops (the key hash, the row word absorbed once per row: {HASH_HEAD[0]} + {HASH_HEAD[1]} "
             f"per row and hash; a full XXH32 of the 8-byte key is 6 + 12), the bucket index "
             f"(B a power of two: {HASH_MOD[True][1]} op; else {HASH_MOD[False][0]} multiplies + "
             f"{HASH_MOD[False][1]} op), the sign when `signed` ({HASH_SIGN[1]} ops), one 4-byte bucket "
             f"gather; K > 1 adds the recon MLP's H·(K+1) MACs per weight.")


def _bound(value: int) -> str:
    return {U32_MAX: "2³²−1", INT_MAX: "2³¹−1"}.get(value, str(value))


def op_table(op: Op) -> str:
    """docs/ops.md's generated tables for ``op``: inputs, attributes, shape, bytes and MACs."""
    lines = ["| input | | kind | meaning |", "|---|---|---|---|"]
    lines += [f"| `{i.name}` | {'required' if i.required else 'optional'} | {i.kind}, {i.dtype} | {i.meaning} |"
              for i in op.inputs]
    lines += ["", "| attribute | type | default | valid (ORT) | valid (TFLite) | meaning |",
              "|---|---|---|---|---|---|"]
    for a in op.attributes:
        ranges = [f"[{_bound(lo)}, {_bound(hi)}]" for lo, hi in (a.ort, a.tflite)]
        if a.type == "ints":
            ranges = [f"1..{MAX_RANK} dims in {r}" for r in ranges]
        default = "required" if a.required else str(a.default)
        lines.append(f"| `{a.name}` | {a.type} | {default} | {ranges[0]} | {ranges[1]} | {a.meaning} |")
    if op.weight_inputs:
        stored = (f"Stored: the weight inputs ({', '.join(f'`{n}`' for n in op.weight_inputs)}); dense: "
                  f"{'4·prod(`shape`)' if op.kind == 'decoder' else '4·in_features·out_features'} bytes.")
    else:
        stored = "Stored: nothing (no weight inputs)."
    lines += ["", f"Output: {op.output_rule}. {stored} "
              f"MACs: {op.macs_rule}.", "", f"Energy estimate (work and weight bytes): {op.work_rule}."]
    if "num_hashes" in op.attribute_names:
        lines += ["", HASH_RULE]
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- generated: {name} (runtime_kernels/op_spec.py; make generate) -->",
            f"<!-- end generated: {name} -->")


def docs_text(current: str) -> str:
    """``current`` docs/ops.md with every generated block replaced by the spec's tables."""
    for name, op in OPS.items():
        begin, end = _markers(name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(current):
            raise ValueError(f"docs/ops.md has no generated block for {name}: add the lines\n{begin}\n{end}")
        block = f"{begin}\n{op_table(op)}\n{end}"
        current = pattern.sub(lambda _, block=block: block, current)
    return current


def generated_files() -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    return {HEADER: c_header(), DOCS: docs_text(DOCS.read_text())}


def main(argv: list[str] | None = None) -> int:
    """``--write`` regenerates the files; without it, exit 1 if any is stale."""
    parser = argparse.ArgumentParser(description="Generate ops.inc and docs/ops.md tables from the op spec.")
    parser.add_argument("--write", action="store_true", help="rewrite the stale files (default: only check)")
    write = parser.parse_args(argv).write
    stale = [path for path, text in generated_files().items()
             if not path.exists() or path.read_text() != text]
    if write:
        for path, text in generated_files().items():
            if path in stale:
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
        return 0
    for path in stale:
        print(f"{path.relative_to(ROOT)} is stale: run make generate", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
