"""A QDQ-quantized ONNX model (QuantizeLinear / DequantizeLinear around float ops, as
``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)`` writes it) lowered
to a fully int8 TFLite model, without TensorFlow.

Each float op between DequantizeLinear inputs and one QuantizeLinear output becomes an int8
builtin (TFLite's quantization spec): per-tensor int8 activations (uint8 ones shift their zero
point by −128, exactly), symmetric per-channel int8 convolution / depthwise / fully-connected
weights, int32 biases of scale s_in · s_w[c], and a Relu / Clip(0, 6) between an op and its
QuantizeLinear fused into the op. The model's inputs and outputs are float (a QUANTIZE op after
each input, a DEQUANTIZE before each output) or, with ``io_type="int8"``, the int8 tensors
themselves. An int8-stored compressed weight (docs/ops.md "int8 storage": Cast(INT8 q) → HashedWeight |
CodebookWeight → Cast(INT8) → DequantizeLinear) becomes CAST / CUSTOM [/ TRANSPOSE | RESHAPE in float32] /
CAST into the per-channel int8 filter (the one int8 tensor of the chain that carries quantization);
verification runs the model decoded at load. Anything TFLite cannot express in int8 is refused with a
ConversionError naming the node. The layout machinery (NHWC inside, pads, pool sizes) is the float
converter's.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import tflite
from onnx import helper

from edgepack.runtime_kernels.op_spec import DOMAIN, INT8_STORED_INPUTS

from .tflite_export import (
    OP,
    TO_NCHW,
    TO_NHWC,
    ConversionError,
    Converter,
    Value,
    custom_attributes,
    flexbuffer_options,
    handles,
)
from .tflite_ops_conv import pool_options, pool_output_hw, pool_pads, spatial_2d, tflite_padding
from .tflite_writer import Options, Quantization

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
IO_TYPES = ("float", "int8")
ACTIVATIONS = tflite.ActivationFunctionType
# Builtin versions for int8 tensors (tensorflow/lite/tools/versioning/op_version.cc).
INT8_VERSIONS = {OP.CONV_2D: 3, OP.DEPTHWISE_CONV_2D: 3, OP.FULLY_CONNECTED: 4, OP.AVERAGE_POOL_2D: 2,
                 OP.MAX_POOL_2D: 2, OP.TRANSPOSE: 2, OP.ADD: 2, OP.MUL: 2, OP.PAD: 2, OP.CONCATENATION: 2,
                 OP.SOFTMAX: 2, OP.MEAN: 2, OP.RELU: 2, OP.RELU6: 2, OP.DEQUANTIZE: 2}
SOFTMAX_OUTPUT = (1 / 256, -128)  # the only int8 softmax output TFLite accepts
FILTER_READERS = ("Conv", "Gemm", "MatMul")  # an int8-stored weight is input 1 (the filter) of one of these
CAST_VERSION = 3  # CAST with an int8 input or output (tensorflow/lite/tools/versioning/op_version.cc)


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph holds ONNX QuantizeLinear / DequantizeLinear nodes (the int8 path)."""
    return any(node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx") for node in model.graph.node)


@dataclass(frozen=True)
class Int8:
    """An int8 activation's per-tensor parameters: real = scale · (q − zero_point)."""

    scale: float
    zero_point: int

    def quantization(self) -> Quantization:
        return Quantization(self.scale, self.zero_point)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float → int8 as ONNX QuantizeLinear does (round half to even, saturate)."""
        return np.clip(np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point,
                       -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass
class QuantConstant:
    """A DequantizeLinear of a constant: int8 values (uint8 ones shifted), or int32 ones (a bias),
    with a scale and zero point per tensor, or per index of ``axis``."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


@dataclass
class StoredWeight:
    """An int8-stored compressed weight: Cast(INT8 q, to=FLOAT) → decoder → Cast(to=INT8) → DequantizeLinear.
    ``decoded`` is the float32 TFLite tensor the CUSTOM decoder writes, ``shape`` its ONNX shape;
    ``scale`` / ``axis`` come from the DequantizeLinear, ``filters`` caches its int8 filter per layout, ``layouts``
    the float32 TRANSPOSE / RESHAPE output it is cast from."""

    decoded: int
    shape: tuple[int, ...]
    scale: np.ndarray | None = None
    axis: int | None = None
    layouts: dict = field(default_factory=dict)  # the float32 decoded weight per TFLite layout (perm)
    filters: dict = field(default_factory=dict)


QUANT_HANDLERS: dict[str, Callable] = {}


def quant_handles(*op_types: str):
    """Register the int8 lowering of ONNX op types."""
    return handles(*op_types, table=QUANT_HANDLERS)


class QuantConverter(Converter):
    """Walks a QDQ graph: QuantizeLinear / DequantizeLinear become tensor parameters, each float op
    an int8 builtin writing its QuantizeLinear's tensor."""

    def __init__(self, model: onnx.ModelProto, batch_size: int = 1,
                 input_shapes: dict[str, tuple[int, ...]] | None = None, io_type: str = "float") -> None:
        if io_type not in IO_TYPES:
            raise ConversionError(f"io_type {io_type!r} is not valid; valid: {', '.join(IO_TYPES)}")
        super().__init__(model, batch_size, input_shapes)
        self.io_type = io_type
        self.params: dict[str, Int8] = {}  # every int8 activation (a QuantizeLinear output and its dequantized aliases)
        self.weights: dict[str, QuantConstant] = {}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                self.readers[name].append(node)
        self.graph_outputs = {value.name for value in model.graph.output}
        self.absorbed: set[int] = set()  # ids of Relu / Clip / QuantizeLinear nodes an op already wrote
        self.input_params: dict[str, Int8] = {}
        self.output_params: dict[str, Int8] = {}
        self.producers = {name: node for node in model.graph.node for name in node.output}
        self.decoded: dict[str, tuple[int, tuple[int, ...]]] = {}  # decoder output: (TFLite tensor, shape)
        self.stored_casts: dict[str, StoredWeight] = {}  # Cast(to=INT8) output
        self.stored: dict[str, StoredWeight] = {}  # its DequantizeLinear's output

    # ---- parameters ------------------------------------------------------------------------
    def qdq_parameters(self, node: onnx.NodeProto):
        """(scale array, zero point array (uint8 ones shifted by −128), stored dtype, axis) of a
        QuantizeLinear / DequantizeLinear; int32 only for a constant's DequantizeLinear (a bias)."""
        if self.attribute("block_size", 0):
            raise self.fail("blocked quantization (block_size) is not supported; use per-tensor or per-channel")
        scale = np.asarray(self.const(node.input[1], "the scale"), np.float64)
        zero_point = (np.asarray(self.const(node.input[2], "the zero point")) if len(node.input) > 2 and node.input[2]
                      else np.zeros(scale.shape, np.int64))
        quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        known = self.values.get(quantized)  # a constant, else the static run's value: its integer type
        constant = known is not None and known.const is not None
        stored = (known.const if constant else np.asarray(self.static[quantized])).dtype
        allowed = (np.int8, np.uint8, np.int32) if constant else (np.int8, np.uint8)  # int32: a bias
        if stored not in [np.dtype(t) for t in allowed]:
            raise self.fail(f"{np.dtype(stored)} quantization is not supported; TFLite int8 needs int8 or uint8 "
                            "(uint8 is shifted to int8 exactly)")
        if (scale <= 0).any() or not np.isfinite(scale).all():
            raise self.fail(f"scale {scale.ravel()[:4].tolist()} must be positive and finite")
        shift = 128 if stored == np.uint8 else 0
        axis = self.attribute("axis", 1) if scale.size > 1 else None
        return scale, zero_point.astype(np.int64) - shift, stored, axis

    def activation_parameters(self, node: onnx.NodeProto) -> Int8:
        scale, zero_point, _, axis = self.qdq_parameters(node)
        if axis is not None or scale.size != 1:
            raise self.fail("per-channel activation quantization is not supported; TFLite int8 activations "
                            "have one scale and zero point")
        return Int8(float(scale.ravel()[0]), int(zero_point.ravel()[0]))

    # ---- tensors ---------------------------------------------------------------------------
    def new_tensor(self, name: str, shape, params: Int8) -> int:
        return self.builder.tensor(name, tuple(shape), np.int8, quantization=params.quantization())

    def emit(self, code: int, inputs: list[int], outputs: list[int], options: Options | None = None,
             version: int | None = None) -> None:
        self.builder.operator(code, inputs, outputs, options, version or INT8_VERSIONS.get(code))

    def activation(self, name: str) -> Int8:
        """The int8 parameters of an op input; a float input (no DequantizeLinear) is refused."""
        if name not in self.params:
            value = self.values.get(name)
            what = "a constant without DequantizeLinear" if value is not None and value.const is not None else \
                "a float tensor (no DequantizeLinear before it)"
            raise self.fail(f"input {name!r} is {what}; a fully int8 model needs every op input quantized")
        return self.params[name]

    def qtensor(self, name: str, layout: str = "onnx") -> int:
        """The int8 tensor of activation ``name`` in ``layout``: a RESHAPE when only size-1 axes move,
        else an int8 TRANSPOSE (made once)."""
        value, params = self.values[name], self.activation(name)
        want = layout == "nhwc"
        if want and len(value.shape) != 4:
            raise self.fail(f"input {name!r} must be 4-D (N, C, H, W), got shape {value.shape}")
        if value.nhwc == want:
            return value.index
        if (name, layout) not in self.transposed:
            shape = self.tflite_shape(value.shape, want)
            out = self.new_tensor(f"{name}_{layout}", shape, params)
            moved = [axis for axis in (TO_NHWC if value.nhwc else range(4)) if value.shape[axis] != 1]
            target = [axis for axis in (TO_NHWC if want else range(4)) if value.shape[axis] != 1]
            if moved == target:
                self.emit(OP.RESHAPE, [value.index, self.int32(shape)], [out])
            else:
                self.emit(OP.TRANSPOSE, [value.index, self.int32(TO_NHWC if want else TO_NCHW)], [out])
            self.transposed[name, layout] = out
        return self.transposed[name, layout]

    def requantize(self, x: int, source: Int8, target: Int8, name: str) -> int:
        """``x`` (parameters ``source``) as a tensor with parameters ``target``: itself, or a QUANTIZE."""
        if source == target:
            return x
        out = self.new_tensor(f"{name}_requantized{len(self.builder.tensors)}", self.builder.tensors[x].shape, target)
        self.emit(OP.QUANTIZE, [x], [out])
        return out

    def constant_operand(self, name: str, nhwc: bool, rank: int) -> int:
        """A quantized constant operand of a binary op, broadcast to ``rank`` in the layout: int8 per
        tensor as stored, else (an int32 bias, per-channel values) requantized to symmetric int8 per
        tensor (error at most half its new step)."""
        weight = self.weight(name, "constant operand")
        if weight.values.dtype == np.int8 and weight.axis is None:
            data, params = weight.values, Int8(float(weight.scale.ravel()[0]), int(weight.zero_point.ravel()[0]))
        else:
            real = np.asarray(self.values[name].const, np.float32)
            params = Int8(max(float(np.abs(real).max()), 1e-12) / 127, 0)
            data = params.quantize(real)
        data = data.reshape((1,) * (rank - data.ndim) + data.shape)
        data = data.transpose(TO_NHWC) if nhwc else data
        return self.builder.constant(f"{name}_{len(self.builder.tensors)}", data, params.quantization())

    def weight(self, name: str, what: str) -> QuantConstant:
        if name not in self.weights:
            raise self.fail(f"{what} {name!r} is not a DequantizeLinear of a constant; the int8 path needs "
                            "quantized constant weights")
        return self.weights[name]

    def symmetric_weight(self, name: str, channels: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """int8 values and one scale per output channel (along ``axis``) of a symmetric weight."""
        weight = self.weight(name, "weight")
        if weight.values.dtype != np.int8:
            raise self.fail(f"weight {name!r} is {weight.values.dtype}; TFLite int8 weights are int8 (or uint8)")
        if (weight.zero_point != 0).any():
            raise self.fail(f"weight {name!r} has zero points {np.unique(weight.zero_point).tolist()[:4]} "
                            "(after the uint8 shift of −128); TFLite int8 weights are symmetric: zero point 0 "
                            "for int8, 128 for uint8")
        if weight.axis is not None and weight.axis % weight.values.ndim != axis:
            raise self.fail(f"weight {name!r} is quantized per channel along axis {weight.axis}; TFLite needs "
                            f"the output-channel axis ({axis})")
        scale = np.broadcast_to(weight.scale.ravel(), (channels,)) if weight.scale.size == 1 else weight.scale
        return weight.values, np.asarray(scale, np.float64)

    def bias(self, name: str | None, channels: int, input_scale: float, weight_scale: np.ndarray,
             per_channel: bool = True) -> int:
        """An int32 bias of scale s_in · s_w[c] (zero point 0; one scale unless ``per_channel``): a
        quantized bias re-expressed exactly when its scale already is that, a float bias rounded;
        zeros when there is none."""
        scale = np.float64(input_scale) * weight_scale
        if not name:
            values = np.zeros(channels, np.int64)
        elif name in self.weights:
            bias = self.weights[name]
            values = np.rint(bias.values.astype(np.float64) * bias.scale.ravel() / scale)
        else:
            values = np.rint(np.asarray(self.const(name, "the bias"), np.float64).reshape(-1) / scale)
        if values.size != channels:
            raise self.fail(f"bias {name!r} has {values.size} values for {channels} output channels")
        limit = np.iinfo(np.int32)
        values = np.clip(values, limit.min, limit.max).astype(np.int32)
        kept = scale if per_channel else scale[:1]
        quantization = Quantization(kept.astype(np.float32), np.zeros(kept.size, np.int64))
        return self.builder.constant(f"{name or self.node.name}_int32", values, quantization)

    def write_output(self, node: onnx.NodeProto, shape, nhwc: bool, fusable: bool = False) -> tuple[int, Int8, int]:
        """The int8 tensor an op writes: its QuantizeLinear's (absorbed), after a Relu / Clip fused
        into the op when ``fusable``. Returns (tensor, parameters, fused activation)."""
        name, fused = node.output[0], ACTIVATIONS.NONE
        readers = self.readers[name]
        if fusable and len(readers) == 1 and name not in self.graph_outputs and readers[0].op_type in ("Relu", "Clip"):
            fused = self.fused_activation(readers[0])
            self.absorbed.add(id(readers[0]))
            name = readers[0].output[0]
            readers = self.readers[name]
        quantizers = [r for r in readers if r.op_type == "QuantizeLinear"]
        if len(readers) != 1 or len(quantizers) != 1 or name in self.graph_outputs:
            raise self.fail(f"output {name!r} is read by {[r.op_type for r in readers] or 'nothing'}"
                            f"{' and is a graph output' if name in self.graph_outputs else ''}; a fully int8 model "
                            "needs exactly one QuantizeLinear after each op")
        quantizer = quantizers[0]
        self.absorbed.add(id(quantizer))
        node_now, self.node = self.node, quantizer
        params = self.activation_parameters(quantizer)
        self.node = node_now
        q_name = quantizer.output[0]
        index = self.new_tensor(q_name, self.tflite_shape(shape, nhwc), params)
        value = Value(tuple(shape), index=index, nhwc=nhwc)
        for alias in {node.output[0], name, q_name}:
            self.values[alias] = value
        self.params[q_name] = params
        return index, params, fused

    def fused_activation(self, node: onnx.NodeProto) -> int:
        """The TFLite fused activation of a Relu or Clip(0, 6) / Clip(0, ∞) / Clip(−1, 1)."""
        if node.op_type == "Relu":
            return ACTIVATIONS.RELU
        low, high = self.clip_bounds(node)
        known = {(0.0, np.inf): ACTIVATIONS.RELU, (0.0, 6.0): ACTIVATIONS.RELU6, (-1.0, 1.0): ACTIVATIONS.RELU_N1_TO_1}
        if (low, high) not in known:
            raise ConversionError(f"node {node.name!r} (Clip): bounds ({low}, {high}) have no int8 TFLite form; "
                                  "supported: (0, inf), (0, 6), (-1, 1)")
        return known[low, high]

    def clip_bounds(self, node: onnx.NodeProto) -> tuple[float, float]:
        node_now, self.node = self.node, node
        try:
            if self.opset < 11:
                return float(self.attribute("min", -np.inf)), float(self.attribute("max", np.inf))
            low, high = (list(node.input[1:3]) + ["", ""])[:2]
            return (float(self.const(low, "min")) if low else -np.inf,
                    float(self.const(high, "max")) if high else np.inf)
        finally:
            self.node = node_now

    # ---- int8-stored compressed weights (docs/ops.md "int8 storage") ---------------------------------
    def int8_storage(self, node: onnx.NodeProto) -> bool:
        """Lower ``node`` when it is part of an int8-stored weight's chain, Cast(INT8 q, to=FLOAT) →
        HashedWeight | CodebookWeight → Cast(to=INT8) → DequantizeLinear; False for any other node."""
        if node.domain == DOMAIN:
            if node.op_type not in INT8_STORED_INPUTS:
                raise self.fail(f"{DOMAIN}.{node.op_type} has no int8 TFLite lowering; in an int8 model only "
                                f"{' and '.join(INT8_STORED_INPUTS)} with int8-stored values are supported")
            self.stored_decoder(node)
            return True
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            if any(r.domain == DOMAIN for r in self.readers[node.output[0]]):
                self.storage_cast(node)
                return True
            producer = self.producers.get(node.input[0])
            if producer is not None and producer.domain == DOMAIN:
                self.decoded_cast(node)
                return True
            return False
        if node.op_type == "DequantizeLinear" and node.input[0] in self.stored_casts:
            self.stored_dequantize(node)
            return True
        return False

    def cast_target(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.attribute("to")))

    def reader_list(self, name: str) -> str:
        readers = [f"{r.op_type} {r.name or '(unnamed)'!r} (input {list(r.input).index(name)})"
                   for r in self.readers[name]]
        return ", ".join(readers) + (" and the graph output" if name in self.graph_outputs else "") or "nothing"

    def storage_cast(self, node: onnx.NodeProto) -> None:
        """Cast(INT8 initializer, to=FLOAT) read by decoders: an int8 constant and a CAST to float32."""
        source, out = node.input[0], node.output[0]
        readers = self.readers[out]
        if out in self.graph_outputs or any(r.domain != DOMAIN or r.op_type not in INT8_STORED_INPUTS
                                            or list(r.input).index(out) != 0 for r in readers):
            raise self.fail(f"its output {out!r} is read by {self.reader_list(out)}; the Cast of an int8-stored "
                            "weight feeds only input 0 (buckets / codebook) of HashedWeight or CodebookWeight")
        target = self.cast_target()
        if target != np.float32:
            raise self.fail(f"casts to {target}; the ai.edgepack decoders read float32: an int8-stored weight is "
                            "Cast(INT8 initializer, to=FLOAT) before its decoder")
        value = self.values.get(source)
        if value is None or value.const is None:
            raise self.fail(f"input {source!r} is not an initializer; an int8-stored weight casts an INT8 initializer")
        if value.const.dtype != np.int8:
            raise self.fail(f"input {source!r} is a {value.const.dtype} initializer; an int8-stored weight casts an "
                            "INT8 one (store a float weight without the Cast)")
        stored = self.builder.constant(source, np.ascontiguousarray(value.const))
        index = self.builder.tensor(out, value.const.shape, np.float32)
        self.emit(OP.CAST, [stored], [index], version=CAST_VERSION)
        self.values[out] = Value(value.const.shape, index=index)

    def stored_decoder(self, node: onnx.NodeProto) -> None:
        """A HashedWeight / CodebookWeight over a storage Cast: its CUSTOM op, writing a float32 weight."""
        values = node.input[0]
        producer = self.producers.get(values)
        if producer is None or producer.op_type != "Cast" or values not in self.values \
                or self.values[values].index is None:
            raise self.fail(f"input {values!r} is not Cast(INT8 initializer, to=FLOAT); in an int8 model a "
                            "compressed weight's values are stored as int8 (edgepack export of an int8 model)")
        if node.op_type == "HashedWeight" and custom_attributes(node).get("num_hashes", 1) != 1:
            raise self.fail("has num_hashes > 1: functional hashing is not int8-storable")
        for name in node.input[1:]:
            if name:
                self.const(name, f"input {name}")
        out = node.output[0]
        if out in self.graph_outputs or any(r.op_type != "Cast" for r in self.readers[out]):
            raise self.fail(f"its output {out!r} is read by {self.reader_list(out)}; an int8-stored weight's "
                            "decoder output is read only by Cast(to=INT8)")
        shape = tuple(np.shape(self.static[out]))
        inputs = [self.tensor(name) if name else -1 for name in node.input]
        index = self.builder.tensor(out, shape, np.float32)
        self.builder.operator(f"{DOMAIN}.{node.op_type}", inputs, [index],
                              flexbuffer_options(custom_attributes(node)))
        self.decoded[out] = index, shape

    def decoded_cast(self, node: onnx.NodeProto) -> None:
        """Cast(decoded weight, to=INT8) read by one DequantizeLinear: recorded, emitted with its filter."""
        source, out = node.input[0], node.output[0]
        if source not in self.decoded:
            raise self.fail(f"input {source!r} is an ai.edgepack output that is not an int8-stored weight's decoder")
        target = self.cast_target()
        if target != np.int8:
            raise self.fail(f"casts the decoded weight {source!r} to {target}; an int8-stored weight is cast to "
                            "INT8, then read by DequantizeLinear")
        readers = self.readers[out]
        if out in self.graph_outputs or len(readers) != 1 or readers[0].op_type != "DequantizeLinear" \
                or list(readers[0].input).index(out) != 0:
            raise self.fail(f"its output {out!r} is read by {self.reader_list(out)}; an int8-stored weight is read "
                            "by one DequantizeLinear (the filter of a Conv, Gemm or MatMul)")
        index, shape = self.decoded[source]
        self.stored_casts[out] = StoredWeight(index, shape)

    def stored_dequantize(self, node: onnx.NodeProto) -> None:
        """The DequantizeLinear of an int8-stored weight: symmetric scales, read only as a filter."""
        weight = self.stored_casts[node.input[0]]
        scale, zero_point, _, axis = self.qdq_parameters(node)
        if (zero_point != 0).any():
            raise self.fail(f"zero points {np.unique(zero_point).tolist()[:4]}: an int8-stored weight is symmetric "
                            "(zero point 0)")
        out = node.output[0]
        for reader in self.readers[out]:
            if reader.op_type not in FILTER_READERS or list(reader.input).index(out) != 1:
                raise self.fail(f"the int8-stored weight {out!r} is read by {self.reader_list(out)}; it can only be "
                                f"the filter (input 1) of {', '.join(FILTER_READERS)}")
        if out in self.graph_outputs:
            raise self.fail(f"the int8-stored weight {out!r} is a graph output; it can only be a filter")
        weight.scale, weight.axis = scale, axis
        self.stored[out] = weight
        self.values[out] = Value(weight.shape)

    def filter(self, name: str, channels: int, axis: int, perm, dimension: int,
               per_channel: bool | None = None) -> tuple[int, np.ndarray, bool]:
        """The int8 filter tensor of weight ``name`` (output channels along ``axis``) in TFLite's layout
        (``perm`` of the ONNX axes), quantized along ``dimension``: a constant, or for an int8-stored
        weight [TRANSPOSE / RESHAPE of the float32 decoded weight →] CAST(float32 → int8), so that only the
        filter is an int8 tensor (XNNPACK refuses one without quantization parameters, and a quantized copy
        before a layout op would store the scales twice). Returns (tensor, scales, per channel)."""
        stored = self.stored.get(name)
        if stored is None:
            values, scale = self.symmetric_weight(name, channels, axis)
            per_channel = self.weights[name].axis is not None if per_channel is None else per_channel
            quantization = self.filter_quantization(scale, channels, dimension, per_channel)
            return (self.builder.constant(f"{name}_int8", np.ascontiguousarray(values.transpose(perm)), quantization),
                    scale, per_channel)
        if stored.axis is not None and stored.axis % len(stored.shape) != axis:
            raise self.fail(f"weight {name!r} is quantized per channel along axis {stored.axis}; TFLite needs "
                            f"the output-channel axis ({axis})")
        scale = np.asarray(np.broadcast_to(stored.scale.ravel(), (channels,)) if stored.scale.size == 1
                           else stored.scale, np.float64)
        per_channel = stored.axis is not None if per_channel is None else per_channel
        key = (tuple(perm), dimension, per_channel)
        if key not in stored.filters:
            shape = tuple(stored.shape[p] for p in perm)
            quantization = self.filter_quantization(scale, channels, dimension, per_channel)
            laid = stored.layouts.get(tuple(perm))
            if laid is None:  # the float32 decoded weight in TFLite's layout: only the filter is int8 (and quantized)
                if list(perm) == sorted(perm):
                    laid = stored.decoded
                else:
                    laid = self.builder.tensor(f"{name}_tflite", shape, np.float32)
                    moved = [a for a in range(len(perm)) if stored.shape[a] != 1]
                    if moved == [a for a in perm if stored.shape[a] != 1]:
                        self.emit(OP.RESHAPE, [stored.decoded, self.int32(shape)], [laid], version=1)
                    else:
                        self.emit(OP.TRANSPOSE, [stored.decoded, self.int32(perm)], [laid], version=1)
                stored.layouts[tuple(perm)] = laid
            out = self.builder.tensor(f"{name}_int8", shape, np.int8, quantization=quantization)
            self.emit(OP.CAST, [laid], [out], version=CAST_VERSION)
            stored.filters[key] = out
        return stored.filters[key], scale, per_channel

    @staticmethod
    def filter_quantization(scale: np.ndarray, channels: int, dimension: int, per_channel: bool) -> Quantization:
        if per_channel:
            return Quantization(scale.astype(np.float32), np.zeros(channels, np.int64), dimension)
        return Quantization(scale[:1].astype(np.float32), np.zeros(1, np.int64))

    # ---- the walk --------------------------------------------------------------------------
    def convert(self) -> bytes:
        inputs = []
        for value in self.inputs:
            shape = tuple(np.shape(self.static[value.name]))
            inputs.append(self.quantized_input(value.name, shape))
        for node in self.model.graph.node:
            self.node = node
            if id(node) in self.absorbed or self.int8_storage(node):
                continue
            if node.op_type == "DequantizeLinear":
                self.dequantize(node)
            elif node.op_type == "QuantizeLinear":
                self.quantize(node)
            elif not self._fold(node):
                handler = QUANT_HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
                if handler is None:
                    raise self.fail(f"op {node.op_type} has no int8 TFLite lowering; supported between "
                                    f"QuantizeLinear / DequantizeLinear: {', '.join(sorted(QUANT_HANDLERS))}")
                handler(self, node)
        outputs = [self.quantized_output(value.name) for value in self.model.graph.output]
        return self.builder.serialize(inputs, outputs, description="edgepack int8")

    def verifiable(self, data: bytes) -> bytes:
        """The model verification runs: ``data`` with its int8-stored weights decoded at load into constant
        int8 filters (as LiteRT / tflite-runtime load it through edgepack; LiteRT alone has no decoder kernel)."""
        if not self.stored:
            return data
        from edgepack.runtime_kernels.decode_tflite import decoded_tflite_content

        return decoded_tflite_content(data, "the converted model") or data

    def quantized_input(self, name: str, shape) -> int:
        """A model input: float (each QuantizeLinear reading it becomes a QUANTIZE) or, for int8
        IO, the int8 tensor of its one QuantizeLinear."""
        readers = self.readers[name]
        if not readers or any(r.op_type != "QuantizeLinear" for r in readers):
            raise ConversionError(f"input {name!r} is read by {[r.op_type for r in readers]}; a QDQ model quantizes "
                                  "each input with QuantizeLinear before any op reads it")
        if self.io_type == "float":
            index = self.builder.tensor(name, shape, np.float32)
            self.values[name] = Value(shape, index=index)
            return index
        if len(readers) != 1:
            raise ConversionError(f"input {name!r} is quantized by {len(readers)} QuantizeLinear nodes; int8 IO needs "
                                  "one (convert with float IO instead)")
        self.node = readers[0]
        params = self.activation_parameters(readers[0])
        index = self.new_tensor(name, shape, params)
        self.values[name] = self.values[readers[0].output[0]] = Value(shape, index=index)
        self.params[readers[0].output[0]] = self.input_params[name] = params
        self.absorbed.add(id(readers[0]))
        return index

    def quantized_output(self, name: str) -> int:
        """A model output: the DEQUANTIZE of its int8 tensor, or (int8 IO) that tensor, in ONNX layout."""
        producer = next((n for n in self.model.graph.node if name in n.output), None)
        if producer is None or producer.op_type != "DequantizeLinear" or producer.input[0] not in self.params:
            raise ConversionError(f"output {name!r} is not the DequantizeLinear of a quantized tensor; a fully int8 "
                                  "model ends each output with QuantizeLinear → DequantizeLinear")
        self.node = producer
        source = producer.input[0]
        x = self.qtensor(source, "onnx")
        self.output_params[name] = self.params[source]
        if self.io_type == "int8":
            return x
        out = self.builder.tensor(name, self.values[source].shape, np.float32)
        self.emit(OP.DEQUANTIZE, [x], [out])
        return out

    def dequantize(self, node: onnx.NodeProto) -> None:
        """A constant's DequantizeLinear records a quantized weight; an activation's aliases its input."""
        source, out = node.input[0], node.output[0]
        value = self.values[source]
        if value.const is not None:
            scale, zero_point, stored, axis = self.qdq_parameters(node)
            shift = 128 if stored == np.uint8 else 0
            values = value.const.astype(np.int64) - shift
            values = values if stored == np.int32 else values.astype(np.int8)
            self.weights[out] = QuantConstant(values, scale, zero_point, axis)
            self.values[out] = Value(value.const.shape, const=np.asarray(self.static[out]))
            return
        if source not in self.params:
            raise self.fail(f"input {source!r} is not the output of a QuantizeLinear")
        self.params[out] = self.activation_parameters(node)
        if self.params[out] != self.params[source]:
            raise self.fail(f"its scale / zero point {self.params[out]} differ from its QuantizeLinear's "
                            f"{self.params[source]}")
        self.values[out] = self.values[source]

    def quantize(self, node: onnx.NodeProto) -> None:
        """A QuantizeLinear not absorbed by its producer: of a constant (folded), of a float input
        (QUANTIZE), or of an already quantized tensor (a requantizing QUANTIZE)."""
        source = node.input[0]
        value = self.values[source]
        if value.const is not None:
            self._fold(node)
            return
        params = self.activation_parameters(node)
        out_shape = self.tflite_shape(value.shape, value.nhwc)
        out = self.new_tensor(node.output[0], out_shape, params)
        if source in self.params:
            x = value.index
        elif source in {i.name for i in self.inputs} and self.io_type == "float":
            x = value.index
        else:
            raise self.fail(f"input {source!r} is produced by an op that is not lowered to int8 here")
        self.emit(OP.QUANTIZE, [x], [out])
        self.values[node.output[0]] = Value(value.shape, index=out, nhwc=value.nhwc)
        self.params[node.output[0]] = params


# ---- convolution and dense layers -----------------------------------------------------------
@quant_handles("Conv")
def quant_conv(c: QuantConverter, node: onnx.NodeProto) -> None:
    """CONV_2D, or DEPTHWISE_CONV_2D when group == in channels; OHWI / 1HWO per-channel weights."""
    x_value = c.values[node.input[0]]
    if len(x_value.shape) != 4:
        raise c.fail(f"only 2-D convolutions have an int8 lowering; input shape {x_value.shape}")
    if c.text("auto_pad", "NOTSET") != "NOTSET":
        raise c.fail("auto_pad is not supported; export with explicit pads")
    x_params = c.activation(node.input[0])
    x = c.qtensor(node.input[0], "nhwc")
    weight_shape = c.values[node.input[1]].shape
    out_channels, in_per_group = weight_shape[:2]
    in_channels, group = x_value.shape[1], c.attribute("group", 1)
    depthwise = group > 1 and group == in_channels and in_per_group == 1
    if group > 1 and not depthwise:
        raise c.fail(f"grouped convolution (group {group}) has no int8 lowering; supported: group 1 or depthwise")
    perm, dimension = ((1, 2, 3, 0), 3) if depthwise else (TO_NHWC, 0)
    weight, scale, _ = c.filter(node.input[1], out_channels, 0, perm, dimension, per_channel=True)
    bias = c.bias(node.input[2] if len(node.input) > 2 else None, out_channels, x_params.scale, scale)
    kernel, strides = tuple(weight_shape[2:]), c.attribute("strides", [1, 1])
    dilations, pads = c.attribute("dilations", [1, 1]), c.attribute("pads", [0, 0, 0, 0])
    x_shape = c.tflite_shape(x_value.shape, True)
    padding = tflite_padding(x_shape[1:3], kernel, strides, dilations, pads)
    if padding is None:  # int8 PAD fills with the zero point: real 0, as ONNX pads
        x = pad_int8(c, x, node.input[0], x_shape, pads, x_params)
        padding = tflite.Padding.VALID
    out, _, fused = c.write_output(node, np.shape(c.static[node.output[0]]), True, fusable=True)
    fields = dict(Padding=padding, StrideH=strides[0], StrideW=strides[1], DilationHFactor=dilations[0],
                  DilationWFactor=dilations[1], FusedActivationFunction=fused)
    if depthwise:
        c.emit(OP.DEPTHWISE_CONV_2D, [x, weight, bias], [out],
               Options("DepthwiseConv2DOptions", fields | {"DepthMultiplier": out_channels // group}))
    else:
        c.emit(OP.CONV_2D, [x, weight, bias], [out], Options("Conv2DOptions", fields))


def pad_int8(c: QuantConverter, x: int, name: str, shape, pads, params: Int8) -> int:
    """An int8 PAD of an NHWC tensor by ONNX pads [top, left, bottom, right]."""
    paddings = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
    padded = (shape[0], shape[1] + pads[0] + pads[2], shape[2] + pads[1] + pads[3], shape[3])
    out = c.new_tensor(f"{name}_padded{len(c.builder.tensors)}", padded, params)
    c.emit(OP.PAD, [x, c.int32(paddings)], [out])
    return out


@quant_handles("Gemm", "MatMul")
def quant_dense(c: QuantConverter, node: onnx.NodeProto) -> None:
    """FULLY_CONNECTED for A · B (+ C) with a constant quantized B; per-channel along its outputs."""
    if node.op_type == "Gemm" and (c.attribute("alpha", 1.0) != 1.0 or c.attribute("beta", 1.0) != 1.0
                                   or c.attribute("transA", 0)):
        raise c.fail("Gemm with alpha ≠ 1, beta ≠ 1 or transA has no int8 lowering")
    x_value, b_shape = c.values[node.input[0]], c.values[node.input[1]].shape
    if len(b_shape) != 2 or len(x_value.shape) < 2:
        raise c.fail(f"needs a 2-D constant weight and an input of rank ≥ 2, got {b_shape} and {x_value.shape}")
    x_params = c.activation(node.input[0])
    trans_b = node.op_type == "Gemm" and c.attribute("transB", 0)
    out_channels = b_shape[0] if trans_b else b_shape[1]
    weight, scale, per_channel = c.filter(node.input[1], out_channels, 0 if trans_b else 1,
                                          (0, 1) if trans_b else (1, 0), 0)
    bias_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else None
    bias = c.bias(bias_name, out_channels, x_params.scale, scale, per_channel)
    keep = len(x_value.shape) > 2
    out, _, fused = c.write_output(node, np.shape(c.static[node.output[0]]), False, fusable=True)
    c.emit(OP.FULLY_CONNECTED, [c.qtensor(node.input[0]), weight, bias], [out],
           Options("FullyConnectedOptions", {"KeepNumDims": keep, "FusedActivationFunction": fused}),
           version=5 if keep else 4)


# ---- element-wise ---------------------------------------------------------------------------
@quant_handles("Add", "Mul")
def quant_binary(c: QuantConverter, node: onnx.NodeProto) -> None:
    """int8 ADD / MUL (each operand keeps its own scale), NHWC when an activation is."""
    out_shape = np.shape(c.static[node.output[0]])
    rank = len(out_shape)
    activations = [name for name in node.input if name in c.params]
    if not activations:
        raise c.fail("needs at least one quantized activation input")
    nhwc = rank == 4 and any(c.values[n].nhwc for n in activations) and \
        all(len(c.values[n].shape) == 4 for n in activations)
    inputs = []
    for name in node.input:
        if name in c.params:
            inputs.append(c.qtensor(name, "nhwc" if nhwc else "onnx"))
        else:
            inputs.append(c.constant_operand(name, nhwc, rank))
    out, _, fused = c.write_output(node, out_shape, nhwc, fusable=True)
    code, kind = (OP.ADD, "AddOptions") if node.op_type == "Add" else (OP.MUL, "MulOptions")
    c.emit(code, inputs, [out], Options(kind, {"FusedActivationFunction": fused}))


@quant_handles("Relu", "Clip")
def quant_relu(c: QuantConverter, node: onnx.NodeProto) -> None:
    """A Relu / Clip not fused into an op: int8 RELU / RELU6 / RELU_N1_TO_1 (which requantize)."""
    codes = {ACTIVATIONS.RELU: OP.RELU, ACTIVATIONS.RELU6: OP.RELU6, ACTIVATIONS.RELU_N1_TO_1: OP.RELU_N1_TO_1}
    code = codes[c.fused_activation(node)]
    value = c.values[node.input[0]]
    c.activation(node.input[0])
    x = c.qtensor(node.input[0], "nhwc" if value.nhwc else "onnx")
    out, _, _ = c.write_output(node, value.shape, value.nhwc)
    c.emit(code, [x], [out])


# ---- pooling and reductions ---------------------------------------------------------------------
def same_params_op(c: QuantConverter, node: onnx.NodeProto, code: int, inputs: list[int], x_params: Int8,
                   shape, nhwc: bool, options: Options | None = None) -> None:
    """An op whose int8 kernel needs its output parameters equal to its input's: written with the
    input's, then requantized to the QuantizeLinear's when they differ."""
    out, params, _ = c.write_output(node, shape, nhwc)
    if params == x_params:
        c.emit(code, inputs, [out], options)
        return
    raw = c.new_tensor(f"{node.output[0]}_raw", c.builder.tensors[out].shape, x_params)
    c.emit(code, inputs, [raw], options)
    c.emit(OP.QUANTIZE, [raw], [out])


@quant_handles("MaxPool", "AveragePool")
def quant_pool(c: QuantConverter, node: onnx.NodeProto) -> None:
    """MAX_POOL_2D / AVERAGE_POOL_2D where TFLite's SAME or VALID windows are ONNX's."""
    x_value = c.values[node.input[0]]
    if len(x_value.shape) != 4 or len([n for n in node.output if n]) > 1:
        raise c.fail("only 2-D pools with one output have an int8 lowering")
    kernel, strides = spatial_2d(c, 4, "kernel_shape", [1], 2), spatial_2d(c, 4, "strides", [1], 2)
    if spatial_2d(c, 4, "dilations", [1], 2) != [1, 1]:
        raise c.fail("dilated pools have no int8 lowering")
    x_params = c.activation(node.input[0])
    in_hw = c.tflite_shape(x_value.shape, True)[1:3]
    out_hw = pool_output_hw(c, node.output[0], 4, in_hw, kernel, strides)
    pads = pool_pads(c, 4, in_hw, out_hw, kernel, strides)
    padding = tflite_padding(in_hw, kernel, strides, [1, 1], pads)
    direct = [-(-size // s) if padding == tflite.Padding.SAME else (size - k) // s + 1
              for size, k, s in zip(in_hw, kernel, strides)]
    include_pad = node.op_type == "AveragePool" and bool(c.attribute("count_include_pad", 0))
    if padding is None or direct != list(out_hw) or (padding == tflite.Padding.SAME and include_pad):
        raise c.fail(f"pads {pads} (ceil_mode {c.attribute('ceil_mode', 0)}, count_include_pad {int(include_pad)}) "
                     "are not TFLite's SAME or VALID windows; the int8 path lowers those only")
    code = OP.MAX_POOL_2D if node.op_type == "MaxPool" else OP.AVERAGE_POOL_2D
    same_params_op(c, node, code, [c.qtensor(node.input[0], "nhwc")], x_params,
                   np.shape(c.static[node.output[0]]), True, pool_options(padding, kernel, strides))


@quant_handles("GlobalAveragePool", "ReduceMean")
def quant_mean(c: QuantConverter, node: onnx.NodeProto) -> None:
    """int8 MEAN (its output may have other parameters) over the spatial axes or ReduceMean's axes."""
    value = c.values[node.input[0]]
    rank = len(value.shape)
    c.activation(node.input[0])
    if node.op_type == "GlobalAveragePool":
        axes, keep = list(range(2, rank)), True
    else:
        axes = c.attribute("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = np.ravel(c.const(node.input[1], "axes")).tolist()
        axes = [int(a) % rank for a in (axes if axes is not None else range(rank))]
        keep = bool(c.attribute("keepdims", 1))
    nhwc = value.nhwc and keep
    x = c.qtensor(node.input[0], "nhwc" if nhwc else "onnx")
    tflite_axes = sorted(c.tflite_axis(a, True) for a in axes) if nhwc else axes
    out, _, _ = c.write_output(node, np.shape(c.static[node.output[0]]), nhwc)
    c.emit(OP.MEAN, [x, c.int32(tflite_axes)], [out], Options("ReducerOptions", {"KeepDims": keep}))


# ---- layout -------------------------------------------------------------------------------------
@quant_handles("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def quant_reshape(c: QuantConverter, node: onnx.NodeProto) -> None:
    """int8 RESHAPE (the data is unchanged, so the output shares the input's parameters)."""
    shape = np.shape(c.static[node.output[0]])
    x_params = c.activation(node.input[0])
    same_params_op(c, node, OP.RESHAPE, [c.qtensor(node.input[0]), c.int32(shape)], x_params, shape, False)


@quant_handles("Transpose")
def quant_transpose(c: QuantConverter, node: onnx.NodeProto) -> None:
    value = c.values[node.input[0]]
    x_params = c.activation(node.input[0])
    perm = c.attribute("perm", list(range(len(value.shape)))[::-1])
    same_params_op(c, node, OP.TRANSPOSE, [c.qtensor(node.input[0]), c.int32(perm)], x_params,
                   np.shape(c.static[node.output[0]]), False)


@quant_handles("Identity", "Dropout")
def quant_identity(c: QuantConverter, node: onnx.NodeProto) -> None:
    c.activation(node.input[0])
    c.values[node.output[0]] = c.values[node.input[0]]
    c.params[node.output[0]] = c.params[node.input[0]]


@quant_handles("Concat")
def quant_concat(c: QuantConverter, node: onnx.NodeProto) -> None:
    """int8 CONCATENATION: inputs requantized to the output's parameters where they differ."""
    values = [c.values[name] for name in node.input]
    for name in node.input:
        c.activation(name)
    rank = len(values[0].shape)
    axis = c.axis(rank)
    nhwc = rank == 4 and all(v.nhwc for v in values)
    out, params, _ = c.write_output(node, np.shape(c.static[node.output[0]]), nhwc)
    inputs = [c.requantize(c.qtensor(name, "nhwc" if nhwc else "onnx"), c.params[name], params, name)
              for name in node.input]
    c.emit(OP.CONCATENATION, inputs, [out], Options("ConcatenationOptions", {"Axis": c.tflite_axis(axis, nhwc)}))


@quant_handles("Softmax")
def quant_softmax(c: QuantConverter, node: onnx.NodeProto) -> None:
    """int8 SOFTMAX over the last axis; its output is scale 1/256, zero point −128 (TFLite's only
    int8 softmax output), requantized to the QuantizeLinear's parameters when they differ."""
    value = c.values[node.input[0]]
    c.activation(node.input[0])
    rank = len(value.shape)
    if c.axis(rank, -1 if c.opset >= 13 else 1) != rank - 1:
        raise c.fail("only a softmax over the last axis has an int8 lowering")
    x = c.qtensor(node.input[0])
    out, params, _ = c.write_output(node, value.shape, False)
    fixed = Int8(*SOFTMAX_OUTPUT)
    raw = out if params == fixed else c.new_tensor(f"{node.output[0]}_softmax", value.shape, fixed)
    c.emit(OP.SOFTMAX, [x], [raw], Options("SoftmaxOptions", {"Beta": 1.0}))
    if raw != out:
        c.emit(OP.QUANTIZE, [raw], [out])
