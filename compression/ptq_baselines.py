"""Retraining-free baselines that Hyper-Compression is compared against (issue 14), at stated bits
per weight: uniform per-output-channel symmetric quantization (8 and 4 bits) and per-layer 1-D
k-means weight sharing (k = 2^b). These are baselines only; the full int8 path is issue 15.

Bytes are real where edgepack can store the result: k-means layers (and quantized layers with
≤ 256 distinct values, when no larger) become codebook layers (``codebook_layer``), whose buffers
are the stored bytes. Otherwise the layer keeps the dequantized weights densely (a simulation) and
its bytes are *counted*: b-bit codes packed, one float32 scale per output channel, the float32 bias.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgepack.errors import EdgepackError

from .codebook import MAX_CODEBOOK, codebook_layer
from .recipe import tensor_bytes

MIN_WEIGHTS = 10  # smaller layers stay float32, as Hyper-Compression leaves them
KMEANS_ITERATIONS = 300
KMEANS_STARTS = 10  # k-means++ starts; the lowest squared error wins (one start was up to 1.45x sklearn's)


class BaselineError(EdgepackError, ValueError):
    """Bad input to a baseline (bits, k, a layer it cannot take); the message says what is valid."""


def quantize_per_channel(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization: (codes int32 in [-q, q], float32 scales [C]), q =
    2^(bits−1) − 1, scale = max|w_c| / q (1 for an all-zero channel), codes = round-half-even(w / scale)."""
    if type(bits) is not int or not 2 <= bits <= 16:
        raise BaselineError(f"bits={bits!r}; per-channel quantization takes an int in 2..16")
    weight = np.asarray(weight, dtype=np.float32)
    flat = weight.reshape(weight.shape[0], -1)
    levels = (1 << (bits - 1)) - 1
    peak = np.abs(flat).max(axis=1)
    scales = np.where(peak > 0, peak / np.float32(levels), np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint(flat / scales[:, None]), -levels, levels).astype(np.int32)
    return codes.reshape(weight.shape), scales


def dequantize_per_channel(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 weights codes · scale of their output channel."""
    flat = codes.reshape(codes.shape[0], -1).astype(np.float32)
    return (flat * scales[:, None].astype(np.float32)).reshape(codes.shape)


def kmeans_plus_plus(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds of 1-D ``values`` (Arthur & Vassilvitskii 2007): the first uniformly, each next
    with probability ∝ squared distance to the nearest seed chosen so far (float64, unsorted)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    centers = [values[rng.integers(values.size)]]
    nearest = (values - centers[0]) ** 2
    for _ in range(1, k):
        total = nearest.sum()
        pick = rng.integers(values.size) if total <= 0 else rng.choice(values.size, p=nearest / total)
        centers.append(values[pick])
        nearest = np.minimum(nearest, (values - centers[-1]) ** 2)
    return np.array(centers)


def _lloyd(ordered: np.ndarray, prefix: np.ndarray, centers: np.ndarray, iterations: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's steps on sorted 1-D values from ``centers``: (centroids sorted, cluster edges in the
    sorted values). The values split at the centroids' midpoints, means come from prefix sums."""
    bounds = None
    for _ in range(iterations):
        cut = np.searchsorted(ordered, (centers[1:] + centers[:-1]) / 2, side="right")
        edges = np.concatenate([[0], cut, [ordered.size]])
        if bounds is not None and np.array_equal(edges, bounds):
            break
        bounds = edges
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centers = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centers))
    return centers, bounds


def kmeans_1d(values: np.ndarray, k: int, *, seed: int = 0, init: np.ndarray | None = None,
              iterations: int = KMEANS_ITERATIONS, starts: int = KMEANS_STARTS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of 1-D ``values``: (centroids float64 [k] sorted, labels int64 [V]). From
    ``init``, one run; else ``starts`` seeded k-means++ starts and the one of least squared error.
    Exact 1-D steps, stopping when no label changes; an empty cluster keeps its centroid."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if type(k) is not int or not 1 <= k <= min(values.size, MAX_CODEBOOK):
        raise BaselineError(f"k={k!r}; k-means of {values.size} values takes an int k in "
                            f"1..{min(values.size, MAX_CODEBOOK)}")
    if type(starts) is not int or starts < 1:
        raise BaselineError(f"starts={starts!r}; k-means takes an int number of starts >= 1")
    if not np.isfinite(values).all():
        raise BaselineError(f"k-means of {values.size} values: {int((~np.isfinite(values)).sum())} are not finite")
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    rng = np.random.default_rng(seed)
    inits = [np.asarray(init, dtype=np.float64).ravel()] if init is not None else (
        kmeans_plus_plus(values, k, rng) for _ in range(starts))
    best = None
    for start in inits:
        centers, bounds = _lloyd(ordered, prefix, np.sort(start), iterations)
        error = float(((ordered - np.repeat(centers, np.diff(bounds))) ** 2).sum())
        if best is None or error < best[0]:
            best = (error, centers, bounds)
    _, centers, bounds = best
    labels = np.empty(values.size, dtype=np.int64)
    labels[order] = np.repeat(np.arange(k), np.diff(bounds))
    return centers, labels


@dataclass
class BaselineRow:
    """One compressed layer: how it is stored and what it costs."""

    layer: str
    shape: tuple[int, ...]
    method: str
    bits: int
    dense_bytes: int  # float32 weight + bias
    stored_bytes: int  # what ships: the codebook layer's buffers, or the counted packed form
    packed_bytes: int  # at exactly ``bits`` bits per weight (+ scales / codebook, bias)
    storage: str  # "codebook" (real buffers) or "counted" (dense simulation, bytes counted)
    relative_error: float  # ||W' − W|| / ||W||
    max_abs_error: float

    @property
    def ratio(self) -> float:
        """Dense / stored bytes of this layer."""
        return self.dense_bytes / max(self.stored_bytes, 1)


class BaselineReport(list):
    """The per-layer rows plus the whole model's dense and stored bytes; ``str()`` is the table."""

    model_dense_bytes: int = 0
    model_stored_bytes: int = 0

    @property
    def dense_bytes(self) -> int:
        """float32 bytes of the compressed layers (weights and biases)."""
        return sum(row.dense_bytes for row in self)

    @property
    def stored_bytes(self) -> int:
        """Stored (or counted) bytes of the compressed layers."""
        return sum(row.stored_bytes for row in self)

    @property
    def ratio(self) -> float:
        """Dense / stored bytes of the compressed layers."""
        return self.dense_bytes / max(self.stored_bytes, 1)

    @property
    def model_ratio(self) -> float:
        """Dense / stored bytes of the whole model (uncompressed tensors count on both sides)."""
        return self.model_dense_bytes / max(self.model_stored_bytes, 1)

    def __str__(self) -> str:
        lines = [f"{'layer':<16}{'shape':<18}{'method':<9}{'bits':>5}{'dense B':>10}{'stored B':>10}"
                 f"{'ratio':>8}{'rel.err':>9}  storage"]
        lines += [f"{row.layer:<16}{'x'.join(map(str, row.shape)):<18}{row.method:<9}{row.bits:>5}"
                  f"{row.dense_bytes:>10}{row.stored_bytes:>10}{row.ratio:>7.1f}x{row.relative_error:>9.4f}"
                  f"  {row.storage}" for row in self]
        lines.append(f"{'layers':<48}{self.dense_bytes:>10}{self.stored_bytes:>10}{self.ratio:>7.1f}x")
        lines.append(f"{'whole model':<48}{self.model_dense_bytes:>10}{self.model_stored_bytes:>10}"
                     f"{self.model_ratio:>7.1f}x")
        return "\n".join(lines)


def _with_weight(layer: nn.Module, weight: np.ndarray) -> nn.Module:
    """A copy of ``layer`` whose weight is ``weight`` (float32)."""
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
    return new


def _layer_weight(layer: nn.Module, name: str) -> np.ndarray:
    """``layer``'s weight as float32 numpy; non-finite weights are refused (no baseline can store them)."""
    weight = layer.weight.detach().cpu().numpy().astype(np.float32)
    bad = int((~np.isfinite(weight)).sum())
    if bad:
        raise BaselineError(f"layer {name or type(layer).__name__!r}: {bad} of its {weight.size} weights are not "
                            "finite (NaN/inf); the baselines take finite weights only")
    return weight


def _errors(weight: np.ndarray, approx: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, max abs error) of ``approx`` against ``weight``, in float64."""
    diff = approx.astype(np.float64) - weight.astype(np.float64)
    norm = float(np.linalg.norm(weight.astype(np.float64)))
    return float(np.linalg.norm(diff)) / max(norm, 1e-30), float(np.abs(diff).max())


def _bias_bytes(layer: nn.Module) -> int:
    """float32 bytes of ``layer``'s bias (0 without one): counted beside the packed codes."""
    return 0 if layer.bias is None else 4 * layer.bias.numel()


def ptq_layer(layer: nn.Linear | nn.Conv2d, bits: int, name: str = "") -> tuple[nn.Module, BaselineRow]:
    """Per-channel ``bits``-bit quantization of ``layer``'s weight: a codebook layer when its values fit
    one (≤ 256) at no more bytes, else the dequantized dense layer with the packed bytes counted."""
    weight = _layer_weight(layer, name)
    codes, scales = quantize_per_channel(weight, bits)
    approx = dequantize_per_channel(codes, scales)
    packed = math.ceil(weight.size * bits / 8) + 4 * scales.size + _bias_bytes(layer)
    module, storage, stored = _with_weight(layer, approx), "counted", packed
    if np.unique(approx.view(np.uint32)).size <= MAX_CODEBOOK:
        candidate = codebook_layer(module, sparse=False)
        if tensor_bytes(candidate)[1] <= packed:
            module, storage, stored = candidate, "codebook", tensor_bytes(candidate)[1]
    relative, worst = _errors(weight, approx)
    row = BaselineRow(name, tuple(weight.shape), f"ptq{bits}", bits, tensor_bytes(layer)[1], stored, packed,
                      storage, relative, worst)
    return module, row


def kmeans_layer(layer: nn.Linear | nn.Conv2d, bits: int, name: str = "", seed: int = 0
                 ) -> tuple[nn.Module, BaselineRow]:
    """Per-layer k-means weight sharing with k = 2^bits clusters, stored as a codebook layer (real
    bytes: the codebook op packs 1/2/4/8 bits, so 3 bits ship as 4 and 5 as 8; ``packed_bytes`` is
    the exact ``bits``-bit figure)."""
    if type(bits) is not int or not 1 <= bits <= 8:
        raise BaselineError(f"bits={bits!r}; k-means weight sharing takes an int in 1..8 (k = 2^bits)")
    weight = _layer_weight(layer, name)
    k = min(1 << bits, weight.size)
    centers, labels = kmeans_1d(weight, k, seed=seed)
    approx = centers.astype(np.float32)[labels].reshape(weight.shape)
    module = codebook_layer(_with_weight(layer, approx), sparse=False)
    packed = math.ceil(weight.size * bits / 8) + 4 * k + _bias_bytes(layer)
    relative, worst = _errors(weight, approx)
    row = BaselineRow(name, tuple(weight.shape), f"kmeans{bits}", bits, tensor_bytes(layer)[1],
                      tensor_bytes(module)[1], packed, "codebook", relative, worst)
    return module, row


def target_layers(model: nn.Module, names=None) -> dict[str, nn.Module]:
    """The Linear / Conv2d layers with ≥ MIN_WEIGHTS weights whose names match the globs ``names``."""
    patterns = ["*"] if names is None else ([names] if isinstance(names, str) else list(names))
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, (nn.Linear, nn.Conv2d)) and name and module.weight.numel() >= MIN_WEIGHTS
              and any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    if not layers:
        raise BaselineError(f"no Linear/Conv2d layer with >= {MIN_WEIGHTS} weights matches {patterns}")
    return layers


def _compress(model: nn.Module, make, names) -> tuple[nn.Module, BaselineReport]:
    """A copy of ``model`` with every target layer replaced by ``make(layer, name)``, and the report."""
    dense_total = tensor_bytes(model)[1]
    model = copy.deepcopy(model)
    report = BaselineReport()
    counted_in_model = 0
    for name, layer in target_layers(model, names).items():
        module, row = make(layer, name)
        model.set_submodule(name, module)
        report.append(row)
        counted_in_model += tensor_bytes(module)[1] - row.stored_bytes
    report.model_dense_bytes = dense_total
    report.model_stored_bytes = tensor_bytes(model)[1] - counted_in_model
    return model, report


def ptq_compress(model: nn.Module, bits: int, names=None) -> tuple[nn.Module, BaselineReport]:
    """Per-channel ``bits``-bit quantization of every matched layer (≥ 10 weights), no retraining."""
    return _compress(model, lambda layer, name: ptq_layer(layer, bits, name), names)


def kmeans_compress(model: nn.Module, bits: int, seed: int = 0, names=None) -> tuple[nn.Module, BaselineReport]:
    """k-means (k = 2^bits) weight sharing of every matched layer (≥ 10 weights), no retraining."""
    return _compress(model, lambda layer, name: kmeans_layer(layer, bits, name, seed), names)
