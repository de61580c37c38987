"""Gather, Expand and Cast in TFLite against ONNX Runtime; integer tensors only where TFLite can
take them, refused elsewhere."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_tflite_ops_activations import after_conv
from tflite_ops_check import check_against_ort, graph_model, node_model

from edgepack.exporter import ConversionError, convert_onnx_to_tflite


@pytest.mark.parametrize("axis, indices", [(1, [2, 0, -1]), (1, 3), (2, [[4, 0], [-2, 1]]), (3, [5, 0]),
                                           (-1, 1), (0, [0, 0])])
def test_gather_constant_indices_from_nhwc_activation(axis, indices, tmp_path):
    node = helper.make_node("Gather", ["h", "i"], ["y"], axis=axis)
    model = after_conv(node, constants={"i": np.array(indices, np.int64)})
    ops = check_against_ort(model, tmp_path)
    assert ops["GATHER"] == 1
    if axis == 1 and np.ndim(indices) == 1:
        assert ops["TRANSPOSE"] == 2  # gathered in NHWC: only the boundary transposes


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_constant_indices_in_onnx_layout(axis, tmp_path):
    model = node_model("Gather", {"x": [4, 5, 3]}, {"i": np.array([[1, -1], [0, 2]], np.int64)}, axis=axis)
    assert check_against_ort(model, tmp_path)["GATHER"] == 1


def test_gather_from_constant_table_with_computed_indices(tmp_path):
    """An embedding: Cast(float → int64) indices into a constant table, negative ones wrapped."""
    table = np.random.default_rng(6).standard_normal((7, 4)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)]
    model = graph_model(nodes, {"x": [2, 5]}, ["y"], {"table": table})
    feeds = {"x": np.array([[0, 6, -1, -7, 3], [2.7, -3.2, 5, 1, 0]], np.float32)}
    ops = check_against_ort(model, tmp_path, feeds=feeds)
    assert ops["CAST"] == 1 and ops["GATHER"] == 1 and ops["FLOOR_MOD"] == 1


def test_gather_refuses_out_of_range_constant_indices(tmp_path):
    model = node_model("Gather", {"x": [4, 5]}, {"i": np.array([4], np.int64)})
    with pytest.raises(ConversionError, match=r"(my_gather.*indices \[4\] are out of range|index 4 is out of bounds)"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)


@pytest.mark.parametrize("in_shape, shape", [([3, 1], [2, 3, 4]), ([1, 4], [3, 1]), ([2, 1, 5], [2, 3, 5])])
def test_expand_matches_ort(in_shape, shape, tmp_path):
    model = node_model("Expand", {"x": in_shape}, {"s": np.array(shape, np.int64)})
    assert check_against_ort(model, tmp_path)["BROADCAST_TO"] == 1


def test_expand_keeps_nhwc(tmp_path):
    node = helper.make_node("Expand", ["h", "s"], ["y"])
    model = after_conv(node, constants={"s": np.array([2, 4, 5, 6], np.int64)})
    ops = check_against_ort(model, tmp_path)
    assert ops["BROADCAST_TO"] == 1 and ops["TRANSPOSE"] == 2


@pytest.mark.parametrize("to", [TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT])
def test_cast_float_to_types_tflite_holds(to, tmp_path):
    model = graph_model([helper.make_node("Cast", ["x"], ["y"], to=to)], {"x": [3, 4]}, ["y"], output_types={"y": to})
    feeds = {"x": np.array([[0, 0.5, -0.5, 1.9], [-1.9, 3, -7.2, 100.7], [0, 2, -2, 0.1]], np.float32)}
    check_against_ort(model, tmp_path, feeds=feeds)


def test_cast_int_back_to_float(tmp_path):
    """Truncation toward zero, then back to float: float → int32 → float."""
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
             helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    ops = check_against_ort(graph_model(nodes, {"x": [2, 6]}, ["y"]), tmp_path, scale=10.0)
    assert ops["CAST"] == 2


def test_cast_refuses_what_tflite_cannot_hold(tmp_path):
    model = graph_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16, name="half")],
                        {"x": [3]}, ["y"], output_types={"y": TensorProto.FLOAT16})
    with pytest.raises(ConversionError, match=r"'half' \(Cast\): Cast to float16 is not supported"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64, name="to_int"),
             helper.make_node("Add", ["i", "i"], ["y"], name="int_add")]
    model = graph_model(nodes, {"x": [3]}, ["y"], output_types={"y": TensorProto.INT64})
    with pytest.raises(ConversionError, match=r"'to_int'.*read by Add node 'int_add'.*computes in float32"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)


@pytest.mark.parametrize("elem_type", [TensorProto.INT64, TensorProto.INT32])
def test_integer_model_input_as_gather_indices(elem_type, tmp_path):
    """Integer model inputs used to be refused ("only float32 inputs"): an embedding lookup by an
    int input, verified against ORT on random valid indices, checked in LiteRT against numpy."""
    from tflite_ops_check import RESOLVERS, run_litert

    from edgepack.exporter.tflite_export import convert_and_verify

    table = np.random.default_rng(8).standard_normal((7, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0, name="lookup"),
             helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT, name="to_float"),
             helper.make_node("Unsqueeze", ["idx_f", "last"], ["idx_col"], name="column"),
             helper.make_node("Mul", ["rows", "idx_col"], ["y"], name="scale")]
    model = graph_model(nodes, {}, ["y"], {"table": table, "last": np.array([-1], np.int64)})
    model.graph.input.append(helper.make_tensor_value_info("idx", elem_type, [2, 5]))
    path, verification = convert_and_verify(model, tmp_path / "m.tflite")
    assert verification.random_inputs == 3
    idx = np.array([[0, 6, -1, -7, 3], [2, -3, 5, 1, 0]], helper.tensor_dtype_to_np_dtype(elem_type))
    for resolver in RESOLVERS:
        got = run_litert(path, {"idx": idx}, resolver)[0]
        np.testing.assert_allclose(got, table[idx] * idx[..., None], rtol=1e-6, err_msg=str(resolver))


def test_integer_model_input_read_as_float_is_refused(tmp_path):
    model = graph_model([helper.make_node("Add", ["i", "i"], ["y"], name="int_add")], {}, ["y"],
                        output_types={"y": TensorProto.INT64})
    model.graph.input.append(helper.make_tensor_value_info("i", TensorProto.INT64, [3]))
    with pytest.raises(ConversionError, match=r"input 'i' \(int64\) is read by Add node 'int_add'.*in float32"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
    model = graph_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="by_input")], {"x": [2, 3]}, ["y"])
    model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
    with pytest.raises(ConversionError, match=r"input 's' \(int64\) is read by Reshape node 'by_input' \(input 1\)"
                                              r".*shapes, axes and pads must be constants"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
    model = graph_model([helper.make_node("Relu", ["h"], ["y"])], {}, ["y"])
    model.graph.input.append(helper.make_tensor_value_info("h", TensorProto.FLOAT16, [3]))
    with pytest.raises(ConversionError, match=r"input 'h' has element type FLOAT16; only float32, int32 and int64"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite", verify=False)
