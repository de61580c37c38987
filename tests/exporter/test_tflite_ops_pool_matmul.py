"""MaxPool / AveragePool with explicit pads, ceil_mode, count_include_pad and auto_pad, and
MatMul with batched, broadcast and 1-D operands, in TFLite against ONNX Runtime."""

import numpy as np
import pytest
from onnx import helper
from test_tflite_ops_activations import after_conv
from tflite_ops_check import check_against_ort, node_model

from edgepack.exporter import ConversionError

POOLS = [
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, None),  # the ResNet stem
    ({"kernel_shape": [3, 3], "strides": [2, 2]}, None),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, None),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, None),
    ({"kernel_shape": [3, 2], "strides": [3, 3], "pads": [0, 1, 2, 0], "ceil_mode": 1}, None),
    ({"kernel_shape": [3, 3], "pads": [2, 0, 0, 1]}, None),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, None),
    ({"kernel_shape": [2, 3], "strides": [1, 2], "auto_pad": "SAME_LOWER"}, None),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}, None),
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "SAME"),
]


@pytest.mark.parametrize("op_type, count_include_pad", [("MaxPool", 0), ("AveragePool", 0), ("AveragePool", 1)])
@pytest.mark.parametrize("attributes, kind", POOLS)
def test_pool_2d_matches_ort(op_type, count_include_pad, attributes, kind, tmp_path):
    extra = {"count_include_pad": count_include_pad} if op_type == "AveragePool" else {}
    node = helper.make_node(op_type, ["h"], ["y"], **attributes, **extra)
    model = after_conv(node, channels=4)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 11
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 10
    ops = check_against_ort(model, tmp_path)
    padded = any(attributes.get("pads", [])) or attributes.get("ceil_mode") or "SAME_LOWER" in str(attributes)
    if kind == "SAME" and not count_include_pad:
        assert "PAD" not in ops and "PADV2" not in ops  # TFLite's own SAME padding
    elif padded and kind is None:
        assert ops["PADV2" if op_type == "MaxPool" else "PAD"] == 1


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [3], "strides": [2], "pads": [1, 1]},
    {"kernel_shape": [2], "strides": [2], "ceil_mode": 1},
    {"kernel_shape": [3], "auto_pad": "SAME_UPPER"},
])
def test_pool_1d_matches_ort(op_type, attributes, tmp_path):
    check_against_ort(node_model(op_type, {"x": [2, 3, 9]}, **attributes), tmp_path)


def test_resnet_stem_average_pool_excludes_padding(tmp_path):
    """The divisor at a corner of a k3 s2 p1 average pool is 4 (count_include_pad=0), not 9."""
    node = node_model("AveragePool", {"x": [1, 1, 4, 4]}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    ones = {"x": np.ones((1, 1, 4, 4), np.float32)}
    check_against_ort(node, tmp_path, feeds=ones, reference=lambda feeds: [np.ones((1, 1, 2, 2), np.float32)])


@pytest.mark.parametrize("a_shape, b_shape, b_constant", [
    ((2, 3, 4), (4, 5), True), ((2, 3, 4), (2, 4, 5), False), ((2, 1, 3, 4), (3, 4, 5), False),
    ((2, 3, 4), (2, 4, 5), True), ((3, 4), (2, 4, 5), True), ((4,), (2, 4, 5), False), ((2, 3, 4), (4,), False),
    ((4,), (4,), False), ((4,), (4, 5), True), ((3, 4), (4,), True),
])
def test_matmul_matches_ort(a_shape, b_shape, b_constant, tmp_path):
    if b_constant:
        b = np.random.default_rng(7).standard_normal(b_shape).astype(np.float32)
        model = node_model("MatMul", {"a": list(a_shape)}, {"b": b})
    else:
        model = node_model("MatMul", {"a": list(a_shape), "b": list(b_shape)})
    ops = check_against_ort(model, tmp_path)
    assert ops["FULLY_CONNECTED" if b_constant and len(b_shape) == 2 else "BATCH_MATMUL"] == 1


def test_pool_output_size_follows_the_spec_or_is_refused(tmp_path):
    """onnx 1.23's ReferenceEvaluator (the converter's static shapes) gives 5 rows here where the
    spec and ORT give ceil(11 / 2) = 6: the pool must match ORT or be refused, never be wrong."""
    model = node_model("MaxPool", {"x": [1, 4, 11, 10]}, kernel_shape=[2, 3], strides=[2, 1], auto_pad="SAME_LOWER")
    try:
        check_against_ort(model, tmp_path)
    except ConversionError as error:
        assert "spatial output [5, 10], the ONNX spec [6, 10]" in str(error)


@pytest.mark.parametrize("op_type, count_include_pad", [("MaxPool", 0), ("AveragePool", 0), ("AveragePool", 1)])
@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [3, 3], "dilations": [2, 2]},
    {"kernel_shape": [2, 3], "dilations": [2, 3], "strides": [2, 1], "pads": [1, 2, 1, 0]},
    {"kernel_shape": [3, 2], "dilations": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "dilations": [2, 1], "auto_pad": "SAME_UPPER"},
])
def test_dilated_pool_matches_ort(op_type, count_include_pad, attributes, tmp_path):
    """Dilated pools (MaxPool since opset 10, AveragePool since 19): one strided slice per tap.
    With auto_pad SAME, ORT 1.32 pads as if undilated (9 rows, not the spec's ceil(11 / 1) = 11)
    and onnx's ReferenceEvaluator averages wrongly, so a numpy reading of the spec decides there."""
    extra = {"count_include_pad": count_include_pad} if op_type == "AveragePool" else {}
    model = node_model(op_type, {"x": [2, 3, 11, 10]}, opset=19, **attributes, **extra)
    spec = None
    if "auto_pad" in attributes:  # SAME_UPPER, stride 1, spans 5 x 3: pads [2, 1, 2, 1]
        spec = lambda feeds: [same_pool_spec(feeds["x"], op_type, count_include_pad)]  # noqa: E731
    ops = check_against_ort(model, tmp_path, reference=spec)
    assert ops["STRIDED_SLICE"] == np.prod(attributes["kernel_shape"])


def same_pool_spec(x: np.ndarray, op_type: str, include_pad: int) -> np.ndarray:
    """A 3×3 pool with dilations (2, 1), stride 1 and pads [2, 1, 2, 1], tap by tap."""
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (1, 1)), constant_values=np.nan)
    taps = np.stack([padded[:, :, 2 * i:2 * i + x.shape[2], j:j + x.shape[3]] for i in range(3) for j in range(3)])
    if op_type == "MaxPool":
        return np.nanmax(taps, axis=0)
    return np.nan_to_num(taps).mean(axis=0) if include_pad else np.nanmean(taps, axis=0)


def test_dilated_pool_1d_matches_ort(tmp_path):
    model = node_model("MaxPool", {"x": [2, 3, 12]}, kernel_shape=[3], dilations=[3], strides=[2], pads=[2, 1])
    check_against_ort(model, tmp_path)
