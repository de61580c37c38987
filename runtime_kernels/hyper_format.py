"""The HyperWeight format (docs/ops.md) in numpy, shared by the encoder (compression/hyper.py), the
load-time decode (decode_at_load.py) and the validator: the attribute ranges, the index bit stream,
t, the table of decoded points and the checks of every contract rule. Torch-free."""

from __future__ import annotations

import math

import numpy as np

from edgepack.errors import EdgepackError

from . import limits

MAX_POINTS = 65536
MAX_GROUP = 4
MAX_RINGS = 15
MAX_BITS = 24
ATTRIBUTES = {"points": (1, MAX_POINTS), "group": (1, MAX_GROUP), "rings": (0, MAX_RINGS),
              "bits": (1, MAX_BITS)}


class HyperError(EdgepackError, ValueError):
    """A Hyper-Compression weight or request that breaks the HyperWeight contract; names the field."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise HyperError(message)


def is_int(value) -> bool:
    """An integer that is not a bool (Python or numpy)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_attribute(name: str, value, where: str) -> int:
    """``value`` of attribute ``name`` as an int within the contract's range, else HyperError."""
    low, high = ATTRIBUTES[name]
    _check(is_int(value) and low <= value <= high,
           f"{where}: attribute {name!r} = {value!r}; must be in [{low}, {high}]")
    return int(value)


def side_fits(side, points: int) -> bool:
    """The side rule: L finite and > 0 in float32, and L·n (float32) finite, so no θ·step overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        length = np.float32(side)
        return bool(np.isfinite(length) and length > 0 and np.isfinite(length * np.float32(points)))


def index_bits(points: int, rings: int) -> int:
    """The fewest bits that hold every index of ``rings`` rings of ``points`` + 1 codebook points."""
    return max(1, ((rings + 1) * (points + 1) - 1).bit_length())


def trajectory_base(points: int, group: int) -> int:
    """t: the smallest integer ≥ 1 with t^group ≥ points (integer arithmetic, from a float root)."""
    t = max(1, int(round(points ** (1.0 / group))) - 1)
    while t ** group < points:
        t += 1
    while t > 1 and (t - 1) ** group >= points:
        t -= 1
    return t


def pack_bits(values, bits: int) -> np.ndarray:
    """Pack non-negative integers of ``bits`` (1..24) bits into a uint8 bit stream, LSB first, the
    last byte's unused high bits zero."""
    _check(is_int(bits) and 1 <= bits <= MAX_BITS, f"pack_bits: bits = {bits!r}; must be in [1, {MAX_BITS}]")
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size and not (int(values.min()) >= 0 and int(values.max()) < (1 << bits)):
        raise HyperError(f"pack_bits: values must be in [0, {(1 << bits) - 1}] to fit {bits} bits, got "
                         f"[{int(values.min())}, {int(values.max())}]")
    stream = ((values[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(stream.ravel(), bitorder="little")


def unpack_bits(packed, count: int, bits: int) -> np.ndarray:
    """The ``count`` integers of ``bits`` bits that ``pack_bits`` wrote (int64); needs
    ceil(count·bits/8) bytes."""
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    _check(packed.size * 8 >= count * bits, f"unpack_bits: {packed.size} bytes hold fewer than "
           f"{count} values of {bits} bits")
    padded = np.concatenate([packed, np.zeros(3, np.uint8)]).astype(np.int64)
    start = np.arange(count, dtype=np.int64) * bits
    byte, shift = start // 8, start % 8
    word = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16) | (padded[byte + 3] << 24)
    return (word >> shift) & ((1 << bits) - 1)


def scales_given(scales) -> bool:
    """Whether ``scales`` counts as present: not None and not zero-length (an empty one is absent)."""
    return scales is not None and np.asarray(scales).size > 0


def hyper_table(center, side, scales, *, points: int, group: int) -> np.ndarray:
    """The (R+1)·(n+1) × k float32 table of decoded points, by the contract's operations (no checks)."""
    c = np.asarray(center, dtype=np.float32).reshape(group)
    length = np.float32(np.asarray(side, dtype=np.float32).reshape(-1)[0])
    t = trajectory_base(points, group)
    half = length * np.float32(0.5)
    corner = c - half
    step = np.array([length / np.float32(t ** (group - j)) for j in range(group)], dtype=np.float32)
    theta = np.arange(points, dtype=np.float32)
    base = np.concatenate([c[None, :], np.fmod(theta[:, None] * step[None, :], length) + corner[None, :]])
    rings = np.asarray(scales, dtype=np.float32).ravel() if scales_given(scales) else []
    return np.concatenate([base] + [(base - c) * s + c for s in rings]).astype(np.float32)


def _limits(count: int, where: str) -> None:
    """The decode limits of every edgepack decoder (runtime_kernels.limits), before allocating."""
    virtual = limits.max_virtual_weights()
    _check(count <= virtual, f"{where}: would decode {count} weights, above the limit of {virtual} per "
           f"node (environment variable {limits.ENV_MAX_VIRTUAL_WEIGHTS})")
    decoded = limits.max_decoded_bytes()
    _check(4 * count <= decoded, f"{where}: would decode {4 * count} bytes, above the limit of {decoded} "
           f"decoded bytes (environment variable {limits.ENV_MAX_DECODED_BYTES})")


def describe_array(array: np.ndarray) -> str:
    return f"{array.dtype} {list(array.shape)}"


def check_hyper(indices, center, side, scales, *, shape, points, group, rings, bits,
                where: str = "HyperWeight") -> np.ndarray:
    """Check every rule of the contract; returns the g group indices (int64).

    ``scales`` None or zero-length means absent; it must be present exactly when rings > 0.
    """
    _check(isinstance(shape, (tuple, list)) and len(shape) >= 1 and all(is_int(d) and d >= 1 for d in shape),
           f"{where}: attribute 'shape' = {shape!r}; must be 1 or more ints, each >= 1")
    shape = tuple(int(d) for d in shape)
    n = check_attribute("points", points, where)
    k = check_attribute("group", group, where)
    r = check_attribute("rings", rings, where)
    bits = check_attribute("bits", bits, where)
    count = math.prod(shape)
    _limits(count, where)
    indices = np.asarray(indices)
    _check(indices.dtype == np.uint8 and indices.ndim == 1,
           f"{where}: indices must be 1-D uint8, got {describe_array(indices)}")
    g = -(-count // k)
    expected = -(-g * bits // 8)
    _check(indices.size >= expected, f"{where}: truncated packed indices: indices has {indices.size} bytes; "
           f"{g} groups of {bits} bits need {expected}")
    _check(indices.size == expected, f"{where}: indices has {indices.size} bytes; {g} groups of {bits} "
           f"bits need exactly {expected}")
    used = (g * bits) % 8
    _check(used == 0 or int(indices[-1]) >> used == 0,
           f"{where}: non-zero trailing bits: the unused high {8 - used} bits of the last indices byte "
           f"must be 0, got byte {int(indices[-1]):#04x}")
    idx = unpack_bits(indices, g, bits)
    limit = (r + 1) * (n + 1)
    if idx.size and int(idx.max()) >= limit:
        m = int(np.argmax(idx >= limit))
        raise HyperError(f"{where}: index {int(idx[m])} of group {m} is out of range: indices must be < "
                         f"(rings+1)·(points+1) = {limit}")
    center, side = np.asarray(center), np.asarray(side)
    _check(center.dtype == np.float32 and center.shape == (k,),
           f"{where}: center must be float32 [{k}] (group), got {describe_array(center)}")
    _check(bool(np.isfinite(center).all()), f"{where}: center must be finite, got {center.tolist()}")
    _check(side.dtype == np.float32 and side.shape == (1,),
           f"{where}: side must be float32 [1], got {describe_array(side)}")
    _check(bool(np.isfinite(side).all()) and float(side[0]) > 0,
           f"{where}: side must be finite and > 0, got {float(side[0])!r}")
    _check(side_fits(side[0], n), f"{where}: side·points = {float(side[0]):g}·{n} overflows float32; side "
           f"must be at most {float(np.finfo(np.float32).max) / n:.6g} for {n} points")
    present = scales_given(scales)
    _check(present or r == 0, f"{where}: scales missing; rings = {r} needs float32 [{r}] scales")
    _check(not present or r > 0, f"{where}: scales present with rings = 0; omit scales or set rings")
    if present:
        scales = np.asarray(scales)
        _check(scales.dtype == np.float32 and scales.shape == (r,),
               f"{where}: scales must be float32 [{r}] (rings), got {describe_array(scales)}")
        _check(bool(np.isfinite(scales).all() and (scales > 0).all()),
               f"{where}: scales must be finite and > 0, got {scales.tolist()}")
    return idx
