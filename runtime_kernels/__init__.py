"""ctypes loader for the edgepack C kernels (libedgepack_kernels) with numpy-friendly wrappers.

The library is built by CMake (``make`` or ``pip install``) into ``runtime_kernels/lib/``;
``EDGEPACK_KERNELS_LIB`` points at another copy. Errors from C raise :class:`KernelError`
(a ``ValueError``) carrying the C message. All arrays are float32, C-contiguous.
"""

from __future__ import annotations

import ctypes as C
import os
import sys
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

from .ort_session import onnx_session, ort_library_path
from .tflite_runtime import delegate_library_path, tflite_interpreter

__all__ = [
    "KernelError",
    "library_path",
    "load",
    "xxh32",
    "hash_indices",
    "hashed_decode",
    "hashed_matmul",
    "rfft",
    "irfft",
    "circulant_matmul",
    "ldr_matmul",
    "dense_matmul",
    "variants",
    "variant",
    "set_variant",
    "use_variant",
    "onnx_session",
    "ort_library_path",
    "delegate_library_path",
    "tflite_interpreter",
]

_LIBNAME = {"darwin": "libedgepack_kernels.dylib", "win32": "edgepack_kernels.dll"}.get(
    sys.platform, "libedgepack_kernels.so"
)
_lib: C.CDLL | None = None

_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_i64 = C.c_int64
_vp = C.c_void_p


class KernelError(EdgepackError, ValueError):
    """A C kernel rejected its arguments; the message is the kernel's own."""


class _HashParams(C.Structure):
    _fields_ = [
        ("rows", _i64),
        ("cols", _i64),
        ("num_buckets", _i64),
        ("num_hashes", C.c_int32),
        ("seed", C.c_uint32),
        ("is_signed", C.c_int32),
    ]


def library_path() -> Path:
    """Where the shared library is looked for (``EDGEPACK_KERNELS_LIB`` overrides)."""
    env = os.environ.get("EDGEPACK_KERNELS_LIB")
    return Path(env) if env else Path(__file__).resolve().parent / "lib" / _LIBNAME


def load() -> C.CDLL:
    """Load (once) and return the kernel library, declaring every C signature."""
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"edgepack kernel library not found at {path}; build it with `make` at the repository "
            f"root (or `cmake -S runtime_kernels -B runtime_kernels/build && cmake --build "
            f"runtime_kernels/build`), reinstall with `pip install .`, or set EDGEPACK_KERNELS_LIB"
        )
    lib = C.CDLL(str(path))
    sig = {
        "ep_last_error": (C.c_char_p, []),
        "ep_variant_count": (C.c_int, []),
        "ep_variant_name": (C.c_char_p, [C.c_int]),
        "ep_variant": (C.c_char_p, []),
        "ep_set_variant": (C.c_int, [C.c_char_p]),
        "ep_xxh32": (C.c_uint32, [C.c_char_p, C.c_size_t, C.c_uint32]),
        "ep_hash_indices": (C.c_int, [C.POINTER(_HashParams), _vp, _vp]),
        "ep_hashed_decode": (C.c_int, [C.POINTER(_HashParams), _vp, _vp, _i64, _vp]),
        "ep_hashed_matmul_stream": (C.c_int, [C.POINTER(_HashParams), _vp, _vp, _i64, _vp, _i64, _vp, _vp]),
        "ep_hashed_plan_create": (C.c_int, [C.POINTER(_HashParams), _vp, _vp, _i64, C.POINTER(_vp)]),
        "ep_hashed_plan_destroy": (None, [_vp]),
        "ep_hashed_matmul_expand": (C.c_int, [_vp, _vp, _i64, _i64, _vp, _vp, _i64]),
        "ep_dense_matmul": (C.c_int, [_vp, _i64, _i64, _vp, _i64, _vp, _vp]),
        "ep_rfft_plan_create": (C.c_int, [_i64, C.POINTER(_vp)]),
        "ep_rfft_plan_destroy": (None, [_vp]),
        "ep_rfft": (C.c_int, [_vp, _i64, _vp, _vp]),
        "ep_irfft": (C.c_int, [_vp, _i64, _vp, _vp]),
        "ep_circulant_plan_create": (C.c_int, [_i64, _i64, _i64, _vp, _i64, _i64, C.POINTER(_vp)]),
        "ep_circulant_plan_destroy": (None, [_vp]),
        "ep_circulant_matmul": (C.c_int, [_vp, _vp, _i64, _i64, _vp, _vp, _i64]),
        "ep_ldr_plan_create": (C.c_int, [_i64, _i64, _vp, _vp, _i64, _i64, C.POINTER(_vp)]),
        "ep_ldr_plan_destroy": (None, [_vp]),
        "ep_ldr_matmul": (C.c_int, [_vp, _vp, _i64, _i64, _vp, _vp, _i64]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


def _check(status: int) -> None:
    if status != 0:
        raise KernelError(load().ep_last_error().decode(errors="replace"))


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
    _check(load().ep_set_variant(name.encode()))


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


def _hp(rows: int, cols: int, buckets: int, seed: int, num_hashes: int, signed: bool) -> _HashParams:
    return _HashParams(rows, cols, buckets, num_hashes, seed & 0xFFFFFFFF, int(bool(signed)))


def hash_indices(
    rows: int, cols: int, buckets: int, seed: int = 0, num_hashes: int = 1, signed: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Bucket indices (int32) and signs (int8) of shape (num_hashes, rows, cols)."""
    p = _hp(rows, cols, buckets, seed, num_hashes, signed)
    n = max(rows, 0) * max(cols, 0) * max(num_hashes, 0)
    idx, sign = np.empty(max(n, 1), np.int32), np.empty(max(n, 1), np.int8)
    _check(load().ep_hash_indices(C.byref(p), _ptr(idx), _ptr(sign)))
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
    _check(load().ep_hashed_decode(C.byref(p), _ptr(b), _ptr(r), rlen, _ptr(out)))
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
        _check(
            lib.ep_hashed_matmul_stream(
                C.byref(p), _ptr(b), _ptr(r), rlen, _ptr(x2), x2.shape[0], _ptr(bias), _ptr(y)
            )
        )
    elif mode == "expand":
        plan = _vp()
        _check(lib.ep_hashed_plan_create(C.byref(p), _ptr(b), _ptr(r), rlen, C.byref(plan)))
        try:
            _check(lib.ep_hashed_matmul_expand(plan, _ptr(x2), x2.shape[0], cols, _ptr(bias), _ptr(y), rows))
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
    _check(
        load().ep_dense_matmul(_ptr(x2), x2.shape[0], w.shape[1], _ptr(w), w.shape[0], _ptr(bias), _ptr(y))
    )
    return y.reshape(*lead, w.shape[0])


def _rfft_plan(n: int):
    plan = _vp()
    _check(load().ep_rfft_plan_create(n, C.byref(plan)))
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
            _check(lib.ep_rfft(plan, n, _ptr(x2[k]), out[k].ctypes.data_as(_vp)))
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
            _check(lib.ep_irfft(plan, n, X2[k].ctypes.data_as(_vp), _ptr(out[k])))
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
    _check(lib.ep_circulant_plan_create(p, q, b, _ptr(bl), x2.shape[1], out_features, C.byref(plan)))
    try:
        if bias is not None and bias.size != out_features:
            raise KernelError(f"bias has {bias.size} elements; must equal out_features={out_features}")
        y = np.empty((x2.shape[0], out_features), np.float32)
        _check(
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
    _check(lib.ep_ldr_plan_create(r, n, _ptr(g), _ptr(h), x2.shape[1], out_features, C.byref(plan)))
    try:
        if bias is not None and bias.size != out_features:
            raise KernelError(f"bias has {bias.size} elements; must equal out_features={out_features}")
        y = np.empty((x2.shape[0], out_features), np.float32)
        _check(lib.ep_ldr_matmul(plan, _ptr(x2), x2.shape[0], x2.shape[1], _ptr(bias), _ptr(y), out_features))
    finally:
        lib.ep_ldr_plan_destroy(plan)
    return y.reshape(*lead, out_features)
