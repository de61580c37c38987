"""The ai.edgepack operators on the torch side: custom ops the exporter traces, their ONNX schemas,
and the translations that turn each traced call into one ``ai.edgepack`` ONNX node.

The eager implementations compute the same result as the compressed layers (they recompute
the hashes, so they are slow): they exist so a lowered model can be checked before export.
"""

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

from edgepack.compression.circulant import circulant_product
from edgepack.compression.hashed import decode_virtual
from edgepack.compression.hashing import hash_indices
from edgepack.compression.ldr import ldr_product

from .fallbacks import DOMAIN, OP_INPUTS, OPSET_VERSION

LIBRARY = "edgepack"


def _decode(buckets, recon, rows, cols, num_hashes, seed, signed):
    index, sign = hash_indices(rows, cols, buckets.numel(), seed, num_hashes, bool(signed))
    recon = recon if num_hashes > 1 else None
    return decode_virtual(buckets, recon, index.view(num_hashes, -1), sign.view(num_hashes, -1))


@torch.library.custom_op(f"{LIBRARY}::hashed_weight", mutates_args=())
def hashed_weight(buckets: torch.Tensor, recon: torch.Tensor, shape: list[int], num_hashes: int,
                  seed: int, signed: int) -> torch.Tensor:
    rows, cols = shape[0], int(torch.tensor(shape[1:]).prod())
    return _decode(buckets, recon, rows, cols, num_hashes, seed, signed).reshape(shape).clone()


@hashed_weight.register_fake
def _(buckets, recon, shape, num_hashes, seed, signed):
    return buckets.new_empty(shape)


@torch.library.custom_op(f"{LIBRARY}::hashed_matmul", mutates_args=())
def hashed_matmul(x: torch.Tensor, buckets: torch.Tensor, recon: torch.Tensor, bias: torch.Tensor,
                  in_features: int, out_features: int, num_hashes: int, seed: int, signed: int,
                  mode: int) -> torch.Tensor:
    weight = _decode(buckets, recon, out_features, in_features, num_hashes, seed, signed)
    return torch.nn.functional.linear(x, weight.view(out_features, in_features), bias)


@hashed_matmul.register_fake
def _(x, buckets, recon, bias, in_features, out_features, num_hashes, seed, signed, mode):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.custom_op(f"{LIBRARY}::circulant_matmul", mutates_args=())
def circulant_matmul(x: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor, in_features: int,
                     out_features: int) -> torch.Tensor:
    return circulant_product(x, blocks, out_features) + bias


@circulant_matmul.register_fake
def _(x, blocks, bias, in_features, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.custom_op(f"{LIBRARY}::ldr_matmul", mutates_args=())
def ldr_matmul(x: torch.Tensor, G: torch.Tensor, H: torch.Tensor, bias: torch.Tensor,
               in_features: int, out_features: int) -> torch.Tensor:
    return ldr_product(x, G, H, out_features) + bias


@ldr_matmul.register_fake
def _(x, G, H, bias, in_features, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


# ONNX schemas: the torch exporter builds nodes through onnxscript, which wants one per op.
def _schema(name: str, attributes: list[str]) -> OpSchema:
    attribute_type = {"shape": OpSchema.AttrType.INTS}
    return OpSchema(
        name, DOMAIN, OPSET_VERSION,
        inputs=[OpSchema.FormalParameter(n, "T") for n in OP_INPUTS[name]],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
        attributes=[OpSchema.Attribute(a, attribute_type.get(a, OpSchema.AttrType.INT), "")
                    for a in attributes])


SCHEMAS = [
    _schema("HashedWeight", ["shape", "num_hashes", "seed", "signed"]),
    _schema("HashedMatMul", ["in_features", "out_features", "num_hashes", "seed", "signed", "mode"]),
    _schema("CirculantMatMul", ["in_features", "out_features"]),
    _schema("LDRMatMul", ["in_features", "out_features"]),
]


def register_schemas() -> None:
    """Register the ai.edgepack schemas with onnx once per process."""
    for schema in SCHEMAS:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


_edgepack = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def _translate_hashed_weight(buckets, recon, shape, num_hashes, seed, signed):
    return _edgepack.HashedWeight(buckets, recon, shape=shape, num_hashes=num_hashes, seed=seed,
                                  signed=signed)


def _translate_hashed_matmul(x, buckets, recon, bias, in_features, out_features, num_hashes, seed,
                             signed, mode):
    return _edgepack.HashedMatMul(x, buckets, recon, bias, in_features=in_features,
                                  out_features=out_features, num_hashes=num_hashes, seed=seed,
                                  signed=signed, mode=mode)


def _translate_circulant_matmul(x, blocks, bias, in_features, out_features):
    return _edgepack.CirculantMatMul(x, blocks, bias, in_features=in_features,
                                     out_features=out_features)


def _translate_ldr_matmul(x, G, H, bias, in_features, out_features):
    return _edgepack.LDRMatMul(x, G, H, bias, in_features=in_features, out_features=out_features)


TRANSLATIONS = {
    torch.ops.edgepack.hashed_weight.default: _translate_hashed_weight,
    torch.ops.edgepack.hashed_matmul.default: _translate_hashed_matmul,
    torch.ops.edgepack.circulant_matmul.default: _translate_circulant_matmul,
    torch.ops.edgepack.ldr_matmul.default: _translate_ldr_matmul,
}
