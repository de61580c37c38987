"""Compressed torch layers and the ``compress(model, recipe)`` entry point."""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    register_builder,
    registered_builders,
    save_checkpoint,
)
from .circulant import CirculantLinear
from .codebook import (
    CodebookConv2d,
    CodebookError,
    CodebookLinear,
    codebook_layer,
    decode_codebook,
    encode_codebook,
    to_codebook,
)
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
from .sws import (
    MixturePrior,
    SwsConv2d,
    SwsError,
    SwsLinear,
    SwsReport,
    postprocess,
    retrain,
    sws_layers,
)
from .sws_plot import plot_weights

__all__ = [
    "METHODS",
    "CheckpointError",
    "CirculantLinear",
    "CodebookConv2d",
    "CodebookError",
    "CodebookLinear",
    "CompressionReport",
    "HashedConv2d",
    "HashedLinear",
    "LDRLinear",
    "LayerReport",
    "MixturePrior",
    "SwsConv2d",
    "SwsError",
    "SwsLinear",
    "SwsReport",
    "codebook_layer",
    "compress",
    "compressed_size_bytes",
    "decode_codebook",
    "encode_codebook",
    "hash_indices",
    "load_checkpoint",
    "load_recipe",
    "plot_weights",
    "postprocess",
    "register_builder",
    "register_method",
    "registered_builders",
    "retrain",
    "save_checkpoint",
    "sws_layers",
    "to_codebook",
]
