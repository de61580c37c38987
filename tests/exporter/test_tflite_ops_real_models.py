"""Real image-CNN architectures from the ``onnx`` wheel (backend/test/data/light: the published
graphs with their weights replaced by ConstantOfShape) given random weights, converted to TFLite
and compared with ONNX Runtime: LRN (AlexNet, Inception v1), padded / ceil pools (Inception v1,
the ResNet-50 stem), Sum residuals (ResNet-50), fire modules and opset-9 Softmax (SqueezeNet)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper
from tflite_ops_check import RESOLVERS, run_litert
from torch import nn

from edgepack.exporter import convert_onnx_to_tflite, export

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def with_random_weights(name: str) -> onnx.ModelProto:
    """The light model with each ConstantOfShape weight replaced by a He-scaled random initializer
    (1-D ones, biases and batch-norm statistics, uniform in [0.5, 1.5]) and its logits as output."""
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
            data = rng.standard_normal(shape) * np.sqrt(2 / fan_in) if fan_in else rng.uniform(0.5, 1.5, shape)
            weights.append(numpy_helper.from_array(data.astype(np.float32), node.output[0]))
        elif node.op_type != "Softmax":
            nodes.append(node)
        else:
            logits = node.input[0]
    used = {name for node in nodes for name in node.input}
    weights += [t for t in model.graph.initializer if t.name in used]
    inputs = [i for i in model.graph.input if i.name in used and i.name not in shapes]
    graph = onnx.helper.make_graph(nodes, name, inputs,
                                   [onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)],
                                   weights)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "bvlc_alexnet", "inception_v1"])
def test_real_architecture_matches_ort(name, tmp_path):
    model = with_random_weights(name)
    ops = {node.op_type for node in model.graph.node}
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    path = convert_onnx_to_tflite(model, tmp_path / f"{name}.tflite", verify=False)
    actual = run_litert(path, feeds, RESOLVERS[0])[0]
    scale = float(np.abs(expected).max())
    assert actual.shape == expected.shape and scale > 0
    assert float(np.abs(actual - expected).max()) <= 1e-4 * scale, (name, sorted(ops))


class TorchOpsNet(nn.Module):
    """A small CNN + token mixer using the ops torch exports that the writer used to refuse."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.MaxPool2d(3, 2, 1),
                                  nn.LeakyReLU(0.1), nn.Hardswish())
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        x = self.pool(self.stem(x))  # (N, 8, 3, 3)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (N, 9, 8)
        scores = torch.matmul(tokens, tokens.transpose(1, 2)) / 8 ** 0.5
        mixed = torch.matmul(scores.softmax(-1), torch.nn.functional.gelu(self.mix(tokens)))
        return torch.nn.functional.hardsigmoid(mixed).pow(2) + torch.sqrt(torch.exp(-mixed.abs()))


def test_torch_model_with_the_new_ops(tmp_path):
    """torch → ONNX → TFLite (edgepack.export) for PReLU, MaxPool with padding, LeakyReLU,
    Hardswish, ceil-mode AvgPool without the padding, LayerNorm, batched MatMul, GELU,
    Hardsigmoid, Pow, Sqrt, Exp, Abs; LiteRT (XNNPACK and builtin kernels) against torch."""
    torch.manual_seed(0)
    model = TorchOpsNet().eval()
    x = torch.randn(2, 3, 11, 11)
    path = export(model, x, tmp_path / "ops.tflite")
    expected = model(x).detach().numpy()
    name = Interpreter(model_path=str(path)).get_input_details()[0]["name"]
    for resolver in RESOLVERS:
        actual = run_litert(path, {name: x.numpy()}, resolver)[0]
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=str(resolver))
