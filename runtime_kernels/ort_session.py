"""ONNX Runtime sessions with the edgepack custom ops (``libedgepack_ort``) registered.

The library is built by CMake (``make kernels``) into ``runtime_kernels/lib/``;
``EDGEPACK_ORT_LIB`` points at another copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ort_library_path", "onnx_session"]

_LIB_NAME = "libedgepack_ort.so"


def ort_library_path() -> str:
    """Path of libedgepack_ort: ``$EDGEPACK_ORT_LIB`` if set, else the copy next to this module."""
    env = os.environ.get("EDGEPACK_ORT_LIB")
    path = Path(env) if env else Path(__file__).resolve().parent / "lib" / _LIB_NAME
    if not path.is_file():
        origin = "EDGEPACK_ORT_LIB" if env else "the package"
        raise FileNotFoundError(
            f"edgepack ORT custom-op library not found at {path} (from {origin}); "
            "build it with `make kernels` (CMake target edgepack_ort) or set EDGEPACK_ORT_LIB"
        )
    return str(path)


def onnx_session(
    path_or_bytes: str | os.PathLike | bytes, use_kernels: bool = True, threads: int = 1, **kwargs: Any
) -> Any:
    """An ``onnxruntime.InferenceSession`` using ``threads`` intra-op threads.

    With ``use_kernels`` the ai.edgepack ops run on the C kernels; without it ORT inlines the
    model-local fallback functions. Extra keyword arguments go to ``InferenceSession``
    (e.g. ``providers``).
    """
    import onnxruntime as ort

    so = kwargs.pop("sess_options", None) or ort.SessionOptions()
    so.intra_op_num_threads = threads
    if use_kernels:
        so.register_custom_ops_library(ort_library_path())
    model = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model, sess_options=so, **kwargs)
