"""Compressed layers against independent dense references built from their definitions."""

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xxhash

from edgepack.compression import CirculantLinear, HashedConv2d, HashedLinear, LDRLinear


def hashed_reference(layer) -> np.ndarray:
    """The virtual matrix of a hashed layer, by a loop over ``xxhash`` (DESIGN §3)."""
    buckets = layer.buckets.detach().double().numpy()
    rows, cols, k = layer.rows, layer.virtual_cols, layer.num_hashes
    matrix = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            z = []
            for t in range(k):
                h = xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed=layer.seed + t)
                sign = -1.0 if (h >> 31) and layer.signed else 1.0
                z.append(sign * buckets[h % len(buckets)])
            if k == 1:
                matrix[i, j] = z[0]
            else:
                recon = layer.recon.detach().double().numpy()
                hid = (len(recon) - 1) // (k + 2)
                w1, b1 = recon[:hid * k].reshape(hid, k), recon[hid * k:hid * (k + 1)]
                w2, b2 = recon[hid * (k + 1):hid * (k + 2)], recon[-1]
                matrix[i, j] = w2 @ np.maximum(w1 @ np.array(z) + b1, 0) + b2
    return matrix


def circulant_reference(layer: CirculantLinear) -> np.ndarray:
    blocks, b = layer.blocks.detach().double().numpy(), layer.block_size
    matrix = np.zeros((layer.out_features, layer.in_features))
    for r in range(layer.out_features):
        for c in range(layer.in_features):
            matrix[r, c] = blocks[r // b, c // b, (r % b - c % b) % b]
    if layer.input_signs is not None:
        matrix *= layer.input_signs.numpy()
    return matrix


def f_circulant_reference(v: np.ndarray, f: float) -> np.ndarray:
    n = len(v)
    return np.array([[v[a - c] if a >= c else f * v[n + a - c] for c in range(n)]
                     for a in range(n)])


def ldr_reference(layer: LDRLinear) -> np.ndarray:
    g, h = layer.G.detach().double().numpy(), layer.H.detach().double().numpy()
    full = sum(f_circulant_reference(g[i], 1.0) @ f_circulant_reference(h[i], -1.0)
               for i in range(layer.rank))
    return full[: layer.out_features, : layer.in_features]


LINEAR_CASES = [
    lambda: HashedLinear(13, 7, ratio=0.3, seed=1691),
    lambda: HashedLinear(9, 11, ratio=1 / 8, num_hashes=4, seed=5),
    lambda: HashedLinear(6, 5, ratio=0.5, num_hashes=2, signed=False, bias=False),
    lambda: HashedLinear(10, 3, ratio=0.25, hashed_bias=True, seed=77),
    lambda: CirculantLinear(13, 9, block_size=4),
    lambda: CirculantLinear(37, 70, block_size=16, input_signs=True, seed=3),
    lambda: CirculantLinear(8, 8, block_size=8, bias=False),
    lambda: LDRLinear(13, 9, rank=1),
    lambda: LDRLinear(30, 17, rank=3),
    lambda: LDRLinear(5, 40, rank=2, bias=False),
]
REFERENCES = {HashedLinear: hashed_reference, CirculantLinear: circulant_reference,
              LDRLinear: ldr_reference}


@pytest.mark.parametrize("make", LINEAR_CASES)
def test_dense_weight_matches_definition(make):
    torch.manual_seed(0)
    layer = make()
    reference = REFERENCES[type(layer)](layer)
    if isinstance(layer, HashedLinear) and layer.hashed_bias:
        np.testing.assert_allclose(layer.dense_bias().detach(), reference[:, -1], atol=1e-6)
        reference = reference[:, :-1]
    np.testing.assert_allclose(layer.dense_weight().detach().numpy(), reference,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", LINEAR_CASES)
@pytest.mark.parametrize("batch_shape", [(1,), (5,), (2, 3)])
def test_fast_forward_equals_dense_product(make, batch_shape):
    torch.manual_seed(1)
    layer = make()
    x = torch.randn(*batch_shape, layer.in_features)
    bias = layer.dense_bias() if isinstance(layer, HashedLinear) else layer.bias
    expected = x @ layer.dense_weight().T + (0 if bias is None else bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", LINEAR_CASES)
def test_gradcheck_float64(make):
    torch.manual_seed(2)
    layer = make().double()
    x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
    names, params = zip(*layer.named_parameters())

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(ratio=0.2), dict(ratio=0.5, num_hashes=3, stride=2, padding=1),
    dict(ratio=0.25, groups=2, bias=False, dilation=2), dict(ratio=0.3, hashed_bias=True),
])
def test_hashed_conv_matches_dense_conv(kwargs):
    torch.manual_seed(3)
    conv = HashedConv2d(4, 6, (3, 2), **kwargs)
    x = torch.randn(2, 4, 9, 7)
    weight = conv.dense_weight()
    assert weight.shape == (6, 4 // conv.groups, 3, 2)
    reference = hashed_reference(conv)[:, : conv.fan_in].reshape(weight.shape)
    np.testing.assert_allclose(weight.detach(), reference, rtol=1e-5, atol=1e-6)
    expected = F.conv2d(x, weight, conv.dense_bias(), conv.stride, conv.padding,
                        conv.dilation, conv.groups)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    x64 = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv.double(), (x64,))


def test_bucket_gradient_is_signed_sum_of_weight_gradients():
    """HashedNets: dL/dw_b = Σ over weights mapped to b of ξ·dL/dV."""
    torch.manual_seed(4)
    layer = HashedLinear(11, 6, ratio=0.2, seed=9, bias=False)
    upstream = torch.randn(6, 11)
    (layer.dense_weight() * upstream).sum().backward()
    expected = np.zeros(layer.buckets.numel())
    for i in range(6):
        for j in range(11):
            h = xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed=9)
            expected[h % len(expected)] += (-1 if h >> 31 else 1) * upstream[i, j].item()
    np.testing.assert_allclose(layer.buckets.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_hashed_init_is_signed_bucket_mean():
    torch.manual_seed(5)
    dense = torch.nn.Linear(12, 8)
    layer = HashedLinear.from_dense(dense, ratio=0.25, seed=2)
    sums, counts = np.zeros(layer.buckets.numel()), np.zeros(layer.buckets.numel())
    for i in range(8):
        for j in range(12):
            h = xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed=2)
            sums[h % len(sums)] += (-1 if h >> 31 else 1) * dense.weight[i, j].item()
            counts[h % len(sums)] += 1
    np.testing.assert_allclose(layer.buckets.detach(), sums / np.maximum(counts, 1), atol=1e-6)
    torch.testing.assert_close(layer.bias, dense.bias)


def test_functional_hashing_starts_as_hashednets_of_the_first_hash():
    torch.manual_seed(6)
    dense = torch.nn.Linear(20, 10)
    funhash = HashedLinear.from_dense(dense, ratio=0.25, num_hashes=4, seed=1)
    hashednets = HashedLinear.from_dense(dense, ratio=0.25, num_hashes=1, seed=1)
    gap = (funhash.dense_weight() - hashednets.dense_weight()).abs().max()
    assert gap < 0.2 * hashednets.dense_weight().abs().max()


def test_circulant_projection_is_exact_on_circulant_weights_and_least_squares():
    torch.manual_seed(7)
    source = CirculantLinear(21, 13, block_size=8, input_signs=True)
    projected = CirculantLinear(21, 13, block_size=8, input_signs=True)
    projected.init_from_dense(source.dense_weight(), source.bias)
    torch.testing.assert_close(projected.dense_weight(), source.dense_weight())
    # The projection of a random matrix is a stationary point of the squared error.
    target = torch.randn(13, 21)
    projected.init_from_dense(target, None)
    blocks = projected.blocks.detach().clone().requires_grad_(True)
    projected.blocks = torch.nn.Parameter(blocks)
    (projected.dense_weight() - target).pow(2).sum().backward()
    assert projected.blocks.grad.abs().max() < 1e-4


def test_ldr_fit_recovers_an_ldr_matrix():
    torch.manual_seed(8)
    source = LDRLinear(24, 20, rank=2)
    fitted = LDRLinear(24, 20, rank=2)
    error = fitted.init_from_dense(source.dense_weight(), source.bias, steps=300)
    assert error < 0.05
