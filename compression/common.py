"""What the compressed layers and stages share: one ValueError style that names the layer, size helpers, a
Conv2d's geometry, running a model for measurement (``evaluating``), and the constructor from a trained
``nn.Linear``."""

from contextlib import contextmanager

import torch
from torch import nn


def require(condition: bool, layer: str, message: str) -> None:
    """Raise ``ValueError("<layer>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{layer}: {message}")


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, …"""
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int, minimum: int = 4) -> int:
    """The smallest power of two that is >= max(n, minimum)."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def set_conv_geometry(layer: nn.Module, in_channels: int, out_channels: int, kernel_size, stride, padding,
                      dilation, groups: int, error: type[Exception]) -> tuple[int, ...]:
    """Store a Conv2d's geometry on ``layer`` (as nn.Conv2d names it) and return its weight's shape
    (out, in/groups, kh, kw); a ``groups`` that does not divide both channel counts raises ``error``."""
    kernel_size = nn.modules.utils._pair(kernel_size)
    if not (groups >= 1 and in_channels % groups == 0 and out_channels % groups == 0):
        raise error(f"{type(layer).__name__}: groups={groups} must divide in_channels={in_channels} and "
                    f"out_channels={out_channels}")
    layer.in_channels, layer.out_channels = in_channels, out_channels
    layer.kernel_size, layer.groups = kernel_size, groups
    layer.stride, layer.padding, layer.dilation = stride, padding, dilation
    return (out_channels, in_channels // groups, *kernel_size)


@contextmanager
def evaluating(model: nn.Module):
    """Run ``model`` in eval mode without gradients, then put its training mode back as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class FromDenseLinear:
    """Mixin: ``Layer.from_dense(linear, **params)`` builds the layer with the Linear's sizes and
    (unless ``initialize=False``) initialises it from the trained weights by ``init_from_dense``."""

    @classmethod
    def from_dense(cls, layer: nn.Linear, initialize: bool = True, **params):
        """A compressed copy of a trained ``nn.Linear``."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, **params)
        if initialize:
            new.init_from_dense(layer.weight, layer.bias)
        return new
