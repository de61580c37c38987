"""The one interface of every compression stage (DESIGN §5a): ``stage(model, data, **params) -> (model,
report)``, each report measured the same way (accuracy, weight bytes, MACs, BitOps), and the transforms
that replay a stage's structural change when a checkpoint is loaded."""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgepack.errors import EdgepackError

from .common import evaluating
from .progress import progress_bar
from .recipe import compress, compressed_size_bytes
from .registry import METHODS


class StageError(EdgepackError, ValueError):
    """A stage, its parameters, its data or a transform is wrong; the message names which and what is valid."""


def _split(pair, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` as float32 / int64 tensors of the same length, or StageError."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise StageError(f"data.{name}: expected (inputs, labels), got {type(pair).__name__}")
    inputs, labels = (torch.as_tensor(t) for t in pair)
    if inputs.ndim < 1 or labels.ndim != 1 or len(inputs) != len(labels):
        raise StageError(f"data.{name}: inputs {list(inputs.shape)} and labels {list(labels.shape)} must have "
                         "the same length along the first axis, labels 1-D")
    if not inputs.is_floating_point() or labels.is_floating_point() or labels.dtype == torch.bool:
        raise StageError(f"data.{name}: inputs must be floating point and labels integers, got "
                         f"{inputs.dtype} / {labels.dtype}")
    return inputs.float(), labels.long()


@dataclass
class StageData:
    """What every stage trains, calibrates and evaluates on: (inputs, labels) splits held in memory."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None = None
    batch_size: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.train, self.val = _split(self.train, "train"), _split(self.val, "val")
        self.test = None if self.test is None else _split(self.test, "test")
        for name in ("train", "val"):
            if len(getattr(self, name)[1]) == 0:
                raise StageError(f"data.{name} is empty: stages need examples to train and measure on")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise StageError(f"data.batch_size must be an integer >= 1, got {self.batch_size!r}")

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled training batches; the order depends only on (seed, epoch), so reruns repeat it."""
        inputs, labels = self.train
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            yield inputs[chosen], labels[chosen]

    def calibration(self, count: int = 512) -> torch.Tensor:
        """The first ``count`` training inputs (post-training quantization's calibration set)."""
        if not (isinstance(count, int) and count >= 1):
            raise StageError(f"calibration needs count >= 1 examples, got {count!r}")
        return self.train[0][:count]

    @property
    def example(self) -> torch.Tensor:
        """One input (batch 1): the shape the MACs are counted on."""
        return self.train[0][:1]


@dataclass
class StageReport:
    """What a stage did, measured the same way for every stage (accuracy on ``data.val``)."""

    stage: str
    params: dict
    accuracy: float
    weight_bytes: int
    macs: int
    bitops: int
    seconds: float
    transform: dict | None = None
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The report as plain data (a JSON line of a pipeline's results)."""
        return asdict(self)


@dataclass
class LayerCost:
    """One layer's compute per example: MACs (dense-equivalent) and the bit widths BitOps weigh them by."""

    name: str
    macs: int
    weight_bits: int
    activation_bits: int

    @property
    def bitops(self) -> int:
        return self.macs * self.weight_bits * self.activation_bits


STAGES: dict[str, Callable] = {}
TRANSFORMS: dict[str, Callable[..., nn.Module]] = {}


def _register(table: dict, kind: str, name: str):
    def decorate(function):
        if name in table and table[name] is not function:
            raise ValueError(f"{kind} {name!r} is already registered ({table[name].__qualname__})")
        table[name] = function
        return function
    return decorate


def register_stage(name: str):
    """Decorator: ``function(model, data, **params) -> (model, StageReport)`` is the stage ``name``."""
    return _register(STAGES, "stage", name)


def register_transform(name: str):
    """Decorator: ``function(model, **params) -> model`` rebuilds a stage's structural change from plain
    JSON params (shapes only: the weights are loaded afterwards), so checkpoints reload."""
    return _register(TRANSFORMS, "transform", name)


def stage_parameters(function: Callable) -> set[str]:
    """The keyword parameters a stage function accepts (after ``model, data``)."""
    return {p.name for p in list(inspect.signature(function).parameters.values())[2:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def run_stage(name: str, model: nn.Module, data: StageData, **params) -> tuple[nn.Module, StageReport]:
    """Run the registered stage ``name``; an unknown stage or parameter is a StageError listing the valid ones."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; valid: {', '.join(sorted(STAGES))}")
    unknown = set(params) - stage_parameters(STAGES[name])
    if unknown:
        raise StageError(f"stage {name!r}: unknown parameters {sorted(unknown)}; valid: "
                         f"{sorted(stage_parameters(STAGES[name]))}")
    return STAGES[name](model, data, **params)


@register_transform("recipe")
def apply_recipe(model: nn.Module, recipe: dict) -> nn.Module:
    """The recipe methods' layers (``compress(..., initialize=False)``): shapes only, weights load later."""
    return compress(model, recipe, inplace=True, initialize=False)[0]


def apply_transforms(model: nn.Module, transforms: list[dict]) -> nn.Module:
    """Replay ``[{"name": ..., "params": {...}}, ...]`` in order on a freshly built model."""
    for number, transform in enumerate(transforms):
        name = transform.get("name")
        if name not in TRANSFORMS:
            raise StageError(f"transform {number} {name!r} is not registered; registered: "
                             f"{', '.join(sorted(TRANSFORMS))} (import the module that defines it)")
        try:
            model = TRANSFORMS[name](model, **transform.get("params", {}))
        except EdgepackError:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise StageError(f"transform {number} {name!r} cannot be applied: {type(error).__name__}: "
                             f"{error}") from None
    return model


def _counted(module: nn.Module) -> bool:
    """A layer the MAC count covers: dense Linear / Conv2d, a recipe method's layer, or one with bit widths."""
    return (isinstance(module, (nn.Linear, nn.Conv2d)) or hasattr(module, "weight_bits")
            or any(type(module) in layers.values() for layers in METHODS.values()))


def count_macs(model: nn.Module, example: torch.Tensor) -> list[LayerCost]:
    """Per-layer MACs of one forward pass on ``example`` (batch 1), dense-equivalent for compressed layers
    (decoders are decoded at load, so the runtime computes densely). Counted: nn.Linear, nn.Conv2d, the
    recipe methods' layers and every module with a ``weight_bits`` attribute, outermost only; bit widths from
    ``weight_bits`` / ``activation_bits`` (default 32)."""
    costs: dict[str, LayerCost] = {}
    hooks, counted = [], []
    for name, module in model.named_modules():
        if not _counted(module) or any(name.startswith(f"{outer}.") for outer in counted):
            continue
        counted.append(name)

        def hook(module, inputs, output, name=name):
            if hasattr(module, "in_features"):
                macs = output.numel() // max(output.shape[-1], 1) * module.in_features * module.out_features
            elif hasattr(module, "kernel_size"):
                kh, kw = nn.modules.utils._pair(module.kernel_size)
                macs = output.numel() * module.in_channels // module.groups * kh * kw
            else:
                return
            cost = costs.setdefault(name, LayerCost(name, 0, int(getattr(module, "weight_bits", 32)),
                                                    int(getattr(module, "activation_bits", 32))))
            cost.macs += macs // max(len(example), 1)
        hooks.append(module.register_forward_hook(hook))
    try:
        with evaluating(model):
            model(example)
    finally:
        for handle in hooks:
            handle.remove()
    return list(costs.values())


def run_every_output(model: nn.Module, inputs: torch.Tensor):
    """One forward pass through every path of ``model``: all exits of a model that has several
    (``forward_exits``, EarlyExitNet), else ``model(inputs)``; calibration must see every layer."""
    forward_exits = getattr(model, "forward_exits", None)
    return forward_exits(inputs) if callable(forward_exits) else model(inputs)


def evaluate(model: nn.Module, data: StageData, split: str = "val", batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``data``'s ``split`` ("train", "val" or "test")."""
    pair = getattr(data, split, None) if split in ("train", "val", "test") else None
    if pair is None:
        raise StageError(f"evaluate: no {split!r} split; valid: train, val" + (", test" if data.test else ""))
    inputs, labels = pair
    with evaluating(model):
        correct = sum(int((model(inputs[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, len(labels), batch_size))
    return correct / max(len(labels), 1)


def cross_entropy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default training loss."""
    return F.cross_entropy(model(inputs), labels)


def fine_tune(model: nn.Module, data: StageData, *, epochs: int, lr: float = 1e-3, loss: Callable | None = None,
              progress: bool = True, description: str = "fine-tune") -> nn.Module:
    """Train ``model`` in place with Adam for ``epochs`` over ``data.batches``; ``loss(model, x, y)``
    defaults to cross entropy. Returns the model in eval mode."""
    if not (isinstance(epochs, int) and epochs >= 0):
        raise StageError(f"{description}: epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise StageError(f"{description}: lr must be a number > 0, got {lr!r}")
    loss = loss or cross_entropy
    parameters = [p for p in model.parameters() if p.requires_grad]
    if epochs and parameters:
        optimizer = torch.optim.Adam(parameters, lr=lr)
        steps = -(-len(data.train[1]) // data.batch_size)
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task(description, total=epochs * steps)
            for epoch in range(epochs):
                model.train()
                for inputs, labels in data.batches(epoch):
                    optimizer.zero_grad()
                    loss(model, inputs, labels).backward()
                    optimizer.step()
                    bar.advance(task)
    return model.eval()


def stage_report(stage: str, model: nn.Module, data: StageData, params: dict, *, transform: dict | None = None,
                 extra: dict | None = None, started: float | None = None, macs: int | None = None,
                 bitops: int | None = None) -> StageReport:
    """Measure ``model`` after ``stage``: accuracy on data.val, stored weight bytes, MACs and BitOps per example
    (a model with ``deployed(inputs, labels)``, such as EarlyExitNet, gives its accuracy and expected cost
    when it stops early; ``macs`` / ``bitops`` override the count)."""
    deployed = getattr(model, "deployed", None)
    if callable(deployed):  # a model that stops early (EarlyExitNet): its accuracy and expected cost as deployed
        accuracy, counted_macs, counted_bitops = deployed(*data.val)
    else:
        costs = count_macs(model, data.example)
        accuracy, counted_macs, counted_bitops = (evaluate(model, data), sum(c.macs for c in costs),
                                                  sum(c.bitops for c in costs))
    return StageReport(
        stage=stage, params=copy.deepcopy(params), accuracy=accuracy, weight_bytes=compressed_size_bytes(model),
        macs=int(macs if macs is not None else counted_macs),
        bitops=int(bitops if bitops is not None else counted_bitops),
        seconds=time.perf_counter() - started if started is not None else 0.0,
        transform=transform, extra=dict(extra or {}))
