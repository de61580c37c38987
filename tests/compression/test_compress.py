"""compress(): swaps exactly the matched layers, keeps the function close, reports sizes."""

from collections import OrderedDict

import torch
from torch import nn

from edgepack.compression import (
    CirculantLinear,
    HashedConv2d,
    HashedLinear,
    LDRLinear,
    compress,
    compressed_size_bytes,
)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("bn1", nn.BatchNorm2d(8)),
            ("relu1", nn.ReLU()), ("conv2", nn.Conv2d(8, 16, 3, stride=2)), ("relu2", nn.ReLU()),
        ]))
        self.fc1 = nn.Linear(16 * 3 * 3, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


RECIPE = {
    "features.conv2": {"method": "hashed", "ratio": 1 / 4, "seed": 11},
    "fc1": {"method": "circulant", "block_size": 16},
    "fc2": {"method": "ldr", "rank": 2},
    "fc*": {"method": "hashed", "ratio": 0.5},  # fc1/fc2 matched above: first pattern wins
    "head": {"method": "dense"},
}


def test_compress_replaces_exactly_the_matched_layers():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    compressed, table = compress(model, RECIPE)
    assert isinstance(compressed.features.conv2, HashedConv2d)
    assert compressed.features.conv2.seed == 11
    assert isinstance(compressed.fc1, CirculantLinear)
    assert isinstance(compressed.fc2, LDRLinear)
    assert type(compressed.features.conv1) is nn.Conv2d
    assert type(compressed.head) is nn.Linear
    assert isinstance(model.fc1, nn.Linear), "the input model is left unchanged"
    assert [row.name for row in table] == ["features.conv2", "fc1", "fc2", "head"]
    x = torch.randn(4, 1, 8, 8)
    assert compressed(x).shape == (4, 10)


def test_table_counts_parameters_and_bytes():
    model = SmallCNN()
    compressed, table = compress(model, RECIPE)
    rows = {row.name: row for row in table}
    assert rows["fc1"].params_before == 144 * 64 + 64
    assert rows["fc1"].params_after == 4 * 9 * 16 + 64  # p=4, q=9 blocks of 16, plus bias
    assert rows["fc1"].bytes_after == 4 * rows["fc1"].params_after
    assert rows["features.conv2"].params_after == 288 + 16  # ceil(16·72/4) buckets + bias
    assert rows["head"].ratio == 1.0
    assert "fc1" in str(table) and "circulant" in str(table)
    saved = sum(r.bytes_before - r.bytes_after for r in table)
    assert compressed_size_bytes(compressed) == compressed_size_bytes(model) - saved


def test_compressed_size_counts_what_inference_needs():
    layer = HashedLinear(100, 50, ratio=1 / 10)
    assert compressed_size_bytes(layer) == 4 * (500 + 50)  # hash caches are not stored
    bn = nn.BatchNorm1d(7)
    assert compressed_size_bytes(bn) == 4 * 7 * 4  # weight, bias, running mean and var


def test_yaml_recipe_and_hashed_init_keeps_accuracy_of_a_linear_map(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "recipe.yaml"
    path.write_text("fc1:\n  method: hashed\n  ratio: 1.0\n  num_hashes: 1\n")
    model = SmallCNN().eval()
    compressed, _ = compress(model, path)
    assert isinstance(compressed.fc1, HashedLinear)
    # ratio 1 still collides, but the signed bucket means keep the weights correlated
    dense, hashed = model.fc1.weight.flatten(), compressed.fc1.dense_weight().flatten()
    assert torch.corrcoef(torch.stack([dense, hashed]))[0, 1] > 0.5


def test_compress_inplace_and_json_recipe(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text('{"fc2": {"method": "circulant", "block_size": 8}}')
    model = SmallCNN()
    same, _ = compress(model, path, inplace=True)
    assert same is model and isinstance(model.fc2, CirculantLinear)
