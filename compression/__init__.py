"""Compressed torch layers and the ``compress(model, recipe)`` entry point."""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    register_builder,
    registered_builders,
    save_checkpoint,
)
from .circulant import CirculantLinear
from .hashed import HashedConv2d, HashedLinear
from .hashing import hash_indices
from .ldr import LDRLinear
from .recipe import (
    METHODS,
    CompressionReport,
    LayerReport,
    compress,
    compressed_size_bytes,
    load_recipe,
)
from .registry import register_method

__all__ = [
    "METHODS",
    "CheckpointError",
    "CirculantLinear",
    "CompressionReport",
    "HashedConv2d",
    "HashedLinear",
    "LDRLinear",
    "LayerReport",
    "compress",
    "compressed_size_bytes",
    "hash_indices",
    "load_checkpoint",
    "load_recipe",
    "register_builder",
    "register_method",
    "registered_builders",
    "save_checkpoint",
]
