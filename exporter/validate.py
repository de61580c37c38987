"""Check ai.edgepack nodes with exactly the C kernels' rules.

The node checks copy the validation of runtime_kernels/src/ops.c (attributes, one wording for both
runtimes, each with its own ranges), runtime_kernels/ort/edgepack_ort.c and
runtime_kernels/tflite/edgepack_tflite.c (inputs), with their message text, plus the
decode limits of ``edgepack.runtime_kernels.limits`` — so a file the kernels would refuse is
refused by export, inspect and convert too, even where ORT would run the fallback function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto
from onnx.external_data_helper import uses_external_data

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels import hyper_format, limits
from edgepack.runtime_kernels.onnx_cast import is_cast
from edgepack.runtime_kernels.op_spec import (
    DOMAIN,
    INT8_STORED_INPUTS,
    MAX_BUCKETS,
    MAX_POW2,
    MAX_RANK,
    MAX_RECON_HIDDEN,
    MIN_POW2,
    OPS,
    U32_MAX,
    sparse_plan_bytes,
)

from .model_files import load_onnx
from .model_files import why as _why

INT64_MAX = (1 << 63) - 1
# int8 storage (docs/ops.md "int8 storage"): these decoder inputs may be Cast(to=FLOAT) of a constant INT8
# initializer with values in [-127, 127]; decode at load folds Cast + decoder + Cast(to=INT8) into an int8 weight.
INT8_RANGE = "a Cast only to FLOAT (1) of a constant INT8 (3) initializer"
OP_INPUTS = {name: op.input_names for name, op in OPS.items()}
# Inputs that must be present, in order (ORT: non-optional; TFLite: min_in).
REQUIRED_INPUTS = {name: op.required_inputs for name, op in OPS.items()}
# The attributes each op reads: the ORT kernel's attributes and the delegate's options map.
OPTION_KEYS = {name: op.attribute_names for name, op in OPS.items()}
KEYS = {op: ", ".join(keys) for op, keys in OPTION_KEYS.items()}


class InvalidNodeError(EdgepackError, ValueError):
    """An ai.edgepack node that the C kernels would refuse (attributes, shapes or limits)."""


# ---- the rules -------------------------------------------------------------------------------


@dataclass
class Tensor:
    """What is statically known of one input: present, its dims (None: unknown), element type."""

    present: bool
    dims: tuple[int, ...] | None = None
    float32: bool = True
    dtype: str | None = None  # "float32", "uint8", "int32", another name, or None: unknown
    data: np.ndarray | None = None  # a constant integer input's values, or a small float one's (SMALL_FLOATS)

    def element(self) -> str:
        return self.dtype or ("float32" if self.float32 else "a non-float32 type")


class _Node:
    """One node's attribute access with the checks and words of src/ops.c (both runtimes)."""

    def __init__(self, op_type: str, label: str, values: dict, runtime: str) -> None:
        self.op_type, self.label, self.runtime = op_type, label, runtime
        # ONNX attributes come as (kind, value); a TFLite options map as plain values
        self.values = values if runtime == "ort" else {k: _flex_value(v) for k, v in values.items()}

    def fail(self, message: str) -> InvalidNodeError:
        return InvalidNodeError(f"edgepack {self.label}: {message}")

    def integer(self, name: str, required: bool, default: int, lo: int, hi: int) -> int:
        value = self.values.get(name)
        if value is None:
            if required:
                raise self.fail(f"missing required int attribute '{name}' (valid: {lo}..{hi})")
            value = default
        elif value[0] != "int":
            raise self.fail(f"attribute '{name}' must be an int, got {value[0]}")
        else:
            value = value[1]
        if not lo <= value <= hi:
            raise self.fail(f"attribute '{name}' = {value}; must be in [{lo}, {hi}]")
        return value

    def shape(self) -> list[int]:
        value = self.values.get("shape")
        lo, hi = OPS[self.op_type].attribute("shape").valid(self.runtime)
        if value is None:
            raise self.fail(f"missing required ints attribute 'shape' (1..{MAX_RANK} values)")
        if value[0] not in ("ints", "an empty list"):
            raise self.fail(f"attribute 'shape' must be ints (1..{MAX_RANK} values), got {value[0]}")
        dims = list(value[1])
        if not 1 <= len(dims) <= MAX_RANK:
            raise self.fail(f"attribute 'shape' has {len(dims)} values; must have 1..{MAX_RANK}")
        cols = 1
        for d, dim in enumerate(dims):
            if dim < max(lo, 1) or dim > hi or (d > 0 and cols > U32_MAX // dim):
                raise self.fail(f"attribute 'shape' dim {d} = {dim}; every dim must be in [{lo}, {hi}], "
                                "with the product of the dims after the first < 2^32")
            cols *= dim if d else 1
        return dims


def _flex_value(value) -> tuple[str, object]:
    """A FlexBuffers value as (kind, value) in the ONNX words the delegate's fx_map_kind uses."""
    int63 = 1 << 63
    if isinstance(value, int):  # bool too: the delegate reads FlexBuffers bools as ints
        return ("int", int(value)) if value < int63 else ("an int above 2^63-1", None)
    if isinstance(value, float):
        return "float", None
    if isinstance(value, (str, bytes)):
        return "string", None
    if isinstance(value, (list, tuple)):
        if not value:
            return "an empty list", []
        if all(isinstance(v, int) for v in value):
            return ("ints", [int(v) for v in value]) if max(value) < int63 else \
                ("ints with a value above 2^63-1", None)
        return ("floats", None) if all(isinstance(v, float) for v in value) else ("a list", None)
    if isinstance(value, dict):
        return "a map", None
    return ("null", None) if value is None else ("another FlexBuffers type", None)


def _flex_kind(value) -> str:
    """What the root of a TFLite options buffer is, for the delegate's map-open message."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "vector"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _dims(t: Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.dims) + "]"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_node(op_type: str, label: str, values: dict, inputs: list[Tensor],
               runtime: str = "ort") -> dict:
    """Check one ai.edgepack node with the rules of the ORT library or the TFLite delegate.

    ``values``: ONNX attributes as {name: (kind, value)} (kind "int", "ints", "float", ...) or
    the TFLite options map as plain values; ``inputs``: one ``Tensor`` per ONNX input slot.
    Returns {"node", "decoded_bytes", "what"} for the per-model byte limit; raises InvalidNodeError.
    """
    node = _Node(op_type, label, values, runtime)
    read = {}
    for a in OPS[op_type].attributes:  # in the spec's order, as the kernels read them
        read[a.name] = node.shape() if a.type == "ints" else \
            node.integer(a.name, a.required, a.default or 0, *a.valid(runtime))
    if op_type == "MFCC":
        return _check_mfcc(node, read, list(inputs))
    shape, K, mode = read.get("shape"), read.get("num_hashes", 1), read.get("mode", 0)
    decoder = OPS[op_type].kind == "decoder"
    if decoder:
        rows, cols = shape[0], int(np.prod(shape[1:], dtype=object)) if len(shape) > 1 else 1
        in_f = out_f = 0
    else:
        in_f, out_f = read["in_features"], read["out_features"]
        rows, cols = out_f, in_f
    if op_type in ("HashedWeight", "HashedMatMul"):
        if rows * cols > INT64_MAX // 8 // K:
            raise node.fail(f"rows*cols*num_hashes = {rows}*{cols}*{K} is too large")
    desc = _size_desc(op_type, shape, in_f, out_f)
    _check_virtual(node, desc, rows, cols)

    names = OP_INPUTS[op_type]
    inputs = list(inputs) + [Tensor(False)] * (len(names) - len(inputs))
    for i in range(REQUIRED_INPUTS[op_type]):
        if not inputs[i].present:
            raise node.fail(f"required input '{names[i]}' is missing")
    known = {name: t for name, t in zip(names, inputs) if t.present and t.dims is not None}
    dtypes = {i.name: i.dtype for i in OPS[op_type].inputs}
    typed = any(d != "float32" for d in dtypes.values())  # ops with integer inputs name the type found
    for name, t in known.items():
        if dtypes[name] == "float32" and not t.float32 and not typed:
            raise node.fail(f"input '{name}' has a non-float32 element type; must be float32")
        if (dtypes[name] != "float32" or typed) and t.element() != dtypes[name]:
            raise node.fail(f"input '{name}' has element type {t.element()}; must be {dtypes[name]}")
    if op_type in ("HashedWeight", "HashedMatMul"):
        _check_buckets(node, known.get("buckets"))
        recon = inputs[names.index("recon")]
        _check_recon(node, K, recon.present, known.get("recon"))
    elif op_type == "CirculantMatMul" and "blocks" in known:
        _check_blocks(node, known["blocks"], in_f, out_f)
    elif op_type == "LDRMatMul" and "G" in known and "H" in known:
        _check_ldr(node, known["G"], known["H"], in_f, out_f)
    elif "codebook" in names:
        _check_codebook(node, dict(zip(names, inputs)), known, rows, cols, read["bits"])
    elif op_type == "HyperWeight":
        _check_hyper(node, dict(zip(names, inputs)), known, read, rows * cols)
    if not decoder:
        x = known.get("X")
        if x is not None and (not x.dims or (x.dims[-1] >= 0 and x.dims[-1] != in_f)):
            raise node.fail(f"input 'X' has shape {_dims(x)}; its last axis must equal "
                            f"in_features={in_f}")
        for name in ("bias", "scale"):
            vector = known.get(name)
            if vector is not None and (len(vector.dims) != 1 or vector.dims[0] != out_f):
                raise node.fail(f"input '{name}' has shape {_dims(vector)}; must be [out_features] = [{out_f}]")
    decoded, what = 0, ""
    if decoder or (op_type == "HashedMatMul" and mode == 0):
        decoded = 4 * rows * cols
        what = f"the {'decoded' if decoder else 'expanded'} weight" + \
            ("" if decoder else " (mode 0)") + f" ({desc})"
    elif op_type == "SparseCodebookMatMul" and _sized(known.get("codebook")) and _sized(known.get("col_gaps")):
        n = int(np.prod(known["col_gaps"].dims))
        plan_attributes = {"in_features": in_f, "out_features": out_f}
        decoded = sparse_plan_bytes(plan_attributes, lambda name: known[name].dims)
        what = f"the sparse plan ({desc}, {n} entries)"
    elif op_type == "CirculantMatMul" and "blocks" in known:
        p, q, b = known["blocks"].dims
        decoded, what = 4 * p * q * (b + 2), f"the block spectra ({desc}, input 'blocks' {_dims(known['blocks'])})"
    elif op_type == "LDRMatMul" and "G" in known:
        r, n = known["G"].dims
        decoded, what = 4 * r * (4 * n + 2), f"the LDR spectra ({desc}, input 'G' {_dims(known['G'])})"
    return {"node": node, "decoded_bytes": decoded, "what": what}


def _check_mfcc(node: _Node, a: dict, inputs: list[Tensor]) -> dict:
    """The MFCC rules between attributes and on the audio's shape (src/ops.c check_mfcc); no weights."""
    fft, window, coefficients, mels = a["fft_length"], a["window_length"], a["num_coefficients"], a["num_mel_bins"]
    if not _is_pow2(fft):
        raise node.fail(f"attribute 'fft_length' = {fft}; must be a power of two")
    if window > fft:
        raise node.fail(f"attribute 'window_length' = {window}; must be <= fft_length = {fft}")
    if coefficients > mels:
        raise node.fail(f"attribute 'num_coefficients' = {coefficients}; must be <= num_mel_bins = {mels}")
    if not a["lower_hz"] < a["upper_hz"] <= a["sample_rate"] / 2:
        raise node.fail(f"attributes lower_hz = {a['lower_hz']}, upper_hz = {a['upper_hz']}; need lower_hz < "
                        f"upper_hz <= sample_rate / 2 = {a['sample_rate']} / 2")
    audio = inputs[0] if inputs else Tensor(False)
    if not audio.present:
        raise node.fail("required input 'audio' is missing")
    if audio.dims is not None:
        if not audio.float32:
            raise node.fail("input 'audio' has a non-float32 element type; must be float32")
        if not 1 <= len(audio.dims) < MAX_RANK or 0 <= audio.dims[-1] < window:
            raise node.fail(f"input 'audio' has shape {_dims(audio)}; must be [..., samples] (rank 1..{MAX_RANK - 1}) "
                            f"with at least one window of window_length={window} samples")
    return {"node": node, "decoded_bytes": 0, "what": ""}


def _hint(env: str, keyword: str) -> str:
    return (f"; if the model is trusted, raise it with the environment variable {env}=N or "
            f"{keyword}=N (onnx_session / tflite_interpreter, delegate option {keyword})")


def _size_desc(op_type: str, shape: list[int] | None, in_f: int, out_f: int) -> str:
    if OPS[op_type].kind == "decoder":
        return "shape [" + ", ".join(str(d) for d in shape) + "]"
    return f"in_features={in_f} x out_features={out_f}"


def _check_virtual(node: _Node, desc: str, rows: int, cols: int) -> None:
    limit = limits.max_virtual_weights()
    if rows * cols > limit:
        raise node.fail(f"{desc} would decode {rows * cols} virtual weights, above the limit of "
                        f"{limit} per node" + _hint(limits.ENV_MAX_VIRTUAL_WEIGHTS, "max_virtual_weights"))


def _check_buckets(node: _Node, t: Tensor | None) -> None:
    name = "buckets"
    if t is None:
        return
    count = int(np.prod(t.dims, dtype=object))
    if len(t.dims) != 1 or count < 1 or count > MAX_BUCKETS:
        raise node.fail(f"input '{name}' has shape {_dims(t)}; must be 1-D with 1 <= B < 2^31 buckets")


def _check_recon(node: _Node, K: int, present: bool, t: Tensor | None) -> None:
    per = K + 2
    if not present and K == 1:
        return
    if not present:
        raise node.fail(f"input 'recon' is required when num_hashes={K}: the MLP [W1 (H x K), "
                        "b1 (H), W2 (H), b2] of length H*(K+2)+1")
    if t is None:
        return
    count = int(np.prod(t.dims, dtype=object))
    if len(t.dims) != 1 or count < per + 1 or (count - 1) % per != 0:
        raise node.fail(f"input 'recon' has {count} values (rank {len(t.dims)}); with "
                        f"num_hashes={K} it must be 1-D of length H*{per}+1 for some H >= 1 "
                        f"(e.g. {per + 1}, {2 * per + 1}, ...)")
    identity = K == 1 and count == 7
    if not identity and (count - 1) // per > MAX_RECON_HIDDEN:
        raise node.fail(f"input 'recon' has {count} values: H = {(count - 1) // per} hidden units; "
                        f"the kernels allow H <= {MAX_RECON_HIDDEN}")


def _check_blocks(node: _Node, t: Tensor, in_f: int, out_f: int) -> None:
    d = t.dims
    if len(d) != 3 or d[0] < 1 or d[1] < 1 or not _is_pow2(d[2]) or d[2] < MIN_POW2:
        raise node.fail(f"input 'blocks' has shape {_dims(t)}; must be [p, q, b] with p, q >= 1 "
                        "and b a power of two >= 4")
    p, q, b = d
    if in_f > q * b or out_f > p * b:
        raise node.fail(f"input 'blocks' has shape {_dims(t)}; need in_features={in_f} <= "
                        f"q*b={q * b} and out_features={out_f} <= p*b={p * b}")
    if b > MAX_POW2:
        raise node.fail(f"kernel error (size): block size b={b}; must be a power of two in [4, 2^30]")
    if p * q * (b + 2) > INT64_MAX:
        raise node.fail(f"kernel error (overflow): p*q*b = {p}*{q}*{b} overflows")


def _check_ldr(node: _Node, g: Tensor, h: Tensor, in_f: int, out_f: int) -> None:
    if (len(g.dims) != 2 or len(h.dims) != 2 or g.dims != h.dims or g.dims[0] < 1
            or not _is_pow2(g.dims[1]) or g.dims[1] < MIN_POW2):
        raise node.fail(f"inputs 'G' {_dims(g)} and 'H' {_dims(h)} must both be [r, n] with r >= 1 "
                        "and n a power of two >= 4")
    n = g.dims[1]
    if in_f > n or out_f > n:
        raise node.fail(f"in_features={in_f} and out_features={out_f} must both be <= n={n} "
                        f"(G, H are {_dims(g)})")
    if n > MAX_POW2:
        raise node.fail(f"kernel error (size): n={n}; must be a power of two in [4, 2^30]")


def _check_codebook(node: _Node, given: dict[str, Tensor], known: dict[str, Tensor], rows: int, cols: int,
                    bits: int) -> None:
    """The codebook form's rules (src/codebook.c ep_codebook_check): bits, codebook size, both or
    neither of row_ptr / col_gaps, the indices' length for n entries, and, for constant inputs, every
    index < J, row_ptr from 0 never decreasing to n, every gap >= 1 and every column < cols."""
    if bits not in (1, 2, 4, 8):
        raise node.fail(f"attribute 'bits' = {bits}; must be 1, 2, 4 or 8")
    codebook = _sized(known.get("codebook"))
    j = int(np.prod(codebook.dims, dtype=object)) if codebook is not None else None
    if codebook is not None and len(codebook.dims) != 1:
        raise node.fail(f"input 'codebook' has shape {_dims(codebook)}; must be 1-D")
    if codebook is not None and not 1 <= j <= 256:
        raise node.fail(f"input 'codebook' has {j} values; must have 1..256")
    if given["row_ptr"].present != given["col_gaps"].present:
        raise node.fail("only one of 'row_ptr' / 'col_gaps' is given; the sparse form needs both, the dense form "
                        "neither")
    for name in OPS[node.op_type].weight_inputs:
        if name in known and len(known[name].dims) != 1:
            raise node.fail(f"input '{name}' has shape {_dims(known[name])}; must be 1-D")
    row_ptr, col_gaps = _sized(known.get("row_ptr")), _sized(known.get("col_gaps"))
    indices = _sized(known.get("indices"))
    if row_ptr is not None and row_ptr.dims[0] != rows + 1:
        raise node.fail(f"input 'row_ptr' has {row_ptr.dims[0]} values; must have rows+1 = {rows + 1}")
    n = rows * cols if not given["col_gaps"].present else (col_gaps.dims[0] if col_gaps is not None else None)
    if n is None or indices is None:
        return
    need = -(-n * bits // 8)
    if indices.dims[0] != need:
        raise node.fail(f"input 'indices' has {indices.dims[0]} bytes; {n} entries of {bits} bits need "
                        f"ceil({n}*{bits}/8) = {need} (an nnz that disagrees with the indices)")
    if indices.data is not None:
        packed = indices.data.astype(np.int64)
        used = (n * bits) % 8
        if used and packed[-1] >> used:
            raise node.fail(f"input 'indices': the unused high bits of its last byte (byte {need - 1} = "
                            f"0x{int(packed[-1]):02x}) must be 0 ({n} entries of {bits} bits)")
        position = np.arange(n, dtype=np.int64) * bits
        index = (packed[position // 8] >> (position % 8)) & ((1 << bits) - 1)
        bad = np.flatnonzero(index >= j) if j is not None else []
        if len(bad):
            raise node.fail(f"input 'indices': entry {bad[0]} is index {index[bad[0]]}, but the codebook has {j} "
                            f"values; every index must be < {j}")
    if row_ptr is None or row_ptr.data is None or col_gaps.data is None:
        return
    rp = row_ptr.data.astype(np.int64)
    if rp[0] != 0:
        raise node.fail(f"input 'row_ptr' starts at {rp[0]}; must start at 0")
    down = np.flatnonzero(np.diff(rp) < 0)
    if len(down):
        r = int(down[0])
        raise node.fail(f"input 'row_ptr' decreases at row {r}: row_ptr[{r}] = {rp[r]} > row_ptr[{r + 1}] = "
                        f"{rp[r + 1]}; row pointers must never decrease")
    if rp[-1] != n:
        raise node.fail(f"input 'row_ptr' ends at {rp[-1]}; must end at n = {n}, the length of 'col_gaps' "
                        "(an nnz that disagrees with the entries)")
    gaps = col_gaps.data.astype(np.int64)
    row = np.repeat(np.arange(rows), np.diff(rp))
    zero = np.flatnonzero(gaps == 0)
    if len(zero):
        raise node.fail(f"input 'col_gaps': entry {zero[0]} (row {row[zero[0]]}) is 0; every gap must be >= 1")
    running = np.cumsum(gaps)
    column = running - np.concatenate([[0], running])[rp[:-1]][row] - 1
    far = np.flatnonzero(column >= cols)
    if len(far):
        m = int(far[0])
        raise node.fail(f"input 'col_gaps': entry {m} puts row {row[m]} at column {column[m]}; columns must be "
                        f"< cols = {cols}")


def _g(value: float) -> str:
    """A float as C's printf %g writes it (glibc: "-nan" for a NaN with the sign bit)."""
    if np.isnan(value):
        return "-nan" if np.signbit(value) else "nan"
    return f"{float(value):g}"


def _check_hyper(node: _Node, given: dict[str, Tensor], known: dict[str, Tensor], read: dict, weights: int) -> None:
    """The HyperWeight contract's input rules in the order and words of src/hyper.c (ep_hyper_check)
    and src/ops.c: 1-D inputs, the packed indices' length for g = ceil(V/k) groups, center [k],
    side [1], scales [R] present iff R > 0; for constant inputs finite values, side and scales > 0,
    zero trailing bits and every index < (R+1)·(n+1)."""
    n, k, rings, bits = read["points"], read["group"], read["rings"], read["bits"]
    for name in OPS[node.op_type].weight_inputs:
        if name in known and len(known[name].dims) != 1 and not (name == "scales" and 0 in known[name].dims):
            raise node.fail(f"input '{name}' has shape {_dims(known[name])}; must be 1-D")
    g = -(-weights // k)
    need = -(-g * bits // 8)
    indices, center, side, scales = (_sized(known.get(name)) for name in OPS[node.op_type].weight_inputs)
    if indices is not None and indices.dims[0] != need:
        have = indices.dims[0]
        why = "truncated packed indices" if have < need else "more bytes than the packed indices"
        raise node.fail(f"input 'indices' has {have} bytes; {g} groups of {bits} bits need "
                        f"ceil({g}*{bits}/8) = {need} ({why})")
    if center is not None and center.dims[0] != k:
        raise node.fail(f"input 'center' has {center.dims[0]} values; must be [group] = [{k}]")
    if side is not None and side.dims[0] != 1:
        raise node.fail(f"input 'side' has {side.dims[0]} values; must be [1]")
    scales_len = None if scales is None else int(np.prod(scales.dims, dtype=np.int64))
    given_scales = given["scales"].present and scales_len != 0  # a zero-length scales counts as absent
    unknown_scales = given["scales"].present and scales is None
    if rings > 0 and not given_scales:
        raise node.fail(f"input 'scales' is missing; rings = {rings} needs [rings] = [{rings}] expansion factors")
    if rings == 0 and given_scales and not unknown_scales:
        raise node.fail("input 'scales' is given but rings = 0; it must be absent when rings = 0")
    if scales_len and scales.dims[0] != rings:
        raise node.fail(f"input 'scales' has {scales.dims[0]} values; must be [rings] = [{rings}]")
    if center is not None and center.data is not None:
        for j, value in enumerate(center.data.astype(np.float32)):
            if not np.isfinite(value):
                raise node.fail(f"input 'center': value {j} is {_g(value)}; must be finite")
    if side is not None and side.data is not None:
        value = side.data.astype(np.float32)[0]
        if not (np.isfinite(value) and value > 0):
            raise node.fail(f"input 'side' is {_g(value)}; must be finite and > 0")
        if not hyper_format.side_fits(value, n):
            raise node.fail(f"input 'side' is {_g(value)}; side*points overflows float32 (must be <= "
                            f"{_g(np.finfo(np.float32).max / np.float32(n))} for {n} points)")
    if scales is not None and scales.data is not None:
        for r, value in enumerate(scales.data.astype(np.float32)):
            if not (np.isfinite(value) and value > 0):
                raise node.fail(f"input 'scales': value {r} is {_g(value)}; must be finite and > 0")
    if indices is None or indices.data is None:
        return
    packed = indices.data.astype(np.int64)
    used = (g * bits) % 8
    if used and packed[need - 1] >> used:
        raise node.fail(f"input 'indices': the unused high bits of its last byte (byte {need - 1} = "
                        f"0x{int(packed[need - 1]):02x}) must be 0 ({g} groups of {bits} bits)")
    index = hyper_format.unpack_bits(indices.data, g, bits)
    limit = (rings + 1) * (n + 1)
    bad = np.flatnonzero(index >= limit)
    if len(bad):
        raise node.fail(f"input 'indices': group {int(bad[0])} has index {int(index[bad[0]])}; every index must be "
                        f"< (rings+1)*(points+1) = {limit}")


def _sized(t: Tensor | None) -> Tensor | None:
    """``t`` when its length is known (no symbolic dim), else None: a length known only at run time
    is checked by the kernels then."""
    return t if t is not None and all(d >= 0 for d in t.dims) else None


def _check_total(results: list[dict]) -> None:
    """Count each node's decoded bytes against one budget per model, in node order (as ORT does)."""
    limit, used = limits.max_decoded_bytes(), 0
    hint = _hint(limits.ENV_MAX_DECODED_BYTES, "max_decoded_bytes")
    for r in results:
        if r["decoded_bytes"] > limit - used:
            if used:
                raise r["node"].fail(f"{r['what']} needs {r['decoded_bytes']} bytes; with the {used} "
                                     "bytes already decoded in this session / interpreter that is "
                                     f"above the limit of {limit} decoded bytes" + hint)
            raise r["node"].fail(f"{r['what']} needs {r['decoded_bytes']} bytes, above the limit of "
                                 f"{limit} decoded bytes" + hint)
        used += r["decoded_bytes"]


# ---- ONNX ------------------------------------------------------------------------------------

_KINDS = {AttributeProto.INT: "int", AttributeProto.FLOAT: "float", AttributeProto.STRING: "string",
          AttributeProto.INTS: "ints", AttributeProto.FLOATS: "floats",
          AttributeProto.TENSOR: "tensor", AttributeProto.GRAPH: "graph",
          AttributeProto.STRINGS: "strings"}


def _onnx_values(node: onnx.NodeProto) -> dict:
    values = {}
    for a in node.attribute:
        kind = _KINDS.get(a.type, "an unsupported type")
        if kind == "int":
            values[a.name] = ("int", a.i)
        elif kind in ("ints", "floats"):
            items = list(a.ints if kind == "ints" else a.floats)
            values[a.name] = (kind if items else "an empty list", items)
        else:
            values[a.name] = (kind, None)
    return values


def _dtype_name(elem_type: int) -> str:
    """An ONNX element type as the op spec's dtype words (numpy's name for the others)."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return f"ONNX type {elem_type}"


def _static_shapes(model: onnx.ModelProto) -> dict[str, Tensor]:
    """Statically known shapes: initializers, Constant outputs, typed graph inputs/value_info."""
    known: dict[str, Tensor] = {}
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos = list(inferred.input) + list(inferred.value_info)
    except Exception:
        infos = list(graph.input) + list(graph.value_info)
    for info in infos:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        known[info.name] = Tensor(True, dims, tensor_type.elem_type == TensorProto.FLOAT,
                                  _dtype_name(tensor_type.elem_type))
    inputs = {value.name for value in graph.input}
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:  # an int8-stored weight: its Cast to float has the initializer's dims
        source = initializers.get(node.input[0]) if is_cast(node) and node.input else None
        if source is not None and node.input[0] not in inputs and _cast_to(node) == TensorProto.FLOAT:
            known.setdefault(node.output[0], Tensor(True, tuple(source.dims), True, "float32"))
    for t in graph.initializer:
        known[t.name] = _constant(t)
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == AttributeProto.TENSOR:
                    known[node.output[0]] = _constant(a.t)
    return known


SMALL_FLOATS = 16  # float constants up to this many values are read (HyperWeight's center, side, scales)


def _constant(t: onnx.TensorProto) -> Tensor:
    """A constant's dims and dtype, and its values when uint8/int32 (the codebook ops' integer
    inputs) or a float32 of at most SMALL_FLOATS values. Values kept in external data are not read
    (they live relative to the model file, not the current directory): those are checked at run
    time, like non-constant inputs."""
    small = t.data_type == TensorProto.FLOAT and int(np.prod(t.dims, dtype=object)) <= SMALL_FLOATS
    read = t.data_type in (TensorProto.UINT8, TensorProto.INT32) or small
    external = uses_external_data(t)
    return Tensor(True, tuple(t.dims), t.data_type == TensorProto.FLOAT, _dtype_name(t.data_type),
                  onnx.numpy_helper.to_array(t) if read and not external else None)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to" and a.type == AttributeProto.INT), 0)


def cast_counts(node: onnx.NodeProto) -> str | None:
    """Why a Cast is refused where int8 storage reads one (a Cast into an ai.edgepack weight input, one that
    reads a decoded weight), None when it has one input, one output and one 'to' attribute (the C decode at
    load counts the same)."""
    n_in, n_out, n_to = len(node.input), len(node.output), sum(a.name == "to" for a in node.attribute)
    if (n_in, n_out, n_to) == (1, 1, 1):
        return None
    return f"{n_in} inputs, {n_out} outputs and {n_to} 'to' attributes; a Cast has exactly one of each"


def int8_casts(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The graph's Casts by their first output, the first Cast of a name (as the C decode at load finds them)."""
    casts: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if is_cast(node) and node.output and node.output[0]:
            casts.setdefault(node.output[0], node)
    return casts


def cast_label(node: onnx.NodeProto) -> str:
    """A Cast node in messages: its name, else its first output (as the C decode at load names it)."""
    return f"Cast node '{node.name or (node.output[0] if node.output else '')}'"


def int8_values(t: onnx.TensorProto, fail) -> np.ndarray | None:
    """An INT8 initializer's values (None when they live in external data), its data checked
    against its dims with the words of the C decode at load; ``fail(message)`` makes the error."""
    if uses_external_data(t):
        return None
    count = int(np.prod(t.dims, dtype=object))
    if t.HasField("raw_data"):
        if len(t.raw_data) != count:
            raise fail(f"initializer '{t.name}': raw_data has {len(t.raw_data)} bytes; its shape needs {count}")
        return np.frombuffer(t.raw_data, np.int8).copy()
    if len(t.int32_data) != count:
        raise fail(f"initializer '{t.name}' holds {len(t.int32_data)} values; its shape needs {count}")
    return np.array(t.int32_data, np.int32).astype(np.int8)  # wraps, as the C reader's (uint8_t) cast


def _check_casts(checked: _Node, node: onnx.NodeProto, casts: dict, initializers: dict, graph_inputs: set) -> None:
    """An ai.edgepack weight input computed by a Cast (int8 storage) must be HashedWeight 'buckets' or
    CodebookWeight 'codebook', read through a Cast (one input, one output, one 'to') to FLOAT of a constant INT8
    initializer whose data matches its shape and whose values are in [-127, 127]; checked for every node,
    decoded at load or not (the C decode at load checks the same, in the same order and words)."""
    op = OPS[node.op_type]
    for slot, name in zip(op.input_names, node.input):
        cast = casts.get(name) if name and slot in op.weight_inputs and name not in initializers else None
        if cast is None:
            continue
        where = f"input '{slot}' is the output of {cast_label(cast)}"
        if INT8_STORED_INPUTS.get(node.op_type) != slot:
            raise checked.fail(f"{where}; only HashedWeight 'buckets' and CodebookWeight 'codebook' may be stored as "
                               f"int8 ({INT8_RANGE})")
        counts = cast_counts(cast)
        if counts:
            raise checked.fail(f"{where}, which has {counts}")
        if _cast_to(cast) != TensorProto.FLOAT:
            raise checked.fail(f"{where} to data_type {_cast_to(cast)}; a decoder's weight input may be {INT8_RANGE}")
        source = cast.input[0]
        t = initializers.get(source)
        if source in graph_inputs or t is None or t.data_type != TensorProto.INT8:
            what = "a graph input" if source in graph_inputs else \
                "not an initializer" if t is None else f"an initializer of data_type {t.data_type}"
            raise checked.fail(f"{where} of '{source}', which is {what}; a decoder's weight input may be {INT8_RANGE}")
        values = int8_values(t, checked.fail)
        low = np.flatnonzero(values == -128) if values is not None else []
        if len(low):
            raise checked.fail(f"input '{slot}' (Cast of INT8 initializer '{source}'): value {int(low[0])} is -128; "
                               "int8-stored weights must be in [-127, 127]")


def check_onnx_model(model: onnx.ModelProto, where: str = "model", runtime: str = "ort") -> int:
    """Check every ai.edgepack node of ``model`` (graph and functions' callers); returns the count.

    Weight shapes are checked when they are constant (initializers); ``runtime="tflite"``
    also applies the delegate's rules to the options ``convert`` will write.
    """
    known = _static_shapes(model)
    casts = int8_casts(model.graph)
    initializers = {t.name: t for t in model.graph.initializer}
    graph_inputs = {value.name for value in model.graph.input}
    results = []
    for index, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            continue
        name = f"'{node.name}'" if node.name else "(unnamed)"
        label = f"{node.op_type} node {name}"
        if node.op_type not in OP_INPUTS:
            raise InvalidNodeError(f"edgepack {where}: node {index} {name} is ai.edgepack "
                                   f"{node.op_type!r}, which does not exist (ops: "
                                   f"{', '.join(OP_INPUTS)})")
        names = OP_INPUTS[node.op_type]
        if len(node.input) > len(names) or len(node.output) != 1:
            raise InvalidNodeError(f"edgepack {label}: has {len(node.input)} inputs and "
                                   f"{len(node.output)} outputs; must have at most {len(names)} "
                                   f"inputs ({', '.join(names)}) and exactly 1 output")
        inputs = [known.get(i, Tensor(True)) if i else Tensor(False) for i in node.input]
        values = _onnx_values(node)
        _check_casts(_Node(node.op_type, label, {}, "ort"), node, casts, initializers, graph_inputs)
        results.append(check_node(node.op_type, label, values, inputs, "ort"))
        if runtime == "tflite":  # the options convert writes: the op's own attributes
            options = {k: v for k, (_, v) in values.items() if k in OPTION_KEYS[node.op_type]}
            check_node(node.op_type, label, options, inputs, "tflite")
    _check_total(results)
    return len(results)


def checked_onnx(source, runtime: str = "tflite") -> onnx.ModelProto:
    """A path or ModelProto as a ModelProto whose ai.edgepack nodes pass the kernels' rules."""
    model = source if isinstance(source, onnx.ModelProto) else load_onnx(source)
    check_onnx_model(model, "model" if isinstance(source, onnx.ModelProto) else str(source), runtime)
    return model


# ---- TFLite ----------------------------------------------------------------------------------


_TFLITE_TYPES = {0: "float32", 2: "int32", 3: "uint8"}  # TfLiteType / tflite.TensorType
_ITEMSIZE = {"float32": 4, "int32": 4, "uint8": 1}
_TFLITE_CAST, _TFLITE_INT8 = 53, 9  # tflite.BuiltinOperator.CAST, tflite.TensorType.INT8
TFLITE_INT8_RANGE = "a CAST only to float32 of a constant int8 tensor"


def _tflite_name(graph, t: int) -> str:
    return graph.Tensors(t).Name().decode(errors="replace")[:80]


def _check_tflite_casts(model, graph, node: _Node, op_type: str, ins, producers: dict, graph_inputs: set) -> None:
    """int8 storage (docs/ops.md): a weight input written by a CAST must be HashedWeight 'buckets' or
    CodebookWeight 'codebook', a CAST to float32 of a constant int8 tensor whose buffer matches its shape
    and holds no -128 (the C decode at load, tflite/decode_model.c check_casts, says the same)."""
    spec = OPS[op_type]
    for slot, t in zip(spec.input_names, ins):
        p = producers.get(int(t), -1) if t >= 0 else -1
        cast = graph.Operators(p) if p >= 0 else None
        if cast is None or cast.OutputsLength() != 1 or slot not in spec.weight_inputs:
            continue
        code = model.OperatorCodes(cast.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != _TFLITE_CAST:
            continue
        where = f"input '{slot}' is the output of CAST node #{p} (output '{_tflite_name(graph, int(t))}')"
        x = int(cast.Inputs(0)) if cast.InputsLength() == 1 else -1
        source = graph.Tensors(x) if x >= 0 else None
        buffer = model.Buffers(source.Buffer()) if source is not None else None
        size = buffer.DataLength() if buffer is not None else 0
        dims = source.ShapeAsNumpy().tolist() if source is not None and source.ShapeLength() else []
        count = int(np.prod(dims, dtype=object)) if min(dims, default=0) >= 0 else -1
        name = _tflite_name(graph, x) if x >= 0 else ""
        if INT8_STORED_INPUTS.get(op_type) != slot:
            raise node.fail(f"{where}; only HashedWeight 'buckets' and CodebookWeight 'codebook' may be stored as "
                            f"int8 ({TFLITE_INT8_RANGE})")
        if graph.Tensors(int(t)).Type() != 0:
            raise node.fail(f"{where} to TensorType {graph.Tensors(int(t)).Type()}; a decoder's weight input may be "
                            f"{TFLITE_INT8_RANGE}")
        if source is None or x in graph_inputs or (not size and count) or source.Type() != _TFLITE_INT8:
            what = "not a constant" if source is None else "a graph input" if x in graph_inputs else \
                "not a constant" if not size and count else f"a constant of TensorType {source.Type()}"
            raise node.fail(f"{where} of tensor {x} ('{name}'), which is {what}; a decoder's weight input may be "
                            f"{TFLITE_INT8_RANGE}")
        if size != count:
            raise node.fail(f"input '{slot}' (CAST of int8 tensor {x} '{name}'): its buffer holds {size} bytes; its "
                            f"shape needs {count}")
        low = np.flatnonzero(buffer.DataAsNumpy().view(np.int8) == -128) if size else []
        if len(low):
            raise node.fail(f"input '{slot}' (CAST of int8 tensor {x} '{name}'): value {int(low[0])} is -128; "
                            "int8-stored weights must be in [-127, 127]")


def check_tflite_model(model, where: str = "model") -> int:
    """Check every ai.edgepack CUSTOM op of a ``tflite.Model`` with the delegate's rules."""
    from flatbuffers import flexbuffers

    results = []
    prefix = f"{DOMAIN}."
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        producers = {int(t): i for i in range(graph.OperatorsLength())
                     for t in (graph.Operators(i).OutputsAsNumpy() if graph.Operators(i).OutputsLength() else [])}
        graph_inputs = set(graph.InputsAsNumpy().tolist()) if graph.InputsLength() else set()
        for index in range(graph.OperatorsLength()):
            op = graph.Operators(index)
            code = model.OperatorCodes(op.OpcodeIndex()).CustomCode()
            custom = code.decode(errors="replace") if code else ""
            if not custom.startswith(prefix) or custom[len(prefix):] not in OP_INPUTS:
                continue
            op_type = custom[len(prefix):]
            outputs = op.OutputsAsNumpy() if op.OutputsLength() else []
            out_name = "?"
            if len(outputs) and 0 <= outputs[0] < graph.TensorsLength():
                out_name = graph.Tensors(int(outputs[0])).Name().decode(errors="replace")[:80]
            label = f"{op_type} node #{index} (output '{out_name}')"
            names = OP_INPUTS[op_type]
            node = _Node(op_type, label, {}, "tflite")
            ins = op.InputsAsNumpy() if op.InputsLength() else []
            if len(outputs) != 1:
                raise node.fail(f"has {len(outputs)} outputs; must have exactly 1")
            if not REQUIRED_INPUTS[op_type] <= len(ins) <= len(names):
                raise node.fail(f"has {len(ins)} inputs; must have {REQUIRED_INPUTS[op_type]}.."
                                f"{len(names)} ({', '.join(names)})")
            try:
                raw = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
                options = flexbuffers.Loads(raw) if raw else None
            except Exception as error:
                raise node.fail(f"custom options: {_why(error)} (expected a FlexBuffers map with "
                                f"{KEYS[op_type]})") from None
            if not isinstance(options, dict):
                raise node.fail(f"custom options: root is a FlexBuffers {_flex_kind(options)}, must be "
                                f"a map (expected a FlexBuffers map with {KEYS[op_type]})")
            inputs, stored = [], []
            for t in ins:
                if t < 0:
                    inputs.append(Tensor(False))
                    continue
                tensor = graph.Tensors(int(t))
                dims = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
                dtype = _TFLITE_TYPES.get(tensor.Type(), f"TfLiteType {tensor.Type()}")
                buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() else None
                size = buffer.DataLength() if buffer is not None else 0
                itemsize = _ITEMSIZE.get(dtype, 4)
                data = None
                count = int(np.prod(dims, dtype=object))
                small = dtype == "float32" and count <= SMALL_FLOATS
                if (dtype in ("uint8", "int32") or small) and size and size == itemsize * count:
                    data = buffer.DataAsNumpy().view(dtype).reshape(dims)
                inputs.append(Tensor(True, dims, tensor.Type() == 0, dtype, data))
                stored.append((names[len(inputs) - 1], int(t), dims, size, itemsize))
            results.append(check_node(op_type, label, options, inputs, "tflite"))
            _check_tflite_casts(model, graph, node, op_type, ins, producers, graph_inputs)
            for name, t, dims, size, itemsize in stored:  # a constant's buffer must match its shape exactly
                needed = itemsize * int(np.prod(dims, dtype=object))
                if size and size != needed:
                    raise node.fail(f"input '{name}' (tensor {t}, kTfLiteMmapRo) holds {size} bytes; "
                                    f"its shape [{', '.join(map(str, dims))}] needs exactly {needed}")
    _check_total(results)
    return len(results)
