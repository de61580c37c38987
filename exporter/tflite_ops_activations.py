"""Activations for the TFLite writer: LeakyRelu, PRelu, HardSigmoid, HardSwish, Gelu, Erf, Elu.

Each keeps its input's layout. TFLite has no erf builtin, so Erf is lowered to the
Abramowitz–Stegun 7.1.26 rational approximation (absolute error below 1.5e-7) from builtins.
"""

import onnx

from .tflite_export import OP, Converter, Value, handles
from .tflite_ops_math import layout_of, operand, scalar, temporary, unary
from .tflite_writer import Options

ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@handles("LeakyRelu")
def convert_leaky_relu(c: Converter, node: onnx.NodeProto) -> None:
    unary(c, node, OP.LEAKY_RELU, Options("LeakyReluOptions", {"Alpha": float(c.attribute("alpha", 0.01))}))


@handles("PRelu")
def convert_prelu(c: Converter, node: onnx.NodeProto) -> None:
    """PRELU when the slope varies along the last axis only (a 4-D input runs in NHWC, so a (C, 1, 1)
    slope becomes (1, 1, 1, C)); else RELU(x) + slope * MINIMUM(x, 0). Before opset 7 a 1-D slope
    of C values is per channel (axis 1), not broadcast from the last axis."""
    x_value, slope_value = c.values[node.input[0]], c.values[node.input[1]]
    rank = len(x_value.shape)
    slope_name = node.input[1]
    if (c.opset < 7 and slope_value.const is not None and slope_value.const.ndim == 1 and rank > 2
            and slope_value.const.size == x_value.shape[1] > 1):
        slope_name = f"{node.input[1]}_per_channel"
        per_channel = slope_value.const.reshape((-1,) + (1,) * (rank - 2))
        c.values[slope_name] = Value(per_channel.shape, const=per_channel)
    slope_value = c.values[slope_name]
    nhwc = rank == 4 and (slope_value.const is not None or len(slope_value.shape) == 4)
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    slope = operand(c, slope_name, nhwc, rank)
    out = c.output(node.output[0], nhwc)
    slope_shape = c.builder.tensors[slope].shape
    if rank <= 4 and all(d == 1 for d in slope_shape[:-1]):
        c.builder.operator(OP.PRELU, [x, slope], [out])
        return
    shape = c.tflite_shape(x_value.shape, nhwc)
    positive, negative, scaled = (temporary(c, node.output[0], step, shape) for step in ("relu", "min", "scaled"))
    c.builder.operator(OP.RELU, [x], [positive])
    c.builder.operator(OP.MINIMUM, [x, scalar(c, 0.0)], [negative])
    c.builder.operator(OP.MUL, [negative, slope], [scaled])
    c.builder.operator(OP.ADD, [positive, scaled], [out])


@handles("HardSigmoid")
def convert_hard_sigmoid(c: Converter, node: onnx.NodeProto) -> None:
    """max(0, min(1, alpha * x + beta)) as MUL, ADD, RELU_0_TO_1 (any alpha and beta)."""
    alpha, beta = float(c.attribute("alpha", 0.2)), float(c.attribute("beta", 0.5))
    x, nhwc = layout_of(c, node.input[0])
    shape = c.tflite_shape(c.values[node.input[0]].shape, nhwc)
    scaled, shifted = temporary(c, node.output[0], "scaled", shape), temporary(c, node.output[0], "shifted", shape)
    c.builder.operator(OP.MUL, [x, scalar(c, alpha)], [scaled])
    c.builder.operator(OP.ADD, [scaled, scalar(c, beta)], [shifted])
    c.builder.operator(OP.RELU_0_TO_1, [shifted], [c.output(node.output[0], nhwc)])


@handles("HardSwish")
def convert_hard_swish(c: Converter, node: onnx.NodeProto) -> None:
    unary(c, node, OP.HARD_SWISH)


@handles("Elu")
def convert_elu(c: Converter, node: onnx.NodeProto) -> None:
    """ELU for alpha 1 (TFLite's is fixed); else RELU(x) + alpha * (EXP(MINIMUM(x, 0)) - 1)."""
    alpha = float(c.attribute("alpha", 1.0))
    if alpha == 1.0:
        unary(c, node, OP.ELU)
        return
    x, nhwc = layout_of(c, node.input[0])
    shape = c.tflite_shape(c.values[node.input[0]].shape, nhwc)
    positive, negative, exp, shifted, scaled = (temporary(c, node.output[0], step, shape)
                                                for step in ("relu", "min", "exp", "shifted", "scaled"))
    c.builder.operator(OP.RELU, [x], [positive])
    c.builder.operator(OP.MINIMUM, [x, scalar(c, 0.0)], [negative])
    c.builder.operator(OP.EXP, [negative], [exp])
    c.builder.operator(OP.SUB, [exp, scalar(c, 1.0)], [shifted])
    c.builder.operator(OP.MUL, [shifted, scalar(c, alpha)], [scaled])
    c.builder.operator(OP.ADD, [positive, scaled], [c.output(node.output[0], nhwc)])


@handles("Gelu")
def convert_gelu(c: Converter, node: onnx.NodeProto) -> None:
    approximate = c.text("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise c.fail(f"Gelu approximate={approximate!r} is not valid; valid: 'none', 'tanh'")
    unary(c, node, OP.GELU, Options("GeluOptions", {"Approximate": approximate == "tanh"}))


@handles("Erf")
def convert_erf(c: Converter, node: onnx.NodeProto) -> None:
    """erf(x) = sign(x) (1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2)), t = 1 / (1 + p |x|)."""
    x, nhwc = layout_of(c, node.input[0])
    shape = c.tflite_shape(c.values[node.input[0]].shape, nhwc)
    name = node.output[0]

    def emit(code: int, inputs: list[int], out: int | None = None) -> int:
        out = temporary(c, name, "erf", shape) if out is None else out
        c.builder.operator(code, inputs, [out])
        return out

    magnitude = emit(OP.ABS, [x])
    t = emit(OP.DIV, [scalar(c, 1.0), emit(OP.ADD, [emit(OP.MUL, [magnitude, scalar(c, ERF_P)]), scalar(c, 1.0)])])
    poly = emit(OP.MUL, [t, scalar(c, ERF_A[4])])
    for coefficient in reversed(ERF_A[:4]):
        poly = emit(OP.MUL, [emit(OP.ADD, [poly, scalar(c, coefficient)]), t])
    gauss = emit(OP.EXP, [emit(OP.MUL, [emit(OP.SQUARE, [magnitude]), scalar(c, -1.0)])])
    positive = emit(OP.SUB, [scalar(c, 1.0), emit(OP.MUL, [poly, gauss])])
    emit(OP.MUL, [emit(OP.SIGN, [x]), positive], c.output(name, nhwc))

