"""edgepack: compress a PyTorch model and make it small and fast on phones, boards and MCUs."""

from edgepack.compression import (
    CirculantLinear,
    HashedConv2d,
    HashedLinear,
    LDRLinear,
    compress,
    compressed_size_bytes,
)

__version__ = "0.1.0"

__all__ = [
    "CirculantLinear",
    "HashedConv2d",
    "HashedLinear",
    "LDRLinear",
    "__version__",
    "compress",
    "compressed_size_bytes",
]
