"""Lower the int8 layers (compression/quantize.py) to ONNX QDQ: QuantizeLinear → DequantizeLinear on the
input (left out when the input is already the upstream layer's quantized output), DequantizeLinear of the
int8 weight initializer (per-channel scales, axis 0), Conv / Gemm with a float bias, Relu when fused,
QuantizeLinear → DequantizeLinear on the output; a pass-through module next to int8 layers (pool, flatten)
gets a QuantizeLinear → DequantizeLinear on its output (on its input when it reads the model input). ORT
runs it as is; the QDQ → int8 TFLite converter reads it.

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

from .onnx_export import lowers

_OPS = torch.ops.quantized_decomposed


def qdq(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """One QuantizeLinear → DequantizeLinear pair (int8, per tensor) in the exported graph."""
    q = _OPS.quantize_per_tensor(x, scale, zero_point, ACTIVATION_MIN, ACTIVATION_MAX, torch.int8)
    return _OPS.dequantize_per_tensor(q, scale, zero_point, ACTIVATION_MIN, ACTIVATION_MAX, torch.int8)


class _LoweredQuant(nn.Module):
    """The int8 layer's tensors as export constants: int8 weight, scales, zero zero points, float bias."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("weight_scale", layer.weight_scale.detach().clone())
        self.register_buffer("weight_zero_point", torch.zeros(layer.weight.shape[0], dtype=torch.int64))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.input = None if layer.input_quantized else layer.qparams("input")
        self.output = layer.qparams("output")
        self.relu = layer.relu

    def dequantized_weight(self) -> torch.Tensor:
        return _OPS.dequantize_per_channel(self.weight, self.weight_scale, self.weight_zero_point, 0,
                                           -WEIGHT_MAX, WEIGHT_MAX, torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input is not None:
            x = qdq(x, *self.input)
        y = self.compute(x, self.dequantized_weight())
        if self.relu:
            y = torch.relu(y)
        return qdq(y, *self.output)


@lowers(QuantLinear)
class LoweredQuantLinear(_LoweredQuant):
    """QuantLinear as QDQ + Gemm."""

    def __init__(self, layer: QuantLinear, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)

    def compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


@lowers(QuantConv2d)
class LoweredQuantConv2d(_LoweredQuant):
    """QuantConv2d as QDQ + Conv."""

    def __init__(self, layer: QuantConv2d, mode: str = "kernels", stream: bool = False) -> None:
        super().__init__(layer)
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)

    def compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, **self.conv)


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
