"""Fixtures the compression tests share."""

import pytest
import torch

from edgepack.compression.stages import StageData


@pytest.fixture(scope="session")
def cnn_data() -> StageData:
    """A learnable 3-class task on 8×8 images (the class sets the sign of a quadrant) and its StageData."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 1, 8, 8, generator=generator)
    y = torch.randint(0, 3, (600,), generator=generator)
    x[y == 0, :, :4, :4] += 1.5
    x[y == 1, :, 4:, 4:] -= 1.5
    return StageData((x[:400], y[:400]), (x[400:], y[400:]), batch_size=50)
