"""Lower an ONNX model to a TFLite flatbuffer, without TensorFlow.

Static shapes come from one run of ``onnx.reference.ReferenceEvaluator`` (ONNX Runtime where it
fails) at the chosen batch size and ``--input-shape`` overrides, which also folds every constant
subgraph. Handlers read attributes with the meaning of the model's opset (``Converter.opset``);
``convert_and_verify`` checks the result against ONNX Runtime before writing it (tflite_verify).
4-D activations are kept in NHWC inside the model (convolution weights transposed at export); the
model's inputs and outputs keep the ONNX layout, with TRANSPOSE ops at the boundary. Standard ops
map to builtins; ``ai.edgepack`` ops become CUSTOM ops named ``ai.edgepack.<Op>`` whose
flexbuffer options mirror the ONNX attributes (executed by libedgepack_tflite_delegate.so).
This module holds the walk, the dense, layout and ai.edgepack lowerings and the entry points; the
other ops register their handlers from tflite_ops_* and tflite_opsets.
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
from onnx.reference.op_run import OpRun

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels.op_spec import DOMAIN, OPS

from .passes import run_passes
from .tflite_writer import Options, TFLiteModelBuilder
from .validate import checked_onnx

OP = tflite.BuiltinOperator
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
# Model inputs may be float32 or, as indices / values to cast, int32 / int64.
INPUT_TYPES = {onnx.TensorProto.FLOAT: np.dtype(np.float32), onnx.TensorProto.INT32: np.dtype(np.int32),
               onnx.TensorProto.INT64: np.dtype(np.int64)}
# The writer computes in float32: an integer or bool tensor may only be read here (op, input slot).
INTEGER_READERS = {("Gather", 0), ("Gather", 1), ("Expand", 0), ("Cast", 0)}
HANDLERS: dict[str, Callable] = {}


def handles(*op_types: str, table: dict[str, Callable] = HANDLERS):
    """Register a lowering function for ONNX op types in ``table`` (a registry instead of an if-chain)."""
    def register(function):
        for op_type in op_types:
            table[op_type] = function
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
        elem_type = value.type.tensor_type.elem_type
        if elem_type not in INPUT_TYPES:
            raise ConversionError(f"input {value.name!r} has element type "
                                  f"{onnx.TensorProto.DataType.Name(elem_type)}; only float32, int32 and int64 "
                                  "inputs are supported")
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


def _shape_only(op):
    """A ReferenceEvaluator op for ai.edgepack ``op``: zeros of the spec's output shape (only its
    shape is read; an ai.edgepack output is never folded), so the static run hashes nothing."""
    def _run(self, *inputs, **attributes):
        shapes = {name: np.shape(x) for name, x in zip(op.input_names, inputs) if x is not None}
        return (np.zeros(op.output_shape(op.defaults | attributes, shapes.__getitem__), np.float32),)
    return type(op.name, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


EDGEPACK_SHAPES = [_shape_only(op) for op in OPS.values()]


def static_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of one run on ``feeds`` (static shapes, folded constants): onnx's
    ReferenceEvaluator (ai.edgepack nodes by their output-shape rule), else ONNX Runtime (which
    implements more old-opset modes, e.g. Upsample)."""
    from .tflite_verify import onnx_runtime_values

    try:
        return ReferenceEvaluator(model, new_ops=EDGEPACK_SHAPES).run(None, feeds, intermediate=True)
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
        self.transposed: dict[tuple[str, str], int] = {}  # a computed value in its other layout, made once
        self.node: onnx.NodeProto | None = None
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [i for i in model.graph.input if i.name not in initializers]
        self.input_shapes = static_input_shapes(self.inputs, batch_size, input_shapes or {})
        self.input_dtypes = {i.name: INPUT_TYPES[i.type.tensor_type.elem_type] for i in self.inputs}
        for name, dtype in self.input_dtypes.items():  # before the static run: its zeros are no shape
            if dtype != np.float32:
                self.check_integer_readers(name, dtype, f"input {name!r}")
        feeds = {name: np.zeros(shape, self.input_dtypes[name]) for name, shape in self.input_shapes.items()}
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

    def text(self, name: str, default: str) -> str:
        """A string attribute as str (onnx gives bytes)."""
        value = self.attribute(name, default)
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    def axis(self, rank: int, default: int | None = None) -> int:
        """The node's ``axis`` attribute as an index in [0, rank); ConversionError when out of range."""
        axis = self.attribute("axis", default)
        if axis is None or not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for a rank-{rank} input")
        return int(axis) % rank

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
        if (name, layout) not in self.transposed:
            perm = TO_NHWC if want_nhwc else TO_NCHW
            out = self.builder.tensor(f"{name}_{layout}", self.tflite_shape(value.shape, want_nhwc))
            self.builder.operator(OP.TRANSPOSE, [value.index, self.int32(perm)], [out])
            self.transposed[name, layout] = out
        return self.transposed[name, layout]

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

    @staticmethod
    def tflite_axis(axis: int, nhwc: bool) -> int:
        """Where ONNX axis ``axis`` (in [0, 4) when ``nhwc``) lies in the TFLite tensor."""
        return TO_NHWC.index(axis) if nhwc else axis

    def output(self, name: str, nhwc: bool = False) -> int:
        """Create the TFLite tensor for an op output (its static shape from the reference run)."""
        shape = tuple(np.shape(self.static[name]))
        index = self.builder.tensor(name, self.tflite_shape(shape, nhwc))
        self.values[name] = Value(shape, index=index, nhwc=nhwc)
        return index

    def check_integer_readers(self, name: str, dtype: np.dtype, what: str) -> None:
        """Refuse a non-float32 tensor that a float32-only op reads (it would be mistyped)."""
        for node in self.model.graph.node:
            for slot, input_name in enumerate(node.input):
                if input_name == name and (node.op_type, slot) not in INTEGER_READERS:
                    raise ConversionError(
                        f"{what} ({dtype}) is read by {node.op_type} node {node.name!r} (input {slot}); the TFLite "
                        f"writer computes in float32 and takes {dtype} tensors only as Gather's data or indices, "
                        "Expand's or Cast's input, or a model output (shapes, axes and pads must be constants)")

    def index_bound(self, name: str, default: int = 8) -> int:
        """The largest n such that every index in [-n, n) is valid for each Gather that reads ``name``
        as its indices (``default`` if none does): random integer inputs for verification."""
        sizes = [self.values[n.input[0]].shape[int(next((a.i for a in n.attribute if a.name == "axis"), 0))]
                 for n in self.model.graph.node if n.op_type == "Gather" and n.input[1:2] == [name]]
        return max(min(sizes, default=default), 1)

    # ---- the walk --------------------------------------------------------------------------
    def convert(self) -> bytes:
        for value in self.inputs:
            shape, dtype = np.shape(self.static[value.name]), self.input_dtypes[value.name]
            self.values[value.name] = Value(shape, index=self.builder.tensor(value.name, shape, dtype))
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


# ---- identity -----------------------------------------------------------------------------
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
    out_shape = tuple(np.shape(c.static[node.output[0]]))
    inner = node.output[0] not in {value.name for value in c.model.graph.output}
    if inner and list(perm) == sorted(perm):  # the data is already in this order (NHWC of an NHWC value)
        c.values[node.output[0]] = Value(out_shape, index=x)
        return
    if inner and len(perm) == 4 and tuple(perm) == TO_NCHW:  # NHWC -> NCHW: keep it NHWC, transpose on use
        c.values[node.output[0]] = Value(out_shape, index=x, nhwc=True)
        return
    c.builder.operator(OP.TRANSPOSE, [x, c.int32(perm)], [c.output(node.output[0])])


@handles("Concat")
def convert_concat(c: Converter, node: onnx.NodeProto) -> None:
    values = [c.values[name] for name in node.input]
    rank = len(values[0].shape)
    axis = c.axis(rank)
    nhwc = rank == 4 and all(v.nhwc or v.const is not None for v in values) and any(v.nhwc for v in values)
    inputs = [c.tensor(name, "nhwc" if nhwc else "onnx") for name in node.input]
    options = Options("ConcatenationOptions", {"Axis": c.tflite_axis(axis, nhwc)})
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
    mode = c.text("mode", "constant")
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


@handles(*(f"{DOMAIN}.{op}" for op in OPS))
def convert_edgepack(c: Converter, node: onnx.NodeProto) -> None:
    if node.op_type == "HashedWeight":  # emitted when read: a 1×1 convolution fuses it instead
        c.values[node.output[0]] = Value(tuple(np.shape(c.static[node.output[0]])), producer=node)
        return
    emit_custom(c, node)


def custom_attributes(node: onnx.NodeProto) -> dict:
    """The attributes the kernels read, defaults filled in; others (ignored by ORT) are not written."""
    op = OPS[node.op_type]
    given = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in op.attribute_names}
    return op.defaults | given


def emit_custom(c: Converter, node: onnx.NodeProto, value: Value | None = None) -> None:
    """One CUSTOM ai.edgepack.<Op> node with the ONNX attributes as flexbuffer options."""
    inputs = [c.tensor(name) if name else -1 for name in node.input]
    output = c.output(node.output[0])
    if value is not None:
        value.index = c.values[node.output[0]].index
        c.values[node.output[0]] = value
    c.builder.operator(f"{DOMAIN}.{node.op_type}", inputs, [output], flexbuffer_options(custom_attributes(node)))


# ---- entry points -----------------------------------------------------------------------------
def convert_onnx_to_tflite(source, path: str | Path, batch_size: int = 1, *,
                           input_shapes: dict[str, tuple[int, ...]] | None = None, verify: bool = True,
                           calibration_data: str | Path | None = None, io_type: str = "float") -> Path:
    """Convert an ONNX model (a path or a ModelProto) to a .tflite file at ``path``; see
    :func:`convert_and_verify`."""
    return convert_and_verify(source, path, batch_size, input_shapes=input_shapes, verify=verify,
                              calibration_data=calibration_data, io_type=io_type)[0]


def convert_and_verify(source, path: str | Path, batch_size: int = 1, *,
                       input_shapes: dict[str, tuple[int, ...]] | None = None, verify: bool = True,
                       calibration_data: str | Path | None = None, seeds: int = 3, io_type: str = "float"):
    """Convert, check the result against ONNX Runtime on ``seeds`` random inputs (and the samples
    of ``calibration_data``, an .npz) unless ``verify`` is False, then write ``path``. A QDQ model
    (QuantizeLinear / DequantizeLinear) becomes a fully int8 model (tflite_quant) with float or, for
    ``io_type="int8"``, int8 inputs and outputs.

    Returns (path, Verification or None). A disagreement raises ConversionError and writes nothing.
    """
    if calibration_data is not None and not verify:
        raise ConversionError("--calibration-data is only used to verify the result; it cannot go with --no-verify")
    model = checked_onnx(source, runtime="tflite")  # ai.edgepack nodes: the delegate's rules
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"output {str(path)!r} is a directory; give a .tflite file path")
    from .tflite_quant import IO_TYPES, QuantConverter, has_qdq

    if io_type not in IO_TYPES:
        raise ConversionError(f"io_type {io_type!r} is not valid; valid: {', '.join(IO_TYPES)}")
    if has_qdq(model):
        converter = QuantConverter(model, batch_size, input_shapes, io_type)
    elif io_type != "float":
        raise ConversionError("int8 inputs and outputs need a QDQ-quantized model (QuantizeLinear / "
                              "DequantizeLinear nodes, e.g. from onnxruntime.quantization.quantize_static)")
    else:
        converter = Converter(run_passes(model), batch_size, input_shapes)  # exporter/passes.py first
    data = converter.convert()
    verification = None
    if verify:
        from .tflite_verify import verify_conversion

        checked = converter.verifiable(data) if isinstance(converter, QuantConverter) else data
        verification = verify_conversion(model, checked, converter, seeds, calibration_data)
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
    tflite_ops_conv,
    tflite_ops_math,
    tflite_ops_normalization,
    tflite_ops_tensor,
    tflite_opsets,
)
