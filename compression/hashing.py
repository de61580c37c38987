"""The edgepack hash contract (DESIGN §3): bucket and sign of every virtual weight by XXH32.

The key of weight (i, j) is the 8 bytes u32le(i) ‖ u32le(j); hash k is XXH32(key, seed + k);
the bucket is h mod B and the sign is -1 when bit 31 of h is set. The `xxhash` package hashes
one key per call, far too slow for millions of weights, so the 8-byte case of XXH32 is written
here once more as vectorised numpy uint32 arithmetic and tested bit-for-bit against it.
"""

import numpy as np
import torch

PRIME32_2 = np.uint32(0x85EBCA77)
PRIME32_3 = np.uint32(0xC2B2AE3D)
PRIME32_4 = np.uint32(0x27D4EB2F)
PRIME32_5 = np.uint32(0x165667B1)
KEY_LENGTH = np.uint32(8)


def _rotl(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def xxh32_pair(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """XXH32 of the 8-byte keys u32le(i) ‖ u32le(j) with ``seed``, elementwise (uint32)."""
    h = np.full(np.broadcast(i, j).shape, np.uint32((seed + 0x165667B1 + 8) & 0xFFFFFFFF))
    for word in (np.asarray(i, np.uint32), np.asarray(j, np.uint32)):
        h = h + word * PRIME32_3
        h = _rotl(h, 17) * PRIME32_4
    h ^= h >> np.uint32(15)
    h *= PRIME32_2
    h ^= h >> np.uint32(13)
    h *= PRIME32_3
    h ^= h >> np.uint32(16)
    return h


def hash_indices(
    rows: int, cols: int, buckets: int, seed: int, num_hashes: int = 1, signed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket indices (int32) and signs (int8, ±1) of a rows×cols virtual matrix.

    Returns tensors of shape (num_hashes, rows, cols). int32 + int8 keep the cache at 5 bytes
    per virtual weight and hash, instead of the 8 of an int64 index.
    """
    if buckets < 1 or buckets > 2**31 - 1:
        raise ValueError(f"buckets must be in [1, 2**31 - 1], got {buckets}")
    i = np.arange(rows, dtype=np.uint32)[:, None]
    j = np.arange(cols, dtype=np.uint32)[None, :]
    index = np.empty((num_hashes, rows, cols), dtype=np.int32)
    sign = np.ones((num_hashes, rows, cols), dtype=np.int8)
    with np.errstate(over="ignore"):
        for k in range(num_hashes):
            h = xxh32_pair(i, j, (seed + k) & 0xFFFFFFFF)
            index[k] = h % np.uint32(buckets)
            if signed:
                sign[k] = 1 - 2 * (h >> np.uint32(31)).astype(np.int8)
    return torch.from_numpy(index), torch.from_numpy(sign)
