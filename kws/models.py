"""Keyword-spotting models: DS-CNN (Zhang et al., "Hello Edge", 2017), the MLPerf Tiny KWS model.

DS-CNN-S is MLPerf Tiny's; DS-CNN-L is Hello Edge's large model as ARM's ML-KWS-for-MCU trains it
(``--model_size_info 6 276 10 4 2 1 276 3 3 2 2 276 3 3 1 1 ...``). Both are registered checkpoint
builders (compression/checkpoint.py), so ``save_checkpoint`` / ``load_checkpoint`` rebuild them; with
``fold_bn=True`` they build the BatchNorm-folded form that ``fold_batchnorms`` makes (biased convs, no BatchNorm).
"""

from collections import OrderedDict

from torch import nn


def ds_cnn(channels: int = 64, blocks: int = 4, classes: int = 12, first_stride=(2, 2),
           block_strides=None, fold_bn: bool = False) -> nn.Sequential:
    """DS-CNN on 49×10 MFCC input (N, 1, 49, 10): conv channels×10×4 (stride ``first_stride``), then
    ``blocks`` × (depthwise 3×3 (stride ``block_strides[i]``, default 1) + BN + ReLU, pointwise + BN +
    ReLU), average pool, FC. The defaults are DS-CNN-S (≈ 25 k parameters, ≈ 2.7 M MACs). ``fold_bn``: each
    BatchNorm is an ``nn.Identity`` and its conv has a bias (the shape of ``fold_batchnorms``'s result)."""
    block_strides = list(block_strides) if block_strides is not None else [1] * blocks
    if len(block_strides) != blocks:
        raise ValueError(f"ds_cnn: block_strides needs one stride per block ({blocks}), got {block_strides}")

    def norm():
        return nn.Identity() if fold_bn else nn.BatchNorm2d(channels)

    layers = [("conv", nn.Conv2d(1, channels, (10, 4), stride=tuple(first_stride), padding=(5, 1), bias=fold_bn)),
              ("bn", norm()), ("relu", nn.ReLU())]
    for i, stride in enumerate(block_strides):
        layers += [(f"dw{i}", nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels,
                                        bias=fold_bn)),
                   (f"dw{i}_bn", norm()), (f"dw{i}_relu", nn.ReLU()),
                   (f"pw{i}", nn.Conv2d(channels, channels, 1, bias=fold_bn)),
                   (f"pw{i}_bn", norm()), (f"pw{i}_relu", nn.ReLU())]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, classes))]
    return nn.Sequential(OrderedDict(layers))


def ds_cnn_l(classes: int = 12, fold_bn: bool = False) -> nn.Sequential:
    """DS-CNN-L: conv 276×10×4 stride (2, 1), then 5 blocks of 276 channels, the first depthwise with
    stride 2 (413,736 parameters). The conv pads (5, 1) as DS-CNN-S's does: 25×9 where TF's SAME
    padding gives 25×10 (asymmetric padding would need a Pad op); both are 13×5 after block 1."""
    return ds_cnn(channels=276, blocks=5, classes=classes, first_stride=(2, 1), block_strides=(2, 1, 1, 1, 1),
                  fold_bn=fold_bn)


def build_model(name: str, classes: int = 12) -> tuple[nn.Module, str, dict]:
    """(model, checkpoint builder name, builder kwargs) for "ds-cnn-s" or "ds-cnn-l"."""
    if name == "ds-cnn-s":
        return ds_cnn(classes=classes), "edgepack.kws.models:ds_cnn", {"classes": classes}
    if name == "ds-cnn-l":
        return ds_cnn_l(classes=classes), "edgepack.kws.models:ds_cnn_l", {"classes": classes}
    raise ValueError(f"unknown KWS model {name!r}; valid: ds-cnn-s, ds-cnn-l")


def fold_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of a trained DS-CNN with each BatchNorm folded into the conv before it (eval statistics,
    ``compression.quantize.fold_batchnorms``) and replaced by ``nn.Identity``, so that compressing the convs
    covers the BatchNorm bytes too; ``ds_cnn(..., fold_bn=True)`` rebuilds it. Refuses, by name, a BatchNorm
    that does not directly follow a dense Conv2d of as many output channels or has no running statistics."""
    import copy

    from edgepack.compression.quantize import fold_batchnorms as fold_conv_batchnorms
    from edgepack.kws.train import KwsTrainError

    if not isinstance(model, nn.Sequential):
        raise KwsTrainError(f"fold_batchnorms: needs the DS-CNN's nn.Sequential, got {type(model).__name__}")
    previous = None
    for name, module in model.named_children():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            conv = getattr(model, previous) if previous else None
            if type(module) is not nn.BatchNorm2d or type(conv) is not nn.Conv2d:
                raise KwsTrainError(f"fold_batchnorms: cannot fold {name!r} ({type(module).__name__}) into "
                                    f"{previous!r} ({type(conv).__name__}); only a BatchNorm2d right after a "
                                    "dense nn.Conv2d folds")
            if module.running_mean is None or module.num_features != conv.out_channels:
                raise KwsTrainError(f"fold_batchnorms: cannot fold {name!r} into {previous!r}: it needs running "
                                    f"statistics and {conv.out_channels} features, has {module.num_features}")
        previous = name
    folded = copy.deepcopy(model).eval()
    fold_conv_batchnorms(folded)  # every BatchNorm checked above folds
    return folded
