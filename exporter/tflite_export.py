"""Lower an ONNX model to a TFLite flatbuffer, without TensorFlow.

Static shapes come from one run of ``onnx.reference.ReferenceEvaluator`` at the chosen batch
size (which also folds every constant subgraph). 4-D activations are kept in NHWC inside the
model (convolution weights transposed at export); the model's inputs and outputs keep the ONNX
layout, with TRANSPOSE ops at the boundary. Standard ops map to builtins; ``ai.edgepack`` ops
become CUSTOM ops named ``ai.edgepack.<Op>`` whose flexbuffer options mirror the ONNX attributes
(executed by libedgepack_tflite_delegate.so).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tflite
from flatbuffers import flexbuffers
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgepack.errors import EdgepackError

from .fallbacks import DOMAIN, OP_INPUTS
from .tflite_writer import Options, TFLiteModelBuilder

OP = tflite.BuiltinOperator
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
HANDLERS: dict[str, Callable] = {}


def handles(*op_types: str):
    """Register a lowering function for ONNX op types (a registry instead of an if-chain)."""
    def register(function):
        for op_type in op_types:
            HANDLERS[op_type] = function
        return function
    return register


@dataclass
class Value:
    """An ONNX value during lowering: its static shape, its constant value, its TFLite tensor."""

    shape: tuple[int, ...]
    const: np.ndarray | None = None
    index: int | None = None
    nhwc: bool = False  # the TFLite tensor holds the NHWC permutation of this 4-D value
    producer: onnx.NodeProto | None = None  # a HashedWeight emitted only if something reads W


class ConversionError(EdgepackError, ValueError):
    """The ONNX model cannot be lowered; the message names the node and what is supported."""


class Converter:
    """Walks the ONNX graph in order and emits TFLite tensors and operators."""

    def __init__(self, model: onnx.ModelProto, batch_size: int = 1) -> None:
        self.model = model
        self.builder = TFLiteModelBuilder()
        self.values: dict[str, Value] = {}
        self.constants: dict[tuple[str, str], int] = {}
        self.node: onnx.NodeProto | None = None
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [i for i in model.graph.input if i.name not in initializers]
        feeds = {i.name: np.zeros(self._input_shape(i, batch_size), np.float32) for i in self.inputs}
        self.static = ReferenceEvaluator(model).run(None, feeds, intermediate=True)
        for t in model.graph.initializer:
            array = numpy_helper.to_array(t)
            self.values[t.name] = Value(array.shape, const=array)

    @staticmethod
    def _input_shape(value: onnx.ValueInfoProto, batch_size: int) -> tuple[int, ...]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ConversionError(f"input {value.name!r}: only float32 inputs are supported")
        shape = [d.dim_value if d.HasField("dim_value") else (batch_size if i == 0 else 0)
                 for i, d in enumerate(dims)]
        if 0 in shape:
            raise ConversionError(f"input {value.name!r} has a dynamic axis other than the batch: "
                                  f"{[d.dim_param or d.dim_value for d in dims]}")
        return tuple(shape)

    # ---- errors and attributes -----------------------------------------------------------
    def fail(self, message: str) -> ConversionError:
        node = self.node
        return ConversionError(f"node {node.name or '(unnamed)'!r} ({node.op_type}): {message}")

    def attribute(self, name: str, default=None):
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def const(self, name: str, what: str) -> np.ndarray:
        value = self.values.get(name)
        if value is None or value.const is None:
            raise self.fail(f"{what} ({name!r}) must be a constant")
        return value.const

    # ---- tensors ---------------------------------------------------------------------------
    def tensor(self, name: str, layout: str = "onnx") -> int:
        """The TFLite tensor of ``name`` in ``layout`` ("onnx" or "nhwc"), converting if needed."""
        value = self.values[name]
        if value.index is None and value.producer is not None:
            self._emit_producer(value)
        want_nhwc = layout == "nhwc"
        if want_nhwc and len(value.shape) != 4:
            raise self.fail(f"input {name!r} must be 4-D (N, C, H, W), got shape {value.shape}")
        if value.const is not None:
            if (name, layout) not in self.constants:
                data = value.const.astype(np.float32) if value.const.dtype == np.float64 else value.const
                data = data.transpose(TO_NHWC) if want_nhwc else data
                self.constants[name, layout] = self.builder.constant(
                    f"{name}_nhwc" if want_nhwc else name, data)
            return self.constants[name, layout]
        if value.nhwc == want_nhwc:
            return value.index
        perm = TO_NHWC if want_nhwc else TO_NCHW
        shape = self.tflite_shape(value.shape, want_nhwc)
        out = self.builder.tensor(f"{name}_{layout}", shape)
        self.builder.operator(OP.TRANSPOSE, [value.index, self.int32(perm)], [out])
        return out

    def _emit_producer(self, value: Value) -> None:
        node, self.node = self.node, value.producer
        emit_custom(self, value.producer, self.values[value.producer.output[0]])
        self.node = node

    def int32(self, values) -> int:
        return self.builder.constant(f"{self.node.name}_const{len(self.builder.tensors)}",
                                     np.asarray(values, np.int32))

    @staticmethod
    def tflite_shape(shape, nhwc: bool) -> tuple[int, ...]:
        return tuple(shape[i] for i in TO_NHWC) if nhwc else tuple(shape)

    def output(self, name: str, nhwc: bool = False) -> int:
        """Create the TFLite tensor for an op output (its static shape from the reference run)."""
        shape = tuple(np.shape(self.static[name]))
        index = self.builder.tensor(name, self.tflite_shape(shape, nhwc))
        self.values[name] = Value(shape, index=index, nhwc=nhwc)
        return index

    # ---- the walk --------------------------------------------------------------------------
    def convert(self) -> bytes:
        for value in self.inputs:
            shape = np.shape(self.static[value.name])
            self.values[value.name] = Value(shape, index=self.builder.tensor(value.name, shape))
        for node in self.model.graph.node:
            self.node = node
            if self._fold(node):
                continue
            op_type = f"{DOMAIN}.{node.op_type}" if node.domain == DOMAIN else node.op_type
            handler = HANDLERS.get(op_type)
            if handler is None or node.domain not in ("", "ai.onnx", DOMAIN):
                raise self.fail(f"op {op_type} is not supported by the TFLite writer; "
                                f"supported: {', '.join(sorted(HANDLERS))}")
            handler(self, node)
        outputs = []
        for value in self.model.graph.output:
            if self.values[value.name].const is not None:
                raise ConversionError(f"output {value.name!r} is a constant; TFLite needs a computed output")
            self.node = helper.make_node("Identity", [], [], name=value.name)
            outputs.append(self.tensor(value.name, "onnx"))
        return self.builder.serialize([self.values[i.name].index for i in self.inputs], outputs)

    def _fold(self, node: onnx.NodeProto) -> bool:
        """Record a node whose outputs are constants (all inputs constant, or Shape of a static
        tensor) instead of emitting it."""
        if node.domain == DOMAIN:
            return False
        inputs = [name for name in node.input if name]
        if node.op_type == "Shape" or all(self.values[name].const is not None for name in inputs):
            for name in node.output:
                array = np.asarray(self.static[name])
                self.values[name] = Value(array.shape, const=array)
            return True
        return False


# ---- convolution and pooling ------------------------------------------------------------------
def spatial_2d(c: Converter, rank: int, name: str, default, size: int) -> list[int]:
    """A 1-D or 2-D spatial attribute as its 2-D form (1-D ops run as 2-D with H = 1)."""
    values = list(c.attribute(name, default * (rank - 2)))
    if rank == 3:
        values = [0, values[0], 0, values[1]] if size == 4 else [1 if name != "pads" else 0, values[0]]
    return values


def nhwc_input(c: Converter, name: str) -> tuple[int, tuple[int, ...]]:
    """The input of a convolution or pool as NHWC; (N, C, L) becomes (N, 1, L, C)."""
    value = c.values[name]
    if len(value.shape) == 4:
        return c.tensor(name, "nhwc"), c.tflite_shape(value.shape, True)
    if len(value.shape) != 3:
        raise c.fail(f"only 1-D and 2-D inputs are supported, got shape {value.shape}")
    n, channels, length = value.shape
    transposed = c.builder.tensor(f"{name}_nlc", (n, length, channels))
    c.builder.operator(OP.TRANSPOSE, [c.tensor(name), c.int32([0, 2, 1])], [transposed])
    shape = (n, 1, length, channels)
    lifted = c.builder.tensor(f"{name}_nhwc", shape)
    c.builder.operator(OP.RESHAPE, [transposed, c.int32(shape)], [lifted])
    return lifted, shape


def nhwc_output(c: Converter, name: str) -> tuple[int, Callable[[], None]]:
    """The tensor a convolution or pool writes, and a step that finishes a 1-D output."""
    shape = tuple(np.shape(c.static[name]))
    if len(shape) == 4:
        return c.output(name, nhwc=True), lambda: None
    n, channels, length = shape
    raw = c.builder.tensor(f"{name}_nhwc", (n, 1, length, channels))

    def finish() -> None:
        flat = c.builder.tensor(f"{name}_nlc", (n, length, channels))
        c.builder.operator(OP.RESHAPE, [raw, c.int32((n, length, channels))], [flat])
        c.builder.operator(OP.TRANSPOSE, [flat, c.int32([0, 2, 1])], [c.output(name)])
    return raw, finish


def tflite_padding(in_hw, kernel, strides, dilations, pads) -> int | None:
    """SAME or VALID when the ONNX pads [top, left, bottom, right] equal TFLite's, else None."""
    if not any(pads):
        return tflite.Padding.VALID
    same = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        same.append((total // 2, total - total // 2))
    if [pads[0], pads[2]] == list(same[0]) and [pads[1], pads[3]] == list(same[1]):
        return tflite.Padding.SAME
    return None


def pad_nhwc(c: Converter, x: int, name: str, shape, pads) -> tuple[int, tuple[int, ...]]:
    """Explicit zero PAD of an NHWC tensor by ONNX pads [top, left, bottom, right]."""
    paddings = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    shape = (shape[0], shape[1] + pads[0] + pads[2], shape[2] + pads[1] + pads[3], shape[3])
    out = c.builder.tensor(f"{name}_padded", shape)
    c.builder.operator(OP.PAD, [x, c.int32(paddings)], [out])
    return out, shape


@handles("Conv")
def convert_conv(c: Converter, node: onnx.NodeProto) -> None:
    x_value, w_value = c.values[node.input[0]], c.values[node.input[1]]
    rank = len(x_value.shape)
    if c.attribute("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise c.fail("auto_pad is not supported; export with explicit pads")
    if rank == 4 and hashed_pointwise_conv(c, node):
        return
    x, x_shape = nhwc_input(c, node.input[0])
    out_channels, in_per_group = w_value.shape[:2]
    kernel = (1, w_value.shape[2]) if rank == 3 else tuple(w_value.shape[2:])
    in_channels, group = x_value.shape[1], c.attribute("group", 1)
    strides, dilations = spatial_2d(c, rank, "strides", [1], 2), spatial_2d(c, rank, "dilations", [1], 2)
    pads = spatial_2d(c, rank, "pads", [0, 0], 4)
    depthwise = group > 1 and group == in_channels and in_per_group == 1
    perm = (1, 2, 3, 0) if depthwise else TO_NHWC  # ONNX OIHW → TFLite OHWI (or 1HWO)
    if w_value.const is not None:
        filter_oihw = w_value.const.reshape(out_channels, in_per_group, *kernel)
        weight = c.builder.constant(f"{node.input[1]}_tflite", filter_oihw.transpose(perm))
    else:
        if rank != 4:
            raise c.fail("a computed (non-constant) weight needs a 2-D convolution")
        weight = c.builder.tensor(f"{node.input[1]}_tflite", tuple(w_value.shape[i] for i in perm))
        c.builder.operator(OP.TRANSPOSE, [c.tensor(node.input[1]), c.int32(perm)], [weight])
    bias = (c.tensor(node.input[2]) if len(node.input) > 2 and node.input[2]
            else c.builder.constant(f"{node.name}_bias", np.zeros(out_channels, np.float32)))
    padding = tflite_padding(x_shape[1:3], kernel, strides, dilations, pads)
    if padding is None:
        x, x_shape = pad_nhwc(c, x, node.input[0], x_shape, pads)
        padding = tflite.Padding.VALID
    fields = dict(Padding=padding, StrideH=strides[0], StrideW=strides[1],
                  DilationHFactor=dilations[0], DilationWFactor=dilations[1])
    if depthwise:
        options = Options("DepthwiseConv2DOptions", fields | {"DepthMultiplier": out_channels // group})
        code = OP.DEPTHWISE_CONV_2D
    else:  # group > 1: TFLite's CONV_2D takes a filter with in_channels / group channels
        options, code = Options("Conv2DOptions", fields), OP.CONV_2D
    out, finish = nhwc_output(c, node.output[0])
    c.builder.operator(code, [x, weight, bias], [out], options)
    finish()


@handles("MaxPool", "AveragePool")
def convert_pool(c: Converter, node: onnx.NodeProto) -> None:
    rank = len(c.values[node.input[0]].shape)
    kernel = spatial_2d(c, rank, "kernel_shape", [1], 2)
    strides = spatial_2d(c, rank, "strides", [1], 2)
    pads = spatial_2d(c, rank, "pads", [0, 0], 4)
    if any(d != 1 for d in c.attribute("dilations", [])):
        raise c.fail("pooling with dilation is not supported")
    x, x_shape = nhwc_input(c, node.input[0])
    padding = tflite_padding(x_shape[1:3], kernel, strides, [1, 1], pads)
    include_pad = node.op_type == "AveragePool" and c.attribute("count_include_pad", 0)
    out_shape = np.shape(c.static[node.output[0]])[2:]
    same_size = [-(-size // s) if padding == tflite.Padding.SAME else (size - k) // s + 1
                 for size, k, s in zip(x_shape[1:3], kernel, strides)]
    if padding is None or (include_pad and any(pads)) or same_size[2 - len(out_shape):] != list(out_shape):
        raise c.fail(f"pads {list(c.attribute('pads', []))} / ceil_mode={c.attribute('ceil_mode', 0)} are "
                     f"not representable as TFLite SAME/VALID pooling (count_include_pad={include_pad})")
    code = OP.MAX_POOL_2D if node.op_type == "MaxPool" else OP.AVERAGE_POOL_2D
    options = Options("Pool2DOptions", dict(Padding=padding, StrideH=strides[0], StrideW=strides[1],
                                            FilterHeight=kernel[0], FilterWidth=kernel[1]))
    out, finish = nhwc_output(c, node.output[0])
    c.builder.operator(code, [x], [out], options)
    finish()


@handles("GlobalAveragePool")
def convert_global_average_pool(c: Converter, node: onnx.NodeProto) -> None:
    c.builder.operator(OP.MEAN, [c.tensor(node.input[0], "nhwc"), c.int32([1, 2])],
                       [c.output(node.output[0], True)], Options("ReducerOptions", {"KeepDims": True}))


@handles("ReduceMean")
def convert_reduce_mean(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    axes = (c.const(node.input[1], "axes") if len(node.input) > 1 and node.input[1]
            else c.attribute("axes", list(range(rank))))
    axes = sorted(int(a) % rank for a in np.ravel(axes))
    keep = bool(c.attribute("keepdims", 1))
    nhwc = value.nhwc and rank == 4
    if nhwc:  # reduce in NHWC when the result's axis order stays valid
        kept = [TO_NHWC[i] for i in range(4) if TO_NHWC[i] not in axes]
        nhwc = keep or kept == sorted(kept)
    tflite_axes = [TO_NHWC.index(a) for a in axes] if nhwc else axes
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    out = c.output(node.output[0], nhwc=nhwc and keep)
    options = Options("ReducerOptions", {"KeepDims": keep})
    c.builder.operator(OP.MEAN, [x, c.int32(tflite_axes)], [out], options)


@handles("BatchNormalization")
def convert_batch_norm(c: Converter, node: onnx.NodeProto) -> None:
    """A BatchNormalization not folded into a convolution: per-channel MUL + ADD."""
    gamma, beta, mean, var = (c.const(name, what) for name, what in
                              zip(node.input[1:5], ("scale", "bias", "mean", "var")))
    scale = (gamma / np.sqrt(var + c.attribute("epsilon", 1e-5))).astype(np.float32)
    shift = (beta - mean * scale).astype(np.float32)
    value = c.values[node.input[0]]
    nhwc = len(value.shape) == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    shape = (-1,) + (1,) * (len(value.shape) - 2) if not nhwc else (-1,)
    scaled = c.builder.tensor(f"{node.output[0]}_scaled", c.tflite_shape(value.shape, nhwc))
    c.builder.operator(OP.MUL, [x, c.builder.constant(f"{node.name}_scale", scale.reshape(shape))], [scaled])
    c.builder.operator(OP.ADD, [scaled, c.builder.constant(f"{node.name}_shift", shift.reshape(shape))],
                       [c.output(node.output[0], nhwc)])


# ---- dense layers -----------------------------------------------------------------------------
def fully_connected(c: Converter, x: str, weight: int, bias: int | None, out_name: str,
                    keep_dims: bool) -> None:
    inputs = [c.tensor(x), weight] + ([bias] if bias is not None else [-1])
    c.builder.operator(OP.FULLY_CONNECTED, inputs, [c.output(out_name)],
                       Options("FullyConnectedOptions", {"KeepNumDims": keep_dims}))


@handles("Gemm")
def convert_gemm(c: Converter, node: onnx.NodeProto) -> None:
    if c.attribute("transA", 0) or c.attribute("alpha", 1.0) != 1.0 or c.attribute("beta", 1.0) != 1.0:
        raise c.fail("only Gemm with transA=0, alpha=1, beta=1 is supported")
    b_value = c.values[node.input[1]]
    if b_value.const is not None:
        w = b_value.const if c.attribute("transB", 0) else b_value.const.T
        weight = c.builder.constant(f"{node.input[1]}_fc", np.ascontiguousarray(w, np.float32))
    elif c.attribute("transB", 0):
        weight = c.tensor(node.input[1])
    else:
        shape = b_value.shape[::-1]
        weight = c.builder.tensor(f"{node.input[1]}_t", shape)
        c.builder.operator(OP.TRANSPOSE, [c.tensor(node.input[1]), c.int32([1, 0])], [weight])
    has_c = len(node.input) > 2 and node.input[2]
    c_value = c.values[node.input[2]] if has_c else None
    out_features = np.shape(c.static[node.output[0]])[-1]
    if c_value is not None and c_value.const is not None and c_value.const.size == out_features:
        bias = c.builder.constant(f"{node.input[2]}_fc", c_value.const.reshape(-1).astype(np.float32))
        fully_connected(c, node.input[0], weight, bias, node.output[0], keep_dims=False)
        return
    if c_value is None:
        fully_connected(c, node.input[0], weight, None, node.output[0], keep_dims=False)
        return
    product = f"{node.output[0]}_product"  # C is computed or a full matrix: FC, then ADD
    c.static[product] = c.static[node.output[0]]
    fully_connected(c, node.input[0], weight, None, product, keep_dims=False)
    c.builder.operator(OP.ADD, [c.tensor(product), operand(c, node.input[2], False, 2)],
                       [c.output(node.output[0])])


@handles("MatMul")
def convert_matmul(c: Converter, node: onnx.NodeProto) -> None:
    b_value = c.values[node.input[1]]
    if b_value.const is not None and b_value.const.ndim == 2:
        weight = c.builder.constant(f"{node.input[1]}_fc", np.ascontiguousarray(b_value.const.T, np.float32))
        keep = len(c.values[node.input[0]].shape) > 2
        fully_connected(c, node.input[0], weight, None, node.output[0], keep_dims=keep)
        return
    c.builder.operator(OP.BATCH_MATMUL, [c.tensor(node.input[0]), c.tensor(node.input[1])],
                       [c.output(node.output[0])], Options("BatchMatMulOptions", {}))


# ---- element-wise -----------------------------------------------------------------------------
ELEMENTWISE = {"Add": OP.ADD, "Sub": OP.SUB, "Mul": OP.MUL, "Div": OP.DIV}
UNARY = {"Relu": OP.RELU, "Sigmoid": OP.LOGISTIC, "Tanh": OP.TANH}


def operand(c: Converter, name: str, nhwc: bool, rank: int) -> int:
    """A binary op's operand in the common layout; constants are broadcast to ``rank`` first."""
    value = c.values[name]
    if value.const is not None and nhwc:
        data = value.const.astype(np.float32).reshape((1,) * (rank - value.const.ndim) + value.const.shape)
        return c.builder.constant(f"{name}_nhwc{len(c.builder.tensors)}", data.transpose(TO_NHWC))
    if value.const is not None:
        return c.builder.constant(f"{name}_{len(c.builder.tensors)}", value.const.astype(np.float32))
    return c.tensor(name, "nhwc" if nhwc else "onnx")


@handles(*ELEMENTWISE)
def convert_elementwise(c: Converter, node: onnx.NodeProto) -> None:
    values = [c.values[name] for name in node.input]
    rank = len(np.shape(c.static[node.output[0]]))
    activations = [v for v in values if v.const is None]
    nhwc = rank == 4 and any(v.nhwc for v in activations) and all(len(v.shape) == 4 for v in activations)
    inputs = [operand(c, name, nhwc, rank) for name in node.input]
    c.builder.operator(ELEMENTWISE[node.op_type], inputs, [c.output(node.output[0], nhwc)])


@handles(*UNARY)
def convert_unary(c: Converter, node: onnx.NodeProto) -> None:
    nhwc = c.values[node.input[0]].nhwc
    c.builder.operator(UNARY[node.op_type], [c.tensor(node.input[0], "nhwc" if nhwc else "onnx")],
                       [c.output(node.output[0], nhwc)])


@handles("Clip")
def convert_clip(c: Converter, node: onnx.NodeProto) -> None:
    low = float(c.const(node.input[1], "min")) if len(node.input) > 1 and node.input[1] else \
        c.attribute("min", -np.inf)  # opset < 11 keeps min / max as attributes
    high = float(c.const(node.input[2], "max")) if len(node.input) > 2 and node.input[2] else \
        c.attribute("max", np.inf)
    nhwc = c.values[node.input[0]].nhwc
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    fused = {(0.0, 6.0): OP.RELU6, (0.0, np.inf): OP.RELU, (-1.0, 1.0): OP.RELU_N1_TO_1}
    if (low, high) in fused:
        c.builder.operator(fused[(low, high)], [x], [c.output(node.output[0], nhwc)])
        return
    steps = [(code, bound) for code, bound in ((OP.MAXIMUM, low), (OP.MINIMUM, high)) if np.isfinite(bound)]
    shape = c.tflite_shape(c.values[node.input[0]].shape, nhwc)
    for step, (code, bound) in enumerate(steps):
        last = step == len(steps) - 1
        out = c.output(node.output[0], nhwc) if last else c.builder.tensor(f"{node.output[0]}_max", shape)
        c.builder.operator(code, [x, c.builder.constant(f"{node.name}_{code}", np.float32(bound))], [out])
        x = out


@handles("Identity", "Dropout")
def convert_identity(c: Converter, node: onnx.NodeProto) -> None:
    c.values[node.output[0]] = c.values[node.input[0]]


# ---- shape and layout -------------------------------------------------------------------------
@handles("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def convert_reshape(c: Converter, node: onnx.NodeProto) -> None:
    shape = np.shape(c.static[node.output[0]])
    c.builder.operator(OP.RESHAPE, [c.tensor(node.input[0]), c.int32(shape)], [c.output(node.output[0])])


@handles("Transpose")
def convert_transpose(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    perm = c.attribute("perm", list(range(len(value.shape)))[::-1])
    if value.nhwc:  # compose with the NHWC layout instead of transposing back first
        perm = [TO_NHWC.index(p) for p in perm]
    x = c.tensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    c.builder.operator(OP.TRANSPOSE, [x, c.int32(perm)], [c.output(node.output[0])])


@handles("Concat")
def convert_concat(c: Converter, node: onnx.NodeProto) -> None:
    values = [c.values[name] for name in node.input]
    rank = len(values[0].shape)
    axis = c.attribute("axis") % rank
    nhwc = rank == 4 and all(v.nhwc or v.const is not None for v in values) and any(v.nhwc for v in values)
    inputs = [c.tensor(name, "nhwc" if nhwc else "onnx") for name in node.input]
    options = Options("ConcatenationOptions", {"Axis": TO_NHWC.index(axis) if nhwc else axis})
    c.builder.operator(OP.CONCATENATION, inputs, [c.output(node.output[0], nhwc)], options)


@handles("Slice")
def convert_slice(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    if len(node.input) == 1:  # opset < 10 keeps starts / ends / axes as attributes
        starts, ends = np.array(c.attribute("starts")), np.array(c.attribute("ends"))
        axes = np.array(c.attribute("axes", list(range(len(starts)))))
        steps = np.ones(len(starts), np.int64)
    else:
        starts, ends = (np.ravel(c.const(name, what)) for name, what in zip(node.input[1:3], ("starts", "ends")))
        axes = (np.ravel(c.const(node.input[3], "axes")) if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        steps = (np.ravel(c.const(node.input[4], "steps")) if len(node.input) > 4 and node.input[4]
                 else np.ones(len(starts), np.int64))
    if (steps <= 0).any():
        raise c.fail(f"Slice with steps {steps.tolist()} is not supported; supported: positive steps")
    begin, end, stride = [0] * rank, list(value.shape), [1] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis, size = int(axis) % rank, value.shape[int(axis) % rank]
        begin[axis] = int(np.clip(start + size if start < 0 else start, 0, size))
        end[axis] = int(np.clip(stop + size if stop < 0 else stop, 0, size))
        stride[axis] = int(step)
    if value.nhwc:
        begin, end, stride = ([v[i] for i in TO_NHWC] for v in (begin, end, stride))
    x = c.tensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    c.builder.operator(OP.STRIDED_SLICE, [x, c.int32(begin), c.int32(end), c.int32(stride)],
                       [c.output(node.output[0], value.nhwc)], Options("StridedSliceOptions", {}))


@handles("Softmax")
def convert_softmax(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    axis = c.attribute("axis", -1) % rank
    nhwc = value.nhwc and axis == 1  # channels are the last NHWC axis
    if not nhwc and axis != rank - 1:
        raise c.fail(f"Softmax over axis {axis} of a rank-{rank} tensor is not supported; "
                     "supported: the last axis (or channels of a 4-D activation)")
    c.builder.operator(OP.SOFTMAX, [c.tensor(node.input[0], "nhwc" if nhwc else "onnx")],
                       [c.output(node.output[0], nhwc)], Options("SoftmaxOptions", {"Beta": 1.0}))


@handles("Pad")
def convert_pad(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    if len(node.input) > 1:
        pads = np.asarray(c.const(node.input[1], "pads")).reshape(-1)
        has_fill = len(node.input) > 2 and node.input[2]
        fill = float(c.const(node.input[2], "constant_value")) if has_fill else 0.0
    else:  # opset < 11 keeps pads / value as attributes
        pads, fill = np.asarray(c.attribute("pads")), c.attribute("value", 0.0)
    if len(node.input) > 3 and node.input[3]:
        raise c.fail("Pad with explicit axes is not supported")
    mode = c.attribute("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    paddings = np.stack([pads[:rank], pads[rank:]], axis=1)
    if value.nhwc:
        paddings = paddings[list(TO_NHWC)]
    x = c.tensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    out = c.output(node.output[0], value.nhwc)
    if mode == "reflect":
        c.builder.operator(OP.MIRROR_PAD, [x, c.int32(paddings)], [out],
                           Options("MirrorPadOptions", {"Mode": tflite.MirrorPadMode.REFLECT}))
    elif mode == "constant" and fill == 0.0:
        c.builder.operator(OP.PAD, [x, c.int32(paddings)], [out])
    elif mode == "constant":
        fill_tensor = c.builder.constant(f"{node.name}_fill", np.float32(fill))
        c.builder.operator(OP.PADV2, [x, c.int32(paddings), fill_tensor], [out])
    else:
        raise c.fail(f"Pad mode {mode!r} is not supported; supported: constant, reflect")


# ---- ai.edgepack --------------------------------------------------------------------------------
def flexbuffer_options(attributes: dict) -> bytes:
    """The CUSTOM options: a flexbuffer map with the ONNX attributes (ints, ``shape`` a typed vector)."""
    fbb = flexbuffers.Builder()
    with fbb.Map():
        for key in sorted(attributes):
            fbb.Key(key)
            value = attributes[key]
            if isinstance(value, (list, tuple)):
                fbb.TypedVectorFromElements([int(v) for v in value], flexbuffers.Type.INT)
            else:
                fbb.Int(int(value))
    return bytes(fbb.Finish())


DEFAULT_ATTRIBUTES = {"HashedWeight": {"signed": 1}, "HashedMatMul": {"signed": 1, "mode": 0}}


@handles(*(f"{DOMAIN}.{op}" for op in OP_INPUTS))
def convert_edgepack(c: Converter, node: onnx.NodeProto) -> None:
    if node.op_type == "HashedWeight":  # emitted when read: a 1×1 convolution fuses it instead
        c.values[node.output[0]] = Value(tuple(np.shape(c.static[node.output[0]])), producer=node)
        return
    emit_custom(c, node)


def custom_attributes(node: onnx.NodeProto) -> dict:
    return DEFAULT_ATTRIBUTES.get(node.op_type, {}) | {a.name: helper.get_attribute_value(a) for a in node.attribute}


def emit_custom(c: Converter, node: onnx.NodeProto, value: Value | None = None) -> None:
    """One CUSTOM ai.edgepack.<Op> node with the ONNX attributes as flexbuffer options."""
    inputs = [c.tensor(name) if name else -1 for name in node.input]
    output = c.output(node.output[0])
    if value is not None:
        value.index = c.values[node.output[0]].index
        c.values[node.output[0]] = value
    c.builder.operator(f"{DOMAIN}.{node.op_type}", inputs, [output], flexbuffer_options(custom_attributes(node)))


def hashed_pointwise_conv(c: Converter, node: onnx.NodeProto) -> bool:
    """A 1×1 convolution (stride 1, no padding, one group) of a HashedWeight is a HashedMatMul over
    the channels, which are the last axis in NHWC: same hash keys (j = c_in), no decoded filter."""
    weight = c.values[node.input[1]]
    plain = (c.attribute("group", 1) == 1 and not any(c.attribute("pads", [0] * 4))
             and set(c.attribute("strides", [1, 1])) == {1} and set(c.attribute("dilations", [1, 1])) == {1})
    if weight.producer is None or weight.index is not None or not plain or weight.shape[2:] != (1, 1):
        return False
    out_channels, in_channels = weight.shape[:2]
    hashed = custom_attributes(weight.producer)
    attributes = {key: hashed[key] for key in ("num_hashes", "seed", "signed")}
    attributes.update(in_features=in_channels, out_features=out_channels, mode=0)
    bias = c.tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else -1
    buckets, recon = [c.tensor(name) if name else -1 for name in (list(weight.producer.input) + [""])[:2]]
    c.builder.operator(f"{DOMAIN}.HashedMatMul", [c.tensor(node.input[0], "nhwc"), buckets, recon, bias],
                       [c.output(node.output[0], nhwc=True)], flexbuffer_options(attributes))
    return True


# ---- entry points -----------------------------------------------------------------------------
def fold_batch_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold each BatchNormalization that directly follows a Conv with constant weights into it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {node.output[0]: node for node in graph.node if node.output}
    removed = []
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1
                or conv.input[1] not in initializers
                or not all(name in initializers for name in node.input[1:5])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]) for n in node.input[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        bias = (numpy_helper.to_array(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0], np.float32))
        folded_w = (weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        folded_b = ((bias - mean) * scale + beta).astype(np.float32)
        w_name, b_name = f"{conv.input[1]}_bn_folded", f"{conv.output[0]}_bn_folded_bias"
        graph.initializer.extend([numpy_helper.from_array(folded_w, w_name),
                                  numpy_helper.from_array(folded_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = node.output[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    return model


def convert_onnx_to_tflite(source, path: str | Path, batch_size: int = 1) -> Path:
    """Convert an ONNX model (a path or a ModelProto) to a .tflite file at ``path``."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(source)
    data = Converter(fold_batch_norms(model), batch_size).convert()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
