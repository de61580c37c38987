"""The analytic estimate: op and byte counts of small ONNX models against hand counts."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.devices.estimate import fft_macs
from edgepack.devices.power import HOROWITZ_45NM, count_macs_and_bytes, estimate_energy, get_power_source


def weight(name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def save(graph: onnx.GraphProto, path, custom: bool = False) -> str:
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.edgepack", 1)] if custom else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return str(path)


def mlp(path) -> str:
    """x[1,8] → Gemm(W[4,8], b[4]) → Relu → MatMul(W2[4,2]) → y[1,2]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight("w", 4, 8), weight("b", 4), weight("w2", 4, 2)],
    )
    return save(graph, path)


def test_mlp_hand_count(tmp_path):
    macs, moved = count_macs_and_bytes(mlp(tmp_path / "mlp.onnx"))
    assert macs == 4 * 8 + 4 * 2
    # Gemm: x 8 + W 32 + b 4 + h 4; Relu: 4 + 4; MatMul: 4 + W2 8 + y 2 floats — 4 bytes each
    assert moved == 4 * ((8 + 32 + 4 + 4) + (4 + 4) + (4 + 8 + 2))


def test_conv_hand_count(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("w", 3, 2, 3, 3)],
    )
    macs, moved = count_macs_and_bytes(save(graph, tmp_path / "conv.onnx"))
    assert macs == (3 * 3 * 3) * (2 * 3 * 3)  # output elements × (C_in × kh × kw)
    assert moved == 4 * (50 + 54 + 27)


def test_fused_ops_hand_count(tmp_path):
    """HashedMatMul counts as the dense layer; Circulant/LDR via their FFT formulas."""
    graph = helper.make_graph(
        [helper.make_node("HashedMatMul", ["x", "buckets", "", "b"], ["h"], domain="ai.edgepack",
                          in_features=8, out_features=4, num_hashes=1, seed=0),
         helper.make_node("CirculantMatMul", ["h", "blocks", "b"], ["c"], domain="ai.edgepack",
                          in_features=4, out_features=4),
         helper.make_node("LDRMatMul", ["c", "G", "H", "b"], ["y"], domain="ai.edgepack",
                          in_features=4, out_features=4)],
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("buckets", 10), weight("b", 4), weight("blocks", 1, 1, 4), weight("G", 2, 4), weight("H", 2, 4)],
    )
    macs, moved = count_macs_and_bytes(save(graph, tmp_path / "fused.onnx", custom=True))
    assert fft_macs(4) == 1.25 * 4 * 2
    hashed = 2 * 8 * 4
    circulant = 2 * ((1 + 1) * 10 + 4 * 1 * 1 * 3)
    ldr = 2 * 2 * 2 * (2 * 10 + 4 * 3)
    assert macs == hashed + circulant + ldr == 64 + 64 + 256
    hashed_bytes = 16 + 10 + 4 + 8  # x, buckets (not the dense 32 weights), bias, output — in floats
    circulant_bytes = 8 + 4 + 4 + 8
    ldr_bytes = 8 + 8 + 8 + 4 + 8
    assert moved == 4 * (hashed_bytes + circulant_bytes + ldr_bytes)


def test_unknown_shape_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight("w", 4, 2)])
    with pytest.raises(ValueError, match=r"node 'mm1' \(MatMul\): the shape of '[xy]' is unknown"):
        count_macs_and_bytes(save(graph, tmp_path / "g.onnx"))


def test_estimate_matches_the_table(tmp_path):
    estimate = estimate_energy(40, 280)
    assert estimate.estimated is True and estimate.method == "estimate"
    assert estimate.compute_pj == pytest.approx(40 * (3.7 + 0.9))
    assert estimate.memory_pj == pytest.approx(280 * 640 / 4)
    assert estimate.energy_mj_per_inference == pytest.approx((184 + 44800) * 1e-9)
    assert "Horowitz" in HOROWITZ_45NM.citation and "ISSCC 2014" in HOROWITZ_45NM.citation
    assert estimate_energy(1, 4, memory="sram").energy_pj == pytest.approx(4.6 + 5)
    assert estimate_energy(1, 0, dtype="int8").energy_pj == pytest.approx(0.2 + 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        estimate_energy(-1, 0)

    source = get_power_source("estimate")
    from_model = source.estimate(mlp(tmp_path / "mlp.onnx"))
    assert from_model.estimated and (from_model.macs, from_model.bytes_moved) == (40, 280)
    assert math.isclose(from_model.energy_pj, estimate.energy_pj)
