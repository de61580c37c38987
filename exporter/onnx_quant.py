"""Lower the int8 layers (compression/quantize.py) to ONNX QDQ: QuantizeLinear → DequantizeLinear on the
input (left out when the input is already the upstream layer's quantized output), DequantizeLinear of the
int8 weight initializer (per-channel scales, axis 0), Conv / Gemm with a float bias, Relu when fused,
QuantizeLinear → DequantizeLinear on the output; a pass-through module next to int8 layers (pool, flatten)
gets a QuantizeLinear → DequantizeLinear on its output (on its input when it reads the model input). ORT
runs it as is; the QDQ → int8 TFLite converter reads it.

An int8 hashed / codebook layer (compression/quantize_compressed.py) stores its int8 buckets / codebook: its
weight is Cast(q, FLOAT) → HashedWeight | CodebookWeight → Cast(INT8) → DequantizeLinear (per-channel scales,
axis 0). The lowering feeds the decoder the integer-valued float values and casts its output to int8; the
exporter's pass ``store_int8_decoder_inputs`` (exporter/passes.py) then stores them as the INT8 initializer
plus Cast(to=FLOAT).

The graph comes from torch's ``quantized_decomposed`` ops, which the ONNX exporter translates to these nodes.
"""

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 (defines torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import nn

from edgepack.compression.quantize import (
    ACTIVATION_MAX,
    ACTIVATION_MIN,
    WEIGHT_MAX,
    QuantConv2d,
    QuantLinear,
    QuantPassThrough,
)
from edgepack.compression.quantize_compressed import (
    QuantCodebookConv2d,
    QuantCodebookLinear,
    QuantHashedConv2d,
    QuantHashedLinear,
)
from edgepack.runtime_kernels.op_spec import OPS

from .onnx_export import IDENTITY_RECON, LoweredCodebookConv2d, LoweredCodebookLinear, lowers

_OPS = torch.ops.quantized_decomposed


def qdq(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """One QuantizeLinear → DequantizeLinear pair (int8, per tensor) in the exported graph."""
    q = _OPS.quantize_per_tensor(x, scale, zero_point, ACTIVATION_MIN, ACTIVATION_MAX, torch.int8)
    return _OPS.dequantize_per_tensor(q, scale, zero_point, ACTIVATION_MIN, ACTIVATION_MAX, torch.int8)


class _LoweredQuant(nn.Module):
    """The int8 layer's tensors as export constants: scales, zero zero points, float bias; ``int8_weight()``
    gives the int8 weight (an initializer, or decoded from int8 buckets / codebook)."""

    def __init__(self, layer) -> None:
        nn.Module.__init__(self)  # not super(): the codebook lowerings also derive from the float ones
        self.register_buffer("weight_scale", layer.weight_scale.detach().clone())
        self.register_buffer("weight_zero_point", torch.zeros(layer.weight.shape[0], dtype=torch.int64))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.input = None if layer.input_quantized else layer.qparams("input")
        self.output = layer.qparams("output")
        self.relu = layer.relu

    def int8_weight(self) -> torch.Tensor:
        return self.weight

    def dequantized_weight(self) -> torch.Tensor:
        return _OPS.dequantize_per_channel(self.int8_weight(), self.weight_scale, self.weight_zero_point, 0,
                                           -WEIGHT_MAX, WEIGHT_MAX, torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input is not None:
            x = qdq(x, *self.input)
        y = self.compute(x, self.dequantized_weight())
        if self.relu:
            y = torch.relu(y)
        return qdq(y, *self.output)


class _Linear:
    """Gemm with the dequantized weight."""

    def compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class _Conv:
    """Conv with the dequantized weight, in the layer's geometry (``self.conv``)."""

    def compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, **self.conv)


def _conv_geometry(layer) -> dict:
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


@lowers(QuantLinear)
class LoweredQuantLinear(_Linear, _LoweredQuant):
    """QuantLinear as QDQ + Gemm."""

    def __init__(self, layer: QuantLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)
        self.register_buffer("weight", layer.weight.detach().clone())


@lowers(QuantConv2d)
class LoweredQuantConv2d(_Conv, _LoweredQuant):
    """QuantConv2d as QDQ + Conv."""

    def __init__(self, layer: QuantConv2d, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)
        self.register_buffer("weight", layer.weight.detach().clone())
        self.conv = _conv_geometry(layer)


class _LoweredQuantHashed(_LoweredQuant):
    """An int8 hashed layer: HashedWeight of its int8 buckets (as integer-valued floats; the identity recon,
    as the float export writes for num_hashes = 1), Cast to int8."""

    def __init__(self, layer) -> None:
        super().__init__(layer)
        self.register_buffer("buckets", layer.buckets.detach().float())
        self.register_buffer("recon", torch.tensor(IDENTITY_RECON))
        self.layer_shape = list(layer.weight_shape)
        self.hash = dict(num_hashes=1, seed=layer.seed, signed=int(layer.signed))

    def int8_weight(self) -> torch.Tensor:
        weight = torch.ops.edgepack.hashed_weight(self.buckets, self.recon, self.layer_shape, **self.hash)
        return weight.to(torch.int8)


@lowers(QuantHashedLinear)
class LoweredQuantHashedLinear(_Linear, _LoweredQuantHashed):
    """QuantHashedLinear as Cast → HashedWeight → Cast → DequantizeLinear → Gemm, QDQ around."""

    def __init__(self, layer: QuantHashedLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)


@lowers(QuantHashedConv2d)
class LoweredQuantHashedConv2d(_Conv, _LoweredQuantHashed):
    """QuantHashedConv2d as Cast → HashedWeight → Cast → DequantizeLinear → Conv, QDQ around."""

    def __init__(self, layer: QuantHashedConv2d, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)
        self.conv = _conv_geometry(layer)


class _LoweredQuantCodebook(_LoweredQuant):
    """An int8 codebook layer: CodebookWeight of its int8 codebook (as integer-valued floats) and its indices
    (dense or sparse form), Cast to int8. A float codebook lowering too, so the export's one-form rule
    (all CodebookWeight nodes sparse when one is) re-encodes it like the float ones."""

    sparse_op = False

    def __init__(self, layer) -> None:
        super().__init__(layer)
        self.register_buffer("codebook", layer.codebook.detach().float())
        for name in OPS["CodebookWeight"].input_names[1:]:  # indices, row_ptr, col_gaps
            value = getattr(layer, name)
            self.register_buffer(name, None if value is None else value.detach().clone())
        self.bits = int(layer.bits)
        self.layer_shape = list(layer.weight_shape)

    def int8_weight(self) -> torch.Tensor:
        weight = torch.ops.edgepack.codebook_weight(self.codebook, self.indices, self.row_ptr, self.col_gaps,
                                                    self.layer_shape, self.bits)
        return weight.to(torch.int8)


@lowers(QuantCodebookLinear)
class LoweredQuantCodebookLinear(_Linear, _LoweredQuantCodebook, LoweredCodebookLinear):
    """QuantCodebookLinear as Cast → CodebookWeight → Cast → DequantizeLinear → Gemm, QDQ around."""

    def __init__(self, layer: QuantCodebookLinear, mode: str = "kernels", stream: bool = False) -> None:
        _LoweredQuantCodebook.__init__(self, layer)
        self.sizes = (layer.in_features, layer.out_features)


@lowers(QuantCodebookConv2d)
class LoweredQuantCodebookConv2d(_Conv, _LoweredQuantCodebook, LoweredCodebookConv2d):
    """QuantCodebookConv2d as Cast → CodebookWeight → Cast → DequantizeLinear → Conv, QDQ around."""

    def __init__(self, layer: QuantCodebookConv2d, mode: str = "kernels", stream: bool = False) -> None:
        _LoweredQuantCodebook.__init__(self, layer)
        self.conv = _conv_geometry(layer)


@lowers(QuantPassThrough)
class LoweredQuantPassThrough(nn.Module):
    """The wrapped module with QDQ on its quantized side (its output, or its input)."""

    def __init__(self, layer: QuantPassThrough, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__()
        self.module, self.side, self.qparams = layer.module, layer.side, layer.qparams()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "input":
            return self.module(qdq(x, *self.qparams))
        return qdq(self.module(x), *self.qparams)
