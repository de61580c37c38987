"""What the ONNX and TFLite load-time rewrites share: the decode limits they validate with, and the
C decode of one HashedWeight / HashedMatMul weight (``ep_hashed_decode``: 4 bytes per weight).

Storage-compressed weights are decoded once, when a model is loaded, so the runtime sees plain
constant weights and runs its own dense kernels and fusions (README: "Decode at load").
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np

from edgepack.errors import EdgepackError

from . import limits
from .kernels import hashed_decode

__all__ = ["DecodeError", "DECODED_OPS", "decode_weight", "validation_limits"]

# The ops rewritten at load: HashedWeight always, HashedMatMul in expand mode (mode 0). Stream mode
# (mode 1) was asked for O(buckets) memory, so it keeps its kernel.
DECODED_OPS = ("HashedWeight", "HashedMatMul")
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
