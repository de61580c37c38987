"""Element-wise math for the TFLite writer: Add, Sub, Mul, Div, Relu, Sigmoid, Tanh, Clip, Sqrt,
Exp, Log, Abs, Neg, Floor, Ceil, Sin, Cos, Pow, and the variadic Sum, Mean, Max, Min.

Unary ops keep their input's layout (NHWC or ONNX); binary ops broadcast like ONNX, in NHWC when
an activation already is. The helpers here (``unary``, ``binary_inputs``, ``operand``, ``scalar``,
``temporary``) are shared by the other op modules.
"""

import numpy as np
import onnx

from .tflite_export import OP, TO_NHWC, Converter, handles
from .tflite_writer import Options

BINARY = {"Add": OP.ADD, "Sub": OP.SUB, "Mul": OP.MUL, "Div": OP.DIV}
UNARY_MATH = {"Relu": OP.RELU, "Sigmoid": OP.LOGISTIC, "Tanh": OP.TANH, "Sqrt": OP.SQRT, "Exp": OP.EXP,
              "Log": OP.LOG, "Abs": OP.ABS, "Neg": OP.NEG, "Floor": OP.FLOOR, "Ceil": OP.CEIL,
              "Sin": OP.SIN, "Cos": OP.COS}


def layout_of(c: Converter, name: str) -> tuple[int, bool]:
    """The TFLite tensor of ``name`` in the layout it already has, and whether that is NHWC."""
    nhwc = c.values[name].nhwc
    return c.tensor(name, "nhwc" if nhwc else "onnx"), nhwc


def temporary(c: Converter, name: str, suffix: str, shape) -> int:
    """An intermediate float32 tensor named after the ONNX value it helps compute."""
    return c.builder.tensor(f"{name}_{suffix}{len(c.builder.tensors)}", tuple(shape))


def scalar(c: Converter, value: float) -> int:
    """A float32 scalar constant (broadcast by TFLite's binary ops)."""
    return c.builder.constant(f"{c.node.name}_scalar{len(c.builder.tensors)}", np.float32(value))


def unary(c: Converter, node: onnx.NodeProto, code: int, options: Options | None = None) -> None:
    """One builtin applied to the node's first input, keeping its layout."""
    x, nhwc = layout_of(c, node.input[0])
    c.builder.operator(code, [x], [c.output(node.output[0], nhwc)], options)


def operand(c: Converter, name: str, nhwc: bool, rank: int) -> int:
    """A binary op's operand in the common layout; constants are broadcast to ``rank`` first."""
    value = c.values[name]
    if value.const is not None and nhwc:
        data = value.const.astype(np.float32).reshape((1,) * (rank - value.const.ndim) + value.const.shape)
        return c.builder.constant(f"{name}_nhwc{len(c.builder.tensors)}", data.transpose(TO_NHWC))
    if value.const is not None:
        return c.builder.constant(f"{name}_{len(c.builder.tensors)}", value.const.astype(np.float32))
    return c.tensor(name, "nhwc" if nhwc else "onnx")


def binary_inputs(c: Converter, node: onnx.NodeProto, names) -> tuple[list[int], bool]:
    """The operands of a broadcasting binary op in one common layout (NHWC when every activation
    is 4-D and one is already NHWC), and that layout."""
    values = [c.values[name] for name in names]
    rank = len(np.shape(c.static[node.output[0]]))
    activations = [v for v in values if v.const is None]
    nhwc = rank == 4 and any(v.nhwc for v in activations) and all(len(v.shape) == 4 for v in activations)
    return [operand(c, name, nhwc, rank) for name in names], nhwc


@handles(*UNARY_MATH)
def convert_unary_math(c: Converter, node: onnx.NodeProto) -> None:
    unary(c, node, UNARY_MATH[node.op_type])


@handles(*BINARY)
def convert_binary(c: Converter, node: onnx.NodeProto) -> None:
    inputs, nhwc = binary_inputs(c, node, node.input)
    c.builder.operator(BINARY[node.op_type], inputs, [c.output(node.output[0], nhwc)])


@handles("Clip")
def convert_clip(c: Converter, node: onnx.NodeProto) -> None:
    """RELU / RELU6 / RELU_N1_TO_1 for their bounds, else MAXIMUM and / or MINIMUM."""
    if c.opset < 11:  # min / max are attributes before opset 11, optional inputs after
        low, high = float(c.attribute("min", -np.inf)), float(c.attribute("max", np.inf))
    else:
        low, high = (float(c.const(node.input[i], what)) if len(node.input) > i and node.input[i] else default
                     for i, what, default in ((1, "min", -np.inf), (2, "max", np.inf)))
    if not (np.isfinite(low) or np.isfinite(high)):
        c.values[node.output[0]] = c.values[node.input[0]]
        return
    fused = {(0.0, 6.0): OP.RELU6, (0.0, np.inf): OP.RELU, (-1.0, 1.0): OP.RELU_N1_TO_1}
    if (low, high) in fused:
        unary(c, node, fused[(low, high)])
        return
    x, nhwc = layout_of(c, node.input[0])
    steps = [(code, bound) for code, bound in ((OP.MAXIMUM, low), (OP.MINIMUM, high)) if np.isfinite(bound)]
    shape = c.tflite_shape(c.values[node.input[0]].shape, nhwc)
    for step, (code, bound) in enumerate(steps):
        last = step == len(steps) - 1
        out = c.output(node.output[0], nhwc) if last else temporary(c, node.output[0], "max", shape)
        c.builder.operator(code, [x, scalar(c, bound)], [out])
        x = out


@handles("Pow")
def convert_pow(c: Converter, node: onnx.NodeProto) -> None:
    """A constant uniform exponent 2, 1, 0.5 or -0.5 becomes SQUARE / nothing / SQRT / RSQRT;
    anything else is POW (TFLite's POW broadcasts like ONNX's)."""
    exponent = c.values[node.input[1]].const
    out_shape = np.shape(c.static[node.output[0]])
    x_value = c.values[node.input[0]]
    uniform = exponent is not None and exponent.size > 0 and np.all(exponent == exponent.flat[0])
    special = {2.0: OP.SQUARE, 0.5: OP.SQRT, -0.5: OP.RSQRT}
    if uniform and x_value.const is None and tuple(x_value.shape) == tuple(out_shape):
        power = float(exponent.flat[0])
        if power == 1.0:
            x, nhwc = layout_of(c, node.input[0])
            c.builder.operator(OP.RESHAPE, [x, c.int32(c.tflite_shape(out_shape, nhwc))],
                               [c.output(node.output[0], nhwc)])
            return
        if power in special:
            unary(c, node, special[power])
            return
    inputs, nhwc = binary_inputs(c, node, node.input[:2])
    c.builder.operator(OP.POW, inputs, [c.output(node.output[0], nhwc)])


VARIADIC = {"Sum": OP.ADD, "Mean": OP.ADD, "Max": OP.MAXIMUM, "Min": OP.MINIMUM}


@handles(*VARIADIC)
def convert_variadic(c: Converter, node: onnx.NodeProto) -> None:
    """Sum / Mean / Max / Min of any number of broadcasting inputs as a chain of binary builtins
    (Mean then scales by 1 / n)."""
    inputs, nhwc = binary_inputs(c, node, node.input)
    out_shape = np.shape(c.static[node.output[0]])
    shapes = [c.builder.tensors[index].shape for index in inputs]
    steps = [(VARIADIC[node.op_type], other, shape) for other, shape in zip(inputs[1:], shapes[1:])]
    if node.op_type == "Mean":
        steps.append((OP.MUL, scalar(c, 1.0 / len(inputs)), ()))
    if not steps:  # one input: a copy
        steps = [(OP.RESHAPE, c.int32(c.tflite_shape(out_shape, nhwc)), ())]
    x, shape = inputs[0], shapes[0]
    for position, (code, other, other_shape) in enumerate(steps):
        shape = np.broadcast_shapes(shape, other_shape) if code != OP.RESHAPE else other_shape
        last = position == len(steps) - 1
        out = c.output(node.output[0], nhwc) if last else temporary(c, node.output[0], "partial", shape)
        c.builder.operator(code, [x, other], [out])
        x = out
