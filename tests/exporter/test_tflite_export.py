"""torch → ONNX → TFLite: builtins in LiteRT against torch, CUSTOM ops and their options, errors."""

import numpy as np
import onnx
import pytest
import torch
from export_helpers import assert_close_relative, randomize_batchnorm
from flatbuffers import flexbuffers
from onnx import TensorProto, helper
from torch import nn

from edgepack.exporter import ConversionError, convert_onnx_to_tflite, export, inspect_tflite
from edgepack.kws import models as kws_models

interpreter = pytest.importorskip("ai_edge_litert.interpreter")


def ds_cnn() -> nn.Module:
    """DS-CNN with 32 channels and 2 blocks, batch-norm statistics made non-trivial."""
    return randomize_batchnorm(kws_models.ds_cnn(channels=32, blocks=2))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        x = torch.cat([x, x * 0.5], dim=1)[:, :8]
        return torch.softmax(self.head(torch.sigmoid(self.fc1(x.flatten(1)))), dim=-1)


def run_tflite(path, x: np.ndarray, delegates=()) -> np.ndarray:
    runner = interpreter.Interpreter(model_path=str(path), experimental_delegates=list(delegates))
    runner.allocate_tensors()
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])


@pytest.mark.parametrize("make, shape", [(ds_cnn, (1, 1, 49, 10)), (SmallCNN, (2, 3, 8, 8))])
def test_dense_models_match_torch(make, shape, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    path = export(model, x, tmp_path / "model.tflite")
    assert_close_relative(run_tflite(path, x.numpy()), model(x).detach().numpy())
    ops = inspect_tflite(path).op_counts
    assert "BATCH_NORMALIZATION" not in str(ops) and "CONV_2D" in ops


def test_batch_norm_is_folded_into_the_convolution(tmp_path):
    path = export(ds_cnn(), torch.randn(1, 1, 49, 10), tmp_path / "ds.tflite")
    ops = inspect_tflite(path).op_counts
    assert ops["CONV_2D"] == 3 and ops["DEPTHWISE_CONV_2D"] == 2
    assert "MUL" not in ops and "ADD" not in ops  # BN folded into the conv's weights and bias


def test_custom_ops_carry_the_onnx_attributes(tmp_path):
    from edgepack.compression import HashedLinear

    torch.manual_seed(1)
    layer = HashedLinear(20, 6, ratio=1 / 4, num_hashes=3, seed=77, signed=False).eval()
    path = export(layer, torch.randn(1, 20), tmp_path / "h.tflite", stream=True)
    summary = inspect_tflite(path)
    assert summary.op_counts["CUSTOM ai.edgepack.HashedMatMul"] == 1
    node = summary.nodes[0]
    assert node.attributes == {"in_features": 20, "out_features": 6, "num_hashes": 3, "seed": 77,
                               "signed": 0, "mode": 1, "activation": 0}
    assert node.stored_bytes == 4 * (layer.buckets.numel() + layer.recon.numel())
    # Without the delegate, TFLite cannot resolve the op and says so.
    with pytest.raises(RuntimeError, match="ai.edgepack.HashedMatMul"):
        run_tflite(path, np.zeros((1, 20), np.float32))


def test_flexbuffer_options_round_trip():
    from edgepack.exporter.tflite_export import flexbuffer_options

    options = {"shape": [8, 3, 3, 3], "num_hashes": 1, "seed": 2**32 - 1, "signed": 1}
    assert flexbuffers.Loads(flexbuffer_options(options)) == options


def onnx_model(node: onnx.NodeProto, shape=(1, 4)) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_unsupported_op_names_node_and_supported_list(tmp_path):
    model = onnx_model(helper.make_node("Det", ["x"], ["y"], name="my_det"), shape=(4, 4))
    with pytest.raises(ConversionError, match=r"node 'my_det' \(Det\): op Det is not supported .*"
                                              r"supported: .*Conv.*Softmax"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite")


def test_unsupported_attributes_are_refused(tmp_path):
    model = onnx_model(helper.make_node("Pad", ["x", "p"], ["y"], name="crop"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, -1, 0, 1], np.int64), "p"))
    with pytest.raises(ConversionError, match=r"node 'crop' .*negative pads \[0, -1, 0, 1\] \(cropping\)"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite")
    model = onnx_model(helper.make_node("Pad", ["x", "p"], ["y"], mode="edge", name="pad"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "p"))
    with pytest.raises(ConversionError, match="node 'pad' .*'edge' is not supported"):
        convert_onnx_to_tflite(model, tmp_path / "m.tflite")
