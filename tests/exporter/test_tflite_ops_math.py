"""Sqrt, Exp, Log, Abs, Neg, Floor, Ceil, Sin, Cos and Pow in TFLite against ONNX Runtime, and
the decomposed layer norm (ReduceMean, Sub, Pow, Sqrt, Div) that torch exports before opset 17."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_tflite_ops_activations import after_conv
from tflite_ops_check import check_against_ort, graph_model, node_model

UNARY = [("Sqrt", "SQRT", True), ("Exp", "EXP", False), ("Log", "LOG", True), ("Abs", "ABS", False),
         ("Neg", "NEG", False), ("Floor", "FLOOR", False), ("Ceil", "CEIL", False), ("Sin", "SIN", False),
         ("Cos", "COS", False)]


@pytest.mark.parametrize("op_type, builtin, positive", UNARY)
def test_unary_math_matches_ort(op_type, builtin, positive, tmp_path):
    model = node_model(op_type, {"x": [2, 3, 7]})
    assert check_against_ort(model, tmp_path, positive=positive)[builtin] == 1
    nhwc = after_conv(helper.make_node(op_type, ["h"], ["y"]))
    if not positive:
        assert check_against_ort(nhwc, tmp_path)[builtin] == 1


@pytest.mark.parametrize("exponent, builtin", [
    (np.float32(2), "SQUARE"), (np.int64(2), "SQUARE"), (np.float32(0.5), "SQRT"), (np.float32(-0.5), "RSQRT"),
    (np.float32(1), "RESHAPE"), (np.float32(3), "POW"), (np.float32(-1.5), "POW"),
    (np.array([1, 2, 0.5, 3, -1], np.float32), "POW"), (np.full((3, 1), 2, np.float32), "SQUARE"),
])
def test_pow_with_constant_exponent(exponent, builtin, tmp_path):
    model = node_model("Pow", {"x": [2, 3, 5]}, {"p": exponent})
    assert check_against_ort(model, tmp_path, positive=True, rtol=2e-4)[builtin] >= 1


def test_pow_with_computed_exponent_and_constant_base(tmp_path):
    model = node_model("Pow", {"x": [2, 3, 5], "e": [3, 5]})
    assert check_against_ort(model, tmp_path, positive=True, scale=1.0)["POW"] == 1
    model = node_model("Pow", {"e": [2, 5]}, {"base": np.float32(1.7)}, order=["base", "e"])
    assert check_against_ort(model, tmp_path, scale=1.0)["POW"] == 1


def test_pow_square_keeps_nhwc(tmp_path):
    model = after_conv(helper.make_node("Pow", ["h", "two"], ["y"]), constants={"two": np.float32(2)})
    ops = check_against_ort(model, tmp_path)
    assert ops["SQUARE"] == 1 and ops["TRANSPOSE"] == 2  # only the model's input and output


@pytest.mark.parametrize("shape, axis", [((2, 5, 8), -1), ((2, 5, 8), 1)])
def test_decomposed_layer_norm(shape, axis, tmp_path):
    """torch's pre-opset-17 LayerNorm: ReduceMean, Sub, Pow 2, ReduceMean, Add, Sqrt, Div, Mul, Add."""
    rng = np.random.default_rng(3)
    normalized = shape[axis % len(shape):]
    constants = {"axes": np.arange(axis % len(shape), len(shape), dtype=np.int64), "two": np.float32(2),
                 "eps": np.float32(1e-5), "gamma": rng.standard_normal(normalized).astype(np.float32),
                 "beta": rng.standard_normal(normalized).astype(np.float32)}
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mean"]), helper.make_node("Sub", ["x", "mean"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2", "axes"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["g"]),
             helper.make_node("Add", ["g", "beta"], ["y"])]
    ops = check_against_ort(graph_model(nodes, {"x": list(shape)}, ["y"], constants), tmp_path)
    assert ops["SQUARE"] == 1 and ops["SQRT"] == 1


def test_pow_with_integer_output_type_is_float_only(tmp_path):
    """Pow of float data stays float even with an int64 exponent (ONNX's output type is the base's)."""
    model = node_model("Pow", {"x": [4]}, {"p": np.array([2, 3, 1, 0], np.int64)})
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    check_against_ort(model, tmp_path, positive=True)


@pytest.mark.parametrize("op_type", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("shapes", [[[2, 3, 4]], [[2, 3, 4], [2, 3, 4]], [[2, 3, 4], [4], [3, 1]]])
def test_variadic_matches_ort(op_type, shapes, tmp_path):
    inputs = {f"x{i}": shape for i, shape in enumerate(shapes)}
    check_against_ort(node_model(op_type, inputs, opset=13), tmp_path)


def test_sum_of_two_nhwc_branches(tmp_path):
    """The ResNet residual (opset-6 era models use Sum): both branches stay NHWC."""
    node = helper.make_node("Sum", ["h", "h2"], ["y"])
    model = after_conv(node, constants={"w2": np.full((4, 4, 1, 1), 0.3, np.float32)})
    model.graph.node.insert(1, helper.make_node("Conv", ["h", "w2"], ["h2"]))
    ops = check_against_ort(model, tmp_path)
    assert ops["ADD"] == 1 and ops["TRANSPOSE"] == 2
