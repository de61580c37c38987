"""The soft weight-sharing paper's figure: pretrained → retrained weights as a scatter coloured by
the learned component, with log-count histograms and the mixture before and after on the margins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .sws import MixturePrior, SwsError, sws_weights

MAX_POINTS = 50_000


def _flat(weights) -> np.ndarray:
    """The marked weights of a model, or any array / tensor, as a flat float64 numpy array."""
    if isinstance(weights, nn.Module):
        weights = sws_weights(weights)
    if torch.is_tensor(weights):
        weights = weights.detach().cpu().numpy()
    return np.asarray(weights, dtype=np.float64).reshape(-1)


def _mixture(prior: MixturePrior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, standard deviations, mixing proportions) as numpy arrays."""
    with torch.no_grad():
        return (prior.all_means().cpu().double().numpy(), prior.variances().cpu().double().sqrt().numpy(),
                prior.mixing().cpu().double().numpy())


def _components(ax, prior: MixturePrior, count: int, bin_width: float, span: np.ndarray, vertical: bool) -> None:
    """Draw each component's πⱼ·N(μⱼ, σⱼ²) scaled to the histogram's counts."""
    means, stds, pis = _mixture(prior)
    for j, (mu, sd, pi) in enumerate(zip(means, stds, pis)):
        density = pi * count * bin_width * np.exp(-0.5 * ((span - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
        density = np.where(density >= 0.5, density, np.nan)  # a log axis shows counts from 1
        style = dict(color="black" if j == 0 else f"C{j % 10}", linewidth=0.8)
        ax.plot(density, span, **style) if vertical else ax.plot(span, density, **style)


def plot_weights(before, after, prior_before: MixturePrior, prior_after: MixturePrior, path) -> Path:
    """Save the figure as ``path`` (PNG/PDF by suffix; matplotlib's Agg renderer, no display).
    ``before`` / ``after``: the pretrained and retrained (or post-processed) models, or their
    marked weights as arrays in the same order."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    x, y = _flat(before), _flat(after)
    if x.shape != y.shape or x.size == 0:
        raise SwsError(f"plot_weights: before and after must hold the same non-zero number of weights, "
                       f"got {x.size} and {y.size}")
    for label, values in (("before", x), ("after", y)):
        if not np.isfinite(values).all():
            raise SwsError(f"plot_weights: {int((~np.isfinite(values)).sum())} of the {label} weights are "
                           f"NaN or infinite; every weight must be finite (did training diverge?)")
    means, stds, pis = _mixture(prior_after)
    log_density = np.log(pis) - np.log(stds) - 0.5 * ((y[:, None] - means) / stds) ** 2
    component = log_density.argmax(axis=1)
    shown = np.random.default_rng(0).choice(x.size, MAX_POINTS, replace=False) if x.size > MAX_POINTS else slice(None)

    low, high = min(x.min(), y.min()), max(x.max(), y.max())
    pad = 0.05 * (high - low or 1.0)
    bins = np.linspace(low - pad, high + pad, 121)
    span = np.linspace(bins[0], bins[-1], 1000)
    figure = Figure(figsize=(9, 8))
    grid = figure.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4), wspace=0.05, hspace=0.05)
    top, scatter = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[1, 0])
    right = figure.add_subplot(grid[1, 1], sharey=scatter)
    top.sharex(scatter)

    counts = max(np.histogram(x, bins)[0].max(), np.histogram(y, bins)[0].max())
    top.hist(x, bins=bins, color="0.6", log=True)
    _components(top, prior_before, x.size, bins[1] - bins[0], span, vertical=False)
    top.set_ylim(0.8, 3 * counts)
    top.set_ylabel("count (log)")
    top.set_title("soft weight-sharing: pretrained → retrained weights, mixture before (top) and after (right)")
    top.tick_params(labelbottom=False)

    right.hist(y, bins=bins, color="0.6", log=True, orientation="horizontal")
    _components(right, prior_after, y.size, bins[1] - bins[0], span, vertical=True)
    right.set_xlim(0.8, 3 * counts)
    right.set_xlabel("count (log)")
    right.tick_params(labelleft=False)

    colours = np.where(component == 0, "black", np.array([f"C{j % 10}" for j in range(len(means))])[component])
    scatter.scatter(x[shown], y[shown], s=2, c=colours[shown], alpha=0.5, linewidths=0)
    for mu in means:
        scatter.axhline(mu, color="0.85", linewidth=0.6, zorder=0)
    scatter.set_xlabel("pretrained weight")
    scatter.set_ylabel("retrained weight (colour: most responsible component; black: zero)")
    scatter.set_xlim(bins[0], bins[-1])
    scatter.set_ylim(bins[0], bins[-1])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
