"""Toeplitz-like low-displacement-rank Linear layer (Sindhwani, Sainath, Kumar 2015).

W = Σᵢ Z₁(gᵢ)·Z₋₁(hᵢ) on a square n = next power of two (>= 4) of max(in, out); the input is
zero-padded to n and the output sliced. Z_f(v) is the f-circulant with first column v:
Z_f(v)[a, c] = v[a − c] if a >= c else f·v[n + a − c]. 2·r·n parameters; the product is a
circulant (Z₁) times a skew-circulant (Z₋₁) per rank, both by FFT: O(r·n log n).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import FromDenseLinear, next_power_of_two, require
from .registry import register_method


def f_circulant(v: torch.Tensor, f: float) -> torch.Tensor:
    """Dense Z_f(v) for the last axis of ``v`` (batched over leading axes)."""
    n = v.shape[-1]
    a = torch.arange(n)
    diff = a[:, None] - a[None, :]
    scale = torch.where(diff >= 0, 1.0, f).to(v.dtype)
    return v[..., diff % n] * scale


def _twist(n: int, dtype: torch.dtype) -> torch.Tensor:
    """ω^k for k < n with ω = exp(iπ/n): it turns a skew-circulant product into a circulant one."""
    angle = torch.arange(n, dtype=dtype) * (math.pi / n)
    return torch.polar(torch.ones_like(angle), angle)


def ldr_product(x: torch.Tensor, G: torch.Tensor, H: torch.Tensor, out_features: int) -> torch.Tensor:
    """(x zero-padded to n) · Wᵀ for W = Σᵢ Z₁(gᵢ)·Z₋₁(hᵢ), sliced to ``out_features``, by FFT."""
    n = G.shape[-1]
    twist = _twist(n, H.dtype)
    x = F.pad(x, (0, n - x.shape[-1]))
    x_spectrum = torch.fft.fft(x * twist).unsqueeze(-2)  # (..., 1, n)
    skew = (torch.fft.ifft(x_spectrum * torch.fft.fft(H * twist)) * twist.conj()).real  # Z₋₁(hᵢ)·x
    y_spectrum = (torch.fft.rfft(skew) * torch.fft.rfft(G)).sum(-2)
    return torch.fft.irfft(y_spectrum, n=n)[..., :out_features]


@register_method("ldr", nn.Linear)
class LDRLinear(FromDenseLinear, nn.Module):
    """Linear layer with a Toeplitz-like weight of displacement rank ``rank``."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        require(in_features >= 1 and out_features >= 1, name,
                f"sizes must be >= 1, got in={in_features}, out={out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.n = next_power_of_two(max(in_features, out_features))
        require(isinstance(rank, int) and 1 <= rank <= self.n, name,
                f"rank must be an integer in [1, {self.n}] (n={self.n}), got {rank!r}")
        self.rank = rank
        # Entries of W sum r·n products g·h: this std gives them variance ~ 1 / in_features.
        std = (rank * self.n * in_features) ** -0.25
        self.G = nn.Parameter(torch.randn(rank, self.n) * std)
        self.H = nn.Parameter(torch.randn(rank, self.n) * std)
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ldr_product(x, self.G, self.H, self.out_features)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out_features, in_features) weight matrix."""
        full = (f_circulant(self.G, 1.0) @ f_circulant(self.H, -1.0)).sum(0)
        return full[: self.out_features, : self.in_features]

    def init_from_dense(self, weight: torch.Tensor, bias: torch.Tensor | None,
                        steps: int = 100) -> float:
        """Least-squares fit of G, H to a dense weight (on its unpadded entries) by L-BFGS.

        The structure is bilinear in (G, H), so there is no closed form; returns the relative
        Frobenius error of the fit.
        """
        target = weight.detach().to(self.G.dtype)
        identity = torch.eye(self.in_features, dtype=self.G.dtype)
        optimizer = torch.optim.LBFGS([self.G, self.H], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (ldr_product(identity, self.G, self.H, self.out_features).T - target).pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)
            error = (self.dense_weight() - target).norm() / target.norm().clamp_min(1e-12)
        self.G.grad = self.H.grad = None
        return float(error)


    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, n={self.n}")
