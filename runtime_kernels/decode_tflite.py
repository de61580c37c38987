"""Decode at load for TFLite: a flatbuffer whose storage-compressed weights are constant buffers.

A CUSTOM ``ai.edgepack.HashedWeight``, ``CodebookWeight`` or ``HyperWeight`` op with constant inputs is removed and
its output tensor becomes a constant buffer (the TRANSPOSE / RESHAPE that lays it out for CONV_2D / DEPTHWISE /
FULLY_CONNECTED is folded too); an expand-mode ``ai.edgepack.HashedMatMul`` becomes a
FULLY_CONNECTED (or a 1×1 CONV_2D on an NHWC input) with the decoded weight. A per-channel MUL,
ADD (a folded BatchNorm) and RELU / RELU6 right after a convolution whose weights are now constant
are folded into it, so LiteRT / XNNPACK see the same graph as for the dense model. An int8-stored
weight (docs/ops.md "int8 storage": an int8 buffer → CAST to float32 → decoder [→ TRANSPOSE / RESHAPE in float32] → CAST
to int8 → the filter of an int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED) becomes one constant int8 filter
with the filter tensor's per-channel quantization. Read with the ``tflite`` package, written with its
builders and ``flatbuffers``; the file on disk is unchanged.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite
from flatbuffers import flexbuffers

from .decode_at_load import DECODED_OPS, DecodeError, decode_node, first_non_int8, validation_limits
from .op_spec import DOMAIN, OPS

__all__ = ["decoded_tflite", "decoded_tflite_content"]

OP = tflite.BuiltinOperator
_OPTION_KINDS = {v: k for k, v in vars(tflite.BuiltinOptions).items() if not k.startswith("_")}
_FLOAT32, _INT8 = tflite.TensorType.FLOAT32, tflite.TensorType.INT8
_ACTIVATIONS = {OP.RELU: tflite.ActivationFunctionType.RELU, OP.RELU6: tflite.ActivationFunctionType.RELU6}
_CONVS = (OP.CONV_2D, OP.DEPTHWISE_CONV_2D)


@dataclass
class _Tensor:
    name: bytes
    shape: list[int]
    type: int
    data: bytes | np.ndarray | None  # a constant's buffer (little-endian bytes or a float32 array)
    signature: list[int] | None = None
    variable: bool = False
    quantization: tuple[np.ndarray, np.ndarray, int] | None = None  # scales, zero points, quantized dimension


@dataclass
class _Op:
    code: tuple[int, str | None, int]  # (builtin code, custom code, version)
    inputs: list[int]
    outputs: list[int]
    kind: str | None = None  # builtin options table, e.g. "Conv2DOptions"
    fields: dict = field(default_factory=dict)  # its fields: scalars, or numpy arrays for vectors
    custom: bytes | None = None
    index: int = -1  # its position in the model read (messages)

    @property
    def custom_op(self) -> str | None:
        custom = self.code[1]
        return custom[len(DOMAIN) + 1:] if custom and custom.startswith(f"{DOMAIN}.") else None


def _refuse(where: str, what: str) -> DecodeError:
    return DecodeError(f"{where}: decode at load does not carry over {what}; load it with "
                       "decode_at_load=False to run the edgepack delegate on it as it is")


def _options(op, where: str) -> tuple[str | None, dict]:
    """The builtin options of ``op`` as (table name, {field: value}), read through the table's
    generated accessors (every ``<Kind>Add<Field>`` builder has a ``<Field>`` reader)."""
    kind = _OPTION_KINDS.get(op.BuiltinOptionsType())
    table = op.BuiltinOptions()
    if not op.BuiltinOptionsType() or table is None:
        return None, {}
    if kind is None:
        raise _refuse(where, f"builtin options of type {op.BuiltinOptionsType()}, unknown to the tflite package")
    module = importlib.import_module(f"tflite.{kind}")
    reader = getattr(module, kind)()
    reader.Init(table.Bytes, table.Pos)
    fields, prefix = {}, f"{kind}Add"
    for name in dir(module):
        if not name.startswith(prefix):
            continue
        member = name[len(prefix):]
        if hasattr(reader, f"{member}AsNumpy"):
            if not getattr(reader, f"{member}IsNone")():
                fields[member] = np.asarray(getattr(reader, f"{member}AsNumpy")())
            continue
        value = getattr(reader, member)()
        if not isinstance(value, (int, float, bool)):
            raise _refuse(where, f"the {kind} field {member} (a nested table)")
        fields[member] = value
    return kind, fields


def _read(model, where: str) -> tuple[list[_Tensor], list[_Op], list[int], list[int], bytes]:
    """Tensors, operators, inputs, outputs and description of the model's one subgraph."""
    if model.SubgraphsLength() != 1 or model.SignatureDefsLength() or model.MetadataLength():
        raise _refuse(where, "several subgraphs, signature defs or metadata")
    graph = model.Subgraphs(0)
    tensors = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        quantization = tensor.Quantization()
        if (quantization is not None and (quantization.DetailsType() or quantization.MinLength()
                                          or quantization.MaxLength())) or tensor.Sparsity() is not None \
                or tensor.VariantTensorsLength():
            raise _refuse(where, f"tensor {t}'s quantization details or min / max, sparsity or variant tensors")
        affine = None
        if quantization is not None and (quantization.ScaleLength() or quantization.ZeroPointLength()):
            affine = (quantization.ScaleAsNumpy() if quantization.ScaleLength() else np.zeros(0, np.float32),
                      quantization.ZeroPointAsNumpy() if quantization.ZeroPointLength() else np.zeros(0, np.int64),
                      quantization.QuantizedDimension())
        buffer = model.Buffers(tensor.Buffer())
        if buffer.Offset() > 1:
            raise _refuse(where, f"tensor {t}'s buffer stored outside the flatbuffer")
        data = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None
        signature = tensor.ShapeSignatureAsNumpy().tolist() if tensor.ShapeSignatureLength() else None
        tensors.append(_Tensor(tensor.Name() or b"", tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else [],
                               tensor.Type(), data, signature, bool(tensor.IsVariable()), affine))
    ops = []
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        if op.BuiltinOptions2Type() or op.IntermediatesLength() or op.MutatingVariableInputsLength() \
                or op.LargeCustomOptionsSize():
            raise _refuse(where, f"operator {o}'s options 2, intermediates, mutating inputs or large options")
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode().decode(errors="replace") if code.CustomCode() else None
        kind, fields = _options(op, where)
        ops.append(_Op((builtin, custom, code.Version()), op.InputsAsNumpy().tolist() if op.InputsLength() else [],
                       op.OutputsAsNumpy().tolist() if op.OutputsLength() else [], kind, fields,
                       op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else None, o))
    inputs = graph.InputsAsNumpy().tolist() if graph.InputsLength() else []
    outputs = graph.OutputsAsNumpy().tolist() if graph.OutputsLength() else []
    return tensors, ops, inputs, outputs, model.Description() or b"edgepack"


_DTYPES = {tflite.TensorType.FLOAT32: "<f4", tflite.TensorType.INT32: "<i4", tflite.TensorType.UINT8: "u1",
           tflite.TensorType.INT8: "i1"}


def _array(tensor: _Tensor) -> np.ndarray:
    data = b"" if tensor.data is None else tensor.data
    return np.frombuffer(data, _DTYPES.get(tensor.type, "<f4")).reshape(tensor.shape)


def _const(tensors: list[_Tensor], index: int) -> bool:
    """A tensor with data, or one of a static count 0 (a fully pruned layer's empty indices), as the C decoders."""
    if index < 0:
        return False
    t = tensors[index]
    return t.data is not None or (0 in t.shape and not t.variable and (t.signature is None or -1 not in t.signature))


def _decodable(op: _Op, tensors: list[_Tensor], storage: dict[int, _Op]) -> dict | None:
    """The attributes of an expand-mode storage-compressed op whose weights are all constant or
    int8-stored (``storage``; one with a fused epilogue, ``activation`` or ``scale``, stays on the
    delegate, which applies it)."""
    name = op.custom_op
    if name not in DECODED_OPS or not op.custom:
        return None
    attributes = OPS[name].defaults | dict(flexbuffers.Loads(op.custom))
    slots = dict(zip(OPS[name].input_names, op.inputs))
    weights = [slots[s] for s in OPS[name].weight_inputs if slots.get(s, -1) >= 0]
    if attributes.get("mode", 0) != 0 or attributes.get("activation", 0) != 0 or slots.get("scale", -1) >= 0:
        return None
    if not weights or not all(_const(tensors, i) or i in storage for i in weights):
        return None
    return attributes


def _set_const(tensors: list[_Tensor], index: int, array: np.ndarray) -> None:
    tensors[index].data = np.ascontiguousarray(array, "i1" if tensors[index].type == _INT8 else "<f4")
    tensors[index].shape = list(array.shape)


def _storage_casts(ops: list[_Op], tensors: list[_Tensor], outputs: list[int]) -> dict[int, _Op]:
    """The CAST (an int8 constant → float32, read by one decoded op's weight input only) of each
    int8-stored weight, by its float32 tensor, as the C decode at load's storage_cast (exporter/validate.py
    has refused a CAST anywhere but in HashedWeight 'buckets' / CodebookWeight 'codebook')."""
    uses, found = _readers(ops, outputs), {}
    producer = {t: op for op in ops for t in op.outputs}
    for op in ops:
        name = op.custom_op
        if name not in DECODED_OPS:
            continue
        for slot, t in zip(OPS[name].input_names, op.inputs):
            cast = producer.get(t) if t >= 0 and slot in OPS[name].weight_inputs else None
            if cast is None or cast.code[0] != OP.CAST or len(cast.inputs) != 1 or len(cast.outputs) != 1 \
                    or cast.inputs[0] < 0 or uses.get(t) != 1:
                continue
            source, value = tensors[cast.inputs[0]], tensors[t]
            count = int(np.prod(source.shape, dtype=np.int64))
            if source.type == _INT8 and value.type == _FLOAT32 and value.data is None \
                    and min(source.shape, default=0) >= 0 and count == int(np.prod(value.shape, dtype=np.int64)) \
                    and len(b"" if source.data is None else source.data) == count:
                found[t] = cast
    return found


def _int8_weight(value: np.ndarray, decoder: str, cast: _Op, tensors: list[_Tensor]) -> np.ndarray:
    """A decoded weight through CAST(float32 → int8): every value an integer in [-128, 127], else refused
    (the C decode at load's words)."""
    flat = value.reshape(-1)
    bad = first_non_int8(flat)
    if bad is not None:
        from edgepack.exporter.validate import InvalidNodeError

        name = tensors[cast.outputs[0]].name.decode(errors="replace")[:80]
        raise InvalidNodeError(f"edgepack {decoder}: CAST node #{cast.index} (output '{name}') to int8 of its output: "
                               f"decoded value {float(flat[bad]):g} at index {bad} is not an integer in "
                               "[-128, 127]; an int8 weight decodes exactly only from int8 buckets / codebook values "
                               "(HashedWeight with num_hashes = 1)")
    return value.astype(np.int8)


def _constant(tensors: list[_Tensor], name: bytes, array: np.ndarray) -> int:
    array = np.ascontiguousarray(array, "<f4")
    tensors.append(_Tensor(name, list(array.shape), _FLOAT32, array))
    return len(tensors) - 1


def _decode(ops: list[_Op], tensors: list[_Tensor], storage: dict[int, _Op]) -> tuple[list[_Op], dict[int, str]]:
    """The operator list with every decodable op replaced by constants or a dense builtin (the
    int8-stored weights' CASTs gone with their decoders), and each decoder's output with its label."""
    from edgepack.exporter.validate import InvalidNodeError

    kept, decoded, casts = [], {}, set()
    for op in ops:
        attributes = _decodable(op, tensors, storage)
        if attributes is None:
            kept.append(op)
            continue
        slots = dict(zip(OPS[op.custom_op].input_names, op.inputs))
        weights = {}
        for slot in OPS[op.custom_op].weight_inputs:
            t = slots.get(slot, -1)
            weights[slot] = None if t < 0 else _array(tensors[t]) if t not in storage else \
                _array(tensors[storage[t].inputs[0]]).astype(np.float32)
            if t in storage:
                casts.add(id(storage[t]))
        out = op.outputs[0]
        label = f"{op.custom_op} node #{op.index} (output '{tensors[out].name.decode(errors='replace')[:80]}')"
        if tensors[out].data is not None:  # the delegate's words for a constant output
            raise InvalidNodeError(f"edgepack {label}: output (tensor {out}) has allocation type kTfLiteMmapRo; "
                                   "an op output must be a writable arena, dynamic or custom buffer, not a constant")
        weight = decode_node(op.custom_op, attributes, weights)
        if OPS[op.custom_op].kind == "decoder":
            _set_const(tensors, out, weight)
            decoded[out] = label
            continue
        x, name = slots["X"], tensors[out].name
        bias = slots.get("bias", -1)
        if len(tensors[x].shape) == 4:  # NHWC activations: a 1×1 convolution over the channels
            if bias < 0:
                bias = _constant(tensors, name + b"_bias", np.zeros(weight.shape[0], np.float32))
            w = _constant(tensors, name + b"_decoded_weight", weight.reshape(weight.shape[0], 1, 1, -1))
            kept.append(_Op((OP.CONV_2D, None, 1), [x, w, bias], [out], "Conv2DOptions",
                            {"Padding": tflite.Padding.VALID, "StrideW": 1, "StrideH": 1,
                             "DilationWFactor": 1, "DilationHFactor": 1}))
        else:
            w = _constant(tensors, name + b"_decoded_weight", weight)
            kept.append(_Op((OP.FULLY_CONNECTED, None, 1), [x, w, bias], [out], "FullyConnectedOptions",
                            {"KeepNumDims": len(tensors[x].shape) > 2}))
    return [op for op in kept if id(op) not in casts], decoded


def _fold_layout(ops: list[_Op], tensors: list[_Tensor], decoded: dict[int, str]) -> list[_Op]:
    """TRANSPOSE / RESHAPE of a float32 constant (a decoded weight's layout), and CAST(float32 → int8) of a
    decoded weight, after its layout op (an int8-stored one: exact, else refused; only the filter is int8), as a
    constant, as the C decode at load's fold_layout."""
    kept = []
    for op in ops:
        code, ins = op.code[0], op.inputs
        if code == OP.CAST and ins and ins[0] in decoded and len(op.outputs) == 1 \
                and tensors[ins[0]].type == _FLOAT32 and tensors[op.outputs[0]].type == _INT8 \
                and tensors[op.outputs[0]].data is None and op.outputs[0] not in decoded:
            value, shape = _array(tensors[ins[0]]), tensors[op.outputs[0]].shape
            if len(shape) == value.ndim and min(shape, default=0) >= 0 and int(np.prod(shape)) == value.size:
                _set_const(tensors, op.outputs[0], _int8_weight(value, decoded[ins[0]], op, tensors))
                decoded[op.outputs[0]] = decoded[ins[0]]
                continue
        if code in (OP.TRANSPOSE, OP.RESHAPE) and ins and _const(tensors, ins[0]) \
                and tensors[ins[0]].type == _FLOAT32 and tensors[op.outputs[0]].type == _FLOAT32 \
                and tensors[op.outputs[0]].data is None:
            value = _array(tensors[ins[0]])
            if code == OP.TRANSPOSE and _const(tensors, ins[1]):
                value = value.transpose(np.frombuffer(tensors[ins[1]].data, "<i4"))
            elif code == OP.RESHAPE:
                value = value.reshape(tensors[op.outputs[0]].shape) \
                    if value.size == np.prod(tensors[op.outputs[0]].shape) else None
            else:
                value = None
            if value is not None:
                _set_const(tensors, op.outputs[0], value)
                if ins[0] in decoded:
                    decoded[op.outputs[0]] = decoded[ins[0]]
                continue
        kept.append(op)
    return kept


def _readers(ops: list[_Op], outputs: list[int]) -> dict[int, int]:
    count: dict[int, int] = {}
    for index in [i for op in ops for i in op.inputs] + outputs:
        count[index] = count.get(index, 0) + 1
    return count


def _channel_constant(tensors: list[_Tensor], index: int, channels: int) -> np.ndarray | None:
    """A constant that broadcasts over the last (channel) axis only, as [channels]."""
    if not _const(tensors, index) or tensors[index].type != _FLOAT32:
        return None
    value = _array(tensors[index])
    if value.size == 1:
        return np.full(channels, value.reshape(-1)[0], np.float32)
    if value.shape[-1:] == (channels,) and value.size == channels:
        return value.reshape(channels)
    return None


def _fold_epilogues(ops: list[_Op], tensors: list[_Tensor], outputs: list[int]) -> list[_Op]:
    """Fold a per-channel MUL, then ADD, then RELU / RELU6 that alone read a CONV_2D / DEPTHWISE
    output with constant weights into the convolution (as the converter does for a dense model)."""
    readers = _readers(ops, outputs)
    producer = {op.outputs[0]: op for op in ops if op.outputs}
    removed = set()
    for op in ops:
        if op.code[0] not in (OP.MUL, OP.ADD, *_ACTIVATIONS) or len(op.inputs) < 1:
            continue
        conv = producer.get(op.inputs[0])
        if conv is None or id(conv) in removed or conv.code[0] not in _CONVS or readers.get(conv.outputs[0]) != 1 \
                or tensors[conv.outputs[0]].type != _FLOAT32 or tensors[conv.inputs[1]].type != _FLOAT32 \
                or conv.outputs[0] in outputs or len(conv.inputs) < 3 or not _const(tensors, conv.inputs[1]) \
                or not _const(tensors, conv.inputs[2]) or conv.fields.get("FusedActivationFunction", 0):
            continue
        if op.code[0] in _ACTIVATIONS:
            conv.fields["FusedActivationFunction"] = _ACTIVATIONS[op.code[0]]
        else:
            channels = tensors[conv.inputs[1]].shape[-1 if conv.code[0] == OP.DEPTHWISE_CONV_2D else 0]
            other = _channel_constant(tensors, op.inputs[1], channels) if len(op.inputs) == 2 else None
            if other is None or op.fields.get("FusedActivationFunction", 0):
                continue
            weight, bias = _array(tensors[conv.inputs[1]]), _array(tensors[conv.inputs[2]])
            if op.code[0] == OP.MUL:
                axis = -1 if conv.code[0] == OP.DEPTHWISE_CONV_2D else 0
                shape = [1] * weight.ndim
                shape[axis] = channels
                weight, bias = weight * other.reshape(shape), bias * other
            else:
                bias = bias + other
            conv.inputs[1] = _constant(tensors, tensors[conv.inputs[1]].name + b"_folded", weight)
            conv.inputs[2] = _constant(tensors, tensors[conv.inputs[2]].name + b"_folded", bias)
        conv.outputs[0] = op.outputs[0]
        producer[op.outputs[0]] = conv
        removed.add(id(op))
    return [op for op in ops if id(op) not in removed]


def _write(tensors: list[_Tensor], ops: list[_Op], inputs: list[int], outputs: list[int], description: bytes) -> bytes:
    """The flatbuffer of one subgraph holding only the tensors something reads or writes."""
    used = sorted({i for op in ops for i in op.inputs + op.outputs if i >= 0} | set(inputs) | set(outputs))
    remap = {old: new for new, old in enumerate(used)}
    payload = sum(memoryview(tensors[i].data).nbytes + 16 for i in used if tensors[i].data is not None)
    b = flatbuffers.Builder(payload + (1 << 16))  # room for the buffers up front: no regrowth copies
    buffers = [_buffer(b, None)]
    tensor_offsets = []
    for old in used:
        t = tensors[old]
        buffer = 0
        if t.data is not None:
            buffers.append(_buffer(b, t.data))
            buffer = len(buffers) - 1
        tensor_offsets.append(_tensor(b, t, buffer))
    codes = list(dict.fromkeys(op.code for op in ops))
    op_offsets = [_operator(b, op, codes.index(op.code), remap) for op in ops]
    graph_inputs = b.CreateNumpyVector(np.asarray([remap[i] for i in inputs], np.int32))
    graph_outputs = b.CreateNumpyVector(np.asarray([remap[i] for i in outputs], np.int32))
    tensor_vector = _vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
    op_vector = _vector(b, tflite.SubGraphStartOperatorsVector, op_offsets)
    name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddInputs(b, graph_inputs)
    tflite.SubGraphAddOutputs(b, graph_outputs)
    tflite.SubGraphAddOperators(b, op_vector)
    tflite.SubGraphAddName(b, name)
    subgraph = tflite.SubGraphEnd(b)
    code_vector = _vector(b, tflite.ModelStartOperatorCodesVector, [_operator_code(b, c) for c in codes])
    subgraph_vector = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buffer_vector = _vector(b, tflite.ModelStartBuffersVector, buffers)
    text = b.CreateString(description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, code_vector)
    tflite.ModelAddSubgraphs(b, subgraph_vector)
    tflite.ModelAddDescription(b, text)
    tflite.ModelAddBuffers(b, buffer_vector)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(memoryview(b.Bytes)[b.Head():])


def _vector(b: flatbuffers.Builder, start, offsets: list[int]) -> int:
    start(b, len(offsets))
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _buffer(b: flatbuffers.Builder, data: bytes | np.ndarray | None) -> int:
    payload = None
    if data is not None:  # 16-byte aligned, as TFLite's own converter writes buffers
        raw = memoryview(data).cast("B")
        b.StartVector(1, raw.nbytes, 16)
        b.head -= raw.nbytes
        b.Bytes[b.head:b.head + raw.nbytes] = raw
        payload = b.EndVector()
    tflite.BufferStart(b)
    if payload is not None:
        tflite.BufferAddData(b, payload)
    return tflite.BufferEnd(b)


def _tensor(b: flatbuffers.Builder, t: _Tensor, buffer: int) -> int:
    name = b.CreateString(t.name)
    shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
    signature = None if t.signature is None else b.CreateNumpyVector(np.asarray(t.signature, np.int32))
    quantization = None
    if t.quantization is not None:
        scale, zero_point, dimension = t.quantization
        scales = b.CreateNumpyVector(np.asarray(scale, "<f4"))
        zero_points = b.CreateNumpyVector(np.asarray(zero_point, "<i8"))
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scales)
        tflite.QuantizationParametersAddZeroPoint(b, zero_points)
        tflite.QuantizationParametersAddQuantizedDimension(b, dimension)
        quantization = tflite.QuantizationParametersEnd(b)
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, t.type)
    tflite.TensorAddBuffer(b, buffer)
    tflite.TensorAddName(b, name)
    if signature is not None:
        tflite.TensorAddShapeSignature(b, signature)
    if t.variable:
        tflite.TensorAddIsVariable(b, True)
    if quantization is not None:
        tflite.TensorAddQuantization(b, quantization)
    return tflite.TensorEnd(b)


def _operator(b: flatbuffers.Builder, op: _Op, opcode: int, remap: dict[int, int]) -> int:
    inputs = b.CreateNumpyVector(np.asarray([remap[i] if i >= 0 else -1 for i in op.inputs], np.int32))
    outputs = b.CreateNumpyVector(np.asarray([remap[i] for i in op.outputs], np.int32))
    custom = None if op.custom is None else b.CreateNumpyVector(np.frombuffer(op.custom, np.uint8))
    options = None
    if op.kind is not None:
        module = importlib.import_module(f"tflite.{op.kind}")
        vectors = {k: b.CreateNumpyVector(v) for k, v in op.fields.items() if isinstance(v, np.ndarray)}
        getattr(module, f"{op.kind}Start")(b)
        for member, value in op.fields.items():
            getattr(module, f"{op.kind}Add{member}")(b, vectors.get(member, value))
        options = getattr(module, f"{op.kind}End")(b)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, opcode)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, op.kind))
        tflite.OperatorAddBuiltinOptions(b, options)
    if custom is not None:
        tflite.OperatorAddCustomOptions(b, custom)
        tflite.OperatorAddCustomOptionsFormat(b, tflite.CustomOptionsFormat.FLEXBUFFERS)
    return tflite.OperatorEnd(b)


def _operator_code(b: flatbuffers.Builder, code: tuple[int, str | None, int]) -> int:
    builtin, custom, version = code
    text = None if custom is None else b.CreateString(custom)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
    tflite.OperatorCodeAddBuiltinCode(b, builtin)
    tflite.OperatorCodeAddVersion(b, version)
    if text is not None:
        tflite.OperatorCodeAddCustomCode(b, text)
    return tflite.OperatorCodeEnd(b)


def _has_decoders(path: str | os.PathLike) -> bool:
    """Whether the file names a decoded op among its operator codes (False if it is unreadable:
    the runtime then refuses it in its own words)."""
    try:
        with open(path, "rb") as file:
            model = tflite.Model.GetRootAs(file.read(), 0)
        customs = {model.OperatorCodes(c).CustomCode() for c in range(model.OperatorCodesLength())}
    except Exception:  # noqa: BLE001 - not ours to report
        return False
    return bool(customs & {f"{DOMAIN}.{name}".encode() for name in DECODED_OPS})


def decoded_tflite(path: str | os.PathLike, max_virtual_weights: int | None = None,
                   max_decoded_bytes: int | None = None) -> bytes | None:
    """The .tflite at ``path`` as flatbuffer bytes with its storage-compressed weights decoded, or
    None when it has none to decode (load the file as it is).

    A node the delegate would refuse, or one above ``max_virtual_weights`` / ``max_decoded_bytes``
    (None: the environment's or the default), raises InvalidNodeError with the kernels' message.
    """
    if not _has_decoders(path):
        return None
    from edgepack.exporter.model_files import load_tflite

    _, model = load_tflite(path)
    return _decoded(model, str(path), max_virtual_weights, max_decoded_bytes)


def decoded_tflite_content(data: bytes, where: str = "model", max_virtual_weights: int | None = None,
                           max_decoded_bytes: int | None = None) -> bytes | None:
    """``decoded_tflite`` of flatbuffer bytes already checked to be in bounds (a converter's own output)."""
    return _decoded(tflite.Model.GetRootAs(data, 0), where, max_virtual_weights, max_decoded_bytes)


def _decoded(model, where: str, max_virtual_weights: int | None, max_decoded_bytes: int | None) -> bytes | None:
    from edgepack.exporter.validate import check_tflite_model

    with validation_limits(max_virtual_weights, max_decoded_bytes):
        check_tflite_model(model, where)
    tensors, ops, inputs, outputs, description = _read(model, where)
    storage = _storage_casts(ops, tensors, outputs)
    if not any(_decodable(op, tensors, storage) for op in ops):
        return None
    ops, decoded = _decode(ops, tensors, storage)
    ops = _fold_layout(ops, tensors, decoded)
    ops = _fold_epilogues(ops, tensors, outputs)
    return _write(tensors, ops, inputs, outputs, description)
