"""Block-circulant Linear layer (CirCNN, Ding et al. 2017; Cheng et al. 2015): y = C·D·x by real FFT.

The (out × in) weight is tiled, after zero padding to (p·b) × (q·b), into b×b circulant blocks;
block (i, j) has first column ``blocks[i, j]``, so C[r, s] = c[(r − s) mod b]. Each block costs
b numbers instead of b², and its product is a circular convolution: O(b log b) by FFT.
``input_signs=True`` adds Cheng et al.'s fixed random ±1 diagonal D on the input.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import FromDenseLinear, is_power_of_two, require
from .registry import register_method


def circulant_index(b: int) -> torch.Tensor:
    """The b×b matrix of (r − s) mod b: entry (r, s) of a circulant block is c[index[r, s]]."""
    r = torch.arange(b)
    return (r[:, None] - r[None, :]) % b


def circulant_product(x: torch.Tensor, blocks: torch.Tensor, out_features: int) -> torch.Tensor:
    """(x zero-padded to q·b) · W_fullᵀ, sliced to ``out_features``, by real FFT."""
    p, q, b = blocks.shape
    x = F.pad(x, (0, q * b - x.shape[-1]))
    x_spectrum = torch.fft.rfft(x.unflatten(-1, (q, b)))  # (..., q, b/2+1)
    y_spectrum = torch.einsum("...qf,pqf->...pf", x_spectrum, torch.fft.rfft(blocks))
    return torch.fft.irfft(y_spectrum, n=b).flatten(-2)[..., :out_features]


@register_method("circulant", nn.Linear)
class CirculantLinear(FromDenseLinear, nn.Module):
    """Linear layer with a block-circulant weight of block size b (a power of two >= 4)."""

    def __init__(self, in_features: int, out_features: int, *, block_size: int, bias: bool = True,
                 input_signs: bool = False, seed: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        require(in_features >= 1 and out_features >= 1, name,
                f"sizes must be >= 1, got in={in_features}, out={out_features}")
        require(is_power_of_two(block_size) and block_size >= 4, name,
                f"block_size must be a power of two >= 4 (the kernels' FFT sizes), "
                f"got {block_size!r}")
        self.in_features, self.out_features, self.block_size = in_features, out_features, block_size
        self.p, self.q = math.ceil(out_features / block_size), math.ceil(in_features / block_size)
        bound = 1.0 / math.sqrt(in_features)
        self.blocks = nn.Parameter(torch.empty(self.p, self.q, block_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None
        signs = None
        if input_signs:
            generator = torch.Generator().manual_seed(seed)
            signs = 1 - 2 * torch.randint(0, 2, (in_features,), generator=generator,
                                          dtype=torch.int8)
        self.register_buffer("input_signs", signs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_signs is not None:
            x = x * self.input_signs
        y = circulant_product(x, self.blocks, self.out_features)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out_features, in_features) weight, C·D."""
        b = self.block_size
        full = self.blocks[:, :, circulant_index(b)]  # (p, q, b, b)
        full = full.permute(0, 2, 1, 3).reshape(self.p * b, self.q * b)
        weight = full[: self.out_features, : self.in_features]
        return weight if self.input_signs is None else weight * self.input_signs

    @torch.no_grad()
    def init_from_dense(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Least-squares projection: each block's c[d] is the mean of the real (unpadded)
        entries on its wrapped diagonal (r − s) mod b = d."""
        b = self.block_size
        if self.input_signs is not None:
            weight = weight * self.input_signs
        padded = torch.zeros(self.p * b, self.q * b, dtype=self.blocks.dtype)
        present = torch.zeros_like(padded)
        padded[: self.out_features, : self.in_features] = weight
        present[: self.out_features, : self.in_features] = 1.0
        diagonal = circulant_index(b).flatten()

        def per_diagonal(matrix: torch.Tensor) -> torch.Tensor:
            tiles = matrix.reshape(self.p, b, self.q, b).permute(0, 2, 1, 3).reshape(-1, b * b)
            sums = torch.zeros(tiles.shape[0], b, dtype=matrix.dtype)
            return sums.index_add_(1, diagonal, tiles)

        blocks = per_diagonal(padded) / per_diagonal(present).clamp_min(1.0)
        self.blocks.copy_(blocks.view(self.p, self.q, b))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)


    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, blocks=({self.p}, {self.q}), "
                f"input_signs={self.input_signs is not None}")
