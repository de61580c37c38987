"""The retraining-free baselines against independent references: per-channel quantization against a
per-element loop and torch's fake quantization, 1-D k-means against scikit-learn's KMeans, and the
stored / counted bytes against a count by hand."""

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from edgepack.compression.codebook import CodebookConv2d, CodebookLinear
from edgepack.compression.ptq_baselines import (
    BaselineError,
    kmeans_1d,
    kmeans_compress,
    kmeans_plus_plus,
    ptq_compress,
    quantize_per_channel,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 40), nn.ReLU(),
                        nn.Linear(40, 3))
    with torch.no_grad():  # heavy-tailed weights, one all-zero output channel
        net[3].weight.copy_(torch.distributions.StudentT(3.0).sample(net[3].weight.shape) * 0.05)
        net[3].weight[7].zero_()
    return net


def _loop_quantize(weight: np.ndarray, bits: int) -> np.ndarray:
    """Per-channel symmetric quantize-dequantize, one element at a time in float32."""
    levels = 2 ** (bits - 1) - 1
    out = np.zeros_like(weight, dtype=np.float32)
    for c in range(weight.shape[0]):
        channel = weight[c].ravel()
        peak = max(abs(float(v)) for v in channel)
        scale = np.float32(peak) / np.float32(levels) if peak > 0 else np.float32(1)
        values = []
        for v in channel:
            q = min(max(round(float(np.float32(v) / scale)), -levels), levels)  # round() is half-to-even
            values.append(np.float32(q) * scale)
        out[c] = np.array(values, dtype=np.float32).reshape(weight[c].shape)
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_quantization_equals_a_loop_and_torch_fake_quant(model, bits):
    weight = model[3].weight.detach().numpy()
    codes, scales = quantize_per_channel(weight, bits)
    levels = 2 ** (bits - 1) - 1
    assert codes.min() >= -levels and codes.max() <= levels and scales.dtype == np.float32
    approx = codes.astype(np.float32) * scales[:, None]
    np.testing.assert_array_equal(approx, _loop_quantize(weight, bits))
    fake = torch.fake_quantize_per_channel_affine(torch.from_numpy(weight), torch.from_numpy(scales),
                                                  torch.zeros(len(scales), dtype=torch.int32), 0, -levels,
                                                  levels).numpy()
    step = np.broadcast_to(scales[:, None], weight.shape)
    assert np.all(np.abs(fake - approx) <= step * 1.0001)  # torch multiplies by 1/scale: a tie may round apart
    assert np.mean(fake == approx) > 0.99
    assert np.all(np.abs(approx - weight) <= step / 2 * 1.0001)


def test_kmeans_matches_sklearn_from_the_same_seeds_and_its_inertia():
    values = np.random.default_rng(3).standard_t(4, size=3000) * 0.1
    seeds = kmeans_plus_plus(values, 8, np.random.default_rng(0))
    assert len(set(seeds)) == 8 and set(seeds) <= set(values)
    centers, labels = kmeans_1d(values, 8, init=seeds)
    reference = KMeans(8, init=np.sort(seeds).reshape(-1, 1), n_init=1, tol=0, max_iter=300,
                       algorithm="lloyd").fit(values.reshape(-1, 1))
    np.testing.assert_allclose(centers, np.sort(reference.cluster_centers_.ravel()), rtol=1e-9, atol=1e-12)
    inertia = float(((values - centers[labels]) ** 2).sum())
    assert inertia == pytest.approx(reference.inertia_, rel=1e-9)
    assert np.array_equal(labels, np.abs(values[:, None] - centers[None, :]).argmin(1))  # nearest centroid
    best = KMeans(8, n_init=3, random_state=0).fit(values.reshape(-1, 1)).inertia_
    seeded = kmeans_1d(values, 8, seed=0)
    assert float(((values - seeded[0][seeded[1]]) ** 2).sum()) <= 1.01 * best
    assert np.array_equal(seeded[0], kmeans_1d(values, 8, seed=0)[0])  # seeded: the same every run


def test_baselines_store_real_bytes_or_count_them(model):
    x = torch.randn(5, 3, 6, 6)
    dense_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    for bits in (2, 3, 4, 5):
        compressed, report = kmeans_compress(model, bits, seed=1)
        conv, fc1, fc2 = compressed[0], compressed[3], compressed[5]
        assert isinstance(conv, CodebookConv2d) and isinstance(fc1, CodebookLinear)
        assert isinstance(fc2, CodebookLinear)
        stored_bits = {2: 2, 3: 4, 4: 4, 5: 8}[bits]
        for layer, row in zip((conv, fc1, fc2), report):
            weights = math.prod(row.shape)
            codebook = layer.codebook.numel()
            assert codebook <= 2 ** bits and len(np.unique(layer.dense_weight().numpy())) == codebook
            # the codebook layer's buffers: packed indices, codebook, bias and its one-byte ``bits``
            assert row.stored_bytes == math.ceil(weights * stored_bits / 8) + 4 * codebook + 4 * row.shape[0] + 1
            assert row.packed_bytes == math.ceil(weights * bits / 8) + 4 * 2 ** bits + 4 * row.shape[0]
        assert report.model_stored_bytes == report.stored_bytes and report.model_dense_bytes == dense_bytes
        assert torch.isfinite(compressed(x)).all()
    assert model[0].weight.unique().numel() > 100  # the input model is not touched

    compressed, report = ptq_compress(model, 8)
    assert all(row.storage == "counted" and type(layer) in (nn.Conv2d, nn.Linear)
               for row, layer in zip(report, (compressed[0], compressed[3], compressed[5])))
    for row in report:
        assert row.stored_bytes == math.prod(row.shape) + 4 * row.shape[0] + 4 * row.shape[0]
    assert report.model_stored_bytes == sum(row.stored_bytes for row in report)
    expected = _loop_quantize(model[3].weight.detach().numpy(), 8)
    np.testing.assert_array_equal(compressed[3].weight.detach().numpy(), expected)
    assert 10 * report[1].relative_error < ptq_compress(model, 4)[1][1].relative_error  # steps 127/7 apart


def test_kmeans_keeps_the_best_of_its_starts():
    values = np.random.default_rng(5).standard_t(3, size=4000) * 0.05
    errors = [float(((values - c[lab]) ** 2).sum()) for c, lab in
              (kmeans_1d(values, 16, seed=0, starts=1), kmeans_1d(values, 16, seed=0, starts=10))]
    rng = np.random.default_rng(0)
    singles = []
    for _ in range(10):  # the same k-means++ draws, one start at a time, each run from its seeds
        centers, labels = kmeans_1d(values, 16, init=kmeans_plus_plus(values, 16, rng))
        singles.append(float(((values - centers[labels]) ** 2).sum()))
    assert errors[0] == pytest.approx(singles[0], rel=1e-12) and errors[1] == pytest.approx(min(singles), rel=1e-12)
    assert errors[1] < errors[0]


def test_ptq_stores_a_codebook_layer_when_its_values_fit_in_fewer_bytes():
    layer = nn.Linear(8, 4)
    with torch.no_grad():  # every row peaks at 0.5: three distinct dequantized values in the whole layer
        layer.weight.copy_(torch.tensor([0.5, -0.5, 0.0, 0.5, 0.0, 0.0, -0.5, 0.5]).repeat(4, 1).roll(1, 1))
    for bits, counted in ((8, 32 + 16 + 16), (4, 16 + 16 + 16)):  # codes, a float32 scale per row, bias
        compressed, report = ptq_compress(nn.Sequential(layer), bits)
        row = report[0]
        assert isinstance(compressed[0], CodebookLinear) and row.storage == "codebook"
        # 2-bit indices for 3 values (8 bytes), the float32 codebook, the float32 bias, one ``bits`` byte
        assert row.stored_bytes == 8 + 3 * 4 + 4 * 4 + 1 and row.packed_bytes == counted
        assert report.model_stored_bytes == row.stored_bytes
        expected = _loop_quantize(layer.weight.detach().numpy(), bits)
        np.testing.assert_array_equal(compressed[0].dense_weight().numpy(), expected)
        x = torch.randn(3, 8)
        assert torch.equal(compressed(x), torch.nn.functional.linear(x, torch.from_numpy(expected), layer.bias))


def test_bad_input_is_named():
    with pytest.raises(BaselineError, match="bits=1"):
        quantize_per_channel(np.ones((2, 2)), 1)
    with pytest.raises(BaselineError, match="k=9"):
        kmeans_1d(np.arange(5.0), 9)
    with pytest.raises(BaselineError, match="matches"):
        ptq_compress(nn.Sequential(nn.Linear(2, 2)), 8)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[2].weight[1, 2] = float("nan")
    for compress in (lambda: ptq_compress(net, 8), lambda: kmeans_compress(net, 2)):
        with pytest.raises(BaselineError, match="layer '2': 1 of its 12 weights are not finite"):
            compress()
