"""Soft weight-sharing (Ullrich, Meeds, Welling, ICLR 2017): retrain a pretrained model with a
learned Gaussian-mixture prior over the weights of marked layers, then quantize every weight to the
mean of its most responsible component; the zero component's weights become exactly 0 (pruned).

Stable API (helper AC builds MNIST / LeNet / ``edgepack papers sws`` on it):

- recipe method ``{"method": "sws"}`` (no parameters): ``SwsLinear`` / ``SwsConv2d``, dense layers
  with the same forward and state dict, marked for the prior; ``sws_layers(model)`` lists them and
  ``sws_weights(model)`` concatenates their flattened weights (biases are not under the prior).
- ``MixturePrior.from_weights(weights, components=17, pi_zero=0.999, pi_zero_prior=None,
  init_std=None)`` and
  ``MixturePrior.from_model(model, ...)``: ``log_prob(w)``, ``hyper_log_prob()``,
  ``responsibilities(w)``, ``mixing()``, ``all_means()``, ``variances()``.
- ``retrain(model, train_data, *, epochs, tau, components=17, lr=5e-4, prior_lrs=None,
  pi_zero=0.999, pi_zero_prior=None, prior=None, batch_size=64, val_data=None, progress=True,
  device="cpu", seed=0, loss_fn=None) -> (prior, history)``; ``history`` is a list of per-epoch
  dicts (``epoch, loss, task_loss, complexity, train_accuracy, val_accuracy, nonzero, pi_zero``).
- ``postprocess(model, prior, kl_threshold=KL_THRESHOLD, codebook=False) -> SwsReport``
  (``codebook=True``: the marked layers become CodebookLinear / CodebookConv2d via
  ``compression.codebook.to_codebook``, bit-exact to the quantized weights);
  ``merge_components(means, variances, pis, threshold)``; ``kl_gaussian(m1, v1, m2, v2)``.
- ``compression.sws_plot.plot_weights(before, after, prior_before, prior_after, path)``.

τ: the paper's objective is L = −Σₙ log p(tₙ|xₙ, w) − τ·log p(w, θ) over the whole training set.
We minimise it per batch as mean cross-entropy + (τ/N)·(−log p(w) − log p(θ)), i.e. L / N: the
authors' tutorial's ``loss_weights = tau/N``. So ``tau`` here *is* the paper's τ (its definition,
not a different scaling); the paper's MNIST value is 0.05 (PAPERS.md) and the tutorial's 0.003.
``tau`` has no default: it sets the trade-off between accuracy and compression per data set.
Choices beyond the paper: every precision starts at its Gamma hyper-prior's mode (σ ≈ 0.02, see
``from_weights``); merging averages variances, as the paper says (the tutorial averages precisions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.errors import EdgepackError

from .codebook import to_codebook
from .progress import progress_bar
from .registry import register_method

COMPONENTS = 17
PI_ZERO = 0.999
GAMMA_ZERO = (5000.0, 2.0)   # Gamma(α, β) hyper-prior on the zero component's precision (tutorial)
GAMMA_OTHERS = (250.0, 0.1)  # and on every other component's precision
PRIOR_LRS = {"means": 1e-4, "log_precisions": 3e-3, "mixing": 3e-3}
KL_THRESHOLD = 1e-2


class SwsError(EdgepackError, ValueError):
    """Bad input to soft weight-sharing: the message names the argument and what would be valid."""


@register_method("sws", nn.Linear)
class SwsLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is under the soft weight-sharing prior (same forward)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, initialize: bool = True) -> SwsLinear:
        """A marked copy of ``layer`` (its weights copied unless ``initialize=False``)."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.to(layer.weight.device, layer.weight.dtype)
        if initialize:
            new.load_state_dict(layer.state_dict())
        return new


@register_method("sws", nn.Conv2d)
class SwsConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose weight is under the soft weight-sharing prior (same forward)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, initialize: bool = True) -> SwsConv2d:
        """A marked copy of ``layer`` (its weights copied unless ``initialize=False``)."""
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None)
        new.padding_mode = layer.padding_mode
        new.to(layer.weight.device, layer.weight.dtype)
        if initialize:
            new.load_state_dict(layer.state_dict())
        return new


def sws_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of the model's layers marked for the prior, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (SwsLinear, SwsConv2d))]


def sws_weights(model: nn.Module) -> torch.Tensor:
    """All marked weights as one flat tensor (connected to the graph, for the prior term)."""
    layers = sws_layers(model)
    if not layers:
        raise SwsError(f"{type(model).__name__} has no layer marked for soft weight-sharing; mark "
                       "some with compress(model, {'fc*': {'method': 'sws'}})")
    return torch.cat([layer.weight.reshape(-1) for _, layer in layers])


class MixturePrior(nn.Module):
    """p(w) = Πᵢ Σⱼ πⱼ N(wᵢ | μⱼ, 1/λⱼ): component 0 has μ₀ = 0 and π₀ fixed (or learned under a
    Beta(a, b) hyper-prior); means, log-precisions and the other mixing logits are learned, the
    precisions under Gamma hyper-priors that keep components from collapsing."""

    def __init__(self, means, log_precisions, mixing_logits, pi_zero: float = PI_ZERO,
                 pi_zero_prior: tuple[float, float] | None = None,
                 gamma_zero: tuple[float, float] = GAMMA_ZERO,
                 gamma_others: tuple[float, float] = GAMMA_OTHERS) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float32)
        j = means.numel() + 1
        if not 0.0 < pi_zero < 1.0:
            raise SwsError(f"pi_zero must be in (0, 1), got {pi_zero!r}")
        if pi_zero_prior is not None and not (len(pi_zero_prior) == 2 and min(pi_zero_prior) > 0):
            raise SwsError(f"pi_zero_prior must be Beta parameters (a, b) > 0, got {pi_zero_prior!r}")
        self.means = nn.Parameter(means.clone())
        self.log_precisions = nn.Parameter(torch.as_tensor(log_precisions, dtype=torch.float32).clone())
        self.mixing_logits = nn.Parameter(torch.as_tensor(mixing_logits, dtype=torch.float32).clone())
        if self.log_precisions.numel() != j or self.mixing_logits.numel() != j - 1:
            raise SwsError(f"a {j}-component prior needs {j} log-precisions and {j - 1} mixing "
                           f"logits, got {self.log_precisions.numel()} and {self.mixing_logits.numel()}")
        zero_logit = torch.tensor(math.log(pi_zero / (1.0 - pi_zero)))
        self.pi_zero_prior = None if pi_zero_prior is None else tuple(float(v) for v in pi_zero_prior)
        if self.pi_zero_prior is None:
            self.register_buffer("zero_logit", zero_logit)
        else:
            self.zero_logit = nn.Parameter(zero_logit)
        self.gamma_zero, self.gamma_others = tuple(gamma_zero), tuple(gamma_others)

    @classmethod
    def from_weights(cls, weights, components: int = COMPONENTS, pi_zero: float = PI_ZERO,
                     pi_zero_prior: tuple[float, float] | None = None, init_std: float | None = None,
                     **hyper) -> MixturePrior:
        """The paper's initialisation: components − 1 means evenly over [min, max] of the
        pretrained weights, the non-zero components sharing 1 − π₀; every precision at its Gamma
        hyper-prior's mode (α−1)/β unless ``init_std`` is given (the tutorial's 0.25 is far wider
        than its own hyper-prior and takes thousands of steps to shrink)."""
        w = torch.as_tensor(np.asarray(weights.detach().cpu() if torch.is_tensor(weights) else weights,
                                       dtype=np.float32)).reshape(-1)
        if not isinstance(components, int) or not 2 <= components <= 256:
            raise SwsError(f"components must be an integer in [2, 256], got {components!r}")
        if w.numel() == 0 or not torch.isfinite(w).all():
            raise SwsError("the weights to initialise the prior from must be non-empty and finite")
        means = torch.linspace(float(w.min()), float(w.max()), components - 1)
        if init_std is not None:
            if isinstance(init_std, bool) or not isinstance(init_std, (int, float, np.integer, np.floating)) or not (
                    math.isfinite(init_std) and init_std > 0):
                raise SwsError(f"init_std must be a finite number > 0 (a standard deviation), got {init_std!r}")
            log_precisions = torch.full((components,), -2.0 * math.log(init_std))
        else:
            (a0, b0), (a, b) = hyper.get("gamma_zero", GAMMA_ZERO), hyper.get("gamma_others", GAMMA_OTHERS)
            for name, (alpha, beta) in (("gamma_zero", (a0, b0)), ("gamma_others", (a, b))):
                if not (alpha > 1 and beta > 0):
                    raise SwsError(f"{name}=({alpha!r}, {beta!r}): the precisions start at the Gamma "
                                   f"hyper-prior's mode (α−1)/β, which needs α > 1 and β > 0; pass such "
                                   f"values or init_std=")
            log_precisions = torch.tensor([math.log((a0 - 1) / b0)] + [math.log((a - 1) / b)] * (components - 1))
        return cls(means, log_precisions, torch.zeros(components - 1), pi_zero, pi_zero_prior, **hyper)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs) -> MixturePrior:
        """``from_weights`` over the weights of the model's marked layers."""
        return cls.from_weights(sws_weights(model), **kwargs)

    @property
    def components(self) -> int:
        """J, the number of mixture components (the zero component included)."""
        return self.log_precisions.numel()

    def all_means(self) -> torch.Tensor:
        """[0, μ₁, …, μ_{J−1}]."""
        return torch.cat([self.means.new_zeros(1), self.means])

    def variances(self) -> torch.Tensor:
        """σⱼ² = 1/λⱼ."""
        return torch.exp(-self.log_precisions)

    def log_mixing(self) -> torch.Tensor:
        """log πⱼ: log π₀ from the zero logit, the rest share 1 − π₀ by a softmax (stable)."""
        z = self.zero_logit
        return torch.cat([F.logsigmoid(z).reshape(1), F.logsigmoid(-z) + torch.log_softmax(self.mixing_logits, 0)])

    def mixing(self) -> torch.Tensor:
        """πⱼ (sums to 1)."""
        return self.log_mixing().exp()

    def component_log_density(self, w: torch.Tensor) -> torch.Tensor:
        """(n, J): log πⱼ + log N(wᵢ | μⱼ, 1/λⱼ)."""
        w = w.reshape(-1, 1)
        lam = self.log_precisions
        return (self.log_mixing() + 0.5 * lam - 0.5 * math.log(2 * math.pi)
                - 0.5 * lam.exp() * (w - self.all_means()) ** 2)

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """Σᵢ log Σⱼ πⱼ N(wᵢ | μⱼ, σⱼ²), by logsumexp, with hand-written gradients (``_MixtureLogProb``)."""
        return _MixtureLogProb.apply(w.reshape(-1), self.all_means(), self.log_precisions, self.log_mixing())

    def responsibilities(self, w: torch.Tensor) -> torch.Tensor:
        """(n, J): the posterior probability of each component for each weight."""
        return torch.softmax(self.component_log_density(w), dim=1)

    def hyper_log_prob(self) -> torch.Tensor:
        """log Gamma(λⱼ | α, β) up to constants, as the tutorial writes it in γ = log λ:
        Σⱼ (α−1)γⱼ − βλⱼ; plus log Beta(π₀ | a, b) up to a constant when π₀ is learned."""
        lam = self.log_precisions
        alpha = torch.tensor([self.gamma_zero[0]] + [self.gamma_others[0]] * (self.components - 1))
        beta = torch.tensor([self.gamma_zero[1]] + [self.gamma_others[1]] * (self.components - 1))
        total = ((alpha.to(lam) - 1) * lam - beta.to(lam) * lam.exp()).sum()
        if self.pi_zero_prior is not None:
            a, b = self.pi_zero_prior
            total = total + (a - 1) * F.logsigmoid(self.zero_logit) + (b - 1) * F.logsigmoid(-self.zero_logit)
        return total


class _MixtureLogProb(torch.autograd.Function):
    """Σᵢ logsumexpⱼ qᵢⱼ with qᵢⱼ = log πⱼ + ½γⱼ − ½log 2π − ½λⱼ(wᵢ − μⱼ)², written as [wᵢ², wᵢ, 1]·Aⱼ
    so the n×J work is matrix products and one logsumexp: 1.5× less CPU than autograd's graph
    (266k weights, 17 components: 58 vs 91 ms per step on one thread)."""

    @staticmethod
    def forward(ctx, w, means, log_precisions, log_mixing):
        lam = log_precisions.exp()
        columns = torch.stack([-0.5 * lam, lam * means,
                               log_mixing + 0.5 * log_precisions - 0.5 * math.log(2 * math.pi)
                               - 0.5 * lam * means ** 2])
        x = torch.stack([w * w, w, torch.ones_like(w)], dim=1)
        q = x @ columns
        lse = torch.logsumexp(q, dim=1)
        responsibilities = q.sub_(lse[:, None]).exp_()
        ctx.save_for_backward(w, x, responsibilities, means, lam)
        return lse.sum()

    @staticmethod
    def backward(ctx, grad):
        w, x, r, means, lam = ctx.saved_tensors
        s2, s1, s0 = x.T.contiguous() @ r  # Σᵢ rᵢⱼwᵢ², Σᵢ rᵢⱼwᵢ, Σᵢ rᵢⱼ (r.T @ x is ~10× slower)
        per_weight = r @ torch.stack([lam, lam * means], dim=1)
        grad_w = per_weight[:, 1] - w * per_weight[:, 0]
        grad_means = lam * (s1 - means * s0)
        grad_log_precisions = 0.5 * s0 - 0.5 * lam * (s2 - 2 * means * s1 + means ** 2 * s0)
        return grad * grad_w, grad * grad_means, grad * grad_log_precisions, grad * s0


def _batches(data, batch_size: int, generator: torch.Generator | None, device):
    """(x, y) batches from an (x, y) pair (shuffled by ``generator`` when given) or an iterable."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = (torch.as_tensor(v) for v in data)
        order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield x[index].to(device), y[index].to(device)
    else:
        for x, y in data:
            yield x.to(device), y.to(device)


def _size(data, name: str) -> int:
    """Number of examples in an (x, y) pair or a DataLoader (its dataset's length)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = data
        if len(x) != len(y) or len(x) == 0:
            raise SwsError(f"{name}: x and y must have the same non-zero length, got {len(x)} and {len(y)}")
        return len(x)
    dataset = getattr(data, "dataset", None)
    if dataset is None:
        raise SwsError(f"{name} must be an (x, y) pair of tensors or a DataLoader, got {type(data).__name__}")
    return len(dataset)


@torch.no_grad()
def _accuracy(model: nn.Module, data, device) -> float:
    correct = total = 0
    for x, y in _batches(data, 1024, None, device):
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@torch.no_grad()
def nonzero_estimate(model: nn.Module, prior: MixturePrior) -> float:
    """Fraction of marked weights whose most responsible component is not the zero component
    (what post-processing would keep, before merging)."""
    w = sws_weights(model)
    return float((prior.component_log_density(w).argmax(dim=1) != 0).float().mean())


def retrain(model: nn.Module, train_data, *, epochs: int, tau: float, components: int = COMPONENTS,
            lr: float = 5e-4, prior_lrs: dict[str, float] | None = None, pi_zero: float = PI_ZERO,
            pi_zero_prior: tuple[float, float] | None = None, prior: MixturePrior | None = None,
            batch_size: int = 64, val_data=None, progress: bool = True, device="cpu", seed: int = 0,
            loss_fn=None) -> tuple[MixturePrior, list[dict]]:
    """Retrain the whole model (in place) with loss = task loss + (τ/N)(−log p(w) − log p(θ)), the
    prior over the marked layers' weights; Adam with one learning rate for the model and one per
    prior parameter group (``prior_lrs`` keys: means, log_precisions, mixing). ``train_data`` and
    ``val_data``: an (x, y) pair (shuffled with ``seed``) or a DataLoader. Returns the learned
    prior and one dict per epoch; the same seed gives the same result."""
    if not isinstance(epochs, int) or epochs < 1:
        raise SwsError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(tau, (int, float)) or not tau >= 0:
        raise SwsError(f"tau must be a number >= 0, got {tau!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SwsError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    lrs = dict(PRIOR_LRS, **(prior_lrs or {}))
    if set(lrs) != set(PRIOR_LRS) or not all(isinstance(v, (int, float)) and v >= 0 for v in lrs.values()):
        raise SwsError(f"prior_lrs takes learning rates >= 0 for {sorted(PRIOR_LRS)}, got {prior_lrs!r}")
    n = _size(train_data, "train_data")
    if val_data is not None:
        _size(val_data, "val_data")
    loss_fn = loss_fn or F.cross_entropy
    model.to(device)
    if prior is None:
        prior = MixturePrior.from_model(model, components=components, pi_zero=pi_zero,
                                        pi_zero_prior=pi_zero_prior)
    prior.to(device)
    mixing = [prior.mixing_logits] + ([prior.zero_logit] if prior.pi_zero_prior is not None else [])
    optimizer = torch.optim.Adam([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": lr},
        {"params": [prior.means], "lr": lrs["means"]},
        {"params": [prior.log_precisions], "lr": lrs["log_precisions"]},
        {"params": mixing, "lr": lrs["mixing"]},
    ])
    weight = tau / n
    history: list[dict] = []
    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(n / batch_size) if isinstance(train_data, (tuple, list)) else len(train_data)
    fork_devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), progress_bar(enabled=progress) as bar:
        torch.manual_seed(seed)
        task = bar.add_task("sws retraining", total=epochs * steps)
        for epoch in range(1, epochs + 1):
            model.train()
            sums = {"loss": 0.0, "task_loss": 0.0, "complexity": 0.0}
            correct = seen = 0
            for x, y in _batches(train_data, batch_size, generator, device):
                output = model(x)
                task_loss = loss_fn(output, y)
                complexity = -prior.log_prob(sws_weights(model)) - prior.hyper_log_prob()
                loss = task_loss + weight * complexity
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for key, value in (("loss", loss), ("task_loss", task_loss), ("complexity", weight * complexity)):
                    sums[key] += float(value.detach()) * len(y)
                correct += int((output.argmax(dim=1) == y).sum())
                seen += len(y)
                bar.advance(task)
            model.eval()
            record = {"epoch": epoch, **{k: v / seen for k, v in sums.items()},
                      "train_accuracy": correct / seen,
                      "val_accuracy": None if val_data is None else _accuracy(model, val_data, device),
                      "nonzero": nonzero_estimate(model, prior),
                      "pi_zero": float(prior.mixing()[0].detach())}
            history.append(record)
            val = "" if record["val_accuracy"] is None else f" val {record['val_accuracy']:.3f}"
            bar.update(task, description=f"sws epoch {epoch}/{epochs}: loss {record['loss']:.3f}{val} "
                                         f"non-zero {record['nonzero']:.1%}")
    model.eval()
    return prior, history


def kl_gaussian(m1, v1, m2, v2):
    """KL(N(m1, v1) ‖ N(m2, v2)) for variances v1, v2 (numpy broadcasting)."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def merge_components(means, variances, pis, threshold: float):
    """Merge components as the authors' tutorial does: while some pair's KL divergence is below
    ``threshold``, merge the single pair with the smallest one (π = Σπ, π-weighted mean and
    variance) and recompute; so a chain A~B~C with A, C far apart is not merged in one go. The KL
    of a pair is the smaller of its two directions (KL is not symmetric). The group holding
    component 0 stays first and its mean stays exactly 0. Returns (groups, means, variances, pis)."""
    means, variances, pis = (np.array(a, dtype=np.float64) for a in (means, variances, pis))
    groups = [[i] for i in range(len(means))]
    while len(groups) > 1:
        kl = kl_gaussian(means[:, None], variances[:, None], means[None, :], variances[None, :])
        kl = np.minimum(kl, kl.T)
        np.fill_diagonal(kl, np.inf)
        a, b = np.unravel_index(np.argmin(kl), kl.shape)  # row-major: a < b
        if not kl[a, b] < threshold:
            break
        pi = pis[a] + pis[b]
        means[a] = 0.0 if a == 0 else (pis[a] * means[a] + pis[b] * means[b]) / pi
        variances[a] = (pis[a] * variances[a] + pis[b] * variances[b]) / pi
        pis[a] = pi
        groups[a] = sorted(groups[a] + groups.pop(b))
        means, variances, pis = (np.delete(x, b) for x in (means, variances, pis))
    return groups, means, variances, pis


@dataclass
class SwsLayerReport:
    """One marked layer after post-processing."""

    name: str
    weights: int
    nonzero: int
    distinct_values: int
    components_before: int
    components_after: int

    @property
    def nonzero_fraction(self) -> float:
        """Share of the layer's weights that are not 0.0."""
        return self.nonzero / max(self.weights, 1)


class SwsReport(list):
    """Per-layer rows of ``postprocess``; ``codebook`` holds the merged component means (0.0 first)."""

    codebook: np.ndarray

    def __str__(self) -> str:
        lines = [f"{'layer':<24}{'weights':>9}{'non-zero':>10}{'distinct':>10}{'components':>12}"]
        for row in self:
            lines.append(f"{row.name:<24}{row.weights:>9}{row.nonzero_fraction:>9.2%}{row.distinct_values:>10}"
                         f"{f'{row.components_before} → {row.components_after}':>12}")
        return "\n".join(lines)


@torch.no_grad()
def postprocess(model: nn.Module, prior: MixturePrior, kl_threshold: float = KL_THRESHOLD,
                codebook: bool = False) -> SwsReport:
    """Quantize the marked layers in place: merge components with KL below ``kl_threshold``, set
    every weight to the mean of its most responsible merged component (0.0 for the zero
    component's group). ``codebook=True`` then swaps the layers for CodebookLinear/Conv2d. Apply
    it once, to the retrained model: a component's mean may itself lie where another component is
    more responsible, so a second pass can move values (``to_codebook`` converts without it)."""
    if not isinstance(kl_threshold, (int, float)) or not kl_threshold >= 0:
        raise SwsError(f"kl_threshold must be a number >= 0, got {kl_threshold!r}")
    _, means, variances, pis = merge_components(
        prior.all_means().detach().cpu().double().numpy(), prior.variances().detach().cpu().double().numpy(),
        prior.mixing().detach().cpu().double().numpy(), kl_threshold)
    values = torch.tensor(means, dtype=torch.float32)
    report = SwsReport()
    report.codebook = values.numpy().copy()
    log_pi, log_var = torch.tensor(np.log(pis)), torch.tensor(np.log(variances))
    means64, var64 = torch.tensor(means), torch.tensor(variances)
    for name, layer in sws_layers(model):
        w = layer.weight.detach().cpu().double().reshape(-1, 1)
        density = log_pi - 0.5 * log_var - 0.5 * (w - means64) ** 2 / var64
        quantized = values[density.argmax(dim=1)].reshape(layer.weight.shape)
        layer.weight.copy_(quantized.to(layer.weight))
        report.append(SwsLayerReport(name, quantized.numel(), int((quantized != 0).sum()),
                                     int(torch.unique(quantized).numel()), prior.components, len(means)))
    if codebook:
        to_codebook(model, [row.name for row in report])
    return report
