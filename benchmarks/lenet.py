"""LeNet-300-100 and LeNet-5-Caffe, the MNIST models of the pruning / weight-sharing papers, and
their pretraining (Adam for a few epochs, or Caffe's MNIST solver).

The builders are registered for checkpoints (``edgepack.benchmarks.lenet:lenet_300_100`` ...), so a
saved LeNet rebuilds from its name alone; no code is stored in or named by the file.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from edgepack.compression import register_builder


@register_builder("edgepack.benchmarks.lenet:lenet_300_100")
def lenet_300_100() -> nn.Sequential:
    """784 → 300 → 100 → 10 with ReLU (LeCun et al. 1998; Han et al. 2015's first model)."""
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, 10)),
    ]))


@register_builder("edgepack.benchmarks.lenet:lenet_5")
def lenet_5() -> nn.Sequential:
    """Caffe's LeNet-5: conv 20 5×5, max-pool 2, conv 50 5×5, max-pool 2, FC 500 + ReLU, FC 10."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 20, 5)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(20, 50, 5)), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(800, 500)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(500, 10)),
    ]))


MODELS = {"lenet-300-100": lenet_300_100, "lenet-5": lenet_5}
BUILDER_NAMES = {"lenet-300-100": "edgepack.benchmarks.lenet:lenet_300_100",
                 "lenet-5": "edgepack.benchmarks.lenet:lenet_5"}


def error_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 test error in percent, the figure the papers report."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start:start + batch_size])
            wrong += int((logits.argmax(1) != labels[start:start + batch_size]).sum())
    return 100.0 * wrong / max(len(labels), 1)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float = 1e-3,
          batch_size: int = 128, seed: int = 0, weight_decay: float = 0.0, progress=None,
          description: str = "pretrain") -> list[float]:
    """Train with Adam and cross-entropy on shuffled batches (order fixed by ``seed``); returns the mean
    loss of every epoch. ``progress`` is a rich Progress (or None) that gets one task per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        batches = order.split(batch_size)
        task = progress.add_task(f"{description} epoch {epoch + 1}/{epochs}", total=len(batches)) if progress else None
        total = 0.0
        for batch in batches:
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            if progress:
                progress.advance(task)
        if progress:
            progress.remove_task(task)
        losses.append(total / max(len(labels), 1))
    return losses


# Caffe's examples/mnist/lenet_solver.prototxt, which trained the LeNet-5-Caffe of the papers: SGD with
# momentum and weight decay, batches of 64 (lenet_train_test.prototxt), the "inv" learning-rate policy.
CAFFE_SOLVER = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "gamma": 1e-4, "power": 0.75,
                "batch_size": 64, "iterations": 10_000}


def caffe_learning_rate(iteration: int) -> float:
    """Caffe's "inv" policy: base_lr · (1 + gamma · iteration)^−power."""
    s = CAFFE_SOLVER
    return s["base_lr"] * (1 + s["gamma"] * iteration) ** -s["power"]


def train_caffe_solver(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                       iterations: int = CAFFE_SOLVER["iterations"], progress=None,
                       description: str = "pretrain") -> list[float]:
    """Train as Caffe's MNIST solver (CAFFE_SOLVER) does, on shuffled batches (order fixed by ``seed``), with
    PyTorch's SGD (momentum as PyTorch applies it: the current rate scales the whole step); returns the
    mean loss of every pass over the data."""
    s = CAFFE_SOLVER
    optimizer = torch.optim.SGD(model.parameters(), lr=s["base_lr"], momentum=s["momentum"],
                                weight_decay=s["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    task = progress.add_task(f"{description} ({iterations} iterations)", total=iterations) if progress else None
    losses, iteration = [], 0
    while iteration < iterations:
        model.train()
        total, seen = 0.0, 0
        for batch in torch.randperm(len(labels), generator=generator).split(s["batch_size"]):
            if iteration == iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = caffe_learning_rate(iteration)
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, seen, iteration = total + float(loss.detach()) * len(batch), seen + len(batch), iteration + 1
            if progress:
                progress.advance(task)
        losses.append(total / max(seen, 1))
    if progress:
        progress.remove_task(task)
    return losses
