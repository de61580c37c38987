"""Shared models and runners for the exporter tests (a uniquely named module: `from conftest import`
would resolve to whichever tests/*/conftest.py was imported first)."""

from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from edgepack import onnx_session
from edgepack.compression import CirculantLinear, HashedConv2d, HashedLinear, LDRLinear

LAYERS = {
    "hashednets": lambda: HashedLinear(37, 19, ratio=1 / 4, seed=1691),
    "funhash_k4": lambda: HashedLinear(24, 11, ratio=1 / 8, num_hashes=4, seed=7),
    "hashed_bias_unsigned": lambda: HashedLinear(16, 9, ratio=1 / 2, signed=False,
                                                 hashed_bias=True),
    "hashed_no_bias": lambda: HashedLinear(10, 6, ratio=1 / 3, bias=False, seed=2**32 - 1),
    "circulant": lambda: CirculantLinear(37, 21, block_size=8),
    "circulant_signs": lambda: CirculantLinear(20, 40, block_size=16, input_signs=True, seed=4),
    "ldr": lambda: LDRLinear(30, 17, rank=3),
    "ldr_no_bias": lambda: LDRLinear(8, 12, rank=1, bias=False),
}


class MixedNet(nn.Module):
    """A small CNN/MLP with every compressed layer type and some dense ones."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", HashedConv2d(1, 8, 3, ratio=1 / 2, padding=1, seed=3)),
            ("bn1", nn.BatchNorm2d(8)), ("relu1", nn.ReLU()),
            ("conv2", HashedConv2d(8, 8, 3, ratio=1 / 4, stride=2, groups=2, num_hashes=2)),
            ("relu2", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(2)),
        ]))
        self.fc1 = HashedLinear(32, 48, ratio=1 / 8, num_hashes=3)
        self.fc2 = CirculantLinear(48, 40, block_size=8, input_signs=True)
        self.fc3 = LDRLinear(40, 24, rank=2)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.features(x).flatten(1)
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return torch.softmax(self.head(torch.relu(self.fc3(x))), dim=-1)


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def run_all(path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of one file in ORT with and without our library and in ReferenceEvaluator."""
    feed = {ort.InferenceSession(str(path)).get_inputs()[0].name: x}
    return {
        "ort_kernels": onnx_session(path, use_kernels=True, decode_at_load=False).run(None, feed)[0],
        "ort_decoded": onnx_session(path, use_kernels=True).run(None, feed)[0],
        "ort_fallback": onnx_session(path, use_kernels=False).run(None, feed)[0],
        "reference": ReferenceEvaluator(str(path)).run(None, feed)[0],
    }


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    scale = max(float(np.abs(expected).max()), 1e-6)
    error = float(np.abs(actual - expected).max()) / scale
    assert actual.shape == expected.shape and error <= rtol, f"relative error {error:.2e}"

