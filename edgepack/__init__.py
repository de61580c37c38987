"""edgepack: compress a PyTorch model and make it small and fast on phones, boards and MCUs.

The public names are imported on first use, so ``edgepack --help`` does not load torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CirculantLinear": "edgepack.compression",
    "HashedConv2d": "edgepack.compression",
    "HashedLinear": "edgepack.compression",
    "LDRLinear": "edgepack.compression",
    "EdgepackError": "edgepack.errors",
    "compress": "edgepack.compression",
    "compressed_size_bytes": "edgepack.compression",
    "export": "edgepack.exporter",
    "onnx_session": "edgepack.runtime_kernels",
    "tflite_interpreter": "edgepack.runtime_kernels",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
