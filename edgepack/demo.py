"""``edgepack demo``: a digits MLP compressed by every method, fine-tuned, compared in one table.

scikit-learn ships the 8×8 digits data set (1,797 images), so nothing is downloaded.
"""

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgepack.compression import compress, compressed_size_bytes, save_checkpoint
from edgepack.errors import EdgepackError

RECIPES: dict[str, dict] = {
    "dense": {},
    "HashedNets 1/8": {"fc*": {"method": "hashed", "ratio": 1 / 8}},
    "HashedNets 1/64": {"fc*": {"method": "hashed", "ratio": 1 / 64}},
    "FunHash K=4 1/8": {"fc*": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 4}},
    "Circulant b=16": {"fc*": {"method": "circulant", "block_size": 16}},
    "LDR r=4": {"fc*": {"method": "ldr", "rank": 4}},
}


def slug(name: str) -> str:
    """A file-name form of a method name: "HashedNets 1/8" → "hashednets-1-8"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class Split:
    """Train and test tensors of one data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0) -> Split:
    """The digits data set, pixels scaled to [0, 1], 75 % train / 25 % test (stratified)."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    as_float, as_long = (lambda a: torch.tensor(a, dtype=torch.float32)), torch.tensor
    return Split(as_float(x_train), as_long(y_train), as_float(x_test), as_long(y_test))


def digits_mlp(hidden: int = 256) -> nn.Sequential:
    """The demo's dense model: 64 → hidden → hidden → 10 with ReLU; fc1/fc2 get compressed."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, hidden)), ("act1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, hidden)), ("act2", nn.ReLU()),
        ("head", nn.Linear(hidden, 10)),
    ]))


def train_classifier(model: nn.Module, data: Split, epochs: int, lr: float = 2e-3,
                     batch_size: int = 64, seed: int = 0, progress=None, task=None) -> nn.Module:
    """Train with Adam and cross-entropy; advances ``progress``'s ``task`` once per epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if progress is not None:
            progress.advance(task)
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())


def count_parameters(model: nn.Module) -> int:
    """Trainable numbers in the model."""
    return sum(p.numel() for p in model.parameters())


def run_demo(quick: bool = False, seed: int = 0, console: Console | None = None,
             save_dir: str | Path | None = None) -> list[dict]:
    """Train the dense MLP, compress and fine-tune it with every recipe, print the table.

    With ``save_dir``, each model is also saved as a checkpoint (``<method>.safetensors``)
    that ``edgepack export`` reads.
    """
    if save_dir is not None:
        save_dir = Path(save_dir)
        if save_dir.exists() and not save_dir.is_dir():
            raise EdgepackError(f"--save {save_dir}: exists and is not a directory")
        save_dir.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    console = console or Console()
    torch.manual_seed(seed)
    data = load_digits_split(seed)
    dense_epochs, tune_epochs = (3, 2) if quick else (30, 15)
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training dense", total=dense_epochs + tune_epochs * (
            len(RECIPES) - 1))
        dense = train_classifier(digits_mlp(), data, dense_epochs, seed=seed,
                                 progress=progress, task=task)
        dense_bytes = compressed_size_bytes(dense)
        for name, recipe in RECIPES.items():
            progress.update(task, description=f"fine-tuning {name}")
            if recipe:
                model, _ = compress(dense, recipe)
                before = accuracy(model, data.x_test, data.y_test)
                train_classifier(model, data, tune_epochs, lr=1e-3, seed=seed,
                                 progress=progress, task=task)
            else:
                model = dense
                before = accuracy(model, data.x_test, data.y_test)
            if save_dir is not None:
                save_checkpoint(model, Path(save_dir) / f"{slug(name)}.safetensors",
                                "edgepack.demo:digits_mlp", recipe=recipe or None)
            size = compressed_size_bytes(model)
            rows.append({"method": name, "accuracy_at_init": before,
                         "accuracy": accuracy(model, data.x_test, data.y_test),
                         "params": count_parameters(model), "bytes": size,
                         "ratio": dense_bytes / size})
    table = Table(title=f"digits MLP 64-256-256-10, {len(data.x_test)} test images"
                  + (" (quick mode)" if quick else ""))
    for column in ("method", "acc. compressed", "acc. tuned", "params", "bytes", "ratio"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for row in rows:
        table.add_row(row["method"], f"{row['accuracy_at_init']:.3f}", f"{row['accuracy']:.3f}",
                      f"{row['params']:,}", f"{row['bytes']:,}", f"{row['ratio']:.1f}x")
    console.print(table)
    return rows
