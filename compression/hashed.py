"""HashedNets and Functional Hashing layers: every weight is fetched by hash from a small bucket array.

``num_hashes=1`` is HashedNets (Chen et al. 2015): V_ij = ξ(i,j)·w[h(i,j)].
``num_hashes=K>1`` is Functional Hashing (Shi et al. 2016): K signed bucket values feed a small
reconstruction MLP shared by the layer, V_ij = g(ξ₁w[h₁], …, ξ_K w[h_K]), trained jointly.
The reconstruction MLP is stored as one flat vector ``recon`` = [W1 (H×K), b1 (H), W2 (H), b2],
the layout the C kernels and the ONNX ops read.

Memory: the hash of every virtual weight is computed once and cached as an int32 bucket index
and an int8 sign (5 bytes per weight and hash, non-persistent buffers rebuilt from ``seed``),
not as an int64 index tensor.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import FromDenseLinear, require
from .hashing import hash_indices
from .registry import register_method


def decode_virtual(buckets: torch.Tensor, recon: torch.Tensor | None, index: torch.Tensor,
                   sign: torch.Tensor) -> torch.Tensor:
    """Flat virtual weights from buckets, given hash ``index`` and ``sign`` of shape (K, M)."""
    k = index.shape[0]
    values = buckets.index_select(0, index.reshape(-1)).view(k, -1) * sign
    if recon is None:
        return values[0]
    h = (recon.numel() - 1) // (k + 2)
    w1, b1, w2, b2 = torch.split(recon, [h * k, h, h, 1])
    hidden = torch.addmm(b1[:, None], w1.view(h, k), values).relu_()  # (H, M)
    return w2 @ hidden + b2


class _HashedLayer(nn.Module):
    """Shared state of the hashed layers: buckets, reconstruction MLP, hash caches, bias."""

    def __init__(self, rows: int, cols: int, *, ratio: float, num_hashes: int, seed: int,
                 signed: bool, bias: bool, hashed_bias: bool, recon_hidden: int) -> None:
        super().__init__()
        name = type(self).__name__
        require(isinstance(ratio, (int, float)) and 0 < ratio <= 1, name,
               f"ratio must be in (0, 1], got {ratio!r}")
        require(isinstance(num_hashes, int) and num_hashes >= 1, name,
               f"num_hashes must be an integer >= 1, got {num_hashes!r}")
        require(isinstance(recon_hidden, int) and recon_hidden >= 1, name,
               f"recon_hidden must be an integer >= 1, got {recon_hidden!r}")
        require(isinstance(seed, int) and 0 <= seed < 2**32, name,
               f"seed must be an integer in [0, 2**32), got {seed!r}")
        require(rows >= 1 and cols >= 1, name, f"sizes must be >= 1, got {rows}x{cols}")
        self.rows, self.fan_in = rows, cols
        self.num_hashes, self.seed, self.signed = num_hashes, seed, signed
        self.hashed_bias = bias and hashed_bias
        # A hashed bias is one more column (j = fan_in) of the same virtual matrix.
        self.virtual_cols = cols + int(self.hashed_bias)
        num_buckets = max(1, math.ceil(ratio * rows * self.virtual_cols))
        bound = 1.0 / math.sqrt(cols)
        self.buckets = nn.Parameter(torch.empty(num_buckets).uniform_(-bound, bound))
        recon = self._identity_recon(recon_hidden) if num_hashes > 1 else None
        self.register_parameter("recon", None if recon is None else nn.Parameter(recon))
        self.bias = (nn.Parameter(torch.empty(rows).uniform_(-bound, bound))
                     if bias and not hashed_bias else None)
        index, sign = hash_indices(rows, self.virtual_cols, num_buckets, seed, num_hashes, signed)
        self.register_buffer("hash_index", index.view(num_hashes, -1), persistent=False)
        self.register_buffer("hash_sign", sign.view(num_hashes, -1), persistent=False)

    def _identity_recon(self, hidden: int) -> torch.Tensor:
        """A reconstruction MLP that starts close to g(z) = z₁ (HashedNets), plus small noise
        on every other path so the extra hashes receive gradient from the first step."""
        k = self.num_hashes
        w1 = 0.1 * torch.randn(hidden, k)
        w2 = 0.1 * torch.randn(hidden)
        if hidden >= 2:
            w1[:2] = 0.0
            w1[0, 0], w1[1, 0] = 1.0, -1.0
            w2[0], w2[1] = 1.0, -1.0
        return torch.cat([w1.flatten(), torch.zeros(hidden), w2, torch.zeros(1)])

    @property
    def recon_hidden(self) -> int:
        """Hidden size H of the reconstruction MLP (0 for HashedNets)."""
        return 0 if self.recon is None else (self.recon.numel() - 1) // (self.num_hashes + 2)

    def _virtual_matrix(self) -> torch.Tensor:
        """Decode the rows × virtual_cols matrix from the buckets."""
        flat = decode_virtual(self.buckets, self.recon, self.hash_index, self.hash_sign)
        return flat.view(self.rows, self.virtual_cols)

    def _weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        virtual = self._virtual_matrix()
        if self.hashed_bias:
            return virtual[:, :-1], virtual[:, -1]
        return virtual, self.bias

    @torch.no_grad()
    def init_from_dense(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Set each bucket to the signed mean of the dense weights its first hash maps to."""
        dense = weight.reshape(self.rows, self.fan_in).to(self.buckets)
        if self.hashed_bias:
            dense = torch.cat([dense, bias.to(dense)[:, None]], dim=1)
        elif self.bias is not None and bias is not None:
            self.bias.copy_(bias)
        index = self.hash_index[0].long()
        signed_values = dense.flatten() * self.hash_sign[0]
        sums = torch.zeros_like(self.buckets).index_add_(0, index, signed_values)
        counts = torch.bincount(index, minlength=self.buckets.numel()).clamp_min(1)
        self.buckets.copy_(sums / counts)
        if self.recon is not None:
            self.recon.copy_(self._identity_recon(self.recon_hidden))

    def extra_repr(self) -> str:
        return (f"buckets={self.buckets.numel()}, num_hashes={self.num_hashes}, "
                f"seed={self.seed}, signed={self.signed}, hashed_bias={self.hashed_bias}")


@register_method("hashed", nn.Linear)
class HashedLinear(FromDenseLinear, _HashedLayer):
    """A Linear layer whose out×in weights are fetched by hash from ``ceil(ratio·out·in)`` buckets."""

    def __init__(self, in_features: int, out_features: int, *, ratio: float, num_hashes: int = 1,
                 seed: int = 0, signed: bool = True, bias: bool = True, hashed_bias: bool = False,
                 recon_hidden: int = 8) -> None:
        self.in_features, self.out_features = in_features, out_features
        super().__init__(out_features, in_features, ratio=ratio, num_hashes=num_hashes, seed=seed,
                         signed=signed, bias=bias, hashed_bias=hashed_bias,
                         recon_hidden=recon_hidden)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out_features, in_features) weight matrix."""
        return self._weight_and_bias()[0]

    def dense_bias(self) -> torch.Tensor | None:
        """The bias vector (decoded from the buckets when ``hashed_bias``)."""
        return self._weight_and_bias()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weight_and_bias()
        return F.linear(x, weight, bias)


    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + \
            super().extra_repr()


@register_method("hashed", nn.Conv2d)
class HashedConv2d(_HashedLayer):
    """A Conv2d whose weights are fetched by hash; the key's j is the flattened (c_in, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, ratio: float,
                 num_hashes: int = 1, seed: int = 0, signed: bool = True, bias: bool = True,
                 hashed_bias: bool = False, recon_hidden: int = 8, stride=1, padding=0,
                 dilation=1, groups: int = 1) -> None:
        kernel_size = nn.modules.utils._pair(kernel_size)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"HashedConv2d: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups = kernel_size, groups
        self.stride, self.padding, self.dilation = stride, padding, dilation
        fan_in = in_channels // groups * kernel_size[0] * kernel_size[1]
        super().__init__(out_channels, fan_in, ratio=ratio, num_hashes=num_hashes, seed=seed,
                         signed=signed, bias=bias, hashed_bias=hashed_bias,
                         recon_hidden=recon_hidden)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (out, in/groups, kh, kw) convolution weight."""
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return self._weight_and_bias()[0].reshape(shape)

    def dense_bias(self) -> torch.Tensor | None:
        """The bias vector (decoded from the buckets when ``hashed_bias``)."""
        return self._weight_and_bias()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weight_and_bias()
        weight = weight.reshape(self.out_channels, -1, *self.kernel_size)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, initialize: bool = True, **params) -> "HashedConv2d":
        """A hashed copy of a trained ``nn.Conv2d`` (zero padding mode only)."""
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"HashedConv2d: padding_mode must be 'zeros' with numeric padding, "
                             f"got {layer.padding_mode!r} / {layer.padding!r}")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size,
                  bias=layer.bias is not None, stride=layer.stride, padding=layer.padding,
                  dilation=layer.dilation, groups=layer.groups, **params)
        if initialize:
            new.init_from_dense(layer.weight, layer.bias)
        return new

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                + super().extra_repr())
