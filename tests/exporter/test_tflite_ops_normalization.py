"""LRN and LayerNormalization in TFLite against ONNX Runtime, in NHWC and in the ONNX layout."""

import numpy as np
import pytest
from onnx import helper
from test_tflite_ops_activations import after_conv
from tflite_ops_check import check_against_ort, node_model

from edgepack.exporter import ConversionError, convert_onnx_to_tflite


def lrn_spec(x: np.ndarray, size: int, alpha=1e-4, beta=0.75, bias=1.0) -> np.ndarray:
    """ONNX's LRN as its spec states it: channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    square_sum = np.zeros_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        low, high = max(0, c - (size - 1) // 2), min(x.shape[1], c + size // 2 + 1)
        square_sum[:, c] = (x[:, low:high].astype(np.float64) ** 2).sum(axis=1)
    return (x / (bias + alpha / size * square_sum) ** beta).astype(np.float32)


@pytest.mark.parametrize("size, attributes", [
    (5, {}), (3, {"alpha": 0.01, "beta": 0.5, "bias": 2.0}), (1, {"alpha": 0.1}), (7, {"alpha": 0.05}),
    (2, {"alpha": 0.1}), (4, {"alpha": 0.02, "beta": 0.9, "bias": 1.5}),
])
def test_lrn_matches_ort(size, attributes, tmp_path):
    """Odd sizes map to LOCAL_RESPONSE_NORMALIZATION, checked against ORT and the spec; even
    (asymmetric) windows, which ORT refuses, are decomposed and checked against the spec."""
    model = node_model("LRN", {"x": [2, 6, 4, 5]}, size=size, **attributes)
    spec = lambda feeds: [lrn_spec(feeds["x"], size, **attributes)]  # noqa: E731
    if size % 2:
        ops = check_against_ort(model, tmp_path, scale=4.0)
        assert ops["LOCAL_RESPONSE_NORMALIZATION"] == 1
    ops = check_against_ort(model, tmp_path, scale=4.0, reference=spec)
    assert ops["LOCAL_RESPONSE_NORMALIZATION" if size % 2 else "CONV_2D"] == 1
    nhwc = after_conv(helper.make_node("LRN", ["h"], ["y"], size=size, **attributes), channels=6)
    if size % 2:
        check_against_ort(nhwc, tmp_path, scale=4.0)


def test_lrn_needs_4d_input(tmp_path):
    with pytest.raises(ConversionError, match=r"LRN.*(4-D|4D)"):
        convert_onnx_to_tflite(node_model("LRN", {"x": [2, 6, 4]}, size=3), tmp_path / "m.tflite", verify=False)


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_in_nhwc(axis, bias, tmp_path):
    rng = np.random.default_rng(4)
    normalized = (4, 5, 6)[axis % 4 - 1:] if axis % 4 else (1, 4, 5, 6)
    constants = {"scale": rng.standard_normal(normalized).astype(np.float32)}
    if bias:
        constants["bias"] = rng.standard_normal(normalized).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["h", *constants], ["y"], axis=axis, epsilon=1e-3)
    ops = check_against_ort(after_conv(node, opset=17, constants=constants), tmp_path)
    assert ops["TRANSPOSE"] == 2 and ops["RSQRT"] == 1  # computed in NHWC: only the boundary transposes


@pytest.mark.parametrize("shape, axis", [((3, 8), -1), ((2, 5, 8), -1), ((2, 5, 8), 1), ((2, 5, 8), 0)])
def test_layer_norm_with_statistics_outputs(shape, axis, tmp_path):
    rng = np.random.default_rng(5)
    scale = rng.standard_normal(shape[axis % len(shape):]).astype(np.float32)
    model = node_model("LayerNormalization", {"x": list(shape)}, {"scale": scale}, opset=17,
                       outputs=("y", "mean", "inv_std"), axis=axis)
    check_against_ort(model, tmp_path, scale=3.0)
