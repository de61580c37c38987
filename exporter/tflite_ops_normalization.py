"""Normalizations for the TFLite writer: LRN and LayerNormalization (opset 17).

ONNX's LRN divides alpha by ``size`` and sums over channels [c - floor((size-1)/2),
c + ceil((size-1)/2)]; TFLite's LOCAL_RESPONSE_NORMALIZATION sums over c ± radius of the last
(NHWC channel) axis with alpha as given. An odd size maps exactly; an even size (asymmetric
window) is lowered to SQUARE, a 1×1 convolution with a band matrix, and POW.
"""

import numpy as np
import onnx
import tflite

from .tflite_export import OP, Converter, handles
from .tflite_ops_math import operand, scalar, temporary
from .tflite_writer import Options


@handles("LRN")
def convert_lrn(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    if len(value.shape) != 4:
        raise c.fail(f"LRN needs a 4-D (N, C, H, W) input, got shape {value.shape}")
    size = int(c.attribute("size", 0))
    if size < 1:
        raise c.fail(f"LRN size={size} is not valid; valid: a positive int")
    alpha, beta = float(c.attribute("alpha", 1e-4)), float(c.attribute("beta", 0.75))
    bias = float(c.attribute("bias", 1.0))
    x = c.tensor(node.input[0], "nhwc")
    shape = c.tflite_shape(value.shape, True)
    out = c.output(node.output[0], nhwc=True)
    if size % 2:
        options = Options("LocalResponseNormalizationOptions",
                          {"Radius": (size - 1) // 2, "Bias": bias, "Alpha": alpha / size, "Beta": beta})
        c.builder.operator(OP.LOCAL_RESPONSE_NORMALIZATION, [x], [out], options)
        return
    channels = value.shape[1]
    below, above = (size - 1) // 2, size // 2
    index = np.arange(channels)
    band = ((index[None, :] >= index[:, None] - below) & (index[None, :] <= index[:, None] + above))
    weight = c.builder.constant(f"{node.name}_lrn_band", band.astype(np.float32).reshape(channels, 1, 1, channels))
    zeros = c.builder.constant(f"{node.name}_lrn_bias", np.zeros(channels, np.float32))
    squared, summed = (temporary(c, node.output[0], step, shape) for step in ("square", "window_sum"))
    scaled, base, factor = (temporary(c, node.output[0], step, shape) for step in ("scaled", "base", "factor"))
    c.builder.operator(OP.SQUARE, [x], [squared])
    c.builder.operator(OP.CONV_2D, [squared, weight, zeros], [summed],
                       Options("Conv2DOptions", dict(Padding=tflite.Padding.VALID, StrideH=1, StrideW=1)))
    c.builder.operator(OP.MUL, [summed, scalar(c, alpha / size)], [scaled])
    c.builder.operator(OP.ADD, [scaled, scalar(c, bias)], [base])
    c.builder.operator(OP.POW, [base, scalar(c, -beta)], [factor])
    c.builder.operator(OP.MUL, [x, factor], [out])


@handles("LayerNormalization")
def convert_layer_norm(c: Converter, node: onnx.NodeProto) -> None:
    """(x - mean) * rsqrt(var + epsilon) * scale + bias over the axes from ``axis`` on; in NHWC when
    the input already is (the reduced axes are permuted, the scale and bias transposed)."""
    value = c.values[node.input[0]]
    rank = len(value.shape)
    axes = list(range(c.axis(rank, -1), rank))
    affine = [name for name in node.input[1:3] if name]
    nhwc = value.nhwc and rank == 4 and all(c.values[name].const is not None for name in affine)
    tflite_axes = sorted(c.tflite_axis(a, nhwc) for a in axes)
    shape = c.tflite_shape(value.shape, nhwc)
    reduced_shape = tuple(1 if i in tflite_axes else d for i, d in enumerate(shape))
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    outputs = list(node.output) + [""] * (3 - len(node.output))
    reducer = Options("ReducerOptions", {"KeepDims": True})

    def tensor(position: int, step: str, step_shape) -> int:
        return c.output(outputs[position], nhwc) if outputs[position] else temporary(c, outputs[0], step, step_shape)

    mean = tensor(1, "mean", reduced_shape)
    c.builder.operator(OP.MEAN, [x, c.int32(tflite_axes)], [mean], reducer)
    centred, squared = temporary(c, outputs[0], "centred", shape), temporary(c, outputs[0], "squared", shape)
    c.builder.operator(OP.SUB, [x, mean], [centred])
    c.builder.operator(OP.SQUARE, [centred], [squared])
    variance, shifted = (temporary(c, outputs[0], step, reduced_shape) for step in ("variance", "shifted"))
    c.builder.operator(OP.MEAN, [squared, c.int32(tflite_axes)], [variance], reducer)
    c.builder.operator(OP.ADD, [variance, scalar(c, float(c.attribute("epsilon", 1e-5)))], [shifted])
    inverse = tensor(2, "inverse_std", reduced_shape)
    c.builder.operator(OP.RSQRT, [shifted], [inverse])
    steps = [(OP.MUL, inverse)] + [(code, operand(c, name, nhwc, rank))
                                   for code, name in zip((OP.MUL, OP.ADD), node.input[1:3]) if name]
    y = centred
    for position, (code, other) in enumerate(steps):
        last = position == len(steps) - 1
        out = c.output(outputs[0], nhwc) if last else temporary(c, outputs[0], "normalized", shape)
        c.builder.operator(code, [y, other], [out])
        y = out
