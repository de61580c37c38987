"""Deep Compression's size accounting: a real Huffman code, CSR gaps with fillers, known bits."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.compression.size_accounting import (
    canonical_codes,
    csr_entries,
    huffman_code_lengths,
    layer_size,
    model_size,
    stream_bits,
)


def brute_force_cost(counts: list[int]) -> int:
    """The least Σ count·length over all complete prefix codes (lengths meeting Kraft with equality)."""
    n = len(counts)
    best = math.inf
    for lengths in itertools.product(range(1, n), repeat=n):
        if sum(2.0 ** -length for length in lengths) == 1.0:
            best = min(best, sum(c * length for c, length in zip(counts, lengths)))
    return best


def merge_cost(counts: list[int]) -> int:
    """Huffman's cost as the sum of the merged weights, with a sorted list instead of a heap."""
    items = sorted(counts)
    cost = 0
    while len(items) > 1:
        merged = items.pop(0) + items.pop(0)
        cost += merged
        items = sorted(items + [merged])
    return cost


def is_prefix_free(codes: dict[int, str]) -> bool:
    words = list(codes.values())
    return not any(a != b and b.startswith(a) for a in words for b in words) and len(set(words)) == len(words)


@pytest.mark.parametrize("seed", range(12))
def test_huffman_is_optimal_and_prefix_free(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    counts = [int(c) for c in rng.integers(1, 1000, size=n)]
    lengths = huffman_code_lengths(dict(enumerate(counts)))
    cost = sum(counts[s] * lengths[s] for s in lengths)
    assert cost == brute_force_cost(counts)
    codes = canonical_codes(lengths)
    assert is_prefix_free(codes)
    assert all(len(codes[s]) == lengths[s] for s in lengths)


@pytest.mark.parametrize("seed", range(5))
def test_huffman_on_large_skewed_alphabets(seed):
    rng = np.random.default_rng(100 + seed)
    counts = [int(c) for c in rng.geometric(0.05, size=int(rng.integers(20, 200)))]
    lengths = huffman_code_lengths(dict(enumerate(counts)))
    assert sum(counts[s] * lengths[s] for s in lengths) == merge_cost(counts)
    assert sum(2.0 ** -length for length in lengths.values()) == 1.0
    assert is_prefix_free(canonical_codes(lengths))
    bits = stream_bits(np.repeat(np.arange(len(counts)), counts), symbol_bits=8)
    assert bits.entropy_bits <= bits.huffman_bits < bits.entropy_bits + sum(counts)


def test_csr_gaps_with_fillers_hand_example():
    """5-bit gaps bridge at most 32 columns; longer ones take filler entries of value 0."""
    weight = np.zeros((3, 80), np.float32)
    weight[0, [2, 3, 70]] = [0.5, -0.25, 0.5]
    weight[2, 32] = 0.125
    values, gaps, row_ptr = csr_entries(weight, gap_bits=5)
    # row 0: column 2 (gap 3), 3 (gap 1), 70 (gap 67 = 32 + 32 + 3); row 1 empty; row 2: 32 (gap 33 = 32 + 1)
    np.testing.assert_array_equal(values, [0.5, -0.25, 0.0, 0.0, 0.5, 0.0, 0.125])
    np.testing.assert_array_equal(gaps, [2, 0, 31, 31, 2, 31, 0])
    np.testing.assert_array_equal(row_ptr, [0, 5, 5, 7])
    size = layer_size("fc", weight, kind="fc")
    assert (size.nonzero, size.fillers, size.codebook_size) == (4, 3, 4)
    # an 8-bit conv gap covers 256 columns: no fillers
    assert layer_size("conv", weight, kind="conv").fillers == 0


def test_layer_of_known_sparsity_gives_known_bits():
    """4×32 FC, one weight in 8 kept (±0.5 alternating): every part of the count by hand."""
    weight = np.zeros((4, 32), np.float32)
    weight[:, ::8] = [0.5, -0.5, 0.5, -0.5]
    size = layer_size("fc", weight, bias=np.zeros(4, np.float32), kind="fc")
    assert (size.nonzero, size.fillers, size.codebook_size) == (16, 0, 2)
    assert (size.index.huffman_bits, size.index.table_bits) == (16, 16 + 2 * (1 + 6))
    assert size.index.entropy_bits == pytest.approx(16.0)
    assert (size.gap.huffman_bits, size.gap.table_bits) == (16, 16 + 2 * (5 + 6))  # gaps 1 ×4, 8 ×12
    assert size.gap.entropy_bits == pytest.approx(4 * 2 + 12 * math.log2(16 / 12))
    assert size.row_ptr_bits == 5 * 5  # 5 pointers up to 16: 5 bits each
    assert size.codebook_bits == 2 * 32 and size.bias_bits == 4 * 32
    assert size.total_bits == 16 + 30 + 16 + 38 + 25 + 64 + 128
    assert size.dense_bits == 128 * 32 + 4 * 32


def sparse_model(density: float, seed: int = 0) -> nn.Module:
    """A conv + BatchNorm + FC model whose weights take 4 values at ``density``, the rest 0."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    codebook = np.array([-0.3, -0.1, 0.1, 0.3], np.float32)
    for layer in (model[0], model[3]):
        shape = tuple(layer.weight.shape)
        values = codebook[rng.integers(0, 4, size=shape)] * (rng.random(shape) < density)
        layer.weight.data.copy_(torch.from_numpy(values.astype(np.float32)))
    return model


def test_model_rate_counts_every_layer_and_grows_with_pruning():
    model = sparse_model(0.1)
    size = model_size(model)
    assert [layer.kind for layer in size.layers] == ["conv", "fc"]
    assert size.other_bits == 8 * 32  # BatchNorm's weight and bias
    assert size.dense_bits == sum(p.numel() for p in model.parameters()) * 32
    assert size.nonzero_percent == pytest.approx(
        100 * sum(int((lay.weight != 0).sum()) for lay in (model[0], model[3])) / (36 + 1440))
    assert 3 < size.rate < 32
    assert model_size(sparse_model(0.5)).rate < size.rate < model_size(sparse_model(0.02)).rate
    assert "total" in size.table() and size.to_dict()["rate"] == size.rate
