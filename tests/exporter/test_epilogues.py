"""Fused epilogues (issue 11, deliverable 2): exporter/passes.py's fuse_epilogues folds a per-channel
Mul / Add / Sub, BatchNormalization and Relu / Clip(0, 6) into the ai.edgepack compute node before
them; the folded file equals torch and the unfused graph in ORT (kernels, fallback), onnx's
ReferenceEvaluator and LiteRT with the delegate."""

import numpy as np
import onnx
import pytest
import torch
from export_helpers import assert_close_relative, run_all
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from edgepack import onnx_session
from edgepack.compression import CirculantLinear, HashedLinear, LDRLinear
from edgepack.exporter import export
from edgepack.exporter.fallbacks import DOMAIN, OPSET_VERSION, STANDARD_OPSET, fallback_function
from edgepack.exporter.passes import fuse_epilogues

OUT, IN, BLOCK = 8, 8, 4


def circulant_model(tail: list[onnx.NodeProto], extra_outputs: tuple[str, ...] = (),
                    constants: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """X[2, 8] → CirculantMatMul (blocks [2, 2, 4], bias) → ``tail`` (its first node reads "y0",
    the last writes "Y"), with a fallback function so ReferenceEvaluator runs it too."""
    rng = np.random.default_rng(3)
    initializers = {"blocks": rng.standard_normal((2, 2, BLOCK)).astype(np.float32),
                    "bias": rng.standard_normal(OUT).astype(np.float32), **(constants or {})}
    node = helper.make_node("CirculantMatMul", ["X", "blocks", "bias"], ["y0"], name="fc", domain=DOMAIN,
                            in_features=IN, out_features=OUT, activation=0)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, OUT]) for n in ("Y", *extra_outputs)]
    graph = helper.make_graph([node, *tail], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, IN])],
                              outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()],
                              value_info=[helper.make_tensor_value_info("y0", TensorProto.FLOAT, [2, OUT])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)],
                              functions=[fallback_function("CirculantMatMul")])
    return model


def bn(x: str, y: str) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    values = {"gamma": rng.uniform(0.5, 2, OUT), "beta": rng.standard_normal(OUT),
              "mean": rng.standard_normal(OUT), "var": rng.uniform(0.5, 1.5, OUT)}
    node = helper.make_node("BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y], epsilon=1e-3)
    return node, {k: v.astype(np.float32) for k, v in values.items()}


def ort_kernels(model: onnx.ModelProto, path, x: np.ndarray) -> np.ndarray:
    onnx.save(model, path)
    return onnx_session(path, use_kernels=True, decode_at_load=False).run(None, {"X": x})[0]


def test_each_pattern_folds_and_keeps_the_result(tmp_path):
    bn_node, bn_values = bn("y2", "y3")
    rng = np.random.default_rng(5)
    constants = {"m": rng.uniform(-2, 2, OUT).astype(np.float32), "a": np.float32(rng.standard_normal()),
                 "s": rng.standard_normal((1, OUT)).astype(np.float32), "six": np.float32(6), "zero": np.float32(0),
                 **bn_values}
    cases = {
        "mul_add_sub_bn_relu6": [helper.make_node("Mul", ["m", "y0"], ["y1"]),
                                 helper.make_node("Add", ["y1", "a"], ["y1b"]),
                                 helper.make_node("Sub", ["y1b", "s"], ["y2"]), bn_node,
                                 helper.make_node("Clip", ["y3", "zero", "six"], ["Y"])],
        "bn_relu": [bn("y0", "y1")[0], helper.make_node("Relu", ["y1"], ["Y"])],
        "relu_only": [helper.make_node("Relu", ["y0"], ["Y"])],
    }
    x = rng.standard_normal((2, IN)).astype(np.float32) * 3
    for name, tail in cases.items():
        model = circulant_model(tail, constants=constants)
        want = ReferenceEvaluator(model).run(None, {"X": x})[0]
        fused = fuse_epilogues(model)
        onnx.checker.check_model(fused, full_check=True)
        assert [n.op_type for n in fused.graph.node] == ["CirculantMatMul"], name
        assert fused.graph.node[0].output[0] == "Y"
        activation = {a.name: a.i for a in fused.graph.node[0].attribute}.get("activation", 0)
        assert activation == {"mul_add_sub_bn_relu6": 2, "bn_relu": 1, "relu_only": 1}[name]
        assert_close_relative(ReferenceEvaluator(fused).run(None, {"X": x})[0], want)  # the fallback
        assert_close_relative(ort_kernels(fused, tmp_path / f"{name}.onnx", x), want)
        assert (want == 0).any() and (name != "mul_add_sub_bn_relu6" or (want == 6).any())


def test_not_folded_when_the_intermediate_has_another_reader():
    shared = circulant_model([helper.make_node("Relu", ["y0"], ["Y"])], extra_outputs=("y0",))
    assert [n.op_type for n in fuse_epilogues(shared).graph.node] == ["CirculantMatMul", "Relu"]
    twice = circulant_model([helper.make_node("Relu", ["y0"], ["r"]), helper.make_node("Add", ["r", "y0"], ["Y"])])
    assert [n.op_type for n in fuse_epilogues(twice).graph.node] == ["CirculantMatMul", "Relu", "Add"]
    # a Mul by a non-constant and a Clip other than (0, 6) stay
    other = circulant_model([helper.make_node("Mul", ["y0", "X"], ["Y"])])
    assert [n.op_type for n in fuse_epilogues(other).graph.node] == ["CirculantMatMul", "Mul"]
    clip = circulant_model([helper.make_node("Clip", ["y0", "zero", "five"], ["Y"])],
                           constants={"zero": np.float32(0), "five": np.float32(5)})
    assert [n.op_type for n in fuse_epilogues(clip).graph.node] == ["CirculantMatMul", "Clip"]


def test_one_scaled_node_gives_every_node_of_its_op_a_scale(tmp_path):
    """Two circulant nodes, a BatchNorm after the second only: the first gets a scale of ones, and
    the fallback function is the variant that reads it."""
    bn_node, bn_values = bn("z0", "Y")
    model = circulant_model([helper.make_node("CirculantMatMul", ["y0", "blocks", "bias"], ["z0"], domain=DOMAIN,
                                              in_features=IN, out_features=OUT, activation=0), bn_node],
                            constants=bn_values)
    model.graph.value_info.append(helper.make_tensor_value_info("z0", TensorProto.FLOAT, [2, OUT]))
    x = np.random.default_rng(6).standard_normal((2, IN)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"X": x})[0]
    fused = fuse_epilogues(model)
    assert [len(n.input) for n in fused.graph.node] == [4, 4]
    assert_close_relative(ReferenceEvaluator(fused).run(None, {"X": x})[0], want)
    assert_close_relative(ort_kernels(fused, tmp_path / "two.onnx", x), want)


LINEARS = {
    "hashed_stream": (lambda: HashedLinear(20, 12, ratio=1 / 4, num_hashes=2, seed=9), True),
    "circulant": (lambda: CirculantLinear(37, 24, block_size=8, input_signs=True), False),
    "ldr": (lambda: LDRLinear(30, 16, rank=2), False),
}


def linear_bn_relu6(name: str) -> tuple[nn.Module, bool]:
    torch.manual_seed(11)
    make, stream = LINEARS[name]
    layer = make()
    norm = nn.BatchNorm1d(layer.out_features)
    norm.running_mean.uniform_(-0.5, 0.5)
    norm.running_var.uniform_(0.5, 1.5)
    norm.weight.data.uniform_(1, 4)
    return nn.Sequential(layer, norm, nn.ReLU6(), nn.Linear(layer.out_features, 5)).eval(), stream


@pytest.mark.parametrize("name", list(LINEARS))
def test_linear_batchnorm_relu6_in_every_runtime(name, tmp_path):
    """torch == ORT kernels == ORT decoded == ORT fallback == ReferenceEvaluator == LiteRT delegate,
    with BatchNorm and ReLU6 folded into the compute node (fewer nodes than without the pass)."""
    from test_tflite_delegate_parity import run_litert

    model, stream = linear_bn_relu6(name)
    x = torch.randn(4, model[0].in_features) * 3
    want = model(x).detach().numpy()
    hidden = model[:3](x).detach().numpy()
    assert (hidden == 0).any() and (hidden == 6).any()  # both ends of ReLU6 are exercised
    path = export(model, x, tmp_path / f"{name}.onnx", stream=stream)
    proto = onnx.load(path)
    assert [n.op_type for n in proto.graph.node][-1] == "Gemm" and len(proto.graph.node) in (2, 3)
    compute = next(n for n in proto.graph.node if n.domain == DOMAIN)
    assert {a.name: a.i for a in compute.attribute}["activation"] == 2
    assert compute.input[-1].endswith("_fused_scale")
    for runtime, y in run_all(path, x.numpy()).items():
        assert_close_relative(y, want), runtime
    tflite = export(model, x, tmp_path / f"{name}.tflite", stream=stream)
    assert_close_relative(run_litert(tflite, x.numpy()), want)


def test_the_pass_lowers_the_node_count(tmp_path, monkeypatch):
    """The same export with the pass switched off keeps BatchNormalization and Clip."""
    from edgepack.exporter import onnx_export

    model, _ = linear_bn_relu6("circulant")
    x = torch.randn(2, 37)
    fused = [n.op_type for n in onnx.load(export(model, x, tmp_path / "fused.onnx")).graph.node]
    monkeypatch.setattr(onnx_export, "fuse_epilogues", lambda proto: proto)
    plain = [n.op_type for n in onnx.load(export(model, x, tmp_path / "plain.onnx")).graph.node]
    assert sorted(fused) == ["CirculantMatMul", "Gemm", "Mul"]  # Mul: the input signs
    assert sorted(plain) == ["BatchNormalization", "CirculantMatMul", "Clip", "Gemm", "Mul"]
