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
from .hyper import (
    DEFAULT_BUDGET,
    HyperConv2d,
    HyperError,
    HyperLinear,
    HyperReport,
    LayerChoice,
    check_hyper,
    decode_hyper,
    decode_hyper_torch,
    encode_hyper,
    hyper_compress,
    hyper_layer,
    pack_bits,
    unpack_bits,
)
from .ldr import LDRLinear
from .ptq_baselines import BaselineReport, kmeans_compress, ptq_compress  # noqa: F401 (baselines)
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
    "DEFAULT_BUDGET",
    "METHODS",
    "CheckpointError",
    "CirculantLinear",
    "CodebookConv2d",
    "CodebookError",
    "CodebookLinear",
    "CompressionReport",
    "HashedConv2d",
    "HashedLinear",
    "HyperConv2d",
    "HyperError",
    "HyperLinear",
    "HyperReport",
    "LDRLinear",
    "LayerChoice",
    "LayerReport",
    "MixturePrior",
    "SwsConv2d",
    "SwsError",
    "SwsLinear",
    "SwsReport",
    "check_hyper",
    "codebook_layer",
    "compress",
    "compressed_size_bytes",
    "decode_codebook",
    "decode_hyper",
    "decode_hyper_torch",
    "encode_codebook",
    "encode_hyper",
    "hash_indices",
    "hyper_compress",
    "hyper_layer",
    "load_checkpoint",
    "load_recipe",
    "pack_bits",
    "plot_weights",
    "postprocess",
    "register_builder",
    "register_method",
    "registered_builders",
    "retrain",
    "save_checkpoint",
    "sws_layers",
    "to_codebook",
    "unpack_bits",
]
