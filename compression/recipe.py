"""``compress(model, recipe)``: swap matched Linear/Conv2d layers for compressed ones.

A recipe maps layer-name patterns (``fnmatch`` globs over ``model.named_modules()`` names) to a
method and its parameters, e.g. ``{"fc*": {"method": "hashed", "ratio": 1/8}}``; the first
matching pattern wins and unmatched layers stay dense. It may also be a YAML or JSON file.
The methods are those the layers register with ``registry.register_method``.
"""

import copy
import fnmatch
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from .registry import METHODS


@dataclass
class LayerReport:
    """One row of the compression table."""

    name: str
    method: str
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int

    @property
    def ratio(self) -> float:
        """Bytes before / bytes after (higher is smaller)."""
        return self.bytes_before / max(self.bytes_after, 1)


class CompressionReport(list):
    """The per-layer table that ``compress`` returns; ``str()`` formats it."""

    def __str__(self) -> str:
        header = f"{'layer':<24}{'method':<11}{'params':>10}{'→':>3}{'params':>9}" \
                 f"{'bytes':>11}{'→':>3}{'bytes':>9}{'ratio':>9}"
        lines = [header]
        for row in self:
            lines.append(f"{row.name:<24}{row.method:<11}{row.params_before:>10}{'':>3}"
                         f"{row.params_after:>9}{row.bytes_before:>11}{'':>3}"
                         f"{row.bytes_after:>9}{row.ratio:>8.1f}x")
        return "\n".join(lines)


def tensor_bytes(module: nn.Module) -> tuple[int, int]:
    """(numbers, bytes) of the tensors inference needs: the state dict, without BN counters.

    Hash caches are non-persistent buffers (rebuilt from the seed), so they do not count.
    """
    tensors = [t for key, t in module.state_dict().items() if not key.endswith("num_batches_tracked")]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def compressed_size_bytes(model: nn.Module) -> int:
    """Bytes of everything the model needs at inference (parameters and persistent buffers)."""
    return tensor_bytes(model)[1]


def load_recipe(recipe: dict | str | Path) -> dict[str, dict]:
    """A recipe as a dict: given directly, or read from a YAML (.yaml/.yml) or JSON file."""
    if isinstance(recipe, (str, Path)):
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe file {str(path)!r} does not exist")
        text = path.read_text()
        recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(recipe, dict) or not all(isinstance(v, dict) for v in recipe.values()):
        raise ValueError("a recipe maps layer-name patterns to {'method': ..., **params}, "
                         f"got {recipe!r}")
    return recipe


def _named_parameters(function) -> set[str]:
    """The parameter names a recipe may pass: the constructor's and ``from_dense``'s (a method that
    encodes trained weights, such as "hyper", takes its search options there), no ``**kwargs``."""
    return {p.name for p in inspect.signature(function).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _build(name: str, layer: nn.Module, spec: dict, initialize: bool) -> nn.Module:
    params = dict(spec)
    method = params.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"layer {name!r}: unknown method {method!r}; valid: {sorted(METHODS)}")
    if method == "dense":
        return layer
    layer_class = METHODS[method].get(type(layer))
    if layer_class is None:
        valid = [t.__name__ for t in METHODS[method]]
        raise ValueError(f"layer {name!r}: method {method!r} supports {valid}, "
                         f"not {type(layer).__name__}")
    accepted = (_named_parameters(layer_class.__init__) | _named_parameters(layer_class.from_dense)) - {
        "self", "layer", "initialize", "in_features", "out_features", "in_channels", "out_channels",
        "kernel_size", "bias", "stride", "padding", "dilation", "groups"}
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(f"layer {name!r}: unknown parameters {sorted(unknown)} for "
                         f"{method!r}; valid: {sorted(accepted)}")
    try:
        return layer_class.from_dense(layer, initialize=initialize, **params)
    except ValueError as error:  # keeps the error's type (an EdgepackError stays one)
        error.args = (f"layer {name!r}: {error}",)
        raise


def compress(model: nn.Module, recipe: dict | str | Path, inplace: bool = False,
             initialize: bool = True) -> tuple[nn.Module, CompressionReport]:
    """Replace the layers the recipe matches; returns the model and a per-layer table.

    Compressed layers start from the trained dense weights (hashing: signed bucket means;
    circulant / LDR: least-squares projection). The input model is copied unless ``inplace``.
    """
    recipe = load_recipe(recipe)
    if not inplace:
        model = copy.deepcopy(model)
    candidates = {name: module for name, module in model.named_modules()
                  if isinstance(module, (nn.Linear, nn.Conv2d)) and name}
    for pattern in recipe:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in candidates):
            raise ValueError(f"recipe pattern {pattern!r} matches no Linear/Conv2d layer; "
                             f"layers: {sorted(candidates)}")
    report = CompressionReport()
    for name, layer in candidates.items():
        pattern = next((p for p in recipe if fnmatch.fnmatchcase(name, p)), None)
        if pattern is None:
            continue
        new_layer = _build(name, layer, recipe[pattern], initialize)
        model.set_submodule(name, new_layer)
        before, after = tensor_bytes(layer), tensor_bytes(new_layer)
        report.append(LayerReport(name, recipe[pattern].get("method"), before[0], after[0],
                                  before[1], after[1]))
    return model, report
