"""numpy wrappers over the C kernels: float32, C-contiguous arrays in and out, shapes checked
before any pointer reaches C (the library itself comes from loader.load)."""

from __future__ import annotations

import ctypes as C

import numpy as np

from .loader import Codebook, HashParams, Hyper, KernelError, check, load

__all__ = [
    "xxh32",
    "hash_indices",
    "hashed_decode",
    "hashed_matmul",
    "rfft",
    "irfft",
    "circulant_matmul",
    "ldr_matmul",
    "codebook_decode",
    "sparse_codebook_matmul",
    "hyper_decode",
    "dense_matmul",
    "variants",
    "variant",
    "set_variant",
    "use_variant",
    "mfcc",
]

_vp = C.c_void_p


def _f32(a, name: str, ndim: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if ndim is not None and arr.ndim != ndim:
        raise KernelError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(_vp)


def _batch(x, name: str = "x") -> tuple[np.ndarray, tuple[int, ...]]:
    """x[..., in] -> (x2d[N, in], leading shape)."""
    arr = _f32(x, name)
    if arr.ndim < 1:
        raise KernelError(f"{name} must have at least 1 dimension (…, in_features)")
    return arr.reshape(-1, arr.shape[-1]) if arr.size else arr.reshape(0, arr.shape[-1]), arr.shape[:-1]


def _opt(bias, name: str = "bias") -> np.ndarray | None:
    return None if bias is None else _f32(bias, name, 1)


# ---- variants ----------------------------------------------------------------------------------
def variants() -> list[str]:
    """Kernel variants usable on this CPU, reference first (e.g. ['ref', 'avx2'])."""
    lib = load()
    return [lib.ep_variant_name(i).decode() for i in range(lib.ep_variant_count())]


def variant() -> str:
    """The active variant."""
    return load().ep_variant().decode()


def set_variant(name: str) -> None:
    """Select a variant by name ('ref', 'avx2', 'neon' or 'auto') for the whole process."""
    check(load().ep_set_variant(name.encode()))


class use_variant:
    """Context manager: ``with use_variant("ref"): ...`` restores the previous variant after."""

    def __init__(self, name: str) -> None:
        self.name, self.prev = name, None

    def __enter__(self) -> use_variant:
        self.prev = variant()
        set_variant(self.name)
        return self

    def __exit__(self, *exc) -> None:
        set_variant(self.prev)


# ---- hashing -----------------------------------------------------------------------------------
def xxh32(data: bytes, seed: int = 0) -> int:
    """XXH32 of ``data`` (bit-exact with ``xxhash.xxh32_intdigest``)."""
    data = bytes(data)
    return int(load().ep_xxh32(data, len(data), seed & 0xFFFFFFFF))


def _hp(rows: int, cols: int, buckets: int, seed: int, num_hashes: int, signed: bool) -> HashParams:
    return HashParams(rows, cols, buckets, num_hashes, seed & 0xFFFFFFFF, int(bool(signed)))


def hash_indices(
    rows: int, cols: int, buckets: int, seed: int = 0, num_hashes: int = 1, signed: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Bucket indices (int32) and signs (int8) of shape (num_hashes, rows, cols)."""
    p = _hp(rows, cols, buckets, seed, num_hashes, signed)
    n = max(rows, 0) * max(cols, 0) * max(num_hashes, 0)
    idx, sign = np.empty(max(n, 1), np.int32), np.empty(max(n, 1), np.int8)
    check(load().ep_hash_indices(C.byref(p), _ptr(idx), _ptr(sign)))
    shape = (rows, cols, num_hashes)
    return (
        np.moveaxis(idx[:n].reshape(shape), 2, 0).copy(),
        np.moveaxis(sign[:n].reshape(shape), 2, 0).copy(),
    )


def _recon(recon, num_hashes: int) -> tuple[np.ndarray | None, int]:
    if recon is None:
        return None, 0
    r = _f32(recon, "recon").reshape(-1)
    return r, r.size


def hashed_decode(
    buckets, rows: int, cols: int, *, seed: int = 0, num_hashes: int = 1, signed: bool = True, recon=None
) -> np.ndarray:
    """The virtual matrix V[rows, cols] of a hashed layer."""
    b = _f32(buckets, "buckets", 1)
    r, rlen = _recon(recon, num_hashes)
    p = _hp(rows, cols, b.size, seed, num_hashes, signed)
    out = np.empty((max(rows, 1), max(cols, 1)), np.float32)
    check(load().ep_hashed_decode(C.byref(p), _ptr(b), _ptr(r), rlen, _ptr(out)))
    return out


def hashed_matmul(
    x,
    buckets,
    rows: int,
    cols: int,
    *,
    seed: int = 0,
    num_hashes: int = 1,
    signed: bool = True,
    recon=None,
    bias=None,
    mode: str = "expand",
) -> np.ndarray:
    """y = x·Vᵀ + bias with V hashed from ``buckets``; mode 'expand' (decode once) or 'stream'."""
    lib = load()
    b, bias = _f32(buckets, "buckets", 1), _opt(bias)
    r, rlen = _recon(recon, num_hashes)
    x2, lead = _batch(x)
    p = _hp(rows, cols, b.size, seed, num_hashes, signed)
    if bias is not None and bias.size != rows:
        raise KernelError(f"bias has {bias.size} elements; must equal rows={rows}")
    if x2.shape[1] != cols:
        raise KernelError(f"x has {x2.shape[1]} features; the hashed layer takes cols={cols}")
    y = np.empty((x2.shape[0], max(rows, 1)), np.float32)
    if mode == "stream":
        check(
            lib.ep_hashed_matmul_stream(
                C.byref(p), _ptr(b), _ptr(r), rlen, _ptr(x2), x2.shape[0], _ptr(bias), _ptr(y)
            )
        )
    elif mode == "expand":
        plan = _vp()
        check(lib.ep_hashed_plan_create(C.byref(p), _ptr(b), _ptr(r), rlen, C.byref(plan)))
        try:
            check(lib.ep_hashed_matmul_expand(plan, _ptr(x2), x2.shape[0], cols, _ptr(bias), _ptr(y), rows))
        finally:
            lib.ep_hashed_plan_destroy(plan)
    else:
        raise KernelError(f"mode must be 'expand' or 'stream', got {mode!r}")
    return y.reshape(*lead, rows)


# ---- dense / FFT / structured ------------------------------------------------------------------
def dense_matmul(x, W, bias=None) -> np.ndarray:
    """y = x·Wᵀ + bias, W[rows, cols]."""
    w, bias = _f32(W, "W", 2), _opt(bias)
    x2, lead = _batch(x)
    if x2.shape[1] != w.shape[1]:
        raise KernelError(f"x has {x2.shape[1]} features but W has {w.shape[1]} columns")
    if bias is not None and bias.size != w.shape[0]:
        raise KernelError(f"bias has {bias.size} elements; must equal W rows={w.shape[0]}")
    y = np.empty((x2.shape[0], max(w.shape[0], 1)), np.float32)
    check(
        load().ep_dense_matmul(_ptr(x2), x2.shape[0], w.shape[1], _ptr(w), w.shape[0], _ptr(bias), _ptr(y))
    )
    return y.reshape(*lead, w.shape[0])


def _rfft_plan(n: int):
    plan = _vp()
    check(load().ep_rfft_plan_create(n, C.byref(plan)))
    return plan


def rfft(x) -> np.ndarray:
    """numpy.fft.rfft over the last axis (power-of-two length >= 4), complex64 output."""
    lib = load()
    x2, lead = _batch(x)
    n = x2.shape[1]
    plan = _rfft_plan(n)
    out = np.empty((x2.shape[0], n // 2 + 1), np.complex64)
    try:
        for k in range(x2.shape[0]):
            check(lib.ep_rfft(plan, n, _ptr(x2[k]), out[k].ctypes.data_as(_vp)))
    finally:
        lib.ep_rfft_plan_destroy(plan)
    return out.reshape(*lead, n // 2 + 1)


def irfft(X, n: int) -> np.ndarray:
    """numpy.fft.irfft(X, n) over the last axis (X has n/2+1 bins), float32 output."""
    lib = load()
    arr = np.ascontiguousarray(np.asarray(X, dtype=np.complex64))
    if arr.ndim < 1 or arr.shape[-1] != n // 2 + 1:
        raise KernelError(f"X must have n/2+1 = {n // 2 + 1} bins in its last axis, got shape {arr.shape}")
    X2 = arr.reshape(-1, arr.shape[-1])
    plan = _rfft_plan(n)
    out = np.empty((X2.shape[0], n), np.float32)
    try:
        for k in range(X2.shape[0]):
            check(lib.ep_irfft(plan, n, X2[k].ctypes.data_as(_vp), _ptr(out[k])))
    finally:
        lib.ep_rfft_plan_destroy(plan)
    return out.reshape(*arr.shape[:-1], n)


def circulant_matmul(x, blocks, out_features: int, bias=None) -> np.ndarray:
    """Block-circulant y = x_pad·W_fullᵀ[:, :out] + bias, blocks[p, q, b]."""
    lib = load()
    bl, bias = _f32(blocks, "blocks", 3), _opt(bias)
    x2, lead = _batch(x)
    p, q, b = bl.shape
    plan = _vp()
    check(lib.ep_circulant_plan_create(p, q, b, _ptr(bl), x2.shape[1], out_features, C.byref(plan)))
    try:
        if bias is not None and bias.size != out_features:
            raise KernelError(f"bias has {bias.size} elements; must equal out_features={out_features}")
        y = np.empty((x2.shape[0], out_features), np.float32)
        check(
            lib.ep_circulant_matmul(
                plan, _ptr(x2), x2.shape[0], x2.shape[1], _ptr(bias), _ptr(y), out_features
            )
        )
    finally:
        lib.ep_circulant_plan_destroy(plan)
    return y.reshape(*lead, out_features)


def ldr_matmul(x, G, H, out_features: int, bias=None) -> np.ndarray:
    """Low-displacement-rank y = x_pad·Wᵀ[:, :out] + bias, W = Σᵢ Z₁(gᵢ)·Z₋₁(hᵢ)."""
    lib = load()
    g, h, bias = _f32(G, "G", 2), _f32(H, "H", 2), _opt(bias)
    if g.shape != h.shape:
        raise KernelError(f"G {g.shape} and H {h.shape} must have the same shape [r, n]")
    x2, lead = _batch(x)
    r, n = g.shape
    plan = _vp()
    check(lib.ep_ldr_plan_create(r, n, _ptr(g), _ptr(h), x2.shape[1], out_features, C.byref(plan)))
    try:
        if bias is not None and bias.size != out_features:
            raise KernelError(f"bias has {bias.size} elements; must equal out_features={out_features}")
        y = np.empty((x2.shape[0], out_features), np.float32)
        check(lib.ep_ldr_matmul(plan, _ptr(x2), x2.shape[0], x2.shape[1], _ptr(bias), _ptr(y), out_features))
    finally:
        lib.ep_ldr_plan_destroy(plan)
    return y.reshape(*lead, out_features)


def _int_array(x, name: str, dtype) -> np.ndarray:
    """``x`` as a flat contiguous ``dtype`` array; integers only, every value in dtype's range (a cast
    would silently wrap 257 to 1)."""
    a = np.asarray(x)
    info = np.iinfo(dtype)
    if a.size and a.dtype.kind not in "iu":
        raise KernelError(f"input '{name}' has dtype {a.dtype}; must be integers in [{info.min}, {info.max}]")
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise KernelError(f"input '{name}' has values in [{a.min()}, {a.max()}]; every value must be in "
                          f"[{info.min}, {info.max}] ({np.dtype(dtype).name})")
    return np.ascontiguousarray(a.astype(dtype).ravel())


def _codebook(rows: int, cols: int, codebook, indices, row_ptr, col_gaps, bits: int) -> tuple[Codebook, list]:
    """The ep_codebook over contiguous copies of the arrays (kept alive in the returned list); the C
    side checks every rule of the contract."""
    arrays = [_f32(codebook, "codebook", 1), _int_array(indices, "indices", np.uint8)]
    if (row_ptr is None) != (col_gaps is None):
        raise KernelError("give both row_ptr and col_gaps (the sparse form) or neither (the dense form)")
    if row_ptr is not None:
        arrays += [_int_array(row_ptr, "row_ptr", np.int32), _int_array(col_gaps, "col_gaps", np.uint8)]
    w = Codebook(rows, cols, bits, _ptr(arrays[0]), arrays[0].size, _ptr(arrays[1]), arrays[1].size)
    if row_ptr is not None:  # numpy gives even an empty array a data pointer: the sparse form stays
        w.row_ptr, w.row_ptr_len = _ptr(arrays[2]), arrays[2].size
        w.col_gaps, w.col_gaps_len = _ptr(arrays[3]), arrays[3].size
    return w, arrays


def codebook_decode(shape, codebook, indices, row_ptr=None, col_gaps=None, bits: int = 8) -> np.ndarray:
    """W of ``shape`` from a CodebookWeight's inputs (dense form, or sparse with row_ptr and col_gaps)."""
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1:
        raise KernelError(f"shape {shape} must have at least one dim, each >= 1")
    rows, cols = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    w, keep = _codebook(rows, cols, codebook, indices, row_ptr, col_gaps, bits)
    W = np.empty(shape, np.float32)
    check(load().ep_codebook_decode(C.byref(w), _ptr(W)))
    del keep
    return W


def sparse_codebook_matmul(x, codebook, indices, row_ptr, col_gaps, out_features: int, bits: int = 8,
                           bias=None) -> np.ndarray:
    """SparseCodebookMatMul's y = x·Wᵀ + bias straight from the sparse form (W is out × in)."""
    lib = load()
    x2, lead = _batch(x)
    bias = _opt(bias)
    if bias is not None and bias.size != out_features:
        raise KernelError(f"bias has {bias.size} elements; must equal out_features={out_features}")
    w, keep = _codebook(out_features, x2.shape[1], codebook, indices, row_ptr, col_gaps, bits)
    plan = _vp()
    check(lib.ep_codebook_plan_create(C.byref(w), C.byref(plan)))
    try:
        y = np.empty((x2.shape[0], out_features), np.float32)
        check(lib.ep_sparse_codebook_matmul(plan, _ptr(x2), x2.shape[0], x2.shape[1], _ptr(bias), _ptr(y),
                                            out_features))
    finally:
        lib.ep_codebook_plan_destroy(plan)
    del keep
    return y.reshape(*lead, out_features)


def hyper_decode(indices, center, side, scales, *, shape, points: int, group: int = 2, rings: int = 0,
                 bits: int) -> np.ndarray:
    """W of ``shape`` from a HyperWeight's inputs (``scales`` None when absent); the C side checks
    every rule of the contract, so this is the C decoder at load, bit for bit."""
    for name, value in {"points": points, "group": group, "rings": rings, "bits": bits}.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
                or not -2**31 <= value < 2**31:
            raise KernelError(f"attribute '{name}' = {value!r}; must be an int32 (the contract's range is "
                              "checked by the kernel)")
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1:
        raise KernelError(f"shape {shape} must have at least one dim, each >= 1")
    given = {"indices": (indices, np.uint8), "center": (center, np.float32), "side": (side, np.float32)}
    if scales is not None:
        given["scales"] = (scales, np.float32)
    for name, (value, dtype) in given.items():
        if not isinstance(value, np.ndarray) or value.dtype != dtype:
            found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise KernelError(f"input '{name}' has dtype {found}; must be a {np.dtype(dtype).name} numpy array")
    arrays = [np.ascontiguousarray(indices).ravel(), _f32(center, "center", 1), _f32(side, "side", 1)]
    if scales is not None:
        arrays.append(_f32(scales, "scales", 1))
    w = Hyper(int(np.prod(shape, dtype=np.int64)), points, group, rings, bits, _ptr(arrays[0]), arrays[0].size,
              _ptr(arrays[1]), arrays[1].size, _ptr(arrays[2]), arrays[2].size)
    if scales is not None:  # numpy gives even an empty array a data pointer
        w.has_scales, w.scales, w.scales_len = 1, _ptr(arrays[3]), arrays[3].size
    W = np.empty(shape, np.float32)
    check(load().ep_hyper_decode(C.byref(w), _ptr(W)))
    del arrays
    return W


# ---- MFCC front end (include/edgepack/mfcc.h) ------------------------------------------------
class MFCCConfig(C.Structure):
    """``ep_mfcc_config``: the front end's parameters (field names as kws.frontend.MFCCConfig's)."""

    _fields_ = [(name, C.c_int32) for name in ("sample_rate", "window_length", "hop_length", "fft_length",
                                               "num_mel_bins", "num_coefficients")] + \
               [(name, C.c_float) for name in ("lower_hz", "upper_hz", "log_offset")]


_MFCC_DECLARED = False


def _mfcc_lib() -> C.CDLL:
    """The library with the ep_mfcc_* signatures declared (once)."""
    global _MFCC_DECLARED
    lib = load()
    if not _MFCC_DECLARED:
        sig = {"ep_mfcc_default_config": (None, [C.POINTER(MFCCConfig)]),
               "ep_mfcc_plan_create": (C.c_int, [C.POINTER(MFCCConfig), C.POINTER(_vp)]),
               "ep_mfcc_plan_destroy": (None, [_vp]),
               "ep_mfcc_num_frames": (C.c_int64, [_vp, C.c_int64]),
               "ep_mfcc": (C.c_int, [_vp, _vp, C.c_int64, _vp, C.c_int64])}
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _MFCC_DECLARED = True
    return lib


def mfcc_config(**fields) -> MFCCConfig:
    """ep_mfcc_default_config's values with ``fields`` (e.g. num_coefficients=13) replaced."""
    config = MFCCConfig()
    _mfcc_lib().ep_mfcc_default_config(C.byref(config))
    for name, value in fields.items():
        if name not in dict(MFCCConfig._fields_):
            raise KernelError(f"unknown MFCC config field {name!r}; valid: {', '.join(dict(MFCCConfig._fields_))}")
        setattr(config, name, value)
    return config


def mfcc(audio, **config) -> np.ndarray:
    """The C front end: float audio [..., samples] → MFCC [..., frames, num_coefficients] float32;
    ``config``: ep_mfcc_config fields that differ from the defaults (16 kHz, 49 × 10 per second)."""
    lib = _mfcc_lib()
    x2, lead = _batch(audio, "audio")
    plan = _vp()
    check(lib.ep_mfcc_plan_create(C.byref(mfcc_config(**config)), C.byref(plan)))
    try:
        frames = lib.ep_mfcc_num_frames(plan, x2.shape[1])
        coefficients = config.get("num_coefficients", mfcc_config().num_coefficients)
        out = np.empty((x2.shape[0], frames, coefficients), np.float32)
        for k in range(x2.shape[0]):
            check(lib.ep_mfcc(plan, _ptr(x2[k]), x2.shape[1], _ptr(out[k]), out[k].size))
    finally:
        lib.ep_mfcc_plan_destroy(plan)
    return out.reshape(*lead, frames, coefficients)
