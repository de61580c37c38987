"""edgepack: compress a PyTorch model and make it small and fast on phones, boards and MCUs."""

from edgepack.compression import (
    CirculantLinear,
    HashedConv2d,
    HashedLinear,
    LDRLinear,
    compress,
    compressed_size_bytes,
)
from edgepack.exporter import export
from edgepack.runtime_kernels import onnx_session, tflite_interpreter

__version__ = "0.1.0"

__all__ = [
    "CirculantLinear",
    "HashedConv2d",
    "HashedLinear",
    "LDRLinear",
    "__version__",
    "compress",
    "compressed_size_bytes",
    "export",
    "onnx_session",
    "tflite_interpreter",
]
