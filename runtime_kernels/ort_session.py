"""ONNX Runtime sessions with the edgepack custom ops (``libedgepack_ort``) registered.

The library is found by ``artifacts.find_artifact`` (``make kernels`` builds it; ``$EDGEPACK_LIB_DIR``
points at another folder). Its decode limits (docs/ops.md "Limits") come from
the environment or from ``onnx_session``'s keyword arguments.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from .artifacts import find_artifact
from .limits import ENV_MAX_DECODED_BYTES, ENV_MAX_VIRTUAL_WEIGHTS, LimitError, parse_limit

__all__ = ["ort_library_path", "onnx_session"]

_REGISTER_LOCK = threading.Lock()  # edgepack_ort_set_limits is process-wide: set, register, clear


def ort_library_path() -> str:
    """Path of libedgepack_ort (``artifacts.find_artifact``: ``$EDGEPACK_LIB_DIR``, the package's lib/, build/host)."""
    return str(find_artifact("libedgepack_ort.so"))


def _register(so: Any, max_virtual_weights: int | None, max_decoded_bytes: int | None, threads: int = 1) -> None:
    """Register libedgepack_ort on ``so`` with these limits (None: the environment's or the default)
    and ``threads`` threads for our kernels (the session's intra-op count)."""
    path = ort_library_path()
    vw = 0 if max_virtual_weights is None else parse_limit("max_virtual_weights", max_virtual_weights)
    db = 0 if max_decoded_bytes is None else parse_limit("max_decoded_bytes", max_decoded_bytes)
    with _REGISTER_LOCK:  # no other thread's override may be active meanwhile
        lib = ctypes.CDLL(path)  # the same loaded copy ORT's dlopen of this path returns
        lib.edgepack_ort_set_limits.argtypes = [ctypes.c_int64, ctypes.c_int64]
        lib.edgepack_ort_set_limits.restype = ctypes.c_int
        lib.edgepack_ort_set_threads.argtypes = [ctypes.c_int]
        lib.edgepack_ort_set_threads.restype = ctypes.c_int
        lib.edgepack_ort_set_limits(vw, db)
        lib.edgepack_ort_set_threads(max(int(threads), 0))  # 0: ORT's default count, ours from the environment
        try:
            so.register_custom_ops_library(path)
        finally:
            lib.edgepack_ort_set_limits(0, 0)
            lib.edgepack_ort_set_threads(0)


def onnx_session(
    path_or_bytes: str | os.PathLike | bytes,
    use_kernels: bool = True,
    threads: int = 1,
    *,
    max_virtual_weights: int | None = None,
    max_decoded_bytes: int | None = None,
    decode_at_load: bool = True,
    **kwargs: Any,
) -> Any:
    """An ``onnxruntime.InferenceSession`` using ``threads`` intra-op threads (ORT's and our kernels').

    With ``use_kernels`` the ai.edgepack ops run on the C kernels, within ``max_virtual_weights``
    per node and ``max_decoded_bytes`` per session (default: $EDGEPACK_MAX_VIRTUAL_WEIGHTS /
    $EDGEPACK_MAX_DECODED_BYTES, else 2^28 and 1 GiB); without it ORT inlines the model-local
    fallback functions, which no edgepack limit bounds. With ``use_kernels`` and
    ``decode_at_load`` (the default) storage-compressed weights (HashedWeight, expand-mode
    HashedMatMul) are decoded once, in C, and handed to ORT as constant initializers, so its own
    dense kernels and fusions run (decode_onnx.py); ``decode_at_load=False`` keeps the fused
    kernels (less memory). Extra keyword arguments go to ``InferenceSession`` (e.g. ``providers``).
    """
    import onnxruntime as ort

    if not use_kernels and (max_virtual_weights is not None or max_decoded_bytes is not None):
        raise LimitError(
            "max_virtual_weights / max_decoded_bytes apply to the edgepack kernels; with use_kernels=False "
            f"ONNX Runtime runs the fallback functions, which they do not bound (nor do {ENV_MAX_VIRTUAL_WEIGHTS} "
            f"/ {ENV_MAX_DECODED_BYTES})"
        )
    given = kwargs.pop("sess_options", None)
    so = given or ort.SessionOptions()
    so.intra_op_num_threads = threads
    if use_kernels:
        _register(so, max_virtual_weights, max_decoded_bytes, threads)
    model = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    weights = []
    if use_kernels and decode_at_load:
        from .decode_onnx import decoded_onnx

        # our own options take the weights without a protobuf copy; the caller's are left untouched
        decoded = decoded_onnx(path_or_bytes, max_virtual_weights, max_decoded_bytes, inline=given is not None)
        if decoded is not None:
            model, arrays = decoded
            weights = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays.values()]
            if weights:
                so.add_external_initializers(list(arrays), weights)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    session = ort.InferenceSession(model, sess_options=so, **kwargs)
    session._edgepack_decoded = weights  # ORT reads them in place: they live as long as the session
    return session
