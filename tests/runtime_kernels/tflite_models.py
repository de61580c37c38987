"""Tiny .tflite files for the delegate tests, built with the ``tflite`` schema builders and
FlexBuffers options exactly as the exporter emits them (one CUSTOM op per ai.edgepack node,
weights as model buffers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite
from flatbuffers import flexbuffers

CUSTOM, ADD, FULLY_CONNECTED = 32, 0, 9


@dataclass
class Op:
    code: str | int  # custom_code ("ai.edgepack.HashedMatMul") or a BuiltinOperator number
    inputs: list[int]
    outputs: list[int]
    options: bytes | None = None  # custom_options (FlexBuffers)


@dataclass
class Graph:
    tensors: list[tuple[str, tuple[int, ...], np.ndarray | None]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    dtypes: dict[int, str] = field(default_factory=dict)  # tensor index: "uint8" / "int32" (default float32)

    def tensor(self, name: str, shape, data: np.ndarray | None = None, dtype: str = "float32") -> int:
        self.tensors.append((name, tuple(int(d) for d in shape), data))
        if dtype != "float32":
            self.dtypes[len(self.tensors) - 1] = dtype
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray) -> int:
        """A constant tensor: uint8 and int32 data keep their type, anything else becomes float32."""
        kind = np.asarray(data).dtype.name
        dtype = kind if kind in TENSOR_TYPES else "float32"
        data = np.ascontiguousarray(data, dtype)
        return self.tensor(name, data.shape, data, dtype)


TENSOR_TYPES = {"float32": tflite.TensorType.FLOAT32, "uint8": tflite.TensorType.UINT8,
                "int32": tflite.TensorType.INT32}


def options(**attrs) -> bytes:
    """FlexBuffers map of ints (and int lists, as typed vectors), like the exporter writes."""
    b = flexbuffers.Builder()
    with b.Map():
        for key, value in attrs.items():
            if isinstance(value, (list, tuple)):
                b.Key(key)
                b.TypedVectorFromElements([int(v) for v in value])
            else:
                b.Int(key, int(value))
    return bytes(b.Finish())


def _ivec(b: flatbuffers.Builder, start, values) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(int(v))
    return b.EndVector()


def _bytes(b: flatbuffers.Builder, data: bytes, align: int = 16) -> int:
    b.StartVector(1, len(data), align)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return b.EndVector()


def build(g: Graph) -> bytes:
    """Serialise ``g`` as a TFLite model (schema v3, one subgraph)."""
    b = flatbuffers.Builder(1024)
    codes: list[str | int] = []
    for op in g.ops:
        if op.code not in codes:
            codes.append(op.code)

    # buffers: 0 is the empty sentinel, then one per constant tensor
    buffer_of, datas = {}, []
    for i, (_, _, data) in enumerate(g.tensors):
        if data is not None:
            datas.append(data.tobytes())
            buffer_of[i] = len(datas)
    buf_offsets = []
    for raw in [None, *datas]:
        vec = _bytes(b, raw) if raw else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        buf_offsets.append(tflite.BufferEnd(b))

    tensor_offsets = []
    for i, (name, shape, _) in enumerate(g.tensors):
        name_off = b.CreateString(name)
        shape_off = _ivec(b, tflite.TensorStartShapeVector, shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_off)
        tflite.TensorAddType(b, TENSOR_TYPES[g.dtypes.get(i, "float32")])
        tflite.TensorAddBuffer(b, buffer_of.get(i, 0))
        tflite.TensorAddName(b, name_off)
        tensor_offsets.append(tflite.TensorEnd(b))

    op_offsets = []
    for op in g.ops:
        ins = _ivec(b, tflite.OperatorStartInputsVector, op.inputs)
        outs = _ivec(b, tflite.OperatorStartOutputsVector, op.outputs)
        custom = _bytes(b, op.options, 1) if op.options is not None else None
        builtin = None
        if op.code == FULLY_CONNECTED:
            tflite.FullyConnectedOptionsStart(b)
            builtin = (tflite.BuiltinOptions.FullyConnectedOptions, tflite.FullyConnectedOptionsEnd(b))
        elif op.code == ADD:
            tflite.AddOptionsStart(b)
            builtin = (tflite.BuiltinOptions.AddOptions, tflite.AddOptionsEnd(b))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(op.code))
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        if builtin:
            tflite.OperatorAddBuiltinOptionsType(b, builtin[0])
            tflite.OperatorAddBuiltinOptions(b, builtin[1])
        if custom is not None:
            tflite.OperatorAddCustomOptions(b, custom)
            tflite.OperatorAddCustomOptionsFormat(b, tflite.CustomOptionsFormat.FLEXBUFFERS)
        op_offsets.append(tflite.OperatorEnd(b))

    def vec(start, offsets):
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    tensors_vec = vec(tflite.SubGraphStartTensorsVector, tensor_offsets)
    ops_vec = vec(tflite.SubGraphStartOperatorsVector, op_offsets)
    in_vec = _ivec(b, tflite.SubGraphStartInputsVector, g.inputs)
    out_vec = _ivec(b, tflite.SubGraphStartOutputsVector, g.outputs)
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = tflite.SubGraphEnd(b)

    code_offsets = []
    for code in codes:
        name = b.CreateString(code) if isinstance(code, str) else None
        num = CUSTOM if isinstance(code, str) else int(code)
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(num, 127))
        tflite.OperatorCodeAddBuiltinCode(b, num)
        if name is not None:
            tflite.OperatorCodeAddCustomCode(b, name)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))

    codes_vec = vec(tflite.ModelStartOperatorCodesVector, code_offsets)
    subgraphs_vec = vec(tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = vec(tflite.ModelStartBuffersVector, buf_offsets)
    desc = b.CreateString("edgepack test model")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, buffers_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def single_op(
    op: str,
    x_shape,
    weights: list[tuple[str, np.ndarray | None]],
    attrs: dict | bytes,
    trailing_absent: bool = False,
) -> bytes:
    """Model with one ai.edgepack.<op> node: X (graph input), weights as buffers (None: absent,
    index -1), one float32 output Y."""
    g = Graph()
    x = g.tensor("X", x_shape)
    ins = [x]
    for name, w in weights:
        ins.append(-1 if w is None else g.const(name, w))
    if trailing_absent:
        while ins and ins[-1] == -1:
            ins.pop()
    y = g.tensor("Y", (1,))  # the op sets the real shape at prepare
    opts = attrs if isinstance(attrs, bytes) else options(**attrs)
    g.ops.append(Op(f"ai.edgepack.{op}", ins, [y], opts))
    g.inputs, g.outputs = [x], [y]
    return build(g)


def fed_op(op: str, input_names, attrs: dict, inputs: dict, runtime) -> bytes:
    """Model with one ai.edgepack.<op> node whose inputs (in ``input_names`` order) are graph inputs when
    named in ``runtime``, else buffers; absent (None / missing) ones are index -1, trailing ones dropped."""
    g = Graph()
    ins = []
    for name in input_names:
        value = inputs.get(name)
        if value is None:
            ins.append(-1)
        elif name in runtime:
            ins.append(g.tensor(name, value.shape, dtype=value.dtype.name))
            g.inputs.append(ins[-1])
        else:
            ins.append(g.const(name, value))
    while ins and ins[-1] == -1:
        ins.pop()
    y = g.tensor("Y", (1,))  # the op sets the real shape at prepare
    g.ops.append(Op(f"ai.edgepack.{op}", ins, [y], options(**attrs)))
    g.outputs = [y]
    return build(g)
