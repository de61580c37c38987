"""Keyword-spotting models: DS-CNN (Zhang et al., "Hello Edge", 2017), the MLPerf Tiny KWS model."""

from collections import OrderedDict

from torch import nn


def ds_cnn(channels: int = 64, blocks: int = 4, classes: int = 12) -> nn.Sequential:
    """DS-CNN on 49×10 MFCC input (N, 1, 49, 10): conv channels×10×4 stride 2, then ``blocks`` ×
    (depthwise 3×3 + BN + ReLU, pointwise + BN + ReLU), average pool, FC. The defaults are DS-CNN-S
    (≈ 25 k parameters, ≈ 2.7 M MACs)."""
    layers = [("conv", nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1), bias=False)),
              ("bn", nn.BatchNorm2d(channels)), ("relu", nn.ReLU())]
    for i in range(blocks):
        layers += [(f"dw{i}", nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)),
                   (f"dw{i}_bn", nn.BatchNorm2d(channels)), (f"dw{i}_relu", nn.ReLU()),
                   (f"pw{i}", nn.Conv2d(channels, channels, 1, bias=False)),
                   (f"pw{i}_bn", nn.BatchNorm2d(channels)), (f"pw{i}_relu", nn.ReLU())]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, classes))]
    return nn.Sequential(OrderedDict(layers))
