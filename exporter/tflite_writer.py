"""A TFLite flatbuffer writer: tensors (float, integer, or int8 with per-tensor or per-channel
quantization parameters), buffers, builtin and CUSTOM operators, one subgraph.

It uses the ``tflite`` package's generated builders and ``flatbuffers`` (no TensorFlow).
"""

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

TENSOR_TYPES = {np.dtype(np.float32): tflite.TensorType.FLOAT32,
                np.dtype(np.int32): tflite.TensorType.INT32,
                np.dtype(np.uint8): tflite.TensorType.UINT8,
                np.dtype(np.int8): tflite.TensorType.INT8,
                np.dtype(np.int64): tflite.TensorType.INT64,
                np.dtype(bool): tflite.TensorType.BOOL}
# The oldest version each builtin is registered at (1 unless listed): BROADCAST_TO starts at 2.
MIN_VERSIONS = {tflite.BuiltinOperator.BROADCAST_TO: 2}


@dataclass
class Options:
    """Builtin options: the table's name (e.g. "Conv2DOptions") and its scalar fields."""

    kind: str
    fields: dict = field(default_factory=dict)


@dataclass
class Quantization:
    """real = scale · (q − zero_point): one scale / zero point per tensor, or one per index of
    axis ``dimension`` (per-channel)."""

    scale: np.ndarray
    zero_point: np.ndarray
    dimension: int = 0

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, np.int64))


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None
    quantization: Quantization | None = None


@dataclass
class _Operator:
    code: int | str  # a tflite.BuiltinOperator value, or the custom_code of a CUSTOM op
    inputs: list[int]
    outputs: list[int]
    options: Options | bytes | None
    version: int | None = None


class TFLiteModelBuilder:
    """Collects tensors and operators, then serialises them as a TFLite model."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.operators: list[_Operator] = []

    def tensor(self, name: str, shape, dtype=np.float32, data: np.ndarray | None = None,
               quantization: Quantization | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given, quantized when ``quantization`` is);
        returns its index."""
        dtype = np.dtype(dtype)
        if dtype not in TENSOR_TYPES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} is not supported; "
                             f"supported: {[str(t) for t in TENSOR_TYPES]}")
        if data is not None:
            data = np.array(data, dtype=dtype, order="C")  # keeps a scalar 0-D (ascontiguousarray would not)
            shape = data.shape
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), dtype, data, quantization))
        return len(self.tensors) - 1

    def constant(self, name: str, array, quantization: Quantization | None = None) -> int:
        """Add a constant tensor holding ``array``."""
        array = np.asarray(array)
        return self.tensor(name, array.shape, array.dtype, array, quantization)

    def operator(self, code: int | str, inputs: list[int], outputs: list[int],
                 options: Options | bytes | None = None, version: int | None = None) -> None:
        """Add an operator; ``code`` is a builtin code or a custom_code string; ``version`` the
        builtin's version when its tensor types need a newer kernel (e.g. 3 for an int8 CONV_2D)."""
        self.operators.append(_Operator(code, list(inputs), list(outputs), options, version))

    def serialize(self, inputs: list[int], outputs: list[int], description: str = "edgepack") -> bytes:
        """The model as flatbuffer bytes (schema version 3)."""
        b = flatbuffers.Builder(1024)
        codes = list(dict.fromkeys(self._code_key(op) for op in self.operators))
        buffers = [self._buffer(b, None)] + [self._buffer(b, t.data) for t in self.tensors
                                             if t.data is not None]
        tensor_offsets, next_buffer = [], 1
        for t in self.tensors:
            buffer = 0
            if t.data is not None:
                buffer, next_buffer = next_buffer, next_buffer + 1
            tensor_offsets.append(self._tensor(b, t, buffer))
        operator_offsets = [self._operator(b, op, codes.index(self._code_key(op))) for op in self.operators]
        subgraph = self._subgraph(b, tensor_offsets, operator_offsets, inputs, outputs)
        code_offsets = [self._operator_code(b, code, version) for code, version in codes]
        description_offset = b.CreateString(description)
        vectors = {name: self._vector(b, getattr(tflite, f"ModelStart{name}Vector"), offsets)
                   for name, offsets in [("OperatorCodes", code_offsets), ("Subgraphs", [subgraph]),
                                         ("Buffers", buffers)]}
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, vectors["OperatorCodes"])
        tflite.ModelAddSubgraphs(b, vectors["Subgraphs"])
        tflite.ModelAddDescription(b, description_offset)
        tflite.ModelAddBuffers(b, vectors["Buffers"])
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _code_key(op: _Operator) -> tuple[int | str, int]:
        code = tflite.BuiltinOperator.CUSTOM if isinstance(op.code, str) else op.code
        return op.code, op.version or MIN_VERSIONS.get(code, 1)

    @staticmethod
    def _vector(b: flatbuffers.Builder, start, offsets: list[int]) -> int:
        start(b, len(offsets))
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    @staticmethod
    def _int_vector(b: flatbuffers.Builder, values: list[int]) -> int:
        return b.CreateNumpyVector(np.asarray(values, dtype=np.int32))

    def _buffer(self, b: flatbuffers.Builder, data: np.ndarray | None) -> int:
        payload = None if data is None else b.CreateNumpyVector(np.frombuffer(data.tobytes(), np.uint8))
        tflite.BufferStart(b)
        if payload is not None:
            tflite.BufferAddData(b, payload)
        return tflite.BufferEnd(b)

    def _tensor(self, b: flatbuffers.Builder, t: _Tensor, buffer: int) -> int:
        name, shape = b.CreateString(t.name), self._int_vector(b, list(t.shape))
        quantization = self._quantization(b, t.quantization) if t.quantization is not None else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, TENSOR_TYPES[t.dtype])
        tflite.TensorAddBuffer(b, buffer)
        tflite.TensorAddName(b, name)
        if quantization is not None:
            tflite.TensorAddQuantization(b, quantization)
        return tflite.TensorEnd(b)

    @staticmethod
    def _quantization(b: flatbuffers.Builder, q: Quantization) -> int:
        scale = b.CreateNumpyVector(q.scale.astype(np.float32))
        zero_point = b.CreateNumpyVector(q.zero_point.astype(np.int64))
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zero_point)
        tflite.QuantizationParametersAddQuantizedDimension(b, q.dimension)
        return tflite.QuantizationParametersEnd(b)

    def _operator(self, b: flatbuffers.Builder, op: _Operator, opcode_index: int) -> int:
        inputs, outputs = self._int_vector(b, op.inputs), self._int_vector(b, op.outputs)
        custom = builtin = None
        if isinstance(op.options, bytes):
            custom = b.CreateNumpyVector(np.frombuffer(op.options, np.uint8))
        elif op.options is not None:
            builtin = self._builtin_options(b, op.options)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, opcode_index)
        tflite.OperatorAddInputs(b, inputs)
        tflite.OperatorAddOutputs(b, outputs)
        if builtin is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, op.options.kind))
            tflite.OperatorAddBuiltinOptions(b, builtin)
        if custom is not None:
            tflite.OperatorAddCustomOptions(b, custom)
            tflite.OperatorAddCustomOptionsFormat(b, tflite.CustomOptionsFormat.FLEXBUFFERS)
        return tflite.OperatorEnd(b)

    @staticmethod
    def _builtin_options(b: flatbuffers.Builder, options: Options) -> int:
        getattr(tflite, f"{options.kind}Start")(b)
        for name, value in options.fields.items():
            getattr(tflite, f"{options.kind}Add{name}")(b, value)
        return getattr(tflite, f"{options.kind}End")(b)

    @staticmethod
    def _operator_code(b: flatbuffers.Builder, code: int | str, version: int) -> int:
        custom = b.CreateString(code) if isinstance(code, str) else None
        builtin = tflite.BuiltinOperator.CUSTOM if custom is not None else code
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
        tflite.OperatorCodeAddBuiltinCode(b, builtin)
        tflite.OperatorCodeAddVersion(b, version)
        if custom is not None:
            tflite.OperatorCodeAddCustomCode(b, custom)
        return tflite.OperatorCodeEnd(b)

    def _subgraph(self, b: flatbuffers.Builder, tensors: list[int], operators: list[int],
                  inputs: list[int], outputs: list[int]) -> int:
        tensor_vector = self._vector(b, tflite.SubGraphStartTensorsVector, tensors)
        operator_vector = self._vector(b, tflite.SubGraphStartOperatorsVector, operators)
        input_vector, output_vector = self._int_vector(b, inputs), self._int_vector(b, outputs)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensor_vector)
        tflite.SubGraphAddInputs(b, input_vector)
        tflite.SubGraphAddOutputs(b, output_vector)
        tflite.SubGraphAddOperators(b, operator_vector)
        tflite.SubGraphAddName(b, name)
        return tflite.SubGraphEnd(b)
