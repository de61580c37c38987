"""The hash contract (DESIGN §3) against a pure-Python loop over the ``xxhash`` package."""

import struct

import numpy as np
import pytest
import xxhash

from edgepack.compression import hash_indices
from edgepack.compression.hashing import xxh32_pair


def reference_hash(i: int, j: int, seed: int) -> int:
    return xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed=seed & 0xFFFFFFFF)


@pytest.mark.parametrize("rows, cols, buckets, seed, num_hashes", [
    (1, 1, 1, 0, 1), (7, 13, 11, 1691, 1), (5, 9, 64, 12345, 4), (3, 17, 1000, 2**32 - 2, 3),
])
def test_indices_and_signs_match_xxhash(rows, cols, buckets, seed, num_hashes):
    index, sign = hash_indices(rows, cols, buckets, seed, num_hashes)
    assert index.shape == sign.shape == (num_hashes, rows, cols)
    for k in range(num_hashes):
        for i in range(rows):
            for j in range(cols):
                h = reference_hash(i, j, seed + k)  # seed + k wraps modulo 2**32
                assert index[k, i, j] == h % buckets
                assert sign[k, i, j] == (1 if h >> 31 == 0 else -1)


def test_large_indices_match_xxhash():
    i = np.array([0, 65535, 2**31, 2**32 - 1], dtype=np.uint32)
    j = np.array([2**32 - 1, 7, 123456789, 0], dtype=np.uint32)
    with np.errstate(over="ignore"):
        got = xxh32_pair(i, j, 99)
    assert [int(h) for h in got] == [reference_hash(int(a), int(b), 99) for a, b in zip(i, j)]


def test_unsigned_hashing_has_only_positive_signs():
    _, sign = hash_indices(6, 6, 5, 3, 2, signed=False)
    assert (sign == 1).all()


def test_buckets_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="buckets"):
        hash_indices(2, 2, 0, 0)
