"""exporter/passes.py: the ONNX→ONNX passes that run before the TFLite conversion give the same
outputs as the model they rewrite (ONNX Runtime with the kernels and with the fallback functions),
and the converter lowers their result with no extra ops."""

import numpy as np
import onnx
import torch
from export_helpers import randomize_batchnorm
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgepack.compression import compress
from edgepack.exporter import convert_onnx_to_tflite, export, inspect_tflite
from edgepack.exporter.passes import fold_batch_norms, fuse_hashed_pointwise_convs, run_passes
from edgepack.runtime_kernels import onnx_session


def hashed_cnn() -> nn.Module:
    """Pointwise (fusable), strided pointwise and 3×3 (not fusable) hashed convolutions, BatchNorms."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 6, 1, stride=2), nn.Conv2d(6, 4, 1, bias=False), nn.Conv2d(4, 4, 3))
    model, _ = compress(randomize_batchnorm(model), {str(i): {"method": "hashed", "ratio": 1 / 2}
                                                     for i in (0, 4, 5)} | {"6": {"method": "hashed",
                                                                                  "ratio": 1 / 2,
                                                                                  "num_hashes": 2}})
    return model.eval()


def exported(model: nn.Module, x: torch.Tensor, tmp_path) -> onnx.ModelProto:
    return onnx.load(export(model, x, tmp_path / "m.onnx", mode="kernels"))


def run(model: onnx.ModelProto, x: np.ndarray, use_kernels: bool) -> np.ndarray:
    session = onnx_session(model.SerializeToString(), use_kernels=use_kernels, decode_at_load=False)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_hashed_pointwise_fusion_keeps_the_outputs(tmp_path):
    x = torch.randn(2, 3, 7, 7)
    model = exported(hashed_cnn(), x, tmp_path)
    before = model.SerializeToString()
    fused = fuse_hashed_pointwise_convs(model)
    assert model.SerializeToString() == before  # the input model is untouched
    ops = [n.op_type for n in fused.graph.node]
    # layers 0 and 5 fuse; 4 (stride 2) and 6 (3×3) keep HashedWeight + Conv
    assert ops.count("HashedMatMul") == 2 and ops.count("HashedWeight") == 2 and ops.count("Conv") == 3
    np.testing.assert_allclose(run(fused, x.numpy(), True), run(model, x.numpy(), True), rtol=1e-5, atol=1e-5)


def test_hashed_pointwise_fusion_runs_on_the_fallback_functions(tmp_path):
    """Without the kernels, ONNX Runtime runs the fused model on the HashedMatMul function the pass adds."""
    torch.manual_seed(8)
    model, _ = compress(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                        {"0": {"method": "hashed", "ratio": 1 / 2}, "2": {"method": "hashed", "ratio": 1 / 2}})
    x = torch.randn(1, 3, 5, 5)
    onnx_model = exported(model.eval(), x, tmp_path)
    fused = fuse_hashed_pointwise_convs(onnx_model)
    assert [n.op_type for n in fused.graph.node].count("HashedMatMul") == 2
    assert "HashedMatMul" in {f.name for f in fused.functions}
    np.testing.assert_allclose(run(fused, x.numpy(), False), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_batch_norm_folding_keeps_the_outputs():
    torch.manual_seed(4)
    w = numpy_helper.from_array(np.random.randn(4, 2, 3, 3).astype(np.float32), "w")
    stats = [numpy_helper.from_array(np.random.rand(4).astype(np.float32) + 0.5, n) for n in ("g", "b", "m", "v")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"],
                                                                       ["y"], epsilon=1e-3)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *stats])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_batch_norms(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    x = np.random.randn(1, 2, 6, 6).astype(np.float32)
    np.testing.assert_allclose(run(folded, x, False), run(model, x, False), rtol=1e-5, atol=1e-5)


def test_converter_drops_the_fusion_transposes(tmp_path):
    """The fused model converts (checked against ONNX Runtime) with only the boundary TRANSPOSEs."""
    x = torch.randn(1, 3, 7, 7)
    model = exported(hashed_cnn(), x, tmp_path)
    ops = inspect_tflite(convert_onnx_to_tflite(model, tmp_path / "m.tflite")).op_counts
    # TRANSPOSEs: the model's input and output, and the decoded filters of the two unfused hashed convs
    assert ops["CUSTOM ai.edgepack.HashedMatMul"] == 2 and ops["CONV_2D"] == 3 and ops["TRANSPOSE"] == 4
    assert len([n for n in run_passes(model).graph.node if n.op_type == "BatchNormalization"]) == 1


def test_an_nchw_transpose_read_twice_is_transposed_once(tmp_path):
    """NHWC → NCHW Transpose read by two Reshapes: kept NHWC, one TRANSPOSE made for both readers."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["t", "s"], ["a"]), helper.make_node("Reshape", ["t", "s"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, -1], np.int64), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ops = inspect_tflite(convert_onnx_to_tflite(model, tmp_path / "t.tflite")).op_counts  # verified against ORT
    assert ops["TRANSPOSE"] == 1 and ops["RESHAPE"] == 2


def test_an_nchw_transpose_before_a_conv_costs_no_transpose(tmp_path):
    """NHWC input → Transpose to NCHW → Conv: the Conv reads the NHWC input as it is (only the output
    TRANSPOSE is left; the converter used to transpose to NCHW and straight back)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 6, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ops = inspect_tflite(convert_onnx_to_tflite(model, tmp_path / "c.tflite")).op_counts  # verified against ORT
    assert ops["TRANSPOSE"] == 1 and ops["CONV_2D"] == 1
