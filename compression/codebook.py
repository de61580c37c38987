"""Codebook layers: every weight is an index into a small codebook (≤ 256 float32 values), stored
densely or as Deep Compression's CSR with relative column indices (soft weight-sharing, k-means or
uniform quantization, pruning masks). The format is the ``CodebookWeight`` op contract (docs/ops.md):

- ``indices``: n indices of ``bits`` ∈ {1, 2, 4, 8} bits, packed LSB first (entry k in byte
  k·bits/8 at bit (k·bits) % 8), unused high bits of the last byte 0, every index < J.
- dense: n = prod(shape), W.flat[k] = codebook[idx[k]].
- sparse: CSR over rows = shape[0], cols = prod(shape[1:]); ``row_ptr`` int32 [rows+1],
  ``col_gaps`` uint8 [n], the column of a row's m-th entry is (sum of its first m+1 gaps) − 1;
  gaps over 255 are bridged by filler entries (gap 255) pointing at codebook[0] = 0.0.

``encode_codebook`` / ``decode_codebook`` are the numpy reference; the layers decode with torch
ops that give the same bits.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgepack.errors import EdgepackError

from .common import set_conv_geometry
from .registry import register_method

BITS = (1, 2, 4, 8)
MAX_CODEBOOK = 256
MAX_GAP = 255


class CodebookError(EdgepackError, ValueError):
    """A codebook weight that breaks the CodebookWeight contract; the message names the field."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CodebookError(message)


def choose_bits(size: int) -> int:
    """The smallest of 1/2/4/8 bits that can index a codebook of ``size`` entries."""
    _check(1 <= size <= MAX_CODEBOOK, f"a codebook holds 1..{MAX_CODEBOOK} values, got {size}")
    return next(b for b in BITS if (1 << b) >= size)


def pack_indices(idx: np.ndarray, bits: int) -> np.ndarray:
    """Pack indices of ``bits`` bits each into uint8, LSB first, the last byte's high bits zero."""
    _check(bits in BITS, f"bits={bits!r}; valid: {BITS}")
    idx = np.asarray(idx, dtype=np.int64).ravel()
    _check(idx.size == 0 or (idx.min() >= 0 and idx.max() < (1 << bits)),
           f"an index does not fit in {bits} bits")
    per_byte = 8 // bits
    padded = np.zeros(-(-idx.size // per_byte) * per_byte, dtype=np.uint32)
    padded[:idx.size] = idx
    shifts = (bits * np.arange(per_byte, dtype=np.uint32))[None, :]
    return (padded.reshape(-1, per_byte) << shifts).sum(axis=1).astype(np.uint8)


def unpack_indices(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The n indices packed by ``pack_indices`` (int64)."""
    k = np.arange(n, dtype=np.int64)
    return (packed[(k * bits) // 8].astype(np.int64) >> ((k * bits) % 8)) & ((1 << bits) - 1)


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def encode_codebook(weight: np.ndarray, sparse: bool | None = None, bits: int | None = None) -> dict:
    """Encode a float32 ``weight`` of ≤ 256 distinct values (bit patterns, so -0.0 ≠ 0.0).

    Returns ``{"codebook", "indices"[, "row_ptr", "col_gaps"]}`` and ``"bits"``, ``"shape"``.
    ``sparse=None``: sparse when under half the weights are non-zero; ``bits=None``: the smallest
    width that holds the codebook. Sparse codebooks start with 0.0 (the fillers' value).
    """
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    _check(weight.ndim >= 1 and weight.size >= 1, f"weight must have at least one element and "
           f"one dim, got shape {weight.shape}")
    shape = tuple(int(d) for d in weight.shape)
    pattern = weight.view(np.uint32).ravel()
    nonzero = pattern != 0
    if sparse is None:
        sparse = 2 * int(nonzero.sum()) < pattern.size
    values = np.unique(pattern[nonzero] if sparse else pattern)
    if sparse:
        values = np.concatenate([np.zeros(1, np.uint32), values])
    _check(values.size <= MAX_CODEBOOK, f"the weight has {values.size - int(sparse)} distinct "
           f"{'non-zero ' if sparse else ''}values; a codebook holds at most {MAX_CODEBOOK}"
           f"{' (0.0 included when sparse)' if sparse else ''} (quantize or cluster it first)")
    _check(bits is None or type(bits) is int, f"bits={bits!r} ({type(bits).__name__}); bits must be an "
           f"int in {list(BITS)} or None (the smallest width that holds the codebook)")
    bits = choose_bits(values.size) if bits is None else bits
    _check(bits in BITS and (1 << bits) >= values.size,
           f"bits={bits!r} cannot index {values.size} codebook entries; valid: "
           f"{[b for b in BITS if (1 << b) >= values.size]}")
    codebook = values.view(np.float32)
    if not sparse:
        idx = np.searchsorted(values, pattern)
        return {"codebook": codebook, "indices": pack_indices(idx, bits), "bits": bits, "shape": shape}
    rows, cols = _rows_cols(shape)
    flat = pattern.reshape(rows, cols)
    r, c = np.nonzero(flat)
    idx = np.searchsorted(values, flat[r, c])
    first = np.ones(r.size, dtype=bool)
    first[1:] = r[1:] != r[:-1]
    previous = np.where(first, -1, np.concatenate([[-1], c[:-1]]))
    gaps = c - previous
    fillers = (gaps - 1) // MAX_GAP
    counts = fillers + 1
    ends = np.cumsum(counts) - 1
    _check(int(counts.sum()) < 2**31, f"{int(counts.sum())} sparse entries do not fit int32 row pointers")
    col_gaps = np.full(int(counts.sum()), MAX_GAP, dtype=np.uint8)
    col_gaps[ends] = gaps - MAX_GAP * fillers
    entry_idx = np.zeros(col_gaps.size, dtype=np.int64)
    entry_idx[ends] = idx
    per_row = np.bincount(r, weights=counts, minlength=rows).astype(np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    return {"codebook": codebook, "indices": pack_indices(entry_idx, bits), "row_ptr": row_ptr,
            "col_gaps": col_gaps, "bits": bits, "shape": shape}


def check_codebook(codebook, indices, shape, bits: int = 8, row_ptr=None, col_gaps=None,
                   where: str = "CodebookWeight") -> int:
    """Check the arrays against the contract (dtypes, lengths, index range, CSR); returns n."""
    shape = tuple(int(d) for d in shape)
    _check(len(shape) >= 1 and all(d >= 1 for d in shape), f"{where}: shape {list(shape)} must have "
           "1 or more dims, each >= 1")
    _check(isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits in BITS,
           f"{where}: attribute 'bits' = {bits!r}; valid: {list(BITS)}")
    codebook, indices = np.asarray(codebook), np.asarray(indices)
    _check(codebook.dtype == np.float32, f"{where}: codebook must be float32, got {codebook.dtype}")
    _check(codebook.ndim == 1 and 1 <= codebook.size <= MAX_CODEBOOK,
           f"{where}: codebook must be 1-D with 1..{MAX_CODEBOOK} values, got shape {list(codebook.shape)}")
    _check(indices.dtype == np.uint8 and indices.ndim == 1,
           f"{where}: indices must be 1-D uint8, got {indices.dtype} of shape {list(indices.shape)}")
    _check((row_ptr is None) == (col_gaps is None),
           f"{where}: row_ptr and col_gaps come together (the sparse form) or not at all; got only "
           f"{'row_ptr' if col_gaps is None else 'col_gaps'}")
    rows, cols = _rows_cols(shape)
    if row_ptr is None:
        n = rows * cols
    else:
        row_ptr, col_gaps = np.asarray(row_ptr), np.asarray(col_gaps)
        _check(row_ptr.dtype == np.int32 and row_ptr.shape == (rows + 1,),
               f"{where}: row_ptr must be int32 [{rows + 1}] (rows + 1), got {row_ptr.dtype} "
               f"{list(row_ptr.shape)}")
        _check(col_gaps.dtype == np.uint8 and col_gaps.ndim == 1,
               f"{where}: col_gaps must be 1-D uint8, got {col_gaps.dtype} {list(col_gaps.shape)}")
        _check(row_ptr[0] == 0, f"{where}: row_ptr[0] = {row_ptr[0]}; must be 0")
        steps = np.diff(row_ptr.astype(np.int64))
        _check(bool((steps >= 0).all()), f"{where}: row_ptr decreases at row "
               f"{int(np.argmax(steps < 0)) if steps.size else 0}; it must be non-decreasing")
        n = int(row_ptr[-1])
        _check(col_gaps.size == n, f"{where}: col_gaps has {col_gaps.size} entries; row_ptr[{rows}] "
               f"says nnz = {n}")
        _check(bool((col_gaps > 0).all()), f"{where}: a col_gaps entry is 0; every gap must be >= 1")
        last = _sparse_positions(row_ptr, col_gaps)[1]
        _check(last.size == 0 or int(last.max()) < cols,
               f"{where}: a column reaches {int(last.max()) if last.size else 0}; columns must be < {cols}")
    expected = -(-n * bits // 8)
    _check(indices.size == expected, f"{where}: indices has {indices.size} bytes; nnz = {n} entries of "
           f"{bits} bits need {expected} (an nnz that disagrees with the indices)")
    idx = unpack_indices(indices, n, bits)
    _check(idx.size == 0 or int(idx.max()) < codebook.size,
           f"{where}: index {int(idx.max()) if idx.size else 0} >= codebook size {codebook.size}")
    used = (n * bits) % 8
    _check(used == 0 or int(indices[-1]) >> used == 0,
           f"{where}: the unused high bits of the last indices byte must be 0")
    return n


def _sparse_positions(row_ptr: np.ndarray, col_gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every CSR entry (int64)."""
    counts = np.diff(row_ptr.astype(np.int64))
    rows = np.repeat(np.arange(counts.size), counts)
    running = np.cumsum(col_gaps.astype(np.int64))
    before = np.concatenate([[0], running])[row_ptr[:-1].astype(np.int64)]
    return rows, running - np.repeat(before, counts) - 1


def decode_codebook(codebook, indices, shape, bits: int = 8, row_ptr=None, col_gaps=None) -> np.ndarray:
    """W (float32, ``shape``) from the codebook form, after checking every rule of the contract."""
    n = check_codebook(codebook, indices, shape, bits, row_ptr, col_gaps)
    codebook = np.asarray(codebook)
    values = codebook[unpack_indices(np.asarray(indices), n, bits)]
    shape = tuple(int(d) for d in shape)
    if row_ptr is None:
        return values.reshape(shape)
    rows, cols = _rows_cols(shape)
    r, c = _sparse_positions(np.asarray(row_ptr), np.asarray(col_gaps))
    weight = np.zeros((rows, cols), dtype=np.float32)
    weight[r, c] = values
    return weight.reshape(shape)


def decode_torch(codebook: torch.Tensor, indices: torch.Tensor, shape, bits: int,
                 row_ptr: torch.Tensor | None = None, col_gaps: torch.Tensor | None = None) -> torch.Tensor:
    """``decode_codebook`` in torch ops (no checks): the layers' forward and the eager custom op."""
    shape = [int(d) for d in shape]
    rows, cols = shape[0], math.prod(shape[1:])
    n = rows * cols if row_ptr is None else int(row_ptr[-1])
    k = torch.arange(n, device=indices.device) * bits
    idx = (indices.long()[k // 8] >> (k % 8)) & ((1 << bits) - 1)
    values = codebook[idx]
    if row_ptr is None:
        return values.reshape(shape)
    counts = torch.diff(row_ptr.long())
    row = torch.repeat_interleave(torch.arange(rows, device=indices.device), counts)
    running = torch.cumsum(col_gaps.long(), 0)
    before = torch.cat([running.new_zeros(1), running])[row_ptr[:-1].long()]
    column = running - torch.repeat_interleave(before, counts) - 1
    weight = codebook.new_zeros(rows * cols)
    weight[row * cols + column] = values
    return weight.reshape(shape)


# The stored buffers and their dtypes: every form, and the sparse form's CSR arrays.
_FORM_BUFFERS = {"codebook": torch.float32, "indices": torch.uint8, "bits": torch.uint8}
_CSR_BUFFERS = {"row_ptr": torch.int32, "col_gaps": torch.uint8}


class _CodebookLayer(nn.Module):
    """Shared state: codebook (float32), packed indices (uint8), bits (a uint8 scalar, so a state
    dict alone says how to unpack), the CSR ``row_ptr`` / ``col_gaps`` when sparse, and the bias."""

    def __init__(self, shape: tuple[int, ...], *, bias: bool, sparse: bool, bits: int) -> None:
        super().__init__()
        _check(bits in BITS, f"{type(self).__name__}: bits={bits!r}; valid: {list(BITS)}")
        self.weight_shape = tuple(int(d) for d in shape)
        rows, cols = _rows_cols(self.weight_shape)
        n = 0 if sparse else rows * cols
        self.register_buffer("codebook", torch.zeros(1))
        self.register_buffer("indices", torch.zeros(-(-n * bits // 8), dtype=torch.uint8))
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.uint8))
        self.register_buffer("row_ptr", torch.zeros(rows + 1, dtype=torch.int32) if sparse else None)
        self.register_buffer("col_gaps", torch.zeros(0, dtype=torch.uint8) if sparse else None)
        self.register_buffer("bias", torch.zeros(rows) if bias else None)

    @property
    def sparse(self) -> bool:
        return self.row_ptr is not None

    @property
    def nnz(self) -> int:
        """Stored entries n (fillers included)."""
        return int(self.row_ptr[-1]) if self.sparse else math.prod(self.weight_shape)

    def set_encoding(self, encoded: dict, bias: torch.Tensor | None = None) -> None:
        """Adopt ``encode_codebook``'s arrays (and the bias) after checking them."""
        check_codebook(encoded["codebook"], encoded["indices"], self.weight_shape, encoded["bits"],
                       encoded.get("row_ptr"), encoded.get("col_gaps"), type(self).__name__)
        self.codebook = torch.from_numpy(np.array(encoded["codebook"], dtype=np.float32))
        self.indices = torch.from_numpy(np.array(encoded["indices"], dtype=np.uint8))
        self.bits = torch.tensor(int(encoded["bits"]), dtype=torch.uint8)
        sparse = encoded.get("row_ptr") is not None
        self.row_ptr = torch.from_numpy(np.array(encoded["row_ptr"], dtype=np.int32)) if sparse else None
        self.col_gaps = torch.from_numpy(np.array(encoded["col_gaps"], dtype=np.uint8)) if sparse else None
        if bias is not None and self.bias is not None:
            self.bias = bias.detach().to(torch.float32).clone()

    def prepare_state(self, state: dict, prefix: str = "") -> None:
        """Resize the buffers to a state dict's (its codebook size, nnz, bits and form are data),
        so ``load_state_dict`` and checkpoints rebuild a layer made without its weights. The arrays
        are checked against the contract first, so a broken state fails here, never in forward."""
        where = f"{type(self).__name__} {prefix.rstrip('.') or '(state)'}"
        arrays = {}
        for name, dtype in (_FORM_BUFFERS | _CSR_BUFFERS).items():
            value = state.get(prefix + name)
            if value is None:
                continue
            _check(isinstance(value, torch.Tensor) and value.dtype == dtype,
                   f"{type(self).__name__}: state {prefix + name!r} is "
                   f"{getattr(value, 'dtype', type(value).__name__)}; must be {dtype}")
            arrays[name] = value.detach().cpu().numpy()
        if all(name in arrays for name in _FORM_BUFFERS):  # a missing one is reported by the loader
            bits = arrays["bits"]
            _check(bits.size == 1, f"{where}: state {prefix + 'bits'!r} has shape {list(bits.shape)}; "
                   f"it must be one uint8 value in {list(BITS)}")
            check_codebook(arrays["codebook"], arrays["indices"], self.weight_shape, int(bits.reshape(-1)[0]),
                           arrays.get("row_ptr"), arrays.get("col_gaps"), where)
        for name in _FORM_BUFFERS | _CSR_BUFFERS:
            value = state.get(prefix + name)
            if value is not None:
                setattr(self, name, torch.empty_like(value))
            elif name in _CSR_BUFFERS:  # no CSR arrays: the dense form
                setattr(self, name, None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.prepare_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def dense_weight(self) -> torch.Tensor:
        """The decoded weight, bit-exactly ``decode_codebook`` of the stored arrays."""
        return decode_torch(self.codebook, self.indices, self.weight_shape, int(self.bits),
                            self.row_ptr, self.col_gaps)

    def dense_bias(self) -> torch.Tensor | None:
        return self.bias

    def extra_repr(self) -> str:
        return (f"codebook={self.codebook.numel()}, bits={int(self.bits)}, sparse={self.sparse}, "
                f"nnz={self.nnz}")


@register_method("codebook", nn.Linear)
class CodebookLinear(_CodebookLayer):
    """A Linear layer whose (out, in) weight is stored as codebook indices (dense or sparse CSR)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 sparse: bool = False, bits: int = 8) -> None:
        self.in_features, self.out_features = in_features, out_features
        super().__init__((out_features, in_features), bias=bias, sparse=bool(sparse), bits=bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear, initialize: bool = True, sparse: bool | None = None,
                   bits: int | None = None) -> CodebookLinear:
        """A codebook copy of ``layer`` (its weight must have ≤ 256 distinct values)."""
        encoded = encode_codebook(layer.weight.detach().cpu().numpy(), sparse, bits) if initialize else None
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                  sparse=bool(sparse) if encoded is None else "row_ptr" in encoded,
                  bits=(bits or 8) if encoded is None else encoded["bits"])
        if encoded is not None:
            new.set_encoding(encoded, layer.bias)
        return new

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


@register_method("codebook", nn.Conv2d)
class CodebookConv2d(_CodebookLayer):
    """A Conv2d whose (out, in/groups, kh, kw) weight is stored as codebook indices; the CSR rows
    are output channels, the columns the flattened (c_in, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, bias: bool = True,
                 sparse: bool = False, bits: int = 8, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> None:
        shape = set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                  CodebookError)
        super().__init__(shape, bias=bias, sparse=bool(sparse), bits=bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, initialize: bool = True, sparse: bool | None = None,
                   bits: int | None = None) -> CodebookConv2d:
        """A codebook copy of ``layer`` (zero padding with numeric sizes; ≤ 256 distinct weights)."""
        _check(layer.padding_mode == "zeros" and not isinstance(layer.padding, str),
               f"CodebookConv2d: padding_mode must be 'zeros' with numeric padding, got "
               f"{layer.padding_mode!r} / {layer.padding!r}")
        encoded = encode_codebook(layer.weight.detach().cpu().numpy(), sparse, bits) if initialize else None
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None,
                  sparse=bool(sparse) if encoded is None else "row_ptr" in encoded,
                  bits=(bits or 8) if encoded is None else encoded["bits"], stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        if encoded is not None:
            new.set_encoding(encoded, layer.bias)
        return new

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, " + super().extra_repr())


def codebook_layer(layer: nn.Linear | nn.Conv2d, *, sparse: bool | None = None,
                   bits: int | None = None) -> nn.Module:
    """The codebook layer that reproduces ``layer`` bit for bit (its weight: ≤ 256 distinct values).

    ``sparse=None``: CSR when under half the weights are non-zero; ``bits=None``: the smallest width
    that holds the codebook.
    """
    if isinstance(layer, nn.Linear):
        return CodebookLinear.from_dense(layer, sparse=sparse, bits=bits)
    if isinstance(layer, nn.Conv2d):
        return CodebookConv2d.from_dense(layer, sparse=sparse, bits=bits)
    raise CodebookError(f"codebook_layer takes nn.Linear or nn.Conv2d, got {type(layer).__name__}")


def to_codebook(model: nn.Module, pattern_or_names: str | list[str], sparse: bool | None = None,
                bits: int | None = None) -> nn.Module:
    """Replace (in place) the Linear / Conv2d layers whose names match the glob(s) by codebook
    layers; returns ``model``. For weights already quantized / pruned (≤ 256 distinct values)."""
    patterns = [pattern_or_names] if isinstance(pattern_or_names, str) else list(pattern_or_names)
    candidates = {name: module for name, module in model.named_modules()
                  if isinstance(module, (nn.Linear, nn.Conv2d)) and name}
    matched = [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    _check(bool(matched), f"to_codebook: {patterns} match no Linear/Conv2d layer; layers: {sorted(candidates)}")
    for name in matched:
        try:
            new_layer = codebook_layer(candidates[name], sparse=sparse, bits=bits)
        except CodebookError as error:
            raise CodebookError(f"layer {name!r}: {error}") from None
        model.set_submodule(name, new_layer)
    return model
