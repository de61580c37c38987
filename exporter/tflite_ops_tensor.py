"""Indexing and types for the TFLite writer: Gather (GATHER), Expand (BROADCAST_TO), Cast (CAST).

The rest of the writer computes in float32, so an integer or bool tensor (a model input too) is
only allowed where every reader can take it: as Gather's data or indices, Expand's or Cast's input,
or a model output (``Converter.check_integer_readers``). Anything else is refused.
"""

import numpy as np
import onnx
from onnx import helper

from .tflite_export import OP, Converter, Value, handles
from .tflite_ops_math import layout_of
from .tflite_writer import TENSOR_TYPES, Options

CAST_TARGETS = {np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.int64), np.dtype(bool)}


def typed_output(c: Converter, name: str, nhwc: bool = False) -> int:
    """The output tensor of ``name`` with the dtype of the reference run; a non-float32 one only
    when every reader of it takes integers (else the writer's float32 ops would mistype it)."""
    dtype = np.asarray(c.static[name]).dtype
    if dtype == np.float32:
        return c.output(name, nhwc)
    if dtype not in TENSOR_TYPES:
        raise c.fail(f"output {name!r} has dtype {dtype}; supported: {sorted(str(t) for t in CAST_TARGETS)}")
    c.check_integer_readers(name, dtype, f"node {c.node.name or '(unnamed)'!r} ({c.node.op_type}): its output {name!r}")
    shape = tuple(np.shape(c.static[name]))
    index = c.builder.tensor(name, c.tflite_shape(shape, nhwc), dtype)
    c.values[name] = Value(shape, index=index, nhwc=nhwc)
    return index


@handles("Cast")
def convert_cast(c: Converter, node: onnx.NodeProto) -> None:
    target = np.dtype(helper.tensor_dtype_to_np_dtype(c.attribute("to")))
    if target not in CAST_TARGETS:
        raise c.fail(f"Cast to {target} is not supported; supported: "
                     f"{sorted(str(t) for t in CAST_TARGETS)}")
    if np.asarray(c.static[node.input[0]]).dtype == target:
        c.values[node.output[0]] = c.values[node.input[0]]
        return
    x, nhwc = layout_of(c, node.input[0])
    c.builder.operator(OP.CAST, [x], [typed_output(c, node.output[0], nhwc)])


@handles("Gather")
def convert_gather(c: Converter, node: onnx.NodeProto) -> None:
    """GATHER; constant indices are made non-negative at export, computed ones with FLOOR_MOD.
    A 4-D NHWC input stays NHWC when the indices are 1-D (the gathered axis is permuted)."""
    data, indices = (c.values[name] for name in node.input[:2])
    rank = len(data.shape)
    axis = c.axis(rank, 0)
    size = data.shape[axis]
    if indices.const is not None:
        positions = np.asarray(indices.const, np.int64)
        if ((positions < -size) | (positions >= size)).any():
            raise c.fail(f"indices {positions.tolist()} are out of range for an axis of size {size}")
        index = c.int32(np.where(positions < 0, positions + size, positions))
    else:
        dtype = np.asarray(c.static[node.input[1]]).dtype
        index = c.builder.tensor(f"{node.input[1]}_wrapped{len(c.builder.tensors)}", indices.shape, dtype)
        c.builder.operator(OP.FLOOR_MOD, [c.tensor(node.input[1]),
                                          c.builder.constant(f"{node.name}_size", np.array(size, dtype))], [index])
    nhwc = data.nhwc and len(indices.shape) == 1
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    options = Options("GatherOptions", {"Axis": c.tflite_axis(axis, nhwc)})
    c.builder.operator(OP.GATHER, [x, index], [typed_output(c, node.output[0], nhwc)], options)


@handles("Expand")
def convert_expand(c: Converter, node: onnx.NodeProto) -> None:
    """BROADCAST_TO the output shape of the reference run (ONNX's Expand broadcasts both ways)."""
    c.const(node.input[1], "shape")
    shape = tuple(np.shape(c.static[node.output[0]]))
    nhwc = c.values[node.input[0]].nhwc and len(shape) == 4
    x = c.tensor(node.input[0], "nhwc" if nhwc else "onnx")
    c.builder.operator(OP.BROADCAST_TO, [x, c.int32(c.tflite_shape(shape, nhwc))],
                       [typed_output(c, node.output[0], nhwc)])
