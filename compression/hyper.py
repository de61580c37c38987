"""Hyper-Compression (Fan et al. 2024): groups of k consecutive weights stored as the index of the
nearest point on an ergodic trajectory (an irrational winding of a square of side L around the
groups' centroid), groups far outside the square scaled into it by one of R concentric rings. No
retraining. The format is the ``HyperWeight`` op contract (docs/ops.md):

- ``indices``: one index per group, ``bits`` bits each, a bit stream LSB first (index m is stream
  bits m·bits .. m·bits+bits−1; stream bit b is bit b mod 8 of byte b div 8), unused high bits 0.
- index v: ring r = v div (n+1), codebook point q = v mod (n+1); q = 0 is the centroid c, q ≥ 1
  the trajectory point p_j = fmod((q−1)·L/t^(k−j), L) + c_j − L/2 (t: smallest with t^k ≥ n);
  ring r ≥ 1 decodes (p − c)·s_r + c.

``encode_hyper`` / ``decode_hyper`` are the numpy reference (float32, each operation rounded);
``decode_hyper_torch`` gives the same bits in torch ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.runtime_kernels.hyper_format import (
    ATTRIBUTES,
    MAX_BITS,
    MAX_GROUP,
    MAX_POINTS,
    MAX_RINGS,
    HyperError,
    check_attribute,
    check_hyper,
    describe_array,
    hyper_table,
    index_bits,
    pack_bits,
    side_fits,
    trajectory_base,
    unpack_bits,
)
from edgepack.runtime_kernels.op_spec import OPS

from .common import evaluating, set_conv_geometry
from .progress import progress_bar
from .registry import register_method

_WEIGHT_INPUTS = OPS["HyperWeight"].weight_inputs  # indices, center, side, scales
__all__ = ["ATTRIBUTES", "MAX_BITS", "MAX_GROUP", "MAX_POINTS", "MAX_RINGS", "HyperError", "check_hyper",
           "hyper_table", "index_bits", "pack_bits", "trajectory_base", "unpack_bits"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise HyperError(message)


def decode_hyper(indices, center, side, scales, *, shape, points, group, rings, bits) -> np.ndarray:
    """W (float32, ``shape``) from the HyperWeight form, after checking every rule of the contract."""
    idx = check_hyper(indices, center, side, scales, shape=shape, points=points, group=group,
                      rings=rings, bits=bits)
    shape = tuple(int(d) for d in shape)
    table = hyper_table(center, side, scales if rings else None, points=int(points), group=int(group))
    return table[idx].ravel()[:math.prod(shape)].reshape(shape)


def decode_hyper_torch(indices: torch.Tensor, center: torch.Tensor, side: torch.Tensor,
                       scales: torch.Tensor | None, *, shape, points: int, group: int, rings: int,
                       bits: int) -> torch.Tensor:
    """``decode_hyper`` in torch ops, bit-exactly (no checks): the layers' forward and the eager op."""
    shape = [int(d) for d in shape]
    points, group, rings, bits = int(points), int(group), int(rings), int(bits)
    count = math.prod(shape)
    g = -(-count // group)
    device = indices.device
    padded = torch.cat([indices.long(), indices.new_zeros(3, dtype=torch.long)])
    start = torch.arange(g, device=device) * bits
    byte, shift = start // 8, start % 8
    word = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16) | (padded[byte + 3] << 24)
    idx = (word >> shift) & ((1 << bits) - 1)
    c = center.to(torch.float32).reshape(group)
    length = side.to(torch.float32).reshape(-1)[0]
    t = trajectory_base(points, group)
    half = length * 0.5
    corner = c - half
    powers = torch.tensor([float(t ** (group - j)) for j in range(group)], dtype=torch.float32, device=device)
    step = length / powers
    theta = torch.arange(points, device=device).to(torch.float32)
    trajectory = torch.fmod(theta[:, None] * step[None, :], length) + corner[None, :]
    base = torch.cat([c[None, :], trajectory])
    tables = [base]
    if rings:
        tables += [(base - c) * s + c for s in scales.to(torch.float32).reshape(rings)]
    table = torch.cat(tables)
    return table[idx].reshape(-1)[:count].reshape(shape)


def _check_weight(weight, where: str) -> np.ndarray:
    weight = np.asarray(weight)
    _check(weight.dtype.kind == "f" and weight.ndim >= 1 and weight.size >= 1,
           f"{where}: weight must be a float array with at least one element and one dim, got "
           f"{describe_array(weight)}")
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    _check(bool(np.isfinite(weight).all()), f"{where}: weight has non-finite values")
    return weight


def _groups(weight: np.ndarray, group: int) -> np.ndarray:
    """The weights as g × k float64 groups, the last one padded with the weights' mean."""
    flat = weight.ravel().astype(np.float64)
    g = -(-flat.size // group)
    padded = np.full(g * group, flat.mean())
    padded[:flat.size] = flat
    return padded.reshape(g, group)


def ring_scales(farthest: float, side: float, rings: int) -> np.ndarray:
    """s_r (float32, r = 1..R) as the public code derives them: radii evenly spaced from L/2 to the
    farthest group, s_r = radius_r / (L/2), rounded up so ring R holds the farthest group."""
    half = float(side) / 2
    farthest = max(float(farthest), half)
    exact = (half + (farthest - half) * np.arange(1, rings + 1) / max(rings, 1)) / half
    scales = exact.astype(np.float32)
    low = scales.astype(np.float64) < exact
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    return scales


def _nearest(groups: np.ndarray, table: np.ndarray, points: int, rings: int, scales: np.ndarray,
             inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group the index that decodes closest: ring 0's nearest point, and for groups outside the
    square the best of every ring's nearest point to the group scaled by 1/s_r; (index, distance)."""
    from scipy.spatial import cKDTree

    base = table[:points + 1].astype(np.float64)
    tree = cKDTree(base)
    distance, idx = tree.query(groups)
    idx = idx.astype(np.int64)
    outer = np.flatnonzero(~inside)
    if rings and outer.size:
        center = base[0]
        x = groups[outer]
        for r, s in enumerate(scales, start=1):
            _, q = tree.query((x - center) / float(s) + center)
            candidate = r * (points + 1) + q.astype(np.int64)
            error = np.linalg.norm(table[candidate].astype(np.float64) - x, axis=1)
            better = error < distance[outer]
            idx[outer[better]] = candidate[better]
            distance[outer[better]] = error[better]
    return idx, distance


class _Groups:
    """A weight prepared once for many encodings: its groups, centroid and distances to it."""

    def __init__(self, weight, group: int, where: str = "encode_hyper") -> None:
        self.weight = _check_weight(weight, where)
        self.group = check_attribute("group", group, where)
        self.groups = _groups(self.weight, self.group)
        self.center = self.groups.mean(axis=0).astype(np.float32)
        self.deviation = self.groups - self.center.astype(np.float64)
        self.chebyshev = np.abs(self.deviation).max(axis=1)
        self.farthest = float(np.linalg.norm(self.deviation, axis=1).max())

    def nearest(self, side: float, points: int, rings: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group indices, decode table, scales) for one (side, points, rings)."""
        length = np.float32(side)
        scales = ring_scales(self.farthest, float(length), rings)
        table = hyper_table(self.center, np.array([length], dtype=np.float32), scales, points=points,
                            group=self.group)
        _check(bool(np.isfinite(table).all()), f"encode_hyper: side {float(length)!r} around center "
               f"{self.center.tolist()} decodes points outside float32; use a smaller side")
        idx, _ = _nearest(self.groups, table, points, rings, scales, self.chebyshev <= float(length) / 2)
        return idx, table, scales

    def decoded(self, side: float, points: int, rings: int) -> np.ndarray:
        """The weight as this encoding decodes it (the table gathered, as decode_hyper does)."""
        idx, table, _ = self.nearest(side, points, rings)
        return table[idx].ravel()[:self.weight.size].reshape(self.weight.shape)

    def encode(self, side: float, points: int, rings: int) -> dict:
        """``encode_hyper`` of the prepared weight."""
        idx, _, scales = self.nearest(side, points, rings)
        bits = index_bits(points, rings)
        return {"indices": pack_bits(idx, bits), "center": self.center.copy(),
                "side": np.array([side], dtype=np.float32), "scales": scales,
                "shape": tuple(int(d) for d in self.weight.shape), "points": points, "group": self.group,
                "rings": rings, "bits": bits}


def _check_side(side, where: str, points: int | None = None) -> float:
    """``side`` as a float after the contract's side rule: finite and > 0 in float32, and with
    ``points`` given side·points finite in float32 (else θ·step overflows)."""
    _check(isinstance(side, (int, float, np.floating, np.integer)) and not isinstance(side, bool)
           and side_fits(side, 1),
           f"{where}: side = {side!r}; must be a finite number > 0 that float32 holds (the square's side L)")
    _check(points is None or side_fits(side, points),
           f"{where}: side = {side!r} with points = {points}: side·points overflows float32; side must be at "
           f"most {float(np.finfo(np.float32).max) / (points or 1):.6g}")
    return float(side)


def encode_hyper(weight, *, side: float, points: int, rings: int = 0, group: int = 2) -> dict:
    """Encode ``weight`` (no retraining): groups of ``group`` consecutive weights (the last padded
    with the mean) → the index of the point that decodes closest (scipy cKDTree); a group outside
    the square tries every ring.

    Returns the contract's arrays and attributes: ``indices`` (uint8), ``center`` float32 [k],
    ``side`` float32 [1], ``scales`` float32 [R] (empty when R = 0), ``shape``, ``points``,
    ``group``, ``rings`` and ``bits`` (the fewest that hold (R+1)·(n+1) − 1).
    """
    where = "encode_hyper"
    prepared = _Groups(weight, group, where)
    points = check_attribute("points", points, where)
    return prepared.encode(_check_side(side, where, points), points, check_attribute("rings", rings, where))


def decode_encoded(encoded: dict) -> np.ndarray:
    """``decode_hyper`` of an ``encode_hyper`` result."""
    return decode_hyper(encoded["indices"], encoded["center"], encoded["side"], encoded["scales"],
                        shape=encoded["shape"], points=encoded["points"], group=encoded["group"],
                        rings=encoded["rings"], bits=encoded["bits"])



# ---------------------------------------------------------------------------------------------
# The per-layer search: the fewest stored bytes whose error is within the budget.

DEFAULT_BUDGET = 0.03  # relative RMS error per layer (weights, or outputs with calibration)
SIDE_QUANTILES = (0.5, 0.75, 0.9, 0.97, 0.995, 1.0)  # of the groups' distance to the centroid
MAX_AUTO_RINGS = 4


def relative_error(reference: np.ndarray, approximation: np.ndarray) -> float:
    """‖approximation − reference‖₂ / ‖reference‖₂ (the RMS error relative to the RMS value)."""
    reference = np.asarray(reference, dtype=np.float64)
    difference = float(np.linalg.norm(np.asarray(approximation, dtype=np.float64) - reference))
    norm = float(np.linalg.norm(reference))
    return difference / norm if norm > 0 else (0.0 if difference == 0 else math.inf)


def stored_bytes(count: int, group: int, bits: int, rings: int) -> int:
    """Bytes a layer's weight takes as HyperWeight: indices, center, side, scales and the four
    attribute buffers (points int32, group / rings / bits uint8)."""
    return -(-(-(-count // group) * bits) // 8) + 4 * group + 4 + 4 * rings + 7


def _trajectory_sizes(group: int, rings: int) -> list[int]:
    """n = t^k for the largest t whose (R+1)·(t^k+1) indices fit each width of 1..24 bits."""
    sizes = set()
    for bits in range(1, MAX_BITS + 1):
        most = min(MAX_POINTS, (1 << bits) // (rings + 1) - 1)  # the largest n that fits
        t = max(1, int(round(max(most, 1) ** (1.0 / group))))
        while t > 1 and t ** group > most:
            t -= 1
        while (t + 1) ** group <= most:
            t += 1
        if t >= 2:
            sizes.add(t ** group)
    return sorted(sizes)


def _sides(prepared: _Groups) -> list[float]:
    sides = sorted({float(np.float32(2 * np.quantile(prepared.chebyshev, q))) for q in SIDE_QUANTILES})
    sides = [s for s in sides if s > 0 and math.isfinite(s)]
    return sides or [1.0]


def choose_encoding(weight, *, budget: float | None = None, points: int | None = None,
                    side: float | None = None, rings: int | None = None, group: int = 2,
                    error=None) -> tuple[dict | None, float]:
    """The encoding with the fewest stored bytes whose ``error(decoded)`` (default: relative RMS
    weight error) is ≤ ``budget`` (default DEFAULT_BUDGET), searching what is not given: side from
    quantiles of the groups' distance to the centroid, points t^k filling each index width, rings
    0..4. The narrowest index width where some candidate meets the budget is found by binary
    search; within it the fewest bytes (then the smallest error) win. All three given: that
    encoding, whatever its error. Returns (encoding, error), or (None, the smallest error seen)
    when nothing within the budget is smaller than float32."""
    where = "hyper"
    prepared = _Groups(weight, group, where)
    budget = DEFAULT_BUDGET if budget is None else budget
    _check(isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
           and budget > 0, f"{where}: budget = {budget!r}; must be a finite number > 0 (relative RMS error)")
    if error is None:
        def error(decoded):
            return relative_error(prepared.weight, decoded)
    forced = {"points": points, "side": side, "rings": rings}
    sides = [_check_side(side, where)] if side is not None else _sides(prepared)
    ring_list = [check_attribute("rings", rings, where)] if rings is not None else range(MAX_AUTO_RINGS + 1)
    if points is not None:
        points = check_attribute("points", points, where)
        if side is not None:
            _check_side(side, where, points)
    count = prepared.weight.size
    candidates = sorted((stored_bytes(count, prepared.group, index_bits(n, r), r), n, r, length)
                        for r in ring_list for n in ([points] if points else _trajectory_sizes(group, r))
                        for length in sides if side_fits(length, n))
    _check(bool(candidates), f"{where}: no side fits: side·points overflows float32 for every candidate")
    if all(value is not None for value in forced.values()):
        _, n, r, length = candidates[0]
        return prepared.encode(length, n, r), error(prepared.decoded(length, n, r))
    levels: dict[int, list] = {}
    for size, n, r, length in candidates:
        if size < 4 * count:  # smaller than float32
            levels.setdefault(index_bits(n, r), []).append((size, n, r, length))
    widths = sorted(levels)
    results: dict[int, tuple] = {}

    def best_of(bits: int) -> tuple:
        """(passes, (bytes, error, (side, points, rings))) of the best candidate with this index width."""
        if bits not in results:
            scored = [(size, error(prepared.decoded(length, n, r)), (length, n, r))
                      for size, n, r, length in levels[bits]]
            passing = [row for row in scored if row[1] <= budget]
            results[bits] = (bool(passing), min(passing) if passing else min(scored, key=lambda row: row[1]))
        return results[bits]

    low, high = -1, len(widths)  # the narrowest width that meets the budget (binary search:
    while high - low > 1:        # more bits never make the best error worse in practice)
        middle = (low + high) // 2
        if best_of(widths[middle])[0]:
            high = middle
        else:
            low = middle
    if high == len(widths):
        return None, min((row[1][1] for row in results.values()), default=math.inf)
    _, (_, best_error, best) = best_of(widths[high])
    return prepared.encode(*best), best_error


# ---------------------------------------------------------------------------------------------
# Torch layers: the stored buffers and their dtypes (attributes too, so a state dict alone rebuilds
# the layer), then Linear / Conv2d.

_BUFFERS = {"indices": torch.uint8, "center": torch.float32, "side": torch.float32, "scales": torch.float32,
            "points": torch.int32, "group": torch.uint8, "rings": torch.uint8, "bits": torch.uint8}
MIN_WEIGHTS = 10  # smaller layers stay dense (the public code's rule)


class _HyperLayer(nn.Module):
    """Shared state: packed indices (uint8), center / side / scales (float32), the attributes
    points (int32), group, rings, bits (uint8 scalars) and the dense bias."""

    def __init__(self, shape: tuple[int, ...], *, bias: bool, points: int = 1, group: int = 2,
                 rings: int = 0) -> None:
        super().__init__()
        where = type(self).__name__
        points, group, rings = (check_attribute(name, value, where) for name, value in
                                (("points", points), ("group", group), ("rings", rings)))
        self.weight_shape = tuple(int(d) for d in shape)
        bits = index_bits(points, rings)
        g = -(-math.prod(self.weight_shape) // group)
        self.register_buffer("indices", torch.zeros(-(-g * bits // 8), dtype=torch.uint8))
        self.register_buffer("center", torch.zeros(group))
        self.register_buffer("side", torch.ones(1))
        self.register_buffer("scales", torch.ones(rings))
        self.register_buffer("points", torch.tensor(points, dtype=torch.int32))
        self.register_buffer("group", torch.tensor(group, dtype=torch.uint8))
        self.register_buffer("rings", torch.tensor(rings, dtype=torch.uint8))
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(self.weight_shape[0]) if bias else None)

    def attributes(self) -> dict:
        """The op's attributes: shape, points, group, rings, bits (Python ints)."""
        return {"shape": self.weight_shape, "points": int(self.points), "group": int(self.group),
                "rings": int(self.rings), "bits": int(self.bits)}

    def encoding(self) -> dict:
        """``encode_hyper``'s dict for the stored weight (numpy arrays and the attributes)."""
        arrays = {name: getattr(self, name).detach().cpu().numpy().copy() for name in _WEIGHT_INPUTS}
        return arrays | self.attributes()

    def set_encoding(self, encoded: dict, bias: torch.Tensor | None = None) -> None:
        """Adopt ``encode_hyper``'s arrays (and the bias) after checking them against the contract."""
        _check(tuple(encoded["shape"]) == self.weight_shape, f"{type(self).__name__}: encoded shape "
               f"{list(encoded['shape'])}; the layer's weight is {list(self.weight_shape)}")
        check_hyper(encoded["indices"], encoded["center"], encoded["side"], encoded["scales"],
                    shape=encoded["shape"], points=encoded["points"], group=encoded["group"],
                    rings=encoded["rings"], bits=encoded["bits"], where=type(self).__name__)
        self.indices = torch.from_numpy(np.array(encoded["indices"], dtype=np.uint8))
        for name in _WEIGHT_INPUTS[1:]:
            value = np.zeros(0, np.float32) if encoded[name] is None else encoded[name]
            setattr(self, name, torch.from_numpy(np.array(value, dtype=np.float32)))
        for name in ("points", "group", "rings", "bits"):
            setattr(self, name, torch.tensor(int(encoded[name]), dtype=_BUFFERS[name]))
        if bias is not None and self.bias is not None:
            self.bias = bias.detach().to(torch.float32).clone()

    def prepare_state(self, state: dict, prefix: str = "") -> None:
        """Resize the buffers to a state dict's (sizes are data), after checking its arrays against
        the contract, so a broken checkpoint fails here, never in forward."""
        where = f"{type(self).__name__} {prefix.rstrip('.') or '(state)'}"
        arrays = {}
        for name, dtype in _BUFFERS.items():
            value = state.get(prefix + name)
            if value is None:
                continue
            _check(isinstance(value, torch.Tensor) and value.dtype == dtype,
                   f"{where}: state {prefix + name!r} is {getattr(value, 'dtype', type(value).__name__)}; "
                   f"must be {dtype}")
            arrays[name] = value.detach().cpu().numpy()
        if len(arrays) < len(_BUFFERS):
            return  # the loader names the missing keys
        for name in ("points", "group", "rings", "bits"):
            _check(arrays[name].size == 1, f"{where}: state {prefix + name!r} has shape "
                   f"{list(arrays[name].shape)}; it must be one value")
        check_hyper(arrays["indices"], arrays["center"], arrays["side"], arrays["scales"],
                    shape=self.weight_shape, where=where,
                    **{name: int(arrays[name].reshape(-1)[0]) for name in ("points", "group", "rings", "bits")})
        for name in _BUFFERS:
            setattr(self, name, torch.empty_like(state[prefix + name]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.prepare_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def dense_weight(self) -> torch.Tensor:
        """The decoded weight, bit-exactly ``decode_hyper`` of the stored arrays."""
        return decode_hyper_torch(self.indices, self.center, self.side, self.scales,
                                  **self.attributes())

    def dense_bias(self) -> torch.Tensor | None:
        return self.bias

    def extra_repr(self) -> str:
        a = self.attributes()
        return (f"side={float(self.side[0]):.4g}, points={a['points']}, group={a['group']}, "
                f"rings={a['rings']}, bits={a['bits']}")


def _from_dense(cls, layer, initialize: bool, options: dict) -> nn.Module:
    """``from_dense``'s shared part: small layers stay dense (the layer itself); else the trained
    weight encoded by ``hyper_layer``, or HyperError when nothing fits the budget."""
    if layer.weight.numel() < MIN_WEIGHTS:
        return layer
    if not initialize:
        return _new_layer(cls, layer)
    module, row = hyper_layer(layer, **options)
    budget = DEFAULT_BUDGET if options.get("budget") is None else options["budget"]
    _check(row.method == "hyper", f"no (side, points, rings) keeps the relative error within budget "
           f"{budget} in fewer bytes than float32 (the best reaches {row.error:.4g}); raise the budget or "
           "force points / side / rings")
    return module


def numeric_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """The Conv2d's padding as numbers: 'valid' is 0, 'same' is dilation·(kernel−1)/2 per axis when
    that is even (symmetric); None for an asymmetric 'same', which needs uneven padding."""
    if not isinstance(layer.padding, str):
        return tuple(layer.padding)
    if layer.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
    return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)


def _new_layer(cls, layer: nn.Module, **sizes) -> nn.Module:
    """An empty ``cls`` layer with the sizes and options of the dense ``layer`` (numeric padding)."""
    if isinstance(layer, nn.Linear):
        return cls(layer.in_features, layer.out_features, bias=layer.bias is not None, **sizes)
    return cls(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None,
               stride=layer.stride, padding=numeric_padding(layer), dilation=layer.dilation, groups=layer.groups,
               **sizes)


@register_method("hyper", nn.Linear)
class HyperLinear(_HyperLayer):
    """A Linear layer whose (out, in) weight is stored as Hyper-Compression indices."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, points: int = 1,
                 group: int = 2, rings: int = 0) -> None:
        self.in_features, self.out_features = in_features, out_features
        super().__init__((out_features, in_features), bias=bias, points=points, group=group, rings=rings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, initialize: bool = True, *, budget: float | None = None,
                   points: int | None = None, side: float | None = None, rings: int | None = None,
                   group: int = 2) -> nn.Module:
        """A Hyper-Compression copy of the trained ``layer`` (no retraining): ``points`` / ``side`` /
        ``rings`` given are used, the others searched for the fewest bytes within ``budget``
        (relative RMS weight error, default DEFAULT_BUDGET). Under 10 weights: ``layer`` itself."""
        return _from_dense(cls, layer, initialize, {"budget": budget, "points": points, "side": side,
                                                    "rings": rings, "group": group})

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


@register_method("hyper", nn.Conv2d)
class HyperConv2d(_HyperLayer):
    """A Conv2d whose (out, in/groups, kh, kw) weight is stored as Hyper-Compression indices."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, bias: bool = True,
                 points: int = 1, group: int = 2, rings: int = 0, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> None:
        shape = set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                  HyperError)
        super().__init__(shape, bias=bias, points=points, group=group, rings=rings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, initialize: bool = True, *, budget: float | None = None,
                   points: int | None = None, side: float | None = None, rings: int | None = None,
                   group: int = 2) -> nn.Module:
        """As ``HyperLinear.from_dense`` for a trained ``nn.Conv2d`` (zero padding; 'same' only when
        symmetric)."""
        _check(layer.padding_mode == "zeros" and numeric_padding(layer) is not None,
               f"HyperConv2d: padding_mode must be 'zeros' with numeric or symmetric 'same' padding, got "
               f"{layer.padding_mode!r} / {layer.padding!r}")
        return _from_dense(cls, layer, initialize, {"budget": budget, "points": points, "side": side,
                                                    "rings": rings, "group": group})

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, " + super().extra_repr())


# ---------------------------------------------------------------------------------------------
# Whole models: each layer's choice, the report, ``hyper_compress``.

@dataclass
class LayerChoice:
    """What one layer became: its parameters, bytes and reconstruction error."""

    name: str
    shape: tuple[int, ...]
    method: str  # "hyper", or "dense" (too small, or no encoding within the budget)
    dense_bytes: int
    stored_bytes: int
    side: float | None = None
    points: int | None = None
    rings: int | None = None
    group: int | None = None
    bits: int | None = None
    error: float = 0.0  # relative RMS error of the weight (or of the outputs, ``measured``)
    max_abs_error: float = 0.0  # of the weight
    measured: str = "weight"
    note: str = ""

    @property
    def ratio(self) -> float:
        """Dense bytes / stored bytes (weight and bias)."""
        return self.dense_bytes / max(self.stored_bytes, 1)

    def recipe(self) -> dict | None:
        """The recipe entry that rebuilds this layer, None when it stays dense."""
        if self.method != "hyper":
            return None
        return {"method": "hyper", "points": self.points, "side": self.side, "rings": self.rings,
                "group": self.group}


class HyperReport(list):
    """``hyper_compress``'s per-layer table (LayerChoice rows); ``str()`` formats it with totals."""

    model_bytes: tuple[int, int] = (0, 0)  # the whole model's inference bytes, before and after

    @property
    def recipe(self) -> dict:
        """The recipe to save with the compressed model (save_checkpoint): its hyper layers."""
        return {row.name: row.recipe() for row in self if row.recipe() is not None}

    def __str__(self) -> str:
        header = (f"{'layer':<22}{'shape':<16}{'side':>9}{'points':>7}{'rings':>6}{'bits':>5}"
                  f"{'ratio':>8}{'rel err':>9}{'max abs':>10}")
        lines = [header]
        for row in self:
            shape = "x".join(str(d) for d in row.shape)
            if row.method == "hyper":
                params = f"{row.side:>9.4g}{row.points:>7}{row.rings:>6}{row.bits:>5}"
            else:
                params = f"{'dense' + (f' ({row.note})' if row.note else ''):>27}"
            lines.append(f"{row.name:<22}{shape:<16}{params}{row.ratio:>7.2f}x{row.error:>9.4f}"
                         f"{row.max_abs_error:>10.3g}")
        dense, stored = sum(r.dense_bytes for r in self), sum(r.stored_bytes for r in self)
        lines.append(f"layers: {dense:,} bytes -> {stored:,} bytes ({dense / max(stored, 1):.2f}x)")
        before, after = self.model_bytes
        if before:
            lines.append(f"model:  {before:,} bytes -> {after:,} bytes ({before / max(after, 1):.2f}x)")
        return "\n".join(lines)


def _output_error(layer: nn.Module, inputs: torch.Tensor):
    """error(decoded weight): relative RMS error of ``layer``'s output on ``inputs``, computed from
    the Gram matrix of the inputs (or of the convolution's patches) per weight group:
    ‖ΔY‖² = Σ_o Δw_o G Δw_oᵀ, so a candidate costs no forward pass."""
    weight = layer.weight.detach().cpu().to(torch.float32)
    bias = None if layer.bias is None else layer.bias.detach().cpu().to(torch.float32)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            reference = F.linear(inputs, weight, bias)
            patches = inputs.reshape(1, -1, inputs.shape[-1]).transpose(1, 2)  # groups, cols, samples
            groups = 1
        else:
            padding = numeric_padding(layer)
            reference = F.conv2d(inputs, weight, bias, layer.stride, padding, layer.dilation, layer.groups)
            unfolded = F.unfold(inputs, layer.kernel_size, layer.dilation, padding, layer.stride)
            groups = layer.groups
            patches = unfolded.reshape(inputs.shape[0], groups, -1, unfolded.shape[-1]).permute(1, 2, 0, 3)
            patches = patches.reshape(groups, patches.shape[1], -1)
        patches = patches.to(torch.float64)
        gram = (patches @ patches.transpose(1, 2)).numpy()
    norm = float(torch.linalg.vector_norm(reference.to(torch.float64)))
    dense = weight.numpy().astype(np.float64).reshape(groups, weight.shape[0] // groups, -1)

    def error(decoded: np.ndarray) -> float:
        delta = np.asarray(decoded, dtype=np.float64).reshape(dense.shape) - dense
        squared = max(float(((delta @ gram) * delta).sum()), 0.0)
        return math.sqrt(squared) / norm if norm > 0 else (0.0 if squared == 0 else math.inf)
    return error


def hyper_layer(layer: nn.Linear | nn.Conv2d, *, budget: float = DEFAULT_BUDGET, calibration=None,
                points: int | None = None, side: float | None = None, rings: int | None = None,
                group: int = 2, name: str = "") -> tuple[nn.Module, LayerChoice]:
    """The Hyper-Compression copy of a trained layer with the fewest bytes within ``budget``, and
    its LayerChoice. ``calibration``: the inputs that reach the layer; the budget then bounds the
    relative RMS error of its output, else of its weight. Layers under 10 weights, and layers no
    encoding fits within the budget in fewer bytes, stay dense (the layer itself)."""
    from .recipe import tensor_bytes

    _check(isinstance(layer, (nn.Linear, nn.Conv2d)),
           f"hyper_layer takes nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    padding = None
    if isinstance(layer, nn.Conv2d):
        _check(layer.padding_mode == "zeros", f"layer {name!r}: padding_mode must be 'zeros', got "
               f"{layer.padding_mode!r}")
        padding = numeric_padding(layer)
    weight = layer.weight.detach().cpu().to(torch.float32)
    dense = tensor_bytes(layer)[1]
    row = LayerChoice(name, tuple(weight.shape), "dense", dense, dense, group=group)
    if weight.numel() < MIN_WEIGHTS:
        row.note = f"< {MIN_WEIGHTS} weights"
        return layer, row
    if isinstance(layer, nn.Conv2d) and padding is None:
        row.note = "asymmetric 'same' padding"
        return layer, row
    error = None
    if calibration is not None:
        error = _output_error(layer, torch.as_tensor(calibration, dtype=torch.float32))
        row.measured = "output"
    try:
        encoded, value = choose_encoding(weight.numpy(), budget=budget, points=points, side=side, rings=rings,
                                         group=group, error=error)
    except HyperError as problem:
        raise HyperError(f"layer {name!r}: {problem}") from None
    if encoded is None:
        row.note = f"budget; best {value:.2g}"
        return layer, row
    sizes = {"points": encoded["points"], "group": encoded["group"], "rings": encoded["rings"]}
    new = _new_layer(HyperLinear if isinstance(layer, nn.Linear) else HyperConv2d, layer, **sizes)
    new.set_encoding(encoded, layer.bias)
    decoded = decode_encoded(encoded)
    row.method, row.stored_bytes = "hyper", tensor_bytes(new)[1]
    row.side, row.points, row.rings, row.bits = (float(encoded["side"][0]), encoded["points"],
                                                 encoded["rings"], encoded["bits"])
    row.error, row.max_abs_error = value, float(np.abs(decoded - weight.numpy()).max())
    return new, row


def _layer_inputs(model: nn.Module, layers: dict[str, nn.Module], calibration) -> dict[str, torch.Tensor]:
    """The input each layer receives when the dense ``model`` runs on ``calibration`` (forward hooks)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:
            captured.setdefault(name, args[0].detach().cpu().float())
        return hook
    hooks = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    inputs = calibration if isinstance(calibration, (tuple, list)) else (calibration,)
    inputs = tuple(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
                   for x in inputs)
    for number, x in enumerate(inputs):
        bad = int((~torch.isfinite(x)).sum())
        _check(bad == 0, f"calibration: input {number} (shape {list(x.shape)}) has {bad} non-finite values (NaN or "
               "Inf); calibration data must be finite")
    try:
        with evaluating(model):
            model(*inputs)
    except Exception as error:
        raise HyperError(f"calibration: the model does not run on inputs of shape "
                         f"{[list(x.shape) for x in inputs]} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    finally:
        for hook in hooks:
            hook.remove()
    for name, x in captured.items():
        _check(bool(torch.isfinite(x).all()), f"calibration: the input that reaches layer {name!r} has non-finite "
               "values (NaN or Inf) when the dense model runs on the calibration data")
    return captured


def hyper_compress(model: nn.Module, *, budget: float = DEFAULT_BUDGET, calibration=None, names=None,
                   group: int = 2, progress: bool = True, points: int | None = None, side: float | None = None,
                   rings: int | None = None, inplace: bool = False) -> tuple[nn.Module, HyperReport]:
    """Replace every Linear / Conv2d (matching the glob(s) ``names``, default all) with ≥ 10 weights
    by its Hyper-Compression layer, no retraining; returns the model (a copy unless ``inplace``) and
    the per-layer report (``report.recipe`` is the recipe to save it with).

    ``calibration``: a batch of model inputs (an array, or a tuple for several inputs); each layer's
    budget then bounds the relative RMS error of its output on the activations the dense model
    gives it. ``points`` / ``side`` / ``rings`` force those parameters for every layer.
    """
    import copy
    import fnmatch

    from .recipe import compressed_size_bytes

    before = compressed_size_bytes(model)
    if not inplace:
        model = copy.deepcopy(model)
    candidates = {name: module for name, module in model.named_modules()
                  if isinstance(module, (nn.Linear, nn.Conv2d)) and name}
    patterns = None if names is None else ([names] if isinstance(names, str) else list(names))
    matched = {name: layer for name, layer in candidates.items()
               if patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    _check(not isinstance(model, (nn.Linear, nn.Conv2d)),
           f"hyper_compress: the model is itself a {type(model).__name__}; the root module is not replaced, only "
           "Linear/Conv2d layers inside it: wrap it (nn.Sequential(layer)) or use hyper_layer")
    _check(bool(matched), f"hyper_compress: {'the model has no' if patterns is None else str(patterns) + ' match no'} "
           f"Linear/Conv2d layer to compress; layers: {sorted(candidates)}")
    inputs = _layer_inputs(model, matched, calibration) if calibration is not None else {}
    report = HyperReport()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("hyper-compressing", total=len(matched))
        for name, layer in matched.items():
            bar.update(task, description=f"hyper-compressing {name}")
            if calibration is not None and name not in inputs:
                raise HyperError(f"calibration: layer {name!r} is not reached when the model runs on the "
                                 "calibration inputs")
            new, row = hyper_layer(layer, budget=budget, calibration=inputs.get(name), points=points, side=side,
                                   rings=rings, group=group, name=name)
            if new is not layer:
                model.set_submodule(name, new)
            report.append(row)
            bar.advance(task)
    report.model_bytes = (before, compressed_size_bytes(model))
    return model, report

