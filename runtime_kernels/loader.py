"""ctypes loader for libedgepack_kernels: finds it (artifacts.find_artifact), loads it once and
declares every C signature. Errors from C raise :class:`KernelError` carrying the C message."""

from __future__ import annotations

import ctypes as C
from pathlib import Path

from edgepack.errors import EdgepackError

from .artifacts import find_artifact

__all__ = ["KernelError", "HashParams", "Hyper", "check", "library_path", "load"]

_lib: C.CDLL | None = None
_i64 = C.c_int64
_vp = C.c_void_p


class KernelError(EdgepackError, ValueError):
    """A C kernel rejected its arguments; the message is the kernel's own."""


class HashParams(C.Structure):
    """``ep_hash_params``: the hashed layer's geometry and hash settings."""

    _fields_ = [
        ("rows", _i64),
        ("cols", _i64),
        ("num_buckets", _i64),
        ("num_hashes", C.c_int32),
        ("seed", C.c_uint32),
        ("is_signed", C.c_int32),
    ]


class Codebook(C.Structure):
    """``ep_codebook``: a codebook weight (docs/ops.md CodebookWeight); NULL / 0 row_ptr and
    col_gaps for the dense form."""

    _fields_ = [
        ("rows", _i64),
        ("cols", _i64),
        ("bits", C.c_int32),
        ("codebook", _vp),
        ("codebook_len", _i64),
        ("indices", _vp),
        ("indices_len", _i64),
        ("row_ptr", _vp),
        ("row_ptr_len", _i64),
        ("col_gaps", _vp),
        ("col_gaps_len", _i64),
    ]


class Hyper(C.Structure):
    """``ep_hyper``: a hyper-compressed weight (docs/ops.md HyperWeight); has_scales 0 with NULL
    scales when absent."""

    _fields_ = [
        ("weights", _i64),
        ("points", C.c_int32),
        ("group", C.c_int32),
        ("rings", C.c_int32),
        ("bits", C.c_int32),
        ("indices", _vp),
        ("indices_len", _i64),
        ("center", _vp),
        ("center_len", _i64),
        ("side", _vp),
        ("side_len", _i64),
        ("has_scales", C.c_int32),
        ("scales", _vp),
        ("scales_len", _i64),
    ]


def library_path() -> Path:
    """Where the kernel library is (``$EDGEPACK_LIB_DIR``, the package's lib/, build/host)."""
    return find_artifact("libedgepack_kernels.so")


def load() -> C.CDLL:
    """Load (once) and return the kernel library, declaring every C signature."""
    global _lib
    if _lib is not None:
        return _lib
    lib = C.CDLL(str(library_path()))
    sig = {
        "ep_last_error": (C.c_char_p, []),
        "ep_variant_count": (C.c_int, []),
        "ep_variant_name": (C.c_char_p, [C.c_int]),
        "ep_variant": (C.c_char_p, []),
        "ep_set_variant": (C.c_int, [C.c_char_p]),
        "ep_xxh32": (C.c_uint32, [C.c_char_p, C.c_size_t, C.c_uint32]),
        "ep_hash_indices": (C.c_int, [C.POINTER(HashParams), _vp, _vp]),
        "ep_hashed_decode": (C.c_int, [C.POINTER(HashParams), _vp, _vp, _i64, _vp]),
        "ep_hashed_matmul_stream": (C.c_int, [C.POINTER(HashParams), _vp, _vp, _i64, _vp, _i64, _vp, _vp]),
        "ep_hashed_plan_create": (C.c_int, [C.POINTER(HashParams), _vp, _vp, _i64, C.POINTER(_vp)]),
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
        "ep_codebook_decode": (C.c_int, [C.POINTER(Codebook), _vp]),
        "ep_codebook_plan_create": (C.c_int, [C.POINTER(Codebook), C.POINTER(_vp)]),
        "ep_codebook_plan_destroy": (None, [_vp]),
        "ep_sparse_codebook_matmul": (C.c_int, [_vp, _vp, _i64, _i64, _vp, _vp, _i64]),
        "ep_hyper_decode": (C.c_int, [C.POINTER(Hyper), _vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


def check(status: int) -> None:
    """Raise the library's last error as KernelError when a call returned non-zero."""
    if status != 0:
        raise KernelError(load().ep_last_error().decode(errors="replace"))
