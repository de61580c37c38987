"""Checkpoints that load without arbitrary pickle: a builder's import path, its keyword
arguments, the compression recipe and the state dict, read back with ``weights_only=True``.

Loading imports the named builder function (code the user already has installed), builds the
dense model, applies the recipe and loads the weights; nothing in the file is executed.
"""

import importlib
from pathlib import Path

import torch
from torch import nn

from .recipe import compress

FORMAT = "edgepack.checkpoint"
VERSION = 1


def save_checkpoint(model: nn.Module, path: str | Path, builder: str,
                    builder_kwargs: dict | None = None, recipe: dict | None = None) -> Path:
    """Save ``model``, rebuilt on load by ``builder`` ("package.module:function") and ``recipe``."""
    _resolve(builder)  # fail now, not at load time, if the builder cannot be imported
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "builder": builder,
                "builder_kwargs": builder_kwargs or {}, "recipe": recipe,
                "state_dict": model.state_dict()}, path)
    return path


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the model saved by ``save_checkpoint`` (in eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise ValueError(f"{path}: not an edgepack checkpoint (it must load with "
                         f"torch.load(weights_only=True)): {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an edgepack checkpoint (missing format {FORMAT!r}); "
                         f"save models with edgepack.compression.save_checkpoint")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {data.get('version')!r}, this edgepack "
                         f"reads version {VERSION}")
    model = _resolve(data["builder"])(**data["builder_kwargs"])
    if data["recipe"]:
        model, _ = compress(model, data["recipe"], inplace=True, initialize=False)
    model.load_state_dict(data["state_dict"])
    return model.eval()


def _resolve(builder: str):
    module_name, _, function_name = builder.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"builder must look like 'package.module:function', got {builder!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import model builder {builder!r}: {error}") from None
    if not callable(function):
        raise ValueError(f"model builder {builder!r} is not callable")
    return function
