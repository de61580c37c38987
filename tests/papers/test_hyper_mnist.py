"""CI's Hyper-Compression check on MNIST: a small MLP trained here (seeded subset), compressed without
retraining, must keep a stated accuracy at a stated ratio; the accuracy is that of the stored format
(decoded by the numpy reference), and one baseline (per-channel 8-bit PTQ) is checked against numpy."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.benchmarks.lenet import error_rate, train_classifier
from edgepack.benchmarks.mnist import load_mnist
from edgepack.benchmarks.papers_hyper import verdict
from edgepack.cli import main
from edgepack.compression.hyper import HyperLinear, decode_hyper, hyper_compress
from edgepack.compression.ptq_baselines import ptq_compress

# Measured (seed 0; 784-32-10 MLP, 3 epochs on 6000 images, 2000 test images): dense 90.65 %; hyper at
# budget 0.05 on 256 calibration images: 10.4x smaller (layers and model), 90.35 % (0.3 points less).
BUDGET = 0.05
MIN_RATIO = 8.0
MAX_LOSS_POINTS = 1.0
MIN_DENSE_ACCURACY = 85.0


@pytest.fixture(scope="module")
def trained():
    train = load_mnist("train", limit=6000, seed=0)
    test = load_mnist("test", limit=2000, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    train_classifier(model, train.images, train.labels, epochs=3, lr=3e-3, seed=0)
    return model, train, test


def _accuracy(model, test) -> float:
    return 100.0 - error_rate(model, test.images, test.labels)


def test_hyper_keeps_the_stated_accuracy_at_the_stated_ratio(trained):
    model, train, test = trained
    dense = _accuracy(model, test)
    assert dense >= MIN_DENSE_ACCURACY
    compressed, report = hyper_compress(model, budget=BUDGET, calibration=train.images[:256], progress=False)
    assert all(isinstance(compressed[i], HyperLinear) for i in (1, 3))
    # the stored bytes, counted from the contract's arrays: indices, center, side, scales, the four
    # attributes (points int32, group / rings / bits uint8) and the float32 bias
    stored = 0
    for layer in (compressed[1], compressed[3]):
        weights = layer.weight_shape[0] * math.prod(layer.weight_shape[1:])
        group, rings, bits = int(layer.group), int(layer.rings), int(layer.bits)
        assert layer.indices.numel() == math.ceil(math.ceil(weights / group) * bits / 8)
        stored += layer.indices.numel() + 4 * group + 4 + 4 * rings + 4 + 3 + 4 * layer.bias.numel()
    dense_bytes = sum(4 * p.numel() for p in model.parameters())
    assert report.model_bytes == (dense_bytes, stored)
    assert dense_bytes / stored >= MIN_RATIO
    assert _accuracy(compressed, test) >= dense - MAX_LOSS_POINTS
    # the accuracy is the stored format's: the numpy reference decoder gives the same predictions
    reference = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i in (1, 3):
            layer = compressed[i]
            weight = decode_hyper(layer.indices.numpy(), layer.center.numpy(), layer.side.numpy(),
                                  layer.scales.numpy() if int(layer.rings) else None, shape=layer.weight_shape,
                                  points=int(layer.points), group=int(layer.group), rings=int(layer.rings),
                                  bits=int(layer.bits))
            reference[i].weight.copy_(torch.from_numpy(weight))
            assert 0 < np.abs(weight - model[i].weight.numpy()).max()
    assert torch.equal(reference(test.images).argmax(1), compressed(test.images).argmax(1))


def test_ptq8_baseline_equals_numpy_and_counts_its_bytes(trained):
    model, _, test = trained
    compressed, report = ptq_compress(model, 8)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i in (1, 3):
            weight = model[i].weight.numpy()
            scale = (np.abs(weight).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
            reference[i].weight.copy_(torch.from_numpy(np.clip(np.round(weight / scale), -127, 127) * scale))
    for i in (1, 3):
        assert torch.equal(compressed[i].weight, reference[i].weight)
    assert _accuracy(compressed, test) == _accuracy(reference, test)
    assert abs(_accuracy(compressed, test) - _accuracy(model, test)) <= 0.5
    # int8 codes, a float32 scale per output channel, the float32 bias
    assert report.model_stored_bytes == (784 * 32 + 4 * 32 + 4 * 32) + (32 * 10 + 4 * 10 + 4 * 10)


def test_verdict_names_the_smallest_method_within_each_loss():
    rows = [{"family": "dense", "method": "dense", "ratio": 1.0, "accuracy": 98.0, "loss_points": 0.0},
            {"family": "hyper", "method": "hyper 0.05", "ratio": 9.0, "accuracy": 97.8, "loss_points": 0.2},
            {"family": "ptq", "method": "PTQ 4-bit", "ratio": 7.0, "accuracy": 97.9, "loss_points": 0.1},
            {"family": "k-means", "method": "k-means 2-bit", "ratio": 15.0, "accuracy": 97.2, "loss_points": 0.8,
             "packed_ratio": 15.0},
            {"family": "k-means", "method": "k-means 3-bit", "ratio": 8.0, "accuracy": 97.5, "loss_points": 0.5,
             "packed_ratio": 10.0}]
    lines = verdict(rows, losses=(0.5, 1.0))
    assert lines[0] == ("loss <= 0.5 pt: hyper 0.05 9.0x, PTQ 4-bit 7.0x, k-means 3-bit 8.0x -> best: hyper "
                        "(k-means at exact b-bit indices: 10.0x)")
    assert lines[1].endswith("k-means 2-bit 15.0x -> best: k-means (k-means at exact b-bit indices: 15.0x)")
    assert "k-means 3-bit" not in lines[2] and "hyper 0.05 9.0x" in lines[2]  # dominated by hyper
    assert lines[3] == "Hyper-Compression is on the front at 9.0x."


def test_kws_model_without_its_checkpoint_is_a_named_error(tmp_path, capsys):
    assert main(["papers", "hyper", "--model", "kws-dscnn", "--work", str(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
