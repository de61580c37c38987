"""The ai.edgepack operators on the torch side: custom ops the exporter traces, their ONNX schemas,
and the translations that turn each traced call into one ``ai.edgepack`` ONNX node.

The eager implementations compute the same result as the compressed layers (they recompute
the hashes, so they are slow): they exist so a lowered model can be checked before export.
"""

import inspect

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

from edgepack.compression.circulant import circulant_product
from edgepack.compression.codebook import decode_torch
from edgepack.compression.hashed import decode_virtual
from edgepack.compression.hashing import hash_indices
from edgepack.compression.hyper import decode_hyper_torch
from edgepack.compression.ldr import ldr_product
from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION, Op

LIBRARY = "edgepack"


def _torch_names(op: Op) -> list[str]:
    """The torch argument names of ``op``: its inputs (X as x), then its attributes."""
    return [("x" if name == "X" else name) for name in op.input_names] + list(op.attribute_names)


def torch_schema(op: Op) -> str:
    """The torch.library schema of ``op``, from the spec (ints are SymInt, as torch infers them)."""
    types = ["Tensor?" if i.folded or not i.required else "Tensor" for i in op.inputs]
    types += [{"int": "SymInt", "ints": "SymInt[]"}[a.type] for a in op.attributes]
    return "(" + ", ".join(f"{t} {n}" for t, n in zip(types, _torch_names(op))) + ") -> Tensor"


def _custom_op(name: str):
    op = OPS[name]
    return torch.library.custom_op(f"{LIBRARY}::{op.torch_name}", mutates_args=(), schema=torch_schema(op))


def _epilogue(product: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None, activation: int) -> torch.Tensor:
    """The compute ops' epilogue (docs/ops.md): activation(product·scale + bias); 0 none, 1 ReLU, 2 ReLU6."""
    y = (product if scale is None else product * scale) + bias
    return {0: y, 1: torch.relu(y), 2: torch.clamp(y, 0.0, 6.0)}[activation]


def _decode(buckets, recon, rows, cols, num_hashes, seed, signed):
    index, sign = hash_indices(rows, cols, buckets.numel(), seed, num_hashes, bool(signed))
    recon = recon if num_hashes > 1 else None
    return decode_virtual(buckets, recon, index.view(num_hashes, -1), sign.view(num_hashes, -1))


@_custom_op("HashedWeight")
def hashed_weight(buckets: torch.Tensor, recon: torch.Tensor, shape: list[int], num_hashes: int,
                  seed: int, signed: int) -> torch.Tensor:
    rows, cols = shape[0], int(torch.tensor(shape[1:]).prod())
    return _decode(buckets, recon, rows, cols, num_hashes, seed, signed).reshape(shape).clone()


@hashed_weight.register_fake
def _(buckets, recon, shape, num_hashes, seed, signed):
    return buckets.new_empty(shape)


@_custom_op("HashedMatMul")
def hashed_matmul(x: torch.Tensor, buckets: torch.Tensor, recon: torch.Tensor, bias: torch.Tensor,
                  scale: torch.Tensor | None, in_features: int, out_features: int, num_hashes: int,
                  seed: int, signed: int, mode: int, activation: int) -> torch.Tensor:
    weight = _decode(buckets, recon, out_features, in_features, num_hashes, seed, signed)
    return _epilogue(x @ weight.view(out_features, in_features).T, bias, scale, activation)


@hashed_matmul.register_fake
def _(x, buckets, recon, bias, scale, in_features, out_features, num_hashes, seed, signed, mode, activation):
    return x.new_empty(*x.shape[:-1], out_features)


@_custom_op("CirculantMatMul")
def circulant_matmul(x: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
                     in_features: int, out_features: int, activation: int) -> torch.Tensor:
    return _epilogue(circulant_product(x, blocks, out_features), bias, scale, activation)


@circulant_matmul.register_fake
def _(x, blocks, bias, scale, in_features, out_features, activation):
    return x.new_empty(*x.shape[:-1], out_features)


@_custom_op("LDRMatMul")
def ldr_matmul(x: torch.Tensor, G: torch.Tensor, H: torch.Tensor, bias: torch.Tensor,
               scale: torch.Tensor | None, in_features: int, out_features: int, activation: int) -> torch.Tensor:
    return _epilogue(ldr_product(x, G, H, out_features), bias, scale, activation)


@ldr_matmul.register_fake
def _(x, G, H, bias, scale, in_features, out_features, activation):
    return x.new_empty(*x.shape[:-1], out_features)


@_custom_op("CodebookWeight")
def codebook_weight(codebook: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor | None,
                    col_gaps: torch.Tensor | None, shape: list[int], bits: int) -> torch.Tensor:
    return decode_torch(codebook, indices, shape, bits, row_ptr, col_gaps).clone()


@codebook_weight.register_fake
def _(codebook, indices, row_ptr, col_gaps, shape, bits):
    return codebook.new_empty(shape)


@_custom_op("HyperWeight")
def hyper_weight(indices: torch.Tensor, center: torch.Tensor, side: torch.Tensor, scales: torch.Tensor | None,
                 shape: list[int], points: int, group: int, rings: int, bits: int) -> torch.Tensor:
    return decode_hyper_torch(indices, center, side, scales, shape=shape, points=points, group=group,
                              rings=rings, bits=bits).clone()


@hyper_weight.register_fake
def _(indices, center, side, scales, shape, points, group, rings, bits):
    return center.new_empty(shape)


@_custom_op("SparseCodebookMatMul")
def sparse_codebook_matmul(x: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor,
                           col_gaps: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None,
                           in_features: int, out_features: int, bits: int, activation: int) -> torch.Tensor:
    weight = decode_torch(codebook, indices, [out_features, in_features], bits, row_ptr, col_gaps)
    bias = x.new_zeros(out_features) if bias is None else bias
    return _epilogue(x @ weight.T, bias, scale, activation)


@sparse_codebook_matmul.register_fake
def _(x, codebook, indices, row_ptr, col_gaps, bias, scale, in_features, out_features, bits, activation):
    return x.new_empty(*x.shape[:-1], out_features)


@_custom_op("MFCC")
def mfcc(audio: torch.Tensor, sample_rate: int, window_length: int, hop_length: int, fft_length: int,
         num_mel_bins: int, num_coefficients: int, lower_hz: int, upper_hz: int) -> torch.Tensor:
    from edgepack.kws.frontend import MFCCConfig
    from edgepack.kws.frontend import mfcc as front_end

    config = MFCCConfig(sample_rate, window_length, hop_length, fft_length, num_mel_bins, num_coefficients,
                        float(lower_hz), float(upper_hz))
    return front_end(audio, config).clone()


@mfcc.register_fake
def _(audio, sample_rate, window_length, hop_length, fft_length, num_mel_bins, num_coefficients, lower_hz,
      upper_hz):
    frames = (audio.shape[-1] - window_length) // hop_length + 1
    return audio.new_empty(*audio.shape[:-1], frames, num_coefficients)


# ONNX schemas: the torch exporter builds nodes through onnxscript, which wants one per op.
def _schema(op: Op) -> OpSchema:
    attribute_type = {"int": OpSchema.AttrType.INT, "ints": OpSchema.AttrType.INTS}
    return OpSchema(
        op.name, DOMAIN, OPSET_VERSION,
        inputs=[OpSchema.FormalParameter(i.name, "T" if i.dtype == "float32" else f"tensor({i.dtype})",
                                         param_option=OpSchema.FormalParameterOption.Single
                                         if i.required else OpSchema.FormalParameterOption.Optional)
                for i in op.inputs],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
        attributes=[OpSchema.Attribute(a.name, attribute_type[a.type], "") for a in op.attributes])


SCHEMAS = [_schema(op) for op in OPS.values()]


def register_schemas() -> None:
    """Register the ai.edgepack schemas with onnx once per process."""
    for schema in SCHEMAS:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


_edgepack = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def _translation(op: Op):
    """The function that turns a traced call of ``op``'s torch op into one ONNX node: the spec's
    inputs as inputs (trailing absent ones dropped), the rest as attributes. Its signature is the
    torch op's (the exporter reads it)."""
    signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                   for n in _torch_names(op)])
    count = len(op.inputs)

    def translate(*args, **kwargs):
        values = list(signature.bind(*args, **kwargs).arguments.values())
        inputs = values[:count]
        while inputs and inputs[-1] is None:
            inputs.pop()
        return getattr(_edgepack, op.name)(*inputs, **dict(zip(op.attribute_names, values[count:])))

    translate.__signature__ = signature
    translate.__name__ = translate.__qualname__ = f"translate_{op.torch_name}"
    return translate


TRANSLATIONS = {getattr(torch.ops.edgepack, op.torch_name).default: _translation(op) for op in OPS.values()}
