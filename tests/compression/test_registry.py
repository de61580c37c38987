"""Recipe methods come from ``@register_method`` on the layer classes: the built-in ones, a new one
registered outside recipe.py, and the programming errors the decorator refuses."""

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.compression import (
    METHODS,
    CirculantLinear,
    CodebookConv2d,
    CodebookLinear,
    HashedConv2d,
    HashedLinear,
    HyperConv2d,
    HyperLinear,
    LDRLinear,
    SwsConv2d,
    SwsLinear,
    compress,
    register_method,
)
from edgepack.compression.common import FromDenseLinear


@pytest.fixture
def registry():
    """METHODS as the test found it, restored afterwards (the registry is process-wide)."""
    saved = {method: dict(layers) for method, layers in METHODS.items()}
    yield METHODS
    METHODS.clear()
    METHODS.update(saved)


def test_builtin_layers_register_their_methods():
    assert {method: list(layers.items()) for method, layers in METHODS.items()} == {
        "dense": [],
        "hashed": [(nn.Linear, HashedLinear), (nn.Conv2d, HashedConv2d)],
        "circulant": [(nn.Linear, CirculantLinear)],
        "ldr": [(nn.Linear, LDRLinear)],
        "codebook": [(nn.Linear, CodebookLinear), (nn.Conv2d, CodebookConv2d)],
        "sws": [(nn.Linear, SwsLinear), (nn.Conv2d, SwsConv2d)],
        "hyper": [(nn.Linear, HyperLinear), (nn.Conv2d, HyperConv2d)],
    }


def test_unknown_method_lists_every_registered_one(registry):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError) as error:
        compress(model, {"0": {"method": "prune"}})
    assert str(error.value) == ("layer '0': unknown method 'prune'; "
                                "valid: ['circulant', 'codebook', 'dense', 'hashed', 'hyper', 'ldr', 'sws']")

    @register_method("diagonal", nn.Linear)
    class DiagonalLinear(FromDenseLinear, nn.Module):
        """y = x · diag(d) (square layers only): one number per row."""

        def __init__(self, in_features, out_features, *, bias=True):
            super().__init__()
            self.d = nn.Parameter(torch.zeros(in_features))

        def init_from_dense(self, weight, bias):
            with torch.no_grad():
                self.d.copy_(torch.diagonal(weight))

        def forward(self, x):
            return x * self.d

    valid = r"valid: \['circulant', 'codebook', 'dense', 'diagonal', 'hashed', 'hyper', 'ldr', 'sws'\]"
    with pytest.raises(ValueError, match=valid):
        compress(model, {"0": {"method": "prune"}})
    compressed, table = compress(model, {"0": {"method": "diagonal"}})
    assert isinstance(compressed[0], DiagonalLinear) and table[0].method == "diagonal"
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = x * np.diagonal(model[0].weight.detach().numpy())
    np.testing.assert_allclose(compressed(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"method 'diagonal' supports \['Linear'\], not Conv2d"):
        compress(nn.Sequential(nn.Conv2d(1, 1, 3)), {"0": {"method": "diagonal"}})


def test_decorator_refuses_conflicts(registry):
    with pytest.raises(ValueError, match="method 'hashed' for Linear is already HashedLinear, not LDRLinear"):
        register_method("hashed", nn.Linear)(LDRLinear)
    with pytest.raises(ValueError, match="'dense' is the built-in method"):
        register_method("dense", nn.Linear)(LDRLinear)
    with pytest.raises(TypeError, match="needs a from_dense"):
        register_method("plain", nn.Linear)(nn.Identity)
    assert METHODS["hashed"][nn.Linear] is HashedLinear and "plain" not in METHODS
