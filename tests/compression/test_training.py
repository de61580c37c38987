"""Hashed MLPs trained from scratch on digits reach the stated accuracy (>= 0.9)."""

import pytest
import torch
from torch import nn

from edgepack.compression import HashedLinear
from edgepack.demo import accuracy, load_digits_split, train_classifier

STATED_ACCURACY = 0.9


@pytest.mark.parametrize("num_hashes", [1, 4], ids=["HashedNets", "FunctionalHashing"])
def test_hashed_mlp_at_one_eighth_learns_digits(num_hashes):
    torch.manual_seed(0)
    data = load_digits_split(seed=0)
    model = nn.Sequential(
        HashedLinear(64, 128, ratio=1 / 8, num_hashes=num_hashes, seed=1), nn.ReLU(),
        HashedLinear(128, 10, ratio=1 / 8, num_hashes=num_hashes, seed=2),
    )
    dense_params = 64 * 128 + 128 + 128 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) < dense_params / 5
    train_classifier(model, data, epochs=40, lr=5e-3)
    assert accuracy(model, data.x_test, data.y_test) >= STATED_ACCURACY
