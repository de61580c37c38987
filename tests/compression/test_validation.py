"""Bad arguments give a ValueError that names the layer and the valid range."""

import pytest
from torch import nn

from edgepack.compression import (
    CirculantLinear,
    HashedConv2d,
    HashedLinear,
    LDRLinear,
    compress,
)


@pytest.mark.parametrize("make, match", [
    (lambda: HashedLinear(4, 4, ratio=0), r"HashedLinear: ratio must be in \(0, 1\]"),
    (lambda: HashedLinear(4, 4, ratio=1.5), r"ratio must be in \(0, 1\], got 1.5"),
    (lambda: HashedLinear(4, 4, ratio=-0.1), "ratio"),
    (lambda: HashedLinear(4, 4, ratio=0.5, num_hashes=0), "num_hashes must be an integer >= 1"),
    (lambda: HashedLinear(4, 4, ratio=0.5, seed=-1), "seed"),
    (lambda: HashedConv2d(4, 4, 3, ratio=0.5, num_hashes=0), "HashedConv2d: num_hashes"),
    (lambda: HashedConv2d(4, 6, 3, ratio=0.5, groups=4), "groups=4 must divide"),
    (lambda: CirculantLinear(8, 8, block_size=6), "block_size must be a power of two >= 4"),
    (lambda: CirculantLinear(8, 8, block_size=2), "got 2"),
    (lambda: CirculantLinear(0, 8, block_size=4), "sizes must be >= 1"),
    (lambda: LDRLinear(8, 8, rank=0), r"rank must be an integer in \[1, 8\]"),
    (lambda: LDRLinear(8, 8, rank=9), "rank"),
])
def test_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def small_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Conv2d(1, 2, 3))


@pytest.mark.parametrize("recipe, match", [
    ({"0": {"method": "prune"}}, r"layer '0': unknown method 'prune'; valid: \['circulant'"),
    ({"0": {"method": "hashed", "ratio": 0}}, r"layer '0': HashedLinear: ratio must be in"),
    ({"0": {"method": "ldr", "rank": 0}}, r"layer '0': LDRLinear: rank"),
    ({"0": {"method": "circulant", "block_size": 12}}, "layer '0': CirculantLinear: block_size"),
    ({"2": {"method": "circulant", "block_size": 4}}, r"supports \['Linear'\], not Conv2d"),
    ({"0": {"method": "hashed", "ratio": 0.5, "rate": 3}}, r"unknown parameters \['rate'\]"),
    ({"fc*": {"method": "hashed", "ratio": 0.5}}, "matches no Linear/Conv2d layer"),
    ({"0": "hashed"}, "a recipe maps layer-name patterns"),
])
def test_recipe_errors_name_the_layer(recipe, match):
    with pytest.raises(ValueError, match=match):
        compress(small_mlp(), recipe)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        compress(small_mlp(), tmp_path / "nope.yaml")
