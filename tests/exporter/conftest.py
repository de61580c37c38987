"""Fixtures of the exporter tests; the shared models and runners are in export_helpers.py."""

import pytest
import torch
from export_helpers import MixedNet, randomize_batchnorm


@pytest.fixture
def mixed_net():
    torch.manual_seed(0)
    return randomize_batchnorm(MixedNet())
