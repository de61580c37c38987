"""What the ONNX and TFLite load-time rewrites share: the decode limits they validate with, the
C decode of one HashedWeight / HashedMatMul weight (``ep_hashed_decode``: 4 bytes per weight) and
the numpy decodes of one CodebookWeight and one HyperWeight (a gather per entry / group, after the
validator's checks).

Storage-compressed weights are decoded once, when a model is loaded, so the runtime sees plain
constant weights and runs its own dense kernels and fusions (README: "Decode at load").
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np

from edgepack.errors import EdgepackError

from . import hyper_format, limits
from .kernels import hashed_decode


def first_non_int8(values: np.ndarray) -> int | None:
    """Index of the first value that is not an integer in [-128, 127] (what a Cast to int8 of a decoded weight must
    hold exactly), None when all are; the ONNX and TFLite decoders at load refuse such a weight."""
    flat = np.asarray(values).reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~((flat == np.trunc(flat)) & (flat >= -128) & (flat <= 127)))
    return int(bad[0]) if len(bad) else None

__all__ = ["DecodeError", "DECODED_OPS", "codebook_weight", "decode_node", "decode_weight", "hyper_weight",
           "validation_limits"]

# The ops rewritten at load: HashedWeight, CodebookWeight and HyperWeight always, HashedMatMul in expand mode
# (mode 0). Stream mode (mode 1) was asked for O(buckets) memory, so it keeps its kernel, and
# SparseCodebookMatMul was asked for instead of a dense weight.
DECODED_OPS = ("HashedWeight", "HashedMatMul", "CodebookWeight", "HyperWeight")
_ENV_LOCK = threading.Lock()


class DecodeError(EdgepackError, ValueError):
    """A model cannot be decoded at load (a feature the rewrite does not carry over)."""


@contextmanager
def validation_limits(max_virtual_weights: int | None, max_decoded_bytes: int | None):
    """Within the block, the validator (exporter/validate.py, which reads the environment) sees
    these limits; None keeps the environment's. Process-wide while held, like the ORT library's
    ``edgepack_ort_set_limits``: other threads validating meanwhile wait on the same lock."""
    given = {limits.ENV_MAX_VIRTUAL_WEIGHTS: ("max_virtual_weights", max_virtual_weights),
             limits.ENV_MAX_DECODED_BYTES: ("max_decoded_bytes", max_decoded_bytes)}
    given = {env: str(limits.parse_limit(name, value)) for env, (name, value) in given.items() if value is not None}
    with _ENV_LOCK:
        saved = {env: os.environ.get(env) for env in given}
        os.environ.update(given)
        try:
            yield
        finally:
            for env, value in saved.items():
                if value is None:
                    os.environ.pop(env, None)
                else:
                    os.environ[env] = value


def decode_weight(attributes: dict, buckets: np.ndarray, recon: np.ndarray | None) -> np.ndarray:
    """The dense float32 weight of a validated HashedWeight (``shape``) or HashedMatMul
    (``out_features`` × ``in_features``) node, decoded by the C kernel."""
    if "shape" in attributes:
        shape = [int(d) for d in attributes["shape"]]
    else:
        shape = [int(attributes["out_features"]), int(attributes["in_features"])]
    rows, cols = shape[0], int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    weight = hashed_decode(np.ravel(buckets), rows, cols, seed=int(attributes["seed"]),
                           num_hashes=int(attributes["num_hashes"]), signed=bool(attributes.get("signed", 1)),
                           recon=None if recon is None else np.ravel(recon))
    return weight.reshape(shape)


def codebook_weight(attributes: dict, codebook: np.ndarray, indices: np.ndarray, row_ptr: np.ndarray | None = None,
                    col_gaps: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 weight of a CodebookWeight node that passed the validator (docs/ops.md):
    packed indices read LSB first, the sparse form's columns from the running sum of its gaps."""
    shape = [int(d) for d in attributes["shape"]]
    bits = int(attributes.get("bits", 8))
    rows, cols = shape[0], int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    n = rows * cols if row_ptr is None else int(np.ravel(col_gaps).size)
    position = np.arange(n, dtype=np.int64) * bits
    packed = np.ravel(indices).astype(np.int64)
    values = np.ravel(codebook).astype(np.float32)[(packed[position >> 3] >> (position & 7)) & ((1 << bits) - 1)]
    if row_ptr is None:
        return values.reshape(shape)
    starts = np.ravel(row_ptr).astype(np.int64)
    row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(starts))
    running = np.cumsum(np.ravel(col_gaps).astype(np.int64))
    column = running - np.concatenate([[0], running])[starts[:-1]][row] - 1
    weight = np.zeros(rows * cols, np.float32)
    weight[row * cols + column] = values
    return weight.reshape(shape)


def hyper_weight(attributes: dict, indices: np.ndarray, center: np.ndarray, side: np.ndarray,
                 scales: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 weight of a HyperWeight node that passed the validator (docs/ops.md): the
    (R+1)·(n+1) × k table of points (hyper_format.hyper_table), one gather per index; a zero-length
    ``scales`` counts as absent."""
    shape = [int(d) for d in attributes["shape"]]
    n, k, bits = int(attributes["points"]), int(attributes.get("group", 2)), int(attributes["bits"])
    count = int(np.prod(shape, dtype=np.int64))
    table = hyper_format.hyper_table(np.ravel(center), np.ravel(side), scales if int(attributes.get("rings", 0))
                                     else None, points=n, group=k)
    index = hyper_format.unpack_bits(indices, -(-count // k), bits)
    return table[index].reshape(-1)[:count].reshape(shape)


def decode_node(op_type: str, attributes: dict, weights: dict[str, np.ndarray | None]) -> np.ndarray:
    """The dense weight of a validated decodable node from its weight inputs by spec name."""
    if op_type == "HyperWeight":
        return hyper_weight(attributes, weights["indices"], weights["center"], weights["side"], weights.get("scales"))
    if op_type == "CodebookWeight":
        return codebook_weight(attributes, weights["codebook"], weights["indices"], weights.get("row_ptr"),
                               weights.get("col_gaps"))
    return decode_weight(attributes, weights["buckets"], weights.get("recon"))
