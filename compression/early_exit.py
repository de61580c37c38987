"""Early exit (BranchyNet-style): classifier heads after chosen blocks of an ``nn.Sequential``, trained
jointly, and a confidence threshold calibrated on validation data so that easy inputs stop early.

``EarlyExitNet`` keeps the backbone's children (and their state-dict names) in segments; its ``forward``
returns the final logits so ``evaluate`` and a whole-model export still work, ``forward_exits`` returns
every exit's logits and ``predict`` the per-example early-exit decision (the reference the exported
runner is tested against). The ``early_exit`` stage builds, trains and calibrates it; the ``early_exit``
transform rebuilds it from JSON for checkpoints.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .stages import StageData, StageError, count_macs, fine_tune, register_stage, register_transform, stage_report

NEVER = 2.0  # a threshold above any softmax probability: no example leaves early
MAX_CANDIDATES = 20_000  # thresholds tried when calibrating (quantiles of the candidates beyond this)
_PASS_THROUGH = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU,
                 nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Identity)


def make_head(activation_shape, classes: int) -> nn.Sequential:
    """An exit head for an activation of ``activation_shape`` (batch first): global average pool + Linear
    for a 4-D map, flatten + Linear otherwise."""
    if len(activation_shape) == 4:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(int(activation_shape[1]), classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(activation_shape[1:])), classes))


def head_spec(head: nn.Sequential) -> dict:
    """The JSON form of a ``make_head`` head: {"pool": bool, "features": int, "classes": int}."""
    linear = head[-1]
    return {"pool": isinstance(head[0], nn.AdaptiveAvgPool2d), "features": linear.in_features,
            "classes": linear.out_features}


def head_from_spec(spec: dict) -> nn.Sequential:
    """Rebuild a head from ``head_spec``'s JSON."""
    linear = nn.Linear(int(spec["features"]), int(spec["classes"]))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear) if spec["pool"] else \
        nn.Sequential(nn.Flatten(), linear)


def split_segments(model: nn.Sequential, exits: list[str]) -> list[nn.Sequential]:
    """The children of ``model`` cut after each exit name: len(exits) + 1 Sequentials, names kept."""
    children = list(model.named_children())
    names = [name for name, _ in children]
    cuts = [names.index(name) + 1 for name in exits] + [len(children)]
    segments, start = [], 0
    for cut in cuts:
        segments.append(nn.Sequential(OrderedDict(children[start:cut])))
        start = cut
    return segments


class EarlyExitNet(nn.Module):
    """A backbone in segments with an exit head after every segment but the last; ``threshold`` is the
    max-softmax confidence at or above which an example stops at an exit."""

    def __init__(self, segments: list[nn.Sequential], heads: list[nn.Module], exits: list[str],
                 threshold: float = NEVER):
        super().__init__()
        if len(heads) != len(segments) - 1 or len(exits) != len(heads):
            raise StageError(f"EarlyExitNet: needs one head and one exit name per segment but the last; got "
                             f"{len(segments)} segments, {len(heads)} heads, {len(exits)} exit names")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.exits = list(exits)
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The final exit's logits (the whole backbone)."""
        for segment in self.segments:
            x = segment(x)
        return x

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits, the early ones first and the final one last."""
        outputs = []
        for i, segment in enumerate(self.segments):
            x = segment(x)
            outputs.append(self.heads[i](x) if i < len(self.heads) else x)
        return outputs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class, exit index) per example: the first exit whose max softmax probability is at least
        ``threshold``, else the final one."""
        outputs = self.forward_exits(x)
        chosen = torch.full((len(x),), len(outputs) - 1, dtype=torch.long)
        for i, logits in enumerate(outputs[:-1]):
            confident = (torch.softmax(logits, 1).amax(1) >= self.threshold) & (chosen == len(outputs) - 1)
            chosen[confident] = i
        stacked = torch.stack([logits.argmax(1) for logits in outputs], 1)
        return stacked.gather(1, chosen[:, None])[:, 0], chosen

    def deployed(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
        """(accuracy, expected MACs, expected BitOps per example) as deployed: each example stops at its first
        confident exit (``stage_report`` measures every stage after this one so, e.g. int8 after early exit)."""
        predictions, chosen = self.predict(inputs)
        costs = exit_costs(self, inputs[:1])
        fractions = [float((chosen == i).float().mean()) for i in range(len(costs))]
        accuracy = float((predictions == labels).float().mean())
        return (accuracy, round(sum(f * m for f, (m, _) in zip(fractions, costs))),
                round(sum(f * b for f, (_, b) in zip(fractions, costs))))

    def spec(self) -> dict:
        """The JSON params of the ``early_exit`` transform that rebuilds this network."""
        return {"exits": list(self.exits), "heads": [head_spec(head) for head in self.heads],
                "threshold": self.threshold}


@register_transform("early_exit")
def build_early_exit(model: nn.Module, *, exits: list[str], heads: list[dict],
                     threshold: float = NEVER) -> EarlyExitNet:
    """Split a (freshly built) ``nn.Sequential`` at ``exits`` and add heads of the given JSON specs."""
    _check_exit_names(model, exits)
    if len(heads) != len(exits):
        raise StageError(f"early_exit transform: {len(exits)} exits but {len(heads)} head specs")
    return EarlyExitNet(split_segments(model, exits), [head_from_spec(spec) for spec in heads], exits, threshold)


def _check_exit_names(model: nn.Module, exits) -> None:
    """Exit names must be distinct children of an nn.Sequential, in order, before its last child."""
    if not isinstance(model, nn.Sequential):
        raise StageError(f"early_exit: needs an nn.Sequential backbone (exits go between its children), "
                         f"got {type(model).__name__}")
    names = [name for name, _ in model.named_children()]
    if not exits:
        raise StageError("early_exit: exits is empty; give child names (e.g. "
                         f"{names[len(names) // 3]!r}) or fractions of the MACs in (0, 1)")
    for name in exits:
        if name not in names[:-1]:
            raise StageError(f"early_exit: exit {name!r} is not a child of the model before its last; "
                             f"valid: {', '.join(names[:-1])}")
    positions = [names.index(name) for name in exits]
    if positions != sorted(set(positions)):
        raise StageError(f"early_exit: exits {list(exits)} must be distinct and in the model's order")


def resolve_exits(model: nn.Sequential, exits, example: torch.Tensor) -> list[str]:
    """Child names for ``exits``: names stay, a fraction f in (0, 1) becomes the child where the running MAC
    count first reaches f × the total, moved past the BatchNorm / activation children that follow it."""
    if not isinstance(model, nn.Sequential):
        _check_exit_names(model, exits)
    names = [name for name, _ in model.named_children()]
    per_child = dict.fromkeys(names, 0)
    for cost in count_macs(model, example):
        child = cost.name.split(".")[0]
        per_child[child] = per_child.get(child, 0) + cost.macs
    cumulative = np.cumsum([per_child[name] for name in names])
    resolved = []
    for value in exits or []:
        if isinstance(value, str):
            resolved.append(value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise StageError(f"early_exit: exit {value!r} is neither a child name nor a fraction of the MACs "
                             "in (0, 1)")
        i = int(np.searchsorted(cumulative, value * cumulative[-1]))
        while i + 1 < len(names) and isinstance(model[i + 1], _PASS_THROUGH):
            i += 1
        resolved.append(names[i])
    _check_exit_names(model, resolved)
    return resolved


@torch.no_grad()
def exit_logits(model: EarlyExitNet, x: torch.Tensor, batch_size: int = 500) -> list[torch.Tensor]:
    """Every exit's logits on ``x`` (eval mode, in batches)."""
    model.eval()
    parts = [model.forward_exits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return [torch.cat([part[k] for part in parts]) for k in range(len(model.segments))]


def exit_choice(confidences: np.ndarray, threshold: float) -> np.ndarray:
    """Per example (columns of ``confidences`` [exits - 1, N]) the first early exit at or above
    ``threshold``, else the final exit's index."""
    above = confidences >= threshold
    return np.where(above.any(0), above.argmax(0), len(confidences))


def calibrate_threshold(logits: list[torch.Tensor], labels: torch.Tensor, drop: float) -> float:
    """The lowest threshold (midpoints between the early exits' confidences, or ``NEVER``) whose early-exit
    accuracy on ``labels`` is at least the final exit's accuracy minus ``drop``."""
    labels = labels.numpy()
    confidences = np.stack([torch.softmax(out.float(), 1).amax(1).numpy() for out in logits[:-1]]).astype(np.float64)
    correct = np.stack([(out.argmax(1).numpy() == labels) for out in logits])
    goal = correct[-1].mean() - drop - 1e-12
    values = np.unique(confidences)
    candidates = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2])
    if len(candidates) > MAX_CANDIDATES:
        candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, MAX_CANDIDATES)))
    for threshold in candidates:  # ascending: the first that meets the goal is the lowest
        choice = exit_choice(confidences, threshold)
        if correct[choice, np.arange(len(labels))].mean() >= goal:
            return float(threshold)
    return NEVER


def _cost(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, BitOps) of one example through ``module``."""
    costs = count_macs(module, example[:1])
    return sum(c.macs for c in costs), sum(c.bitops for c in costs)


def exit_costs(model: EarlyExitNet, example: torch.Tensor) -> list[tuple[int, int]]:
    """(MACs, BitOps) of an example that leaves at each exit: every segment and head run before it, its own
    head included (the final exit: the whole backbone plus all early heads)."""
    costs, macs, bitops, x = [], 0, 0, example[:1]
    model.eval()
    with torch.no_grad():
        for i, segment in enumerate(model.segments):
            m, b = _cost(segment, x)
            x = segment(x)
            macs, bitops = macs + m, bitops + b
            if i < len(model.heads):
                m, b = _cost(model.heads[i], x)
                macs, bitops = macs + m, bitops + b
            costs.append((macs, bitops))
    return costs


def _check_params(count: int, weights, epochs, lr, drop) -> list[float]:
    """Validated loss weights (one per exit, the final included; default all 1)."""
    weights = [1.0] * (count + 1) if weights is None else list(weights)
    if len(weights) != count + 1:
        raise StageError(f"early_exit: weights needs one loss weight per exit plus the final one ({count + 1}), "
                         f"got {len(weights)}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0 for w in weights) \
            or not any(weights):
        raise StageError(f"early_exit: weights must be finite numbers >= 0, not all 0; got {weights}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise StageError(f"early_exit: epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise StageError(f"early_exit: lr must be > 0, got {lr!r}")
    if not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise StageError(f"early_exit: target_accuracy_drop must be in [0, 1] (0.01 = 1 point), got {drop!r}")
    return [float(w) for w in weights]


@register_stage("early_exit")
def early_exit_stage(model: nn.Module, data: StageData, *, exits, weights=None, epochs: int = 3, lr: float = 1e-3,
                     target_accuracy_drop: float = 0.01, progress: bool = True):
    """Add exit heads after ``exits`` (child names or MAC fractions), train all exits jointly (Σ weight ×
    cross entropy), calibrate the threshold on data.val; report the expected MACs / BitOps over exits."""
    started = time.perf_counter()
    example = data.val[0][:1]
    exits = resolve_exits(model, exits, example)
    weights = _check_params(len(exits), weights, epochs, lr, target_accuracy_drop)
    segments = split_segments(copy.deepcopy(model), exits)
    with torch.no_grad():
        x, shapes = example, []
        for segment in segments[:-1]:
            segment.eval()
            x = segment(x)
            shapes.append(tuple(x.shape))
        classes = segments[-1](x).shape[1]
    torch.manual_seed(data.seed)
    net = EarlyExitNet(segments, [make_head(shape, classes) for shape in shapes], exits)

    def loss(network, x, y):
        return sum(w * nn.functional.cross_entropy(out, y) for w, out in zip(weights, network.forward_exits(x)))

    if epochs:
        fine_tune(net, data, epochs=epochs, lr=lr, loss=loss, progress=progress, description="early exit")
    net.eval()
    logits = exit_logits(net, data.val[0])
    labels = data.val[1]
    net.threshold = calibrate_threshold(logits, labels, target_accuracy_drop)
    predictions, chosen = net.predict(data.val[0])
    costs = exit_costs(net, example)
    table = []
    for i, (macs, bitops) in enumerate(costs):
        leaving = chosen == i
        table.append({"exit": exits[i] if i < len(exits) else "final", "fraction": float(leaving.float().mean()),
                      "accuracy": float((predictions[leaving] == labels[leaving]).float().mean())
                      if leaving.any() else None,
                      "exit_accuracy": float((logits[i].argmax(1) == labels).float().mean()),
                      "macs": macs, "bitops": bitops})
    params = {"exits": exits, "weights": weights, "epochs": epochs, "lr": lr,
              "target_accuracy_drop": target_accuracy_drop}
    extra = {"threshold": net.threshold, "final_accuracy": table[-1]["exit_accuracy"], "exits": table,
             "backbone_macs": sum(cost.macs for cost in count_macs(net, example))}  # the model without heads
    return net, stage_report("early_exit", net, data, params, transform={"name": "early_exit", "params": net.spec()},
                             extra=extra, started=started)
