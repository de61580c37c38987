"""LeakyRelu, PRelu, HardSigmoid, HardSwish, Elu, Gelu and Erf in TFLite against ONNX Runtime."""

import numpy as np
import pytest
from onnx import helper
from tflite_ops_check import check_against_ort, graph_model, node_model

from edgepack.exporter import ConversionError, convert_onnx_to_tflite

CASES = [
    ("LeakyRelu", {}, "LEAKY_RELU", 18),
    ("LeakyRelu", {"alpha": 0.3}, "LEAKY_RELU", 18),
    ("HardSigmoid", {}, "RELU_0_TO_1", 18),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, "RELU_0_TO_1", 18),
    ("HardSigmoid", {"alpha": -0.7, "beta": 0.1}, "RELU_0_TO_1", 18),
    ("HardSwish", {}, "HARD_SWISH", 18),
    ("Elu", {}, "ELU", 18),
    ("Elu", {"alpha": 0.4}, "EXP", 18),
    ("Erf", {}, "SIGN", 18),
    ("Gelu", {}, "GELU", 20),
    ("Gelu", {"approximate": "tanh"}, "GELU", 20),
]


def after_conv(op_node, channels: int = 4, opset: int = 18, constants=None):
    """x → 1×1 Conv (so the activation is NHWC inside the TFLite model) → ``op_node``."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((channels, 3, 1, 1)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["h"], name="conv")
    return graph_model([conv, op_node], {"x": [1, 3, 5, 6]}, list(op_node.output),
                       {"w": weight, **(constants or {})}, opset)


@pytest.mark.parametrize("layout", ["onnx", "nhwc"])
@pytest.mark.parametrize("op_type, attributes, builtin, opset", CASES)
def test_activation_matches_ort(op_type, attributes, builtin, opset, layout, tmp_path):
    if layout == "onnx":
        model = node_model(op_type, {"x": [2, 3, 7]}, opset=opset, **attributes)
    else:
        model = after_conv(helper.make_node(op_type, ["h"], ["y"], **attributes), opset=opset)
    ops = check_against_ort(model, tmp_path, scale=3.0, atol=2e-6)
    assert ops[builtin] >= 1


@pytest.mark.parametrize("slope_shape, builtin", [((4, 1, 1), "PRELU"), ((1,), "PRELU"), ((4, 5, 6), "MINIMUM"),
                                                   ((6,), "MINIMUM")])
def test_prelu_slope_broadcasts_in_nhwc(slope_shape, builtin, tmp_path):
    """PRELU when the slope is per channel (the last NHWC axis) or shared, else RELU + slope * MIN."""
    slope = np.random.default_rng(2).uniform(-1, 1, slope_shape).astype(np.float32)
    model = after_conv(helper.make_node("PRelu", ["h", "slope"], ["y"]), constants={"slope": slope})
    ops = check_against_ort(model, tmp_path)
    assert ops[builtin] == 1 and ops["TRANSPOSE"] == 2


@pytest.mark.parametrize("x_shape, slope_shape", [((3, 5), (5,)), ((2, 3, 5), (3, 1)), ((2, 3, 4, 5), (3, 1, 1)),
                                                  ((2, 3, 2, 2, 4), (3, 1, 1, 1)), ((2, 3, 2, 2, 4), (4,))])
def test_prelu_in_onnx_layout(x_shape, slope_shape, tmp_path):
    slope = np.linspace(-1, 1, int(np.prod(slope_shape)), dtype=np.float32).reshape(slope_shape)
    check_against_ort(node_model("PRelu", {"x": list(x_shape)}, {"slope": slope}), tmp_path)


def test_prelu_with_computed_slope(tmp_path):
    check_against_ort(node_model("PRelu", {"x": [2, 3, 5], "s": [3, 1]}), tmp_path)


def test_prelu_before_opset_7_is_per_channel(tmp_path):
    """Opset 6: a slope of C values applies along axis 1 (ORT has no opset-6 PRelu kernel left)."""
    slope = np.array([0.1, -0.5, 2.0], np.float32)
    model = node_model("PRelu", {"x": [2, 3, 4, 5]}, {"slope": slope}, opset=6)
    per_channel = lambda feeds: [np.where(feeds["x"] >= 0, feeds["x"], feeds["x"] * slope[:, None, None])]  # noqa: E731
    assert check_against_ort(model, tmp_path, reference=per_channel)["PRELU"] == 1


def test_erf_is_accurate_over_its_range(tmp_path):
    """The rational approximation against ORT's erf on a dense grid, tails and zero included."""
    x = np.concatenate([np.linspace(-6, 6, 2401), [0.0, 1e-6, -1e-6, 20.0, -20.0]]).astype(np.float32)
    model = node_model("Erf", {"x": [x.size]})
    check_against_ort(model, tmp_path, feeds={"x": x}, rtol=0, atol=5e-7)


def test_torch_gelu_pattern_with_erf(tmp_path):
    """torch exports nn.GELU before opset 20 as x * 0.5 * (1 + erf(x / sqrt 2))."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["scaled"]), helper.make_node("Erf", ["scaled"], ["erf"]),
             helper.make_node("Add", ["erf", "one"], ["shifted"]), helper.make_node("Mul", ["x", "shifted"], ["xs"]),
             helper.make_node("Mul", ["xs", "half"], ["y"])]
    constants = {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    check_against_ort(graph_model(nodes, {"x": [4, 16]}, ["y"], constants), tmp_path, scale=3.0)


def test_bad_attributes_are_refused(tmp_path):
    with pytest.raises(ConversionError, match=r"my_gelu.*approximate='fast' is not valid"):
        convert_onnx_to_tflite(node_model("Gelu", {"x": [2, 3]}, opset=20, approximate="fast"),
                               tmp_path / "m.tflite", verify=False)
