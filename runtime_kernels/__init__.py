"""The edgepack C kernels from Python: ``loader`` loads libedgepack_kernels (found by
``artifacts.find_artifact``), ``kernels`` wraps it for numpy, ``ort_session`` and
``tflite_runtime`` run models with the ORT library and the TFLite delegate. This module only
re-exports their public names. All arrays are float32, C-contiguous; C errors raise KernelError.
"""

from __future__ import annotations

from . import kernels
from .artifacts import ArtifactNotFoundError, find_artifact
from .kernels import *  # noqa: F403 (the numpy wrappers, listed in kernels.__all__)
from .loader import KernelError, library_path, load
from .ort_session import onnx_session, ort_library_path
from .tflite_runtime import delegate_library_path, tflite_interpreter

__all__ = [
    *kernels.__all__,
    "KernelError",
    "library_path",
    "load",
    "onnx_session",
    "ort_library_path",
    "delegate_library_path",
    "tflite_interpreter",
    "find_artifact",
    "ArtifactNotFoundError",
]
