"""Pruning stages (issue 15): unstructured magnitude pruning ("prune", iterative with fine-tuning, global
or per layer, kept as dense zeros or stored as sparse codebook layers) and structured channel pruning
("prune_channels", L1 norm of each output filter, Li et al. 2017) that really shrinks the layers, with
the transform that rebuilds the shrunken shapes when a checkpoint is loaded."""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .codebook import MAX_CODEBOOK, codebook_layer
from .ptq_baselines import kmeans_1d
from .stages import (
    StageData,
    StageError,
    StageReport,
    evaluate,
    fine_tune,
    register_stage,
    register_transform,
    stage_report,
)

SCOPES = ("global", "layer")
EXPORTS = ("dense", "sparse")
SCHEDULES = ("cubic", "linear")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise StageError(message)


def _patterns(layers, stage: str) -> list[str]:
    """``layers`` (None: all, a glob, or a list of globs) as a list of globs."""
    if layers is None:
        return ["*"]
    patterns = [layers] if isinstance(layers, str) else layers
    _check(isinstance(patterns, (list, tuple)) and patterns and all(isinstance(p, str) for p in patterns),
           f"stage {stage!r}: layers={layers!r}; give a glob or a list of globs over layer names")
    return list(patterns)


def _select(candidates: list[str], layers, stage: str, what: str) -> list[str]:
    """The candidates matched by the globs ``layers``; a glob that matches none is a StageError."""
    patterns = _patterns(layers, stage)
    for pattern in patterns:
        _check(any(fnmatch.fnmatchcase(name, pattern) for name in candidates),
               f"stage {stage!r}: layers pattern {pattern!r} matches no {what}; they are: {candidates}")
    return [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _number(value, name: str, stage: str, low: float, high: float) -> float:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and low < value < high,
           f"stage {stage!r}: {name}={value!r}; must be a number with {low} < {name} < {high}")
    return float(value)


def _count(value, name: str, stage: str, minimum: int) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"stage {stage!r}: {name}={value!r}; must be an integer >= {minimum}")
    return value


# --- unstructured magnitude pruning ---------------------------------------------------------------


def schedule_sparsity(sparsity: float, step: int, steps: int, schedule: str = "cubic") -> float:
    """Target sparsity after ``step`` of ``steps`` (1-based): Zhu & Gupta 2017's cubic ramp
    s·(1 − (1 − t/n)³) from 0, which prunes most while the network is most redundant, or linear s·t/n."""
    fraction = step / steps
    return sparsity * (1 - (1 - fraction) ** 3 if schedule == "cubic" else fraction)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global"
                    ) -> dict[str, torch.Tensor]:
    """Keep-masks (bool) that zero the round(sparsity · n) smallest |w|, over all ``weights`` together
    (``scope="global"``) or within each layer (``"layer"``); ties are broken by position."""
    if scope == "layer":
        return {name: magnitude_masks({name: w}, sparsity)[name] for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    pruned = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:pruned]] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


def _prunable(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and type(m) in (nn.Linear, nn.Conv2d)}


def _share(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """``weight`` with its non-zeros replaced by ≤ 255 shared values (1-D k-means when there are more
    distinct ones), so that with 0.0 they fit one sparse codebook."""
    values = weight.detach().cpu().reshape(-1).numpy().astype(np.float32)
    nonzero = values != 0
    if np.unique(values[nonzero]).size <= MAX_CODEBOOK - 1:
        return weight.detach().clone()
    centers, labels = kmeans_1d(values[nonzero], MAX_CODEBOOK - 1, seed=seed)
    shared = np.zeros_like(values)
    shared[nonzero] = centers.astype(np.float32)[labels]
    return torch.from_numpy(shared.reshape(weight.shape))


def to_sparse_codebook(model: nn.Module, names: list[str], seed: int = 0) -> dict:
    """Replace (in place) the named pruned Linear / Conv2d layers by sparse codebook layers, their
    non-zeros first shared into ≤ 255 values; returns the transform that rebuilds them on load."""
    for name in names:
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(_share(layer.weight, seed))
        model.set_submodule(name, codebook_layer(layer, sparse=True))
    return {"name": "recipe", "params": {"recipe": {name: {"method": "codebook", "sparse": True} for name in names}}}


@register_stage("prune")
def prune_stage(model: nn.Module, data: StageData, *, sparsity: float = 0.9, scope: str = "global",
                steps: int = 3, schedule: str = "cubic", epochs: int = 1, lr: float = 1e-3, layers=None,
                export: str = "dense", progress: bool = True) -> tuple[nn.Module, StageReport]:
    """Magnitude pruning of the Linear / Conv2d weights matched by ``layers`` (biases and BatchNorm are
    never pruned) to ``sparsity``, ramped over ``steps`` (``schedule`` cubic or linear), each step followed
    by ``epochs`` of fine-tuning with the masks held (pruned weights stay exactly 0). ``export="sparse"``:
    each pruned layer becomes a sparse codebook layer (its non-zeros shared into ≤ 255 values by k-means)."""
    started = time.perf_counter()
    params = {"sparsity": sparsity, "scope": scope, "steps": steps, "schedule": schedule, "epochs": epochs,
              "lr": lr, "layers": layers, "export": export}
    sparsity = _number(sparsity, "sparsity", "prune", 0, 1)
    _check(scope in SCOPES, f"stage 'prune': scope={scope!r}; valid: {list(SCOPES)}")
    _check(export in EXPORTS, f"stage 'prune': export={export!r}; valid: {list(EXPORTS)}")
    _check(schedule in SCHEDULES, f"stage 'prune': schedule={schedule!r}; valid: {list(SCHEDULES)}")
    steps = _count(steps, "steps", "prune", 1)
    epochs = _count(epochs, "epochs", "prune", 0)
    lr = _number(lr, "lr", "prune", 0, math.inf)
    model = copy.deepcopy(model)
    candidates = _prunable(model)
    _check(bool(candidates), "stage 'prune': the model has no nn.Linear / nn.Conv2d layer to prune")
    names = _select(list(candidates), layers, "prune", "nn.Linear / nn.Conv2d layer")
    targets = {name: candidates[name] for name in names}
    for step in range(1, steps + 1):
        for layer in targets.values():
            if torch_prune.is_pruned(layer):
                torch_prune.remove(layer, "weight")
        target = schedule_sparsity(sparsity, step, steps, schedule)
        masks = magnitude_masks({name: layer.weight for name, layer in targets.items()}, target, scope)
        for name, layer in targets.items():
            torch_prune.custom_from_mask(layer, "weight", masks[name])
        fine_tune(model, data, epochs=epochs, lr=lr, progress=progress,
                  description=f"prune step {step}/{steps} ({target:.1%})")
    for layer in targets.values():
        torch_prune.remove(layer, "weight")
        with torch.no_grad():  # -0.0 (a negative weight times a 0 mask) becomes +0.0
            layer.weight.masked_fill_(layer.weight == 0, 0.0)
    model.eval()
    nonzeros = {name: int((layer.weight != 0).sum()) for name, layer in targets.items()}
    sizes = {name: layer.weight.numel() for name, layer in targets.items()}
    extra = {"layer_sparsity": {name: 1 - nonzeros[name] / sizes[name] for name in names},
             "sparsity": 1 - sum(nonzeros.values()) / sum(sizes.values()), "nonzeros": sum(nonzeros.values()),
             "schedule": schedule}
    transform = None
    if export == "sparse":
        extra["accuracy_before_sharing"] = evaluate(model, data)
        transform = to_sparse_codebook(model, names, seed=data.seed)
    return model, stage_report("prune", model, data, params, transform=transform, extra=extra, started=started)


# --- structured channel pruning -------------------------------------------------------------------

# Modules that keep every channel as it is (elementwise, pooling, dropout).
PASSTHROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
               nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class ChannelGroup:
    """A prunable layer's output channels and everything they flow through: its BatchNorms, depthwise
    convs (whose channels shrink with them), and the consumer whose inputs shrink (``spatial`` inputs
    per channel when a Flatten stands between a conv and a Linear)."""

    producer: str
    channels: int
    followers: list[str] = field(default_factory=list)
    consumer: str | None = None
    spatial: int = 1


def _flatten(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of nested nn.Sequentials in forward order, with their qualified names."""
    leaves = []
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            leaves += _flatten(child, qualified + ".")
        else:
            leaves.append((qualified, child))
    return leaves


def _channels_out(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Follow the channels of an nn.Sequential chain (nested ones flattened): one group per Linear or
    dense Conv2d whose outputs feed a later layer. The last such layer (the classes) has no consumer and
    is not returned. A module it cannot see channels through is a StageError naming it."""
    _check(isinstance(model, nn.Sequential), f"stage 'prune_channels' follows nn.Sequential chains (nested "
           f"ones too); the model is a {type(model).__name__}")
    groups, current, flattened = [], None, False
    for name, module in _flatten(model):
        kind = type(module)
        if kind in (nn.Conv2d, nn.Linear) and not (kind is nn.Conv2d and module.groups != 1):
            inputs = module.in_channels if kind is nn.Conv2d else module.in_features
            if current is not None:
                _check(kind is nn.Linear or not flattened, f"layer {name!r}: a Conv2d after a Flatten")
                _check(kind is nn.Linear or isinstance(model.get_submodule(current.producer), nn.Conv2d),
                       f"layer {name!r}: a Conv2d fed by the Linear {current.producer!r}")
                conv_to_linear = kind is nn.Linear and isinstance(model.get_submodule(current.producer), nn.Conv2d)
                _check(not conv_to_linear or flattened, f"layer {name!r}: a Linear fed by the Conv2d "
                       f"{current.producer!r} without a Flatten between them")
                _check(inputs % current.channels == 0 and (conv_to_linear or inputs == current.channels),
                       f"layer {name!r}: {inputs} inputs do not match the {current.channels} channels of "
                       f"{current.producer!r}" + (" (× spatial positions)" if conv_to_linear else ""))
                current.consumer, current.spatial = name, inputs // current.channels
                groups.append(current)
            current, flattened = ChannelGroup(name, _channels_out(module)), False
        elif kind is nn.Conv2d:
            _check(module.groups == module.in_channels == module.out_channels,
                   f"layer {name!r}: a grouped Conv2d (groups={module.groups}, {module.in_channels} → "
                   f"{module.out_channels} channels); only dense (groups=1) and depthwise convs are followed")
            if current is not None:
                _check(current.channels == module.in_channels, f"layer {name!r}: {module.in_channels} input "
                       f"channels, but {current.producer!r} makes {current.channels}")
                current.followers.append(name)
        elif kind in NORMS:
            if current is not None:
                _check(current.channels == module.num_features, f"layer {name!r}: {module.num_features} "
                       f"features, but {current.producer!r} makes {current.channels} channels")
                current.followers.append(name)
        elif kind is nn.Flatten:
            _check(module.start_dim == 1 and module.end_dim == -1,
                   f"layer {name!r}: only Flatten(start_dim=1, end_dim=-1) is followed")
            flattened = True
        elif kind not in PASSTHROUGH:
            raise StageError(f"stage 'prune_channels': cannot follow channels through layer {name!r} "
                             f"({kind.__name__}); followed: Conv2d (dense or depthwise), Linear, BatchNorm, "
                             f"Flatten and channel-wise {', '.join(t.__name__ for t in PASSTHROUGH)}")
    return groups


def _take(module: nn.Module, names: tuple[str, ...], index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of each named parameter / buffer of ``module``."""
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        kept = value.detach().index_select(dim, index).clone()
        setattr(module, name, nn.Parameter(kept, value.requires_grad) if isinstance(value, nn.Parameter)
                else kept)


def shrink_group(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` (sorted indices) of ``group.producer`` in place, with the matching
    channels of its BatchNorms and depthwise convs and the matching inputs of its consumer."""
    count = len(keep)
    producer = model.get_submodule(group.producer)
    _take(producer, ("weight", "bias"), keep, 0)
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = count
    else:
        producer.out_features = count
    for name in group.followers:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            _take(module, ("weight", "bias"), keep, 0)
            module.in_channels = module.out_channels = module.groups = count
        else:
            _take(module, ("weight", "bias", "running_mean", "running_var"), keep, 0)
            module.num_features = count
    consumer = model.get_submodule(group.consumer)
    columns = (keep[:, None] * group.spatial + torch.arange(group.spatial)[None, :]).reshape(-1)
    _take(consumer, ("weight",), columns, 1)
    if isinstance(consumer, nn.Conv2d):
        consumer.in_channels = count
    else:
        consumer.in_features = count * group.spatial


def filter_norms(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """L1 norm of each output filter (conv) or output neuron (Linear) of the group's producer."""
    weight = model.get_submodule(group.producer).weight.detach()
    return weight.abs().reshape(weight.shape[0], -1).sum(dim=1)


def _groups_named(model: nn.Module, names) -> dict[str, ChannelGroup]:
    groups = {g.producer: g for g in channel_groups(model)}
    unknown = [name for name in names if name not in groups]
    _check(not unknown, f"prune_channels: {unknown} are not prunable layers; prunable: {list(groups)}")
    return groups


@register_transform("prune_channels")
def resize_channels(model: nn.Module, channels: dict) -> nn.Module:
    """Shrink each layer named in ``channels`` ({layer: kept output channels}) and its dependants to that
    many channels (the first ones: shapes only, the checkpoint's weights load afterwards)."""
    _check(isinstance(channels, dict), f"prune_channels transform: channels={channels!r}; must be "
           "{layer name: kept channels}")
    groups = _groups_named(model, channels)
    for name, count in channels.items():
        _check(isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= groups[name].channels,
               f"prune_channels transform: {name!r} keeps {count!r} channels; must be 1..{groups[name].channels}")
        shrink_group(model, groups[name], torch.arange(count))
    return model


@register_stage("prune_channels")
def prune_channels_stage(model: nn.Module, data: StageData, *, ratio: float = 0.5, layers=None, epochs: int = 1,
                         lr: float = 1e-3, progress: bool = True) -> tuple[nn.Module, StageReport]:
    """Remove the fraction ``ratio`` of output channels with the smallest L1 norms from every prunable
    layer matched by ``layers`` (the classes are never pruned), shrinking what depends on them, then
    fine-tune ``epochs``. The report's transform rebuilds the shapes when a checkpoint is loaded."""
    started = time.perf_counter()
    params = {"ratio": ratio, "layers": layers, "epochs": epochs, "lr": lr}
    ratio = _number(ratio, "ratio", "prune_channels", 0, 1)
    epochs = _count(epochs, "epochs", "prune_channels", 0)
    lr = _number(lr, "lr", "prune_channels", 0, math.inf)
    model = copy.deepcopy(model)
    groups = {g.producer: g for g in channel_groups(model)}
    _check(bool(groups), "stage 'prune_channels': the model has no layer whose output channels feed another")
    names = _select(list(groups), layers, "prune_channels", "prunable layer (the last layer's classes never are)")
    keeps = {}
    for name in names:  # every layer's norms before any shrinks (Li et al.'s independent strategy)
        group = groups[name]
        count = group.channels - math.floor(ratio * group.channels + 0.5)
        _check(count >= 1, f"stage 'prune_channels': ratio={ratio} removes all {group.channels} channels of "
               f"layer {name!r}; use a ratio below {(group.channels - 0.5) / group.channels:.3f}")
        keeps[name] = torch.sort(torch.argsort(filter_norms(model, group), descending=True, stable=True)[:count]).values
    for name, keep in keeps.items():
        shrink_group(model, groups[name], keep)
    kept = {name: len(keep) for name, keep in keeps.items()}
    fine_tune(model, data, epochs=epochs, lr=lr, progress=progress, description=f"prune_channels ({ratio:.0%})")
    extra = {"channels": {name: [groups[name].channels, kept[name]] for name in names}}
    return model, stage_report("prune_channels", model, data, params, extra=extra, started=started,
                               transform={"name": "prune_channels", "params": {"channels": kept}})
