"""Helpers the compression tests share (a uniquely named module, not conftest: see tests/exporter/export_helpers.py)."""

import torch
from torch import nn

from edgepack.compression.stages import StageData


def train(model: nn.Module, data: StageData, epochs: int) -> nn.Module:
    """Plain Adam on cross-entropy over the data's seeded batches; returns the model in eval mode."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        for x, y in data.batches(epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()
