"""The report's plots (matplotlib, headless): latency distributions on a log axis clipped at the
p99s, Pareto plots of accuracy / latency against file size, energy bars, and the confusion matrix
the KWS evaluation draws. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from .results import format_time_ms, significant  # noqa: E402

FRONT_COLOR = "tab:red"


def _trim(text: str) -> str:
    """An axis tick without trailing zeros: "1.00 ms" → "1 ms", "0.0100" → "0.01"."""
    number, _, unit = text.partition(" ")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {unit}".strip()


TIME_TICKS = FuncFormatter(lambda v, _: _trim(format_time_ms(v)))
NUMBER_TICKS = FuncFormatter(lambda v, _: _trim(significant(v)))


def _scale(axis, which: str, low: float, high: float, ticks: FuncFormatter) -> None:
    """A log axis (ticks at 1, 2, 5 × 10^k) when 0 < low and [low, high] spans a factor 10 or more,
    else a linear one; limited to [low, high] (when low < high) and labelled by ``ticks``."""
    target = axis.xaxis if which == "x" else axis.yaxis
    if low > 0 and high / low >= 10:
        (axis.set_xscale if which == "x" else axis.set_yscale)("log")
        target.set_major_locator(LogLocator(subs=(1, 2, 5)))
        target.set_minor_formatter(NullFormatter())
    else:
        target.set_major_locator(MaxNLocator(6))
    if low < high:
        (axis.set_xlim if which == "x" else axis.set_ylim)(low, high)
    target.set_major_formatter(ticks)


def _padded(values: list[float]) -> tuple[float, float]:
    """Limits around ``values`` with room for their labels (by a factor when all are positive)."""
    low, high = min(values), max(values)
    if low > 0:
        return low / 1.3, high * 1.3
    pad = 0.1 * (high - low) or 1.0
    return low - pad, high + pad


def save_figure(figure, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def latency_limits(samples: list[list[float]]) -> tuple[float, float]:
    """The latency axis: from the fastest run / 1.5 to 1.5 × the largest p99 (at least a factor
    3 wide), so runs slower than every p99 fall outside it."""
    low = min(min(s) for s in samples) / 1.5
    high = max(float(np.percentile(s, 99)) for s in samples) * 1.5
    return low, max(high, low * 3)


def plot_latency(samples: list[list[float]], labels: list[str], path: str | Path) -> Path:
    """Box plots of per-inference latencies (ms) on an axis from the fastest run to 1.5 × the
    largest p99 (log when that spans a factor 10), so a few slow outliers do not flatten the boxes;
    ticks read in µs / ms / s."""
    figure, axis = plt.subplots(figsize=(9, 1 + 0.5 * len(samples)))
    axis.boxplot(samples, orientation="horizontal", tick_labels=labels, whis=(1, 99), showfliers=False)
    _scale(axis, "x", *latency_limits(samples), TIME_TICKS)
    axis.grid(axis="x", which="both", alpha=0.3)
    axis.set(xlabel="latency per inference (whiskers p1–p99)", title="Latency distribution")
    return save_figure(figure, path)


def pareto_front(points: list[tuple[float, float]], maximize_y: bool) -> list[int]:
    """Indices of the points no other point beats: smaller or equal x and better or equal y, one
    of them strictly; sorted by x."""
    def better(a, b):
        ya, yb = (a[1], b[1]) if maximize_y else (-a[1], -b[1])
        return a[0] <= b[0] and ya >= yb and (a[0] < b[0] or ya > yb)
    front = [i for i, p in enumerate(points) if not any(better(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(points: list[tuple[float, float]], names: list[str], path: str | Path, *, xlabel: str,
                ylabel: str, title: str, maximize_y: bool, time_y: bool = False) -> Path:
    """A scatter of (size, metric) points labelled with their model names; the Pareto front (the
    best metric for a size) joined and highlighted. Axes are log where the values span a factor
    10; ``time_y``: y is a time in ms (ticks in µs / ms / s)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    front = pareto_front(points, maximize_y)
    for i, ((x, y), name) in enumerate(zip(points, names)):
        on_front = i in front
        axis.scatter(x, y, color=FRONT_COLOR if on_front else "tab:blue", zorder=3,
                     s=50 if on_front else 30)
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.plot([points[i][0] for i in front], [points[i][1] for i in front], color=FRONT_COLOR, alpha=0.6,
              label="Pareto front", zorder=2)
    _scale(axis, "x", *_padded([x for x, _ in points]), NUMBER_TICKS)
    if time_y:
        _scale(axis, "y", *_padded([y for _, y in points]), TIME_TICKS)
    axis.grid(which="both", alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return save_figure(figure, path)


def plot_energy(values: list[float], labels: list[str], path: str | Path) -> Path:
    """Horizontal bars of energy per inference (mJ)."""
    figure, axis = plt.subplots(figsize=(9, 1 + 0.5 * len(values)))
    axis.barh(labels, values)
    axis.set(xlabel="energy per inference (mJ)", title="Energy per inference")
    return save_figure(figure, path)


def plot_confusion_matrix(matrix, labels: list[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """``matrix[i][j]``: clips of true class ``labels[i]`` predicted as ``labels[j]``; drawn with the
    true class on the y axis, the prediction on the x axis and every count written in its cell."""
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(labels)} labels: "
                         f"need a square {len(labels)}×{len(labels)} matrix")
    size = 1.5 + 0.55 * len(labels)
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    ticks = range(len(labels))
    axis.set_xticks(ticks, labels, rotation=45, ha="right")
    axis.set_yticks(ticks, labels)
    threshold = counts.max() / 2 if counts.size else 0
    for i in ticks:
        for j in ticks:
            value = counts[i, j]
            axis.text(j, i, significant(value.item()), ha="center", va="center", fontsize=7,
                      color="white" if value > threshold else "black")
    axis.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(figure, path)
