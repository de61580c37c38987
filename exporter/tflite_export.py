"""Lower an ONNX model to a TFLite flatbuffer, without TensorFlow.

Static shapes come from one run of ``onnx.reference.ReferenceEvaluator`` (ONNX Runtime where it
fails) at the chosen batch size and ``--input-shape`` overrides, which also folds every constant
subgraph. Handlers read attributes with the meaning of the model's opset (``Converter.opset``);
``convert_and_verify`` checks the result against ONNX Runtime before writing it (tflite_verify).
4-D activations are kept in NHWC inside the model (convolution weights transposed at export); the
model's inputs and outputs keep the ONNX layout, with TRANSPOSE ops at the boundary. Standard ops
map to builtins; ``ai.edgepack`` ops become CUSTOM ops named ``ai.edgepack.<Op>`` whose
flexbuffer options mirror the ONNX attributes (executed by libedgepack_tflite_delegate.so).
"""

import os
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
from .validate import checked_onnx

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


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain: it decides every attribute's meaning."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return versions[0] if versions else onnx.defs.onnx_opset_version()


def static_input_shapes(inputs, batch_size: int, overrides: dict[str, tuple[int, ...]]) -> dict:
    """Each graph input's static shape: the file's fixed axes, ``batch_size`` for a dynamic first
    axis, ``overrides`` (``--input-shape NAME=1,16000``) for the rest."""
    names = [value.name for value in inputs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConversionError(f"--input-shape names {', '.join(map(repr, unknown))}, which is not a graph "
                              f"input; the inputs are: {', '.join(map(repr, names))}")
    shapes = {}
    for value in inputs:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ConversionError(f"input {value.name!r}: only float32 inputs are supported")
        dims = value.type.tensor_type.shape.dim
        described = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if value.name in overrides:
            shape = tuple(overrides[value.name])
            fixed = [(i, d) for i, d in enumerate(described) if isinstance(d, int) and i < len(shape)
                     and d != shape[i]]
            if len(shape) != len(dims) or fixed:
                raise ConversionError(f"--input-shape {value.name}={','.join(map(str, shape))} does not fit "
                                      f"input {value.name!r} of shape {described}: give {len(dims)} sizes "
                                      "and keep the fixed ones")
        else:
            if 0 in described:
                raise ConversionError(f"input {value.name!r} has an empty axis (shape {described}); "
                                      "the converter needs non-empty tensors")
            shape = tuple(d if isinstance(d, int) else (batch_size if i == 0 else 0)
                          for i, d in enumerate(described))
            if 0 in shape:
                example = ",".join(str(d) if d else "N" for d in shape)
                raise ConversionError(f"input {value.name!r} has a dynamic axis other than the batch: "
                                      f"{described}; fix it with --input-shape {value.name}={example} "
                                      "(N: the size to convert for)")
        shapes[value.name] = shape
    return shapes


def static_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of one run on ``feeds`` (static shapes, folded constants): onnx's
    ReferenceEvaluator, else ONNX Runtime (which implements more old-opset modes, e.g. Upsample)."""
    from .tflite_verify import onnx_runtime_values

    try:
        return ReferenceEvaluator(model).run(None, feeds, intermediate=True)
    except Exception as reference_error:  # noqa: BLE001 - any failure: try ORT before refusing
        try:
            return onnx_runtime_values(model, feeds)
        except Exception as ort_error:  # noqa: BLE001
            raise ConversionError(f"cannot compute the model's static shapes: onnx's ReferenceEvaluator "
                                  f"says {reference_error}; ONNX Runtime says {ort_error}") from reference_error


class Converter:
    """Walks the ONNX graph in order and emits TFLite tensors and operators."""

    def __init__(self, model: onnx.ModelProto, batch_size: int = 1,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.model = model
        self.opset = default_opset(model)
        self.builder = TFLiteModelBuilder()
        self.values: dict[str, Value] = {}
        self.constants: dict[tuple[str, str], int] = {}
        self.node: onnx.NodeProto | None = None
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [i for i in model.graph.input if i.name not in initializers]
        self.input_shapes = static_input_shapes(self.inputs, batch_size, input_shapes or {})
        feeds = {name: np.zeros(shape, np.float32) for name, shape in self.input_shapes.items()}
        self.static = static_values(model, feeds)
        for t in model.graph.initializer:
            array = numpy_helper.to_array(t)
            self.values[t.name] = Value(array.shape, const=array)

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
    """MaxPool / AveragePool in NHWC: TFLite's SAME or VALID when they match; else PAD (lowest float
    for max, zeros for average) and a VALID pool, or for a dilated pool the max / sum of one strided
    slice per kernel tap. An average is then rescaled by a constant map to ONNX's divisor: padded
    cells count only with count_include_pad, cells past the padded input (ceil_mode) never."""
    if len([name for name in node.output if name]) > 1:
        raise c.fail("MaxPool's Indices output is not supported")
    rank = len(c.values[node.input[0]].shape)
    kernel = spatial_2d(c, rank, "kernel_shape", [1], 2)
    strides = spatial_2d(c, rank, "strides", [1], 2)
    dilations = spatial_2d(c, rank, "dilations", [1], 2)
    x, x_shape = nhwc_input(c, node.input[0])
    in_hw = x_shape[1:3]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_hw = pool_output_hw(c, node.output[0], rank, in_hw, spans, strides)
    pads = pool_pads(c, rank, in_hw, out_hw, spans, strides)
    extra = [max((o - 1) * s + k - (i + pads[a] + pads[a + 2]), 0)  # ceil_mode: past the padded input
             for a, (o, s, k, i) in enumerate(zip(out_hw, strides, spans, in_hw))]
    is_max, dilated = node.op_type == "MaxPool", spans != kernel
    include_pad = not is_max and bool(c.attribute("count_include_pad", 0))
    code = OP.MAX_POOL_2D if is_max else OP.AVERAGE_POOL_2D
    padding = None if any(extra) or dilated else tflite_padding(in_hw, kernel, strides, [1, 1], pads)
    direct = [-(-size // s) if padding == tflite.Padding.SAME else (size - k) // s + 1
              for size, k, s in zip(in_hw, kernel, strides)]
    out, finish = nhwc_output(c, node.output[0])
    if padding is not None and direct == list(out_hw) and not (padding == tflite.Padding.SAME and include_pad):
        c.builder.operator(code, [x], [out], pool_options(padding, kernel, strides))
        finish()
        return
    paddings = [[0, 0], [pads[0], pads[2] + extra[0]], [pads[1], pads[3] + extra[1]], [0, 0]]
    padded_shape = (x_shape[0], x_shape[1] + sum(paddings[1]), x_shape[2] + sum(paddings[2]), x_shape[3])
    padded = c.builder.tensor(f"{node.input[0]}_pool_padded{len(c.builder.tensors)}", padded_shape)
    if is_max:
        lowest = c.builder.constant(f"{node.name}_lowest", np.float32(np.finfo(np.float32).min))
        c.builder.operator(OP.PADV2, [x, c.int32(paddings), lowest], [padded])
        scale = None
    else:
        c.builder.operator(OP.PAD, [x, c.int32(paddings)], [padded])
        divisor = pool_divisor(in_hw, out_hw, kernel, strides, dilations, pads, include_pad)
        if (divisor == 0).any():
            raise c.fail(f"pads {pads} leave pooling windows without any input element")
        scale = ((1 if dilated else kernel[0] * kernel[1]) / divisor).astype(np.float32)
        scale = None if np.all(scale == 1.0) else scale
    pooled = out if scale is None else c.builder.tensor(f"{node.output[0]}_pooled", c.builder.tensors[out].shape)
    if dilated:
        pool_taps(c, padded, padded_shape, pooled, out_hw, kernel, strides, dilations, is_max)
    else:
        c.builder.operator(code, [padded], [pooled], pool_options(tflite.Padding.VALID, kernel, strides))
    if scale is not None:
        scale_map = c.builder.constant(f"{node.name}_pool_scale", scale.reshape(1, *scale.shape, 1))
        c.builder.operator(OP.MUL, [pooled, scale_map], [out])
    finish()


def pool_options(padding: int, kernel, strides) -> Options:
    return Options("Pool2DOptions", dict(Padding=padding, StrideH=strides[0], StrideW=strides[1],
                                         FilterHeight=kernel[0], FilterWidth=kernel[1]))


def pool_taps(c: Converter, x: int, shape, out: int, out_hw, kernel, strides, dilations, is_max: bool) -> None:
    """A dilated pool of an already padded NHWC tensor: MAXIMUM / ADD over one STRIDED_SLICE per tap."""
    taps = [(i * dilations[0], j * dilations[1]) for i in range(kernel[0]) for j in range(kernel[1])]
    tap_shape = (shape[0], *out_hw, shape[3])
    result = None
    for position, (top, left) in enumerate(taps):
        last = position == len(taps) - 1
        tap = out if last and result is None else c.builder.tensor(f"{c.node.output[0]}_tap{position}", tap_shape)
        end = [shape[0], top + (out_hw[0] - 1) * strides[0] + 1, left + (out_hw[1] - 1) * strides[1] + 1, shape[3]]
        c.builder.operator(OP.STRIDED_SLICE, [x, c.int32([0, top, left, 0]), c.int32(end),
                                              c.int32([1, strides[0], strides[1], 1])],
                           [tap], Options("StridedSliceOptions", {}))
        if result is not None:
            combined = out if last else c.builder.tensor(f"{c.node.output[0]}_taps{position}", tap_shape)
            c.builder.operator(OP.MAXIMUM if is_max else OP.ADD, [result, tap], [combined])
            tap = combined
        result = tap


def pool_output_hw(c: Converter, name: str, rank: int, in_hw, spans, strides) -> tuple[int, int]:
    """The (H, W) of a pool's output (H = 1 for a 1-D pool) as the ONNX spec defines it (``spans``:
    the dilated kernel extents), checked against the reference run that gave every static shape."""
    auto_pad = c.attribute("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = spatial_2d(c, rank, "pads", [0, 0], 4) if auto_pad in ("NOTSET", "") else [0] * 4
    spec = []
    for a, (size, k, s) in enumerate(zip(in_hw, spans, strides)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spec.append(-(-size // s))
            continue
        extent = size + pads[a] + pads[a + 2] - k
        out = (-(-extent // s) if c.attribute("ceil_mode", 0) else extent // s) + 1
        spec.append(out - 1 if (out - 1) * s >= size + pads[a] else out)  # windows start inside
    shape = tuple(np.shape(c.static[name]))
    static = (1, shape[2]) if len(shape) == 3 else tuple(shape[2:4])
    if tuple(spec) != static:
        raise c.fail(f"the static shape run gives spatial output {list(shape[2:])}, the ONNX spec "
                     f"{spec[-(len(shape) - 2):]}; a pool whose output size is in doubt is not converted")
    return static


def pool_pads(c: Converter, rank: int, in_hw, out_hw, spans, strides) -> list[int]:
    """ONNX pads [top, left, bottom, right], computed for auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    auto_pad = c.attribute("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return spatial_2d(c, rank, "pads", [0, 0], 4)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.fail(f"auto_pad={auto_pad!r} is not valid; valid: NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    totals = [max((o - 1) * s + k - i, 0) for o, s, k, i in zip(out_hw, strides, spans, in_hw)]
    begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return begin + [t - b for t, b in zip(totals, begin)]


def pool_divisor(in_hw, out_hw, kernel, strides, dilations, pads, include_pad: bool) -> np.ndarray:
    """ONNX's average-pool divisor per output cell (OH, OW): the kernel taps that land on the input,
    or on the input and its explicit padding with count_include_pad."""
    counts = []
    for a, (i, o, k, s, d) in enumerate(zip(in_hw, out_hw, kernel, strides, dilations)):
        low, high = (0, pads[a] + i + pads[a + 2]) if include_pad else (pads[a], pads[a] + i)
        taps = (np.arange(o) * s)[:, None] + np.arange(k) * d
        counts.append(((taps >= low) & (taps < high)).sum(axis=1))
    return np.outer(*counts)


@handles("GlobalAveragePool", "GlobalMaxPool")
def convert_global_average_pool(c: Converter, node: onnx.NodeProto) -> None:
    """MEAN / REDUCE_MAX over the spatial axes: H, W of NHWC for 2-D, the ONNX axes 2.. otherwise."""
    code = OP.MEAN if node.op_type == "GlobalAveragePool" else OP.REDUCE_MAX
    rank = len(c.values[node.input[0]].shape)
    nhwc = rank == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    c.builder.operator(code, [x, c.int32([1, 2] if nhwc else list(range(2, rank)))],
                       [c.output(node.output[0], nhwc)], Options("ReducerOptions", {"KeepDims": True}))


@handles("BatchNormalization")
def convert_batch_norm(c: Converter, node: onnx.NodeProto) -> None:
    """A BatchNormalization not folded into a convolution: MUL + ADD by per-channel constants
    (per-element ones for ``spatial=0``, opsets 7-8); batch statistics in training mode (opset 14+)."""
    if c.opset >= 14 and c.attribute("training_mode", 0):
        batch_norm_training(c, node)
        return
    refuse_training_batch_norm(c, node)
    gamma, beta, mean, var = (c.const(name, what) for name, what in
                              zip(node.input[1:5], ("scale", "bias", "mean", "var")))
    scale = (gamma / np.sqrt(var + c.attribute("epsilon", 1e-5))).astype(np.float32)
    shift = (beta - mean * scale).astype(np.float32)
    value = c.values[node.input[0]]
    rank, nhwc = len(value.shape), len(value.shape) == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    full = (1, scale.shape[0]) + (1,) * (rank - 2) if scale.ndim == 1 else (1,) + scale.shape
    constants = [a.reshape(full).transpose(TO_NHWC) if nhwc else a.reshape(full) for a in (scale, shift)]
    scaled = c.builder.tensor(f"{node.output[0]}_scaled", c.tflite_shape(value.shape, nhwc))
    c.builder.operator(OP.MUL, [x, c.builder.constant(f"{node.name}_scale", constants[0])], [scaled])
    c.builder.operator(OP.ADD, [scaled, c.builder.constant(f"{node.name}_shift", constants[1])],
                       [c.output(node.output[0], nhwc)])


def batch_norm_training(c: Converter, node: onnx.NodeProto) -> None:
    """Training mode: normalise with the batch's mean and population variance over every axis but
    the channels, and output the momentum-updated running statistics."""
    value = c.values[node.input[0]]
    rank, nhwc = len(value.shape), len(value.shape) == 4
    channels, epsilon = value.shape[1], c.attribute("epsilon", 1e-5)
    momentum = c.attribute("momentum", 0.9)
    shape = c.tflite_shape(value.shape, nhwc)
    stat_shape = tuple(channels if i == (3 if nhwc else 1) else 1 for i in range(rank))
    axes = c.int32([i for i in range(rank) if i != (3 if nhwc else 1)])
    x, name = c.tensor(node.input[0], "nhwc" if nhwc else "onnx"), node.output[0]
    reducer = Options("ReducerOptions", {"KeepDims": True})

    def emit(code, inputs, tensor_shape, suffix, options=None):
        out = c.builder.tensor(f"{name}_{suffix}", tensor_shape)
        c.builder.operator(code, inputs, [out], options)
        return out

    def const(array, suffix):  # a per-channel array broadcast against the activation, or a scalar
        array = np.asarray(array, np.float32)
        return c.builder.constant(f"{name}_{suffix}", array.reshape(stat_shape) if array.size > 1 else array)

    mean = emit(OP.MEAN, [x, axes], stat_shape, "batch_mean", reducer)
    centred = emit(OP.SUB, [x, mean], shape, "centred")
    var = emit(OP.MEAN, [emit(OP.MUL, [centred, centred], shape, "squared"), axes], stat_shape, "batch_var", reducer)
    inv_std = emit(OP.RSQRT, [emit(OP.ADD, [var, const(epsilon, "epsilon")], stat_shape, "var_eps")],
                   stat_shape, "inv_std")
    gamma, beta = (c.const(n, what) for n, what in zip(node.input[1:3], ("scale", "bias")))
    scaled = emit(OP.MUL, [emit(OP.MUL, [centred, inv_std], shape, "normalised"), const(gamma, "scale")],
                  shape, "scaled")
    c.builder.operator(OP.ADD, [scaled, const(beta, "bias")], [c.output(name, nhwc)])
    for output, batch, source in zip(node.output[1:3], (mean, var), node.input[3:5]):
        if not output:
            continue
        kept = const(c.const(source, "running statistic") * momentum, f"{output}_kept")
        update = emit(OP.MUL, [batch, const(1.0 - momentum, f"{output}_rate")], stat_shape, f"{output}_update")
        summed = emit(OP.ADD, [kept, update], stat_shape, f"{output}_sum")
        c.builder.operator(OP.RESHAPE, [summed, c.int32([channels])], [c.output(output)])


def refuse_training_batch_norm(c: Converter, node: onnx.NodeProto) -> None:
    """Before opset 14, a training-mode BatchNormalization (is_test=0, extra outputs) is refused."""
    training = any(node.output[1:])
    if c.opset < 7:
        training = training or not c.attribute("is_test", 0)
    if training:
        raise c.fail(f"BatchNormalization in training mode at opset {c.opset} (is_test=0 or extra mean/var "
                     "outputs) is not supported; export the model in eval mode (or at opset 14+)")


# ---- dense layers -----------------------------------------------------------------------------
@handles("Gemm")
def convert_gemm(c: Converter, node: onnx.NodeProto) -> None:
    """Y = alpha · A' · B' + beta · C: FULLY_CONNECTED (alpha and beta folded into constant B and
    C), a TRANSPOSE for transA, MUL / ADD steps for a computed B or C."""
    alpha, beta = float(c.attribute("alpha", 1.0)), float(c.attribute("beta", 1.0))
    name, out_shape = node.output[0], tuple(np.shape(c.static[node.output[0]]))
    a = c.tensor(node.input[0])
    if c.attribute("transA", 0):
        transposed = c.builder.tensor(f"{node.input[0]}_t", c.values[node.input[0]].shape[::-1])
        c.builder.operator(OP.TRANSPOSE, [a, c.int32([1, 0])], [transposed])
        a = transposed
    b_value, trans_b = c.values[node.input[1]], c.attribute("transB", 0)
    scale_after = 1.0
    if b_value.const is not None:
        w = alpha * (b_value.const if trans_b else b_value.const.T)
        weight = c.builder.constant(f"{node.input[1]}_fc", np.ascontiguousarray(w, np.float32))
    else:
        weight, scale_after = c.tensor(node.input[1]), alpha
        if not trans_b:
            transposed = c.builder.tensor(f"{node.input[1]}_t", b_value.shape[::-1])
            c.builder.operator(OP.TRANSPOSE, [weight, c.int32([1, 0])], [transposed])
            weight = transposed
    c_value = c.values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    bias, stages = -1, []
    if scale_after != 1.0:
        stages.append((OP.MUL, c.builder.constant(f"{name}_alpha", np.float32(scale_after))))
    if c_value is not None and c_value.const is not None:
        c_const = (beta * c_value.const).astype(np.float32)
        if c_const.ndim <= 2 and c_const.size == out_shape[-1] and c_const.shape[-1:] == out_shape[-1:] \
                and scale_after == 1.0:
            bias = c.builder.constant(f"{node.input[2]}_fc", c_const.reshape(-1))
        else:
            stages.append((OP.ADD, c.builder.constant(f"{node.input[2]}_beta", c_const)))
    elif c_value is not None:
        addend = c.tensor(node.input[2])
        if beta != 1.0:
            scaled = c.builder.tensor(f"{node.input[2]}_beta", c_value.shape)
            c.builder.operator(OP.MUL, [addend, c.builder.constant(f"{name}_beta", np.float32(beta))], [scaled])
            addend = scaled
        stages.append((OP.ADD, addend))
    x = c.output(name) if not stages else c.builder.tensor(f"{name}_product", out_shape)
    c.builder.operator(OP.FULLY_CONNECTED, [a, weight, bias], [x],
                       Options("FullyConnectedOptions", {"KeepNumDims": False}))
    for step, (code, other) in enumerate(stages):
        out = c.output(name) if step == len(stages) - 1 else c.builder.tensor(f"{name}_step{step}", out_shape)
        c.builder.operator(code, [x, other], [out])
        x = out


@handles("MatMul")
def convert_matmul(c: Converter, node: onnx.NodeProto) -> None:
    """FULLY_CONNECTED for a constant 2-D right operand, else BATCH_MATMUL (batch axes broadcast).
    A 1-D operand is lifted to a row (left) or a column (right) and that axis dropped after."""
    a_value, b_value = c.values[node.input[0]], c.values[node.input[1]]
    out_shape = tuple(np.shape(c.static[node.output[0]]))
    lifted = list(out_shape)
    a = c.tensor(node.input[0])
    if len(a_value.shape) == 1:
        a = lift(c, a, node.input[0], (1, a_value.shape[0]))
        lifted.insert(len(lifted) - (0 if len(b_value.shape) == 1 else 1), 1)
    if len(b_value.shape) == 1:
        b = lift(c, c.tensor(node.input[1]), node.input[1], (b_value.shape[0], 1))
        lifted.append(1)
    elif b_value.const is not None and b_value.const.ndim == 2:
        b = c.builder.constant(f"{node.input[1]}_fc", np.ascontiguousarray(b_value.const.T, np.float32))
    else:
        b = c.tensor(node.input[1])
    out = c.output(node.output[0])
    product = out if tuple(lifted) == out_shape else c.builder.tensor(f"{node.output[0]}_lifted", lifted)
    if b_value.const is not None and b_value.const.ndim == 2:
        c.builder.operator(OP.FULLY_CONNECTED, [a, b, -1], [product],
                           Options("FullyConnectedOptions", {"KeepNumDims": len(lifted) > 2}))
    else:
        c.builder.operator(OP.BATCH_MATMUL, [a, b], [product], Options("BatchMatMulOptions", {}))
    if product != out:
        c.builder.operator(OP.RESHAPE, [product, c.int32(out_shape)], [out])


def lift(c: Converter, x: int, name: str, shape) -> int:
    """RESHAPE a 1-D MatMul operand to a 2-D row or column."""
    out = c.builder.tensor(f"{name}_2d{len(c.builder.tensors)}", shape)
    c.builder.operator(OP.RESHAPE, [x, c.int32(shape)], [out])
    return out


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
    if c.opset < 11:  # min / max are attributes before opset 11, optional inputs after
        low, high = float(c.attribute("min", -np.inf)), float(c.attribute("max", np.inf))
    else:
        low, high = (float(c.const(node.input[i], what)) if len(node.input) > i and node.input[i] else default
                     for i, what, default in ((1, "min", -np.inf), (2, "max", np.inf)))
    nhwc = c.values[node.input[0]].nhwc
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    fused = {(0.0, 6.0): OP.RELU6, (0.0, np.inf): OP.RELU, (-1.0, 1.0): OP.RELU_N1_TO_1}
    if not (np.isfinite(low) or np.isfinite(high)):
        c.values[node.output[0]] = c.values[node.input[0]]
        return
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
    if node.op_type == "Dropout":
        training = (c.opset >= 12 and len(node.input) > 2 and node.input[2]
                    and bool(c.const(node.input[2], "training_mode")))
        if training:
            raise c.fail("Dropout in training mode is random; export the model in eval mode")
        for name in node.output[1:]:  # the mask: all true at inference
            if name:
                mask = np.asarray(c.static[name])
                c.values[name] = Value(mask.shape, const=mask)
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
    if c.opset < 10:  # starts / ends / axes are attributes before opset 10, inputs (and steps) after
        starts, ends = np.array(c.attribute("starts")), np.array(c.attribute("ends"))
        axes = np.array(c.attribute("axes", list(range(len(starts)))))
        steps = np.ones(len(starts), np.int64)
    else:
        starts, ends = (np.ravel(c.const(name, what)) for name, what in zip(node.input[1:3], ("starts", "ends")))
        axes = (np.ravel(c.const(node.input[3], "axes")) if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        steps = (np.ravel(c.const(node.input[4], "steps")) if len(node.input) > 4 and node.input[4]
                 else np.ones(len(starts), np.int64))
    if (steps == 0).any():
        raise c.fail(f"Slice steps {steps.tolist()} contain 0")
    begin, end, stride, to_start = [0] * rank, list(value.shape), [1] * rank, [False] * rank
    for start, stop, axis, step in zip(starts, ends, axes, steps):
        axis, size = int(axis) % rank, value.shape[int(axis) % rank]
        start, stop = (int(v) + size if v < 0 else int(min(v, size)) for v in (start, stop))
        if step > 0:
            begin[axis], end[axis] = int(np.clip(start, 0, size)), int(np.clip(stop, 0, size))
        else:  # ONNX clamps to [0, size-1] / [-1, size-1]; -1 means "through index 0": an end mask
            begin[axis], end[axis] = int(np.clip(start, 0, size - 1)), int(np.clip(stop, -1, size - 1))
            to_start[axis] = end[axis] == -1
        stride[axis] = int(step)
    if value.nhwc:
        begin, end, stride, to_start = ([v[i] for i in TO_NHWC] for v in (begin, end, stride, to_start))
    x = c.tensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    end_mask = sum(1 << i for i, flag in enumerate(to_start) if flag)
    c.builder.operator(OP.STRIDED_SLICE, [x, c.int32(begin), c.int32(end), c.int32(stride)],
                       [c.output(node.output[0], value.nhwc)], Options("StridedSliceOptions", {"EndMask": end_mask}))


@handles("Pad")
def convert_pad(c: Converter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    rank = len(value.shape)
    if c.opset >= 11:  # pads / constant_value are inputs from opset 11, axes from 18
        pads = np.asarray(c.const(node.input[1], "pads")).reshape(-1)
        has_fill = len(node.input) > 2 and node.input[2]
        fill = float(c.const(node.input[2], "constant_value")) if has_fill else 0.0
    else:  # attributes before 11 (named paddings in opset 1)
        pads = np.asarray(c.attribute("paddings" if c.opset < 2 else "pads"))
        fill = float(c.attribute("value", 0.0))
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in np.ravel(c.const(node.input[3], "axes"))]
    if len(pads) != 2 * len(axes):
        raise c.fail(f"pads {pads.tolist()} need 2 × {len(axes)} values")
    begins, ends = np.zeros(rank, np.int64), np.zeros(rank, np.int64)
    begins[axes], ends[axes] = pads[:len(axes)], pads[len(axes):]
    if (begins < 0).any() or (ends < 0).any():
        raise c.fail(f"negative pads {pads.tolist()} (cropping) are not supported")
    mode = c.attribute("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    paddings = np.stack([begins, ends], axis=1)
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
    removed, opset = [], default_opset(model)
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1
                or conv.input[1] not in initializers
                or not all(name in initializers for name in node.input[1:5])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]) for n in node.input[1:5])
        flags = {a.name: a.i for a in node.attribute if a.name in ("training_mode", "is_test")}
        if (gamma.ndim != 1 or any(node.output[1:]) or flags.get("training_mode", 0)
                or (opset < 7 and not flags.get("is_test", 0))):  # left to convert_batch_norm
            continue
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


def convert_onnx_to_tflite(source, path: str | Path, batch_size: int = 1, *,
                           input_shapes: dict[str, tuple[int, ...]] | None = None, verify: bool = True,
                           calibration_data: str | Path | None = None) -> Path:
    """Convert an ONNX model (a path or a ModelProto) to a .tflite file at ``path``; see
    :func:`convert_and_verify`."""
    return convert_and_verify(source, path, batch_size, input_shapes=input_shapes, verify=verify,
                              calibration_data=calibration_data)[0]


def convert_and_verify(source, path: str | Path, batch_size: int = 1, *,
                       input_shapes: dict[str, tuple[int, ...]] | None = None, verify: bool = True,
                       calibration_data: str | Path | None = None, seeds: int = 3):
    """Convert, check the result against ONNX Runtime on ``seeds`` random inputs (and the samples
    of ``calibration_data``, an .npz) unless ``verify`` is False, then write ``path``.

    Returns (path, Verification or None). A disagreement raises ConversionError and writes nothing.
    """
    if calibration_data is not None and not verify:
        raise ConversionError("--calibration-data is only used to verify the result; it cannot go with --no-verify")
    model = checked_onnx(source, runtime="tflite")  # ai.edgepack nodes: the delegate's rules
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"output {str(path)!r} is a directory; give a .tflite file path")
    converter = Converter(fold_batch_norms(model), batch_size, input_shapes)
    data = converter.convert()
    verification = None
    if verify:
        from .tflite_verify import verify_conversion

        verification = verify_conversion(model, data, converter, seeds, calibration_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path, verification


# Op modules register more handlers; imported last because they build on this module.
from . import (  # noqa: E402, F401
    tflite_ops_activations,
    tflite_ops_math,
    tflite_ops_normalization,
    tflite_ops_tensor,
    tflite_opsets,
)
