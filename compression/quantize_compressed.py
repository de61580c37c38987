"""int8 storage of hashed and codebook layers (docs/ops.md, "int8 storage"): the buckets or the codebook are
quantized per tensor, q = clamp(round(v / s), −127, 127) with s = max|v| / 127, and decode into the int8
weight Wq (a bucket times its sign, or a codebook entry; 0 where a sparse codebook layer is pruned), whose
per-output-channel scale is s·g, g the factor of a BatchNorm folded into the conv (1 without one).

``FakeQuantCompressed`` is the layer while it is calibrated or trained with fake quant (the stored values
fake-quantized per tensor, straight-through gradients); ``convert`` makes it a ``QuantHashedLinear``,
``QuantHashedConv2d``, ``QuantCodebookLinear`` or ``QuantCodebookConv2d``. Functional hashing (num_hashes > 1)
and a hashed bias cannot be stored this way, nor a conv whose BatchNorm factor is <= 0 (a negative weight scale):
those layers stay float, as circulant, LDR and hyper layers do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .codebook import BITS, MAX_CODEBOOK, CodebookConv2d, CodebookError, CodebookLinear, check_codebook, decode_torch
from .common import set_conv_geometry
from .hashed import HashedConv2d, HashedLinear, decode_virtual
from .hashing import hash_indices
from .quantize import (
    SMALLEST_SCALE,
    WEIGHT_MAX,
    FakeQuantLayer,
    QuantizeError,
    _channel_view,
    _QuantLayer,
    _sequentials,
)

HASHED = (HashedLinear, HashedConv2d)
CODEBOOK = (CodebookLinear, CodebookConv2d)


def storage_scale(values: torch.Tensor) -> torch.Tensor:
    """The per-tensor scale of buckets / a codebook: max |v| / 127 (a float32 scalar)."""
    return (values.detach().abs().max() / WEIGHT_MAX).clamp(min=SMALLEST_SCALE).float()


def quantize_storage(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 buckets / codebook: round(v / s) clamped to −127..127."""
    return torch.round(values.detach() / scale).clamp(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8)


def unstorable_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` (hashed / codebook) cannot hold int8 buckets / codebook, with what is valid; None if it can."""
    if isinstance(layer, HASHED) and layer.num_hashes != 1:
        return (f"{type(layer).__name__} with num_hashes={layer.num_hashes} (functional hashing decodes through a "
                "float reconstruction MLP) cannot store int8 buckets; valid: num_hashes=1 (HashedNets)")
    if isinstance(layer, HASHED) and layer.hashed_bias:
        return (f"{type(layer).__name__} with hashed_bias=True cannot store int8 buckets (the int8 bias grid needs "
                "a float bias); valid: hashed_bias=False")
    if isinstance(layer, (HashedConv2d, CodebookConv2d)) and isinstance(layer.padding, str):
        return f"padding={layer.padding!r}; int8 convs need numeric zero padding"
    return None


def check_storable(name: str, layer: nn.Module) -> None:
    """QuantizeError unless ``layer`` (hashed / codebook) can hold int8 buckets / codebook."""
    reason = unstorable_reason(layer)
    if reason is not None:
        raise QuantizeError(f"layer {name!r}: {reason}")


def storable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The hashed / codebook layers of ``model`` (exact types) that can store int8 values; the others (functional
    hashing, a hashed bias) stay float, as circulant, LDR and hyper layers do."""
    return {name: m for name, m in model.named_modules()
            if type(m) in QUANT_COMPRESSED and name and unstorable_reason(m) is None}


def fold_compressed_batchnorms(model: nn.Module) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], set[str]]:
    """Each BatchNorm2d that directly follows a hashed / codebook conv in an nn.Sequential becomes nn.Identity,
    in place; returns ({conv name: (factor g = gamma / sqrt(var + eps), folded bias)}, the convs left float). g
    becomes part of the channel's weight scale (the stored values are shared), so it must be > 0 on every
    channel: a conv whose BatchNorm has a factor <= 0 keeps both float."""
    folded, kept_float = {}, set()
    for prefix, sequential in _sequentials(model):
        children = list(sequential.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (type(conv) in (HashedConv2d, CodebookConv2d) and unstorable_reason(conv) is None
                    and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
                    and bn.num_features == conv.out_channels):
                continue
            with torch.no_grad():
                factor = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    factor = factor * bn.weight
                if not bool((factor > 0).all()):
                    kept_float.add(prefix + conv_name)
                    continue
                bias = conv.dense_bias()
                bias = torch.zeros_like(bn.running_mean) if bias is None else bias.detach()
                shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(factor)
                folded[prefix + conv_name] = (factor.float(), ((bias - bn.running_mean) * factor + shift).float())
            setattr(sequential, bn_name, nn.Identity())
    return folded, kept_float


class FakeQuantCompressed(FakeQuantLayer):
    """A hashed / codebook layer while it is calibrated (``observing``) or trained with fake quant (QAT): the
    buckets / codebook fake-quantized per tensor (straight-through), the decoded weight times the folded
    BatchNorm factor per output channel, the bias (folded) a parameter of this wrapper."""

    def __init__(self, layer: nn.Module, relu: bool, observer: str, percentile: float,
                 folded: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__(layer, relu, observer, percentile)
        rows = layer.rows if isinstance(layer, HASHED) else layer.weight_shape[0]
        factor, bias = folded if folded is not None else (torch.ones(rows), layer.dense_bias())
        self.register_buffer("factor", factor.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        layer.bias = None  # this wrapper holds the (folded) bias
        if isinstance(layer, CODEBOOK):  # trainable codebook entries (QAT), a buffer in the layer
            layer.codebook = nn.Parameter(layer.codebook.detach().clone())

    def stored(self) -> torch.Tensor:
        """The float buckets / codebook."""
        return self.layer.buckets if isinstance(self.layer, HASHED) else self.layer.codebook

    def decode(self, values: torch.Tensor) -> torch.Tensor:
        """The layer's weight [out, ...] decoded from ``values`` in place of its buckets / codebook."""
        layer = self.layer
        if isinstance(layer, HASHED):
            weight = decode_virtual(values, None, layer.hash_index, layer.hash_sign)
            shape = ((layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
                     if isinstance(layer, HashedConv2d) else (layer.rows, layer.fan_in))
            return weight.view(shape)
        return decode_torch(values, layer.indices, layer.weight_shape, int(layer.bits), layer.row_ptr, layer.col_gaps)

    def weight(self) -> torch.Tensor:
        values = self.stored()
        if self.fake:
            values = torch.fake_quantize_per_tensor_affine(values, float(storage_scale(values)), 0, -WEIGHT_MAX,
                                                           WEIGHT_MAX)
        weight = self.decode(values)
        return weight * _channel_view(self.factor, weight)

    def layer_bias(self) -> torch.Tensor | None:
        return self.bias

    def quant_layer(self, spec: dict) -> nn.Module:
        return QUANT_COMPRESSED[type(self.layer)].from_compressed(self.layer, **spec)


class _QuantStored(_QuantLayer):
    """An int8 layer whose int8 weight is decoded from int8 buckets / a codebook (``weight`` is computed)."""

    def set_quantization(self, layer: FakeQuantCompressed) -> None:
        """int8 buckets / codebook and the weight scales s·g from a calibrated / QAT-trained wrapper."""
        scale = storage_scale(layer.stored())
        self.store(quantize_storage(layer.stored(), scale))
        scales = (scale * layer.factor).float()
        self.weight_scale.copy_(scales)
        self._set_activations(layer, scales)


class _QuantHashed(_QuantStored):
    """int8 buckets [B] and the hash of every weight (non-persistent, rebuilt from ``seed``)."""

    def _init_hashed(self, shape: tuple[int, ...], num_buckets: int, seed: int, signed: bool, bias: bool,
                     relu: bool, input_quantized: bool) -> None:
        if not (isinstance(num_buckets, int) and num_buckets >= 1):
            raise QuantizeError(f"{type(self).__name__}: num_buckets={num_buckets!r}; valid: an int >= 1")
        self.weight_shape, self.seed, self.signed = tuple(shape), int(seed), bool(signed)
        self.rows, self.fan_in = shape[0], int(np.prod(shape[1:]))
        self._init_buffers(shape[0], bias, relu, input_quantized)
        self.register_buffer("buckets", torch.zeros(num_buckets, dtype=torch.int8))
        index, sign = hash_indices(self.rows, self.fan_in, num_buckets, self.seed, 1, self.signed)
        self.register_buffer("hash_index", index.reshape(-1), persistent=False)
        self.register_buffer("hash_sign", sign.reshape(-1), persistent=False)

    def store(self, q: torch.Tensor) -> None:
        self.buckets.copy_(q)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        value = state_dict.get(prefix + "buckets")
        if value is not None and not (isinstance(value, torch.Tensor) and value.dtype == torch.int8
                                      and value.shape == self.buckets.shape and int(value.min()) >= -WEIGHT_MAX):
            raise QuantizeError(f"{type(self).__name__} {prefix.rstrip('.') or '(state)'}: state "
                                f"{prefix + 'buckets'!r} must be int8 of shape {list(self.buckets.shape)} with values "
                                f"in -127..127, got {getattr(value, 'dtype', type(value).__name__)} of shape "
                                f"{list(getattr(value, 'shape', []))}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight: Wq[o, j] = q_b[h(o, j)] · sign(o, j)."""
        return (self.buckets.index_select(0, self.hash_index) * self.hash_sign).view(self.weight_shape)

    def extra_repr(self) -> str:
        return f", buckets={self.buckets.numel()}, seed={self.seed}, signed={self.signed}" + super().extra_repr()


class QuantHashedLinear(_QuantHashed):
    """An int8 HashedLinear: int8 buckets, per-channel weight scales, per-tensor activations."""

    def __init__(self, in_features: int, out_features: int, *, num_buckets: int, seed: int = 0, signed: bool = True,
                 bias: bool = True, relu: bool = False, input_quantized: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_hashed((out_features, in_features), num_buckets, seed, signed, bias, relu, input_quantized)

    @classmethod
    def from_compressed(cls, layer: HashedLinear, *, bias: bool | None = None, relu: bool = False,
                        input_quantized: bool = False) -> QuantHashedLinear:
        """An int8 layer of ``layer``'s shape and hash (buckets filled by ``set_quantization`` or a state dict)."""
        check_storable(type(layer).__name__, layer)
        bias = layer.bias is not None if bias is None else bias
        return cls(layer.in_features, layer.out_features, num_buckets=layer.buckets.numel(), seed=layer.seed,
                   signed=layer.signed, bias=bias, relu=relu, input_quantized=input_quantized)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + super().extra_repr()


class QuantHashedConv2d(_QuantHashed):
    """An int8 HashedConv2d (grouped and depthwise included; zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, num_buckets: int, seed: int = 0,
                 signed: bool = True, stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 relu: bool = False, input_quantized: bool = False) -> None:
        super().__init__()
        shape = set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                  QuantizeError)
        self._init_hashed(shape, num_buckets, seed, signed, bias, relu, input_quantized)

    @classmethod
    def from_compressed(cls, layer: HashedConv2d, *, bias: bool | None = None, relu: bool = False,
                        input_quantized: bool = False) -> QuantHashedConv2d:
        """An int8 layer of ``layer``'s geometry and hash (buckets filled by ``set_quantization`` or a state dict)."""
        check_storable(type(layer).__name__, layer)
        bias = layer.bias is not None if bias is None else bias
        return cls(layer.in_channels, layer.out_channels, layer.kernel_size, num_buckets=layer.buckets.numel(),
                   seed=layer.seed, signed=layer.signed, stride=layer.stride, padding=layer.padding,
                   dilation=layer.dilation, groups=layer.groups, bias=bias, relu=relu, input_quantized=input_quantized)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}") + super().extra_repr()


# the stored buffers of an int8 codebook layer and their dtypes (row_ptr / col_gaps: the sparse form only)
_CODEBOOK_BUFFERS = {"codebook": torch.int8, "indices": torch.uint8, "bits": torch.uint8}
_CSR_BUFFERS = {"row_ptr": torch.int32, "col_gaps": torch.uint8}


class _QuantCodebook(_QuantStored):
    """An int8 codebook [J] (−127..127), the layer's packed indices, bits and CSR arrays (codebook.py)."""

    def _init_codebook(self, shape: tuple[int, ...], bias: bool, relu: bool, input_quantized: bool) -> None:
        self.weight_shape = tuple(int(d) for d in shape)
        self._init_buffers(shape[0], bias, relu, input_quantized)
        self.register_buffer("codebook", torch.zeros(1, dtype=torch.int8))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("bits", torch.tensor(8, dtype=torch.uint8))
        self.register_buffer("row_ptr", None)
        self.register_buffer("col_gaps", None)

    def _adopt(self, layer: nn.Module) -> None:
        """Take ``layer``'s indices, bits and CSR arrays; the codebook becomes int8 zeros of its size."""
        self.codebook = torch.zeros(layer.codebook.numel(), dtype=torch.int8)
        for name in ("indices", "bits", "row_ptr", "col_gaps"):
            value = getattr(layer, name)
            setattr(self, name, None if value is None else value.detach().clone())

    @property
    def sparse(self) -> bool:
        return self.row_ptr is not None

    def store(self, q: torch.Tensor) -> None:
        self.codebook = q.clone()

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight: Wq = q_c[index], 0 where the sparse form stores no entry."""
        return decode_torch(self.codebook, self.indices, self.weight_shape, int(self.bits), self.row_ptr,
                            self.col_gaps)

    def prepare_state(self, state: dict, prefix: str = "") -> None:
        """Check a state dict's arrays against the codebook contract (an int8 codebook in −127..127) and
        resize the buffers to them (the codebook size, nnz, bits and form are data)."""
        where = f"{type(self).__name__} {prefix.rstrip('.') or '(state)'}"
        arrays = {}
        for name, dtype in (_CODEBOOK_BUFFERS | _CSR_BUFFERS).items():
            value = state.get(prefix + name)
            if value is None:
                continue
            if not (isinstance(value, torch.Tensor) and value.dtype == dtype):
                raise QuantizeError(f"{where}: state {prefix + name!r} is "
                                    f"{getattr(value, 'dtype', type(value).__name__)}; must be {dtype}")
            arrays[name] = value.detach().cpu().numpy()
        if all(name in arrays for name in _CODEBOOK_BUFFERS):  # a missing one is reported by the loader
            codebook, bits = arrays["codebook"], arrays["bits"]
            if bits.size != 1 or int(bits.reshape(-1)[0]) not in BITS:
                raise QuantizeError(f"{where}: state {prefix + 'bits'!r} must be one uint8 value in {list(BITS)}")
            if codebook.ndim != 1 or not 1 <= codebook.size <= MAX_CODEBOOK or int(codebook.min()) < -WEIGHT_MAX:
                raise QuantizeError(f"{where}: state {prefix + 'codebook'!r} must be 1-D int8 with 1..{MAX_CODEBOOK} "
                                    f"values in -127..127, got shape {list(codebook.shape)}")
            try:
                check_codebook(codebook.astype(np.float32), arrays["indices"], self.weight_shape,
                               int(bits.reshape(-1)[0]), arrays.get("row_ptr"), arrays.get("col_gaps"), where)
            except CodebookError as error:
                raise QuantizeError(str(error)) from None
        for name in _CODEBOOK_BUFFERS | _CSR_BUFFERS:
            value = state.get(prefix + name)
            if value is not None:
                setattr(self, name, torch.empty_like(value))
            elif name in _CSR_BUFFERS:
                setattr(self, name, None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.prepare_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f", codebook={self.codebook.numel()}, bits={int(self.bits)}, sparse={self.sparse}" + super().extra_repr()


class QuantCodebookLinear(_QuantCodebook):
    """An int8 CodebookLinear (dense or sparse form): int8 codebook, per-channel weight scales."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, relu: bool = False,
                 input_quantized: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_codebook((out_features, in_features), bias, relu, input_quantized)

    @classmethod
    def from_compressed(cls, layer: CodebookLinear, *, bias: bool | None = None, relu: bool = False,
                        input_quantized: bool = False) -> QuantCodebookLinear:
        """An int8 layer with ``layer``'s indices (codebook filled by ``set_quantization`` or a state dict)."""
        bias = layer.bias is not None if bias is None else bias
        new = cls(layer.in_features, layer.out_features, bias=bias, relu=relu, input_quantized=input_quantized)
        new._adopt(layer)
        return new

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + super().extra_repr()


class QuantCodebookConv2d(_QuantCodebook):
    """An int8 CodebookConv2d (dense or sparse form; grouped and depthwise included; zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, relu: bool = False, input_quantized: bool = False) -> None:
        super().__init__()
        shape = set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                  QuantizeError)
        self._init_codebook(shape, bias, relu, input_quantized)

    @classmethod
    def from_compressed(cls, layer: CodebookConv2d, *, bias: bool | None = None, relu: bool = False,
                        input_quantized: bool = False) -> QuantCodebookConv2d:
        """An int8 layer with ``layer``'s geometry and indices (codebook filled later)."""
        check_storable(type(layer).__name__, layer)
        bias = layer.bias is not None if bias is None else bias
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=bias, relu=relu,
                  input_quantized=input_quantized)
        new._adopt(layer)
        return new

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}") + super().extra_repr()


QUANT_COMPRESSED = {HashedLinear: QuantHashedLinear, HashedConv2d: QuantHashedConv2d,
                    CodebookLinear: QuantCodebookLinear, CodebookConv2d: QuantCodebookConv2d}
INT8_STORED = tuple(QUANT_COMPRESSED.values())
