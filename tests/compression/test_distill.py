"""The distill stage: the loss against a hand computation, width / depth / user students on the digits MLP,
the teacher-initialised student's channels, checkpoint reload and bad input."""

import math

import pytest
import torch
from torch import nn

from edgepack.compression import load_checkpoint, save_checkpoint
from edgepack.compression.distill import distill_loss, distill_stage
from edgepack.compression.stages import StageData, StageError, evaluate, fine_tune
from edgepack.demo import digits_mlp, load_digits_split

HIDDEN = 48
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher():
    """(data, a digits MLP 64 → 48 → 48 → 10 trained 10 epochs)."""
    split = load_digits_split(0)
    data = StageData(train=(split.x_train[:1000], split.y_train[:1000]),
                     val=(split.x_train[1000:], split.y_train[1000:]), batch_size=50)
    torch.manual_seed(0)
    return data, fine_tune(digits_mlp(HIDDEN), data, epochs=10, lr=3e-3, progress=False)


@pytest.mark.parametrize("temperature, alpha", [(4.0, 0.9), (2.0, 0.5), (1.0, 0.0)])
def test_loss_equals_a_hand_computation(temperature, alpha):
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 5, generator=generator) * 3, torch.randn(6, 5, generator=generator) * 3
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    kl = cross_entropy = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p = [math.exp(v / temperature) for v in t]
        p = [v / sum(p) for v in p]
        log_q = [v / temperature - math.log(sum(math.exp(u / temperature) for u in s)) for v in s]
        kl += sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q)) / len(labels)
        cross_entropy += (math.log(sum(math.exp(u) for u in s)) - s[y]) / len(labels)
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * cross_entropy
    assert float(distill_loss(student, teacher, labels, temperature, alpha)) == pytest.approx(expected, rel=1e-5)


def test_half_width_student_starts_from_the_largest_channels(teacher):
    data, model = teacher
    student, report = distill_stage(model, data, width=0.5, epochs=0, progress=False)
    keep = torch.sort(torch.argsort(model.fc1.weight.abs().sum(1), descending=True)[:HIDDEN // 2]).values
    assert torch.equal(student.fc1.weight, model.fc1.weight[keep])
    assert report.transform == {"name": "distill_student",
                                "params": {"drop_blocks": [], "channels": {"fc1": 24, "fc2": 24}}}
    h = HIDDEN // 2
    assert report.extra["student_parameters"] == (64 + 1) * h + (h + 1) * h + (h + 1) * 10
    assert report.macs == 64 * h + h * h + h * 10


def test_half_width_student_learns_and_reloads(teacher, tmp_path):
    data, model = teacher
    student, report = distill_stage(model, data, width=0.5, epochs=5, lr=3e-3, progress=False)
    assert report.accuracy == evaluate(student, data) > 0.8  # chance is 0.1
    path = save_checkpoint(student, tmp_path / "student.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": HIDDEN}, transforms=[report.transform])
    loaded = load_checkpoint(path)
    assert torch.equal(loaded(data.val[0]), student(data.val[0]))


def test_dropped_block_and_random_init(teacher, tmp_path):
    data, model = teacher
    student, report = distill_stage(model, data, drop_blocks=["fc2", "act2"], init="random", epochs=8, lr=3e-3,
                                    progress=False)
    assert isinstance(student.fc2, nn.Identity) and not torch.equal(student.fc1.weight, model.fc1.weight)
    assert report.accuracy > 0.6
    path = save_checkpoint(student, tmp_path / "shallow.safetensors", "edgepack.demo:digits_mlp",
                           {"hidden": HIDDEN}, transforms=[report.transform])
    assert torch.equal(load_checkpoint(path)(data.val[0]), student(data.val[0]))


def test_user_student(teacher):
    data, model = teacher
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Linear(64, 10))
    student, report = distill_stage(model, data, student=mine, epochs=5, lr=1e-2, progress=False)
    assert report.transform is None and report.accuracy > 0.6
    assert student is not mine and report.params["student"] == "Sequential"


@pytest.mark.parametrize("params, message", [
    ({"width": 0.5, "temperature": 0}, "temperature must be a finite number > 0"),
    ({"width": 0.5, "temperature": -2.0}, "temperature must be a finite number > 0"),
    ({"width": 0.5, "alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
    ({"width": 0.0}, r"width must be in \(0, 1\]"),
    ({}, "no student"),
    ({"width": 0.5, "student": nn.Linear(64, 10)}, "not both"),
    ({"drop_blocks": ["fc1"]}, r"drop_blocks 'fc1' maps \[1, 64\] to \[1, 48\]"),
    ({"drop_blocks": ["nope"]}, "not a child of the teacher"),
    ({"student": nn.Linear(64, 5)}, r"the teacher's outputs \[50, 10\] and the student's \[50, 5\]"),
    ({"width": 0.5, "init": "zeros"}, "valid: teacher, random"),
])
def test_bad_input_is_refused(teacher, params, message):
    data, model = teacher
    with pytest.raises(StageError, match=message):
        distill_stage(model, data, epochs=0, progress=False, **params)
