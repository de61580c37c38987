"""Knowledge distillation (Hinton et al. 2015): a smaller student learns the teacher's softened outputs
plus the hard labels.

The student is a width multiplier of the teacher (every prunable hidden width × ``width``, through the
channel-pruning transform of compression/prune.py), a depth multiplier (``drop_blocks``: children whose
input and output shapes match become ``nn.Identity``), both, or a model the caller passes (``student=``).
The ``distill_student`` transform rebuilds the first two on a freshly built teacher, so checkpoints reload.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .prune import channel_groups, prune_channels_stage, resize_channels
from .stages import StageData, StageError, fine_tune, register_stage, register_transform, stage_report

INITS = ("teacher", "random")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """α · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α) · CE(student, labels), batch mean."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


@register_transform("distill_student")
def build_student(model: nn.Module, *, drop_blocks: list[str] | None = None, channels: dict | None = None) -> nn.Module:
    """The student's architecture from the teacher's: ``drop_blocks`` children become nn.Identity, then
    ``channels`` ({layer: output channels}) shrink as the ``prune_channels`` transform does."""
    for name in drop_blocks or []:
        if not isinstance(model, nn.Sequential) or name not in dict(model.named_children()):
            children = ", ".join(dict(model.named_children())) if isinstance(model, nn.Sequential) else "none"
            raise StageError(f"distill: drop_blocks names {name!r}, which is not a child of the teacher's "
                             f"nn.Sequential; children: {children}")
        setattr(model, name, nn.Identity())
    return resize_channels(model, dict(channels)) if channels else model


def _check_drop_blocks(teacher: nn.Module, blocks, example: torch.Tensor) -> list[str]:
    """``blocks`` as a list of child names whose input and output shapes match on ``example``."""
    blocks = [blocks] if isinstance(blocks, str) else list(blocks)
    if not isinstance(teacher, nn.Sequential):
        raise StageError(f"distill: drop_blocks needs an nn.Sequential teacher, got {type(teacher).__name__}")
    shapes, x = {}, example
    teacher.eval()
    with torch.no_grad():
        for name, child in teacher.named_children():
            y = child(x)
            shapes[name] = (tuple(x.shape), tuple(y.shape))
            x = y
    for name in blocks:
        if name not in shapes:
            raise StageError(f"distill: drop_blocks names {name!r}, not a child of the teacher; children: "
                             f"{', '.join(shapes)}")
        if shapes[name][0] != shapes[name][1]:
            raise StageError(f"distill: drop_blocks {name!r} maps {list(shapes[name][0])} to {list(shapes[name][1])}; "
                             "only a child whose input and output shapes match can become nn.Identity")
    return blocks


def _width_channels(model: nn.Module, width: float) -> dict[str, int]:
    """{layer: round(width × its output channels), at least 1} for every prunable layer (not the classes)."""
    return {g.producer: max(1, round(width * g.channels)) for g in channel_groups(model)}


def _reset(model: nn.Module, seed: int) -> None:
    """Fresh random weights (each module's own initialisation) and fresh BatchNorm statistics."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _check_params(temperature, alpha, width, init, student, drop_blocks) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise StageError(f"distill: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise StageError(f"distill: alpha (the weight of the soft loss) must be in [0, 1], got {alpha!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1):
        raise StageError(f"distill: width must be in (0, 1] (0.5 halves every hidden width), got {width!r}")
    if init not in INITS:
        raise StageError(f"distill: init={init!r}; valid: {', '.join(INITS)}")
    if student is not None and (width is not None or drop_blocks):
        raise StageError("distill: give either student= (your model) or width / drop_blocks (derived from the "
                         "teacher), not both")
    if student is None and width is None and not drop_blocks:
        raise StageError("distill: no student: give width (e.g. 0.5), drop_blocks (child names) or student=")
    if student is not None and not isinstance(student, nn.Module):
        raise StageError(f"distill: student must be a torch nn.Module, got {type(student).__name__}")


def _check_outputs(teacher: nn.Module, student: nn.Module, data: StageData) -> None:
    """The teacher's and the student's outputs on one training batch must both be [N, classes], equal shapes."""
    x, _ = next(iter(data.batches(0)))
    with torch.no_grad():
        try:
            shapes = [tuple(model.eval()(x).shape) for model in (teacher, student)]
        except RuntimeError as error:
            raise StageError(f"distill: the student cannot run on the data's inputs {list(x.shape)}: {error}") from None
    if shapes[0] != shapes[1] or len(shapes[0]) != 2:
        raise StageError(f"distill: the teacher's outputs {list(shapes[0])} and the student's {list(shapes[1])} on "
                         "one batch must both be [N, classes] with the same classes")


@register_stage("distill")
def distill_stage(model: nn.Module, data: StageData, *, width: float | None = None, drop_blocks=None,
                  student: nn.Module | None = None, init: str = "teacher", temperature: float = 4.0,
                  alpha: float = 0.9, epochs: int = 5, lr: float = 1e-3, progress: bool = True):
    """Train a student to match ``model`` (the teacher) with ``distill_loss``. ``init="teacher"`` starts a
    derived student from the teacher's weights (its largest-L1 channels), ``"random"`` from scratch."""
    started = time.perf_counter()
    _check_params(temperature, alpha, width, init, student, drop_blocks)
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    transform, channels, blocks = None, None, []
    if student is None:
        blocks = _check_drop_blocks(teacher, drop_blocks, data.example) if drop_blocks else []
        student = build_student(copy.deepcopy(model), drop_blocks=blocks)
        if width is not None and width < 1:
            channels = _width_channels(student, width)
            if init == "teacher":  # the largest-L1 channels, as structured pruning keeps them
                student, _ = prune_channels_stage(student, data, ratio=1 - width, epochs=0, progress=False)
                channels = {name: student.get_submodule(name).weight.shape[0] for name in channels}
            else:
                student = resize_channels(student, channels)
        if init == "random":
            _reset(student, data.seed)
        transform = {"name": "distill_student", "params": {"drop_blocks": blocks, "channels": channels}}
    else:
        student = copy.deepcopy(student)
    _check_outputs(teacher, student, data)

    def loss(network, x, y):
        with torch.no_grad():
            target = teacher(x)
        return distill_loss(network(x), target, y, temperature, alpha)

    fine_tune(student, data, epochs=epochs, lr=lr, loss=loss, progress=progress, description="distill")
    params = {"width": width, "drop_blocks": blocks, "student": None if transform else type(student).__name__,
              "init": init, "temperature": temperature, "alpha": alpha, "epochs": epochs, "lr": lr}
    teacher_params = sum(p.numel() for p in teacher.parameters())
    extra = {"teacher_parameters": teacher_params, "student_parameters": sum(p.numel() for p in student.parameters()),
             "channels": channels}
    return student, stage_report("distill", student, data, params, transform=transform, extra=extra, started=started)
