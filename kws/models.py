"""Keyword-spotting models: DS-CNN (Zhang et al., "Hello Edge", 2017), the MLPerf Tiny KWS model.

DS-CNN-S is MLPerf Tiny's; DS-CNN-L is Hello Edge's large model as ARM's ML-KWS-for-MCU trains it
(``--model_size_info 6 276 10 4 2 1 276 3 3 2 2 276 3 3 1 1 ...``). Both are registered checkpoint
builders (compression/checkpoint.py), so ``save_checkpoint`` / ``load_checkpoint`` rebuild them.
"""

from collections import OrderedDict

from torch import nn


def ds_cnn(channels: int = 64, blocks: int = 4, classes: int = 12, first_stride=(2, 2),
           block_strides=None) -> nn.Sequential:
    """DS-CNN on 49×10 MFCC input (N, 1, 49, 10): conv channels×10×4 (stride ``first_stride``), then
    ``blocks`` × (depthwise 3×3 (stride ``block_strides[i]``, default 1) + BN + ReLU, pointwise + BN +
    ReLU), average pool, FC. The defaults are DS-CNN-S (≈ 25 k parameters, ≈ 2.7 M MACs)."""
    block_strides = list(block_strides) if block_strides is not None else [1] * blocks
    if len(block_strides) != blocks:
        raise ValueError(f"ds_cnn: block_strides needs one stride per block ({blocks}), got {block_strides}")
    layers = [("conv", nn.Conv2d(1, channels, (10, 4), stride=tuple(first_stride), padding=(5, 1), bias=False)),
              ("bn", nn.BatchNorm2d(channels)), ("relu", nn.ReLU())]
    for i, stride in enumerate(block_strides):
        layers += [(f"dw{i}", nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels,
                                        bias=False)),
                   (f"dw{i}_bn", nn.BatchNorm2d(channels)), (f"dw{i}_relu", nn.ReLU()),
                   (f"pw{i}", nn.Conv2d(channels, channels, 1, bias=False)),
                   (f"pw{i}_bn", nn.BatchNorm2d(channels)), (f"pw{i}_relu", nn.ReLU())]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, classes))]
    return nn.Sequential(OrderedDict(layers))


def ds_cnn_l(classes: int = 12) -> nn.Sequential:
    """DS-CNN-L: conv 276×10×4 stride (2, 1), then 5 blocks of 276 channels, the first depthwise with
    stride 2 (413,736 parameters). The conv pads (5, 1) as DS-CNN-S's does: 25×9 where TF's SAME
    padding gives 25×10 (asymmetric padding would need a Pad op); both are 13×5 after block 1."""
    return ds_cnn(channels=276, blocks=5, classes=classes, first_stride=(2, 1), block_strides=(2, 1, 1, 1, 1))


def build_model(name: str, classes: int = 12) -> tuple[nn.Module, str, dict]:
    """(model, checkpoint builder name, builder kwargs) for "ds-cnn-s" or "ds-cnn-l"."""
    if name == "ds-cnn-s":
        return ds_cnn(classes=classes), "edgepack.kws.models:ds_cnn", {"classes": classes}
    if name == "ds-cnn-l":
        return ds_cnn_l(classes=classes), "edgepack.kws.models:ds_cnn_l", {"classes": classes}
    raise ValueError(f"unknown KWS model {name!r}; valid: ds-cnn-s, ds-cnn-l")
