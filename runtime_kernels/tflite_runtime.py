"""Run .tflite files that contain ``ai.edgepack.*`` custom ops, with LiteRT or tflite-runtime.

The ops run in ``libedgepack_tflite_delegate`` (an external delegate, found by
``artifacts.find_artifact``: ``$EDGEPACK_LIB_DIR``, else ``runtime_kernels/lib/``). On
tflite-runtime 2.14 the same library can instead register plain custom ops
(``use_delegate=False``, through ``InterpreterWithCustomOps``). Self-contained: imports only the
standard library, the TFLite runtime it finds and its sibling ``artifacts.py`` (and edgepack's limits
and decode_tflite modules when installed).
The decode limits (docs/ops.md "Limits") come from the environment or ``tflite_interpreter``'s
keyword arguments. With edgepack installed, storage-compressed weights are decoded at load
(``decode_tflite.py``); loaded as a lone file, the delegate runs them as they are.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

try:
    from .artifacts import find_artifact
    from .limits import parse_limit
except ImportError:  # loaded as a lone file (a tflite-runtime venv without edgepack): C checks the values
    parse_limit = None
    _spec = importlib.util.spec_from_file_location("edgepack_artifacts", Path(__file__).with_name("artifacts.py"))
    _artifacts = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_artifacts)
    find_artifact = _artifacts.find_artifact
try:
    from .decode_at_load import DecodeError
    from .decode_tflite import decoded_tflite
except ImportError:  # a lone file: the delegate runs the weights as stored (or decode_at_load="c")
    decoded_tflite, DecodeError = None, ValueError

__all__ = ["delegate_library_path", "tflite_interpreter"]

_BUILD_LOCK = threading.Lock()  # edgepack_tflite_set_limits is process-wide: set, build, clear


def delegate_library_path() -> Path:
    """Path of libedgepack_tflite_delegate (``find_artifact``: $EDGEPACK_LIB_DIR, the package lib/, build/host)."""
    return find_artifact("libedgepack_tflite_delegate.so")


def _runtime() -> tuple[str, Any]:
    """The interpreter module: LiteRT if importable, else tflite-runtime."""
    try:
        from ai_edge_litert import interpreter as mod

        return "litert", mod
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod

        return "tflite_runtime", mod
    except ImportError as e:
        raise ImportError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from e


def _registerer(lib_path: Path):
    """A custom_op_registerers entry: called with the tflite::MutableOpResolver address."""
    lib = ctypes.CDLL(str(lib_path))
    lib.edgepack_register_tflite_ops.argtypes = [ctypes.c_void_p]
    lib.edgepack_register_tflite_ops.restype = ctypes.c_int
    lib.edgepack_tflite_registrar_error.restype = ctypes.c_char_p

    def register(resolver: int) -> None:
        if lib.edgepack_register_tflite_ops(resolver):
            raise RuntimeError(lib.edgepack_tflite_registrar_error().decode())

    register.lib = lib  # keep the library loaded as long as the registerer lives
    return register


def _c_decoded(lib_path: Path, path: str | os.PathLike, limits: dict[str, int]) -> bytes | None:
    """The file decoded by the C entry point ``edgepack_tflite_decode_model``, or None when it has
    nothing to decode; DecodeError with the C message when it refuses the file."""
    lib = ctypes.CDLL(str(lib_path))
    decode, release = lib.edgepack_tflite_decode_model, lib.edgepack_tflite_free_model
    decode.restype, release.restype, release.argtypes = ctypes.c_int, None, [ctypes.c_void_p]
    decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64,
                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p,
                       ctypes.c_size_t]
    data = Path(path).read_bytes()
    out, size, err = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.create_string_buffer(2048)
    if decode(data, len(data), int(limits.get("max_virtual_weights", 0)), int(limits.get("max_decoded_bytes", 0)),
              ctypes.byref(out), ctypes.byref(size), err, len(err)):
        raise DecodeError(f"{path}: {err.value.decode(errors='replace')}")
    if not out.value:
        return None
    try:
        return ctypes.string_at(out.value, size.value)
    finally:
        release(out)


def _limits(max_virtual_weights: int | None, max_decoded_bytes: int | None) -> dict[str, int]:
    """The limits given as keyword arguments, validated when edgepack is installed (else by C)."""
    given = {"max_virtual_weights": max_virtual_weights, "max_decoded_bytes": max_decoded_bytes}
    return {k: (parse_limit(k, v) if parse_limit else v) for k, v in given.items() if v is not None}


def tflite_interpreter(
    path: str | os.PathLike,
    threads: int = 1,
    use_delegate: bool = True,
    *,
    max_virtual_weights: int | None = None,
    max_decoded_bytes: int | None = None,
    decode_at_load: bool | str = True,
):
    """An allocated interpreter for ``path`` with the edgepack ops available.

    The ops decode at most ``max_virtual_weights`` per node and ``max_decoded_bytes`` per
    interpreter (default: $EDGEPACK_MAX_VIRTUAL_WEIGHTS / $EDGEPACK_MAX_DECODED_BYTES, else 2^28
    and 1 GiB); a model above them fails in ``allocate_tensors`` with a message naming the node.
    With ``decode_at_load`` (the default, when edgepack is installed) storage-compressed weights
    are decoded once, in C, into constant buffers of a model held in memory, so LiteRT / XNNPACK
    run their own dense kernels (the file is unchanged); ``decode_at_load=False`` keeps the
    delegate's fused kernels (less memory). ``decode_at_load="c"`` decodes with the C entry point
    apps use (``edgepack_tflite_decode_model`` in the delegate library; no Python packages needed).
    ``use_delegate=False`` registers plain custom ops instead (tflite-runtime only: LiteRT does not
    export the resolver's AddCustom).
    """
    name, mod = _runtime()
    lib = delegate_library_path()
    limits = _limits(max_virtual_weights, max_decoded_bytes)
    content = None
    if decode_at_load not in (True, False, "c"):
        raise DecodeError(f"decode_at_load must be True, False or 'c' (decode in C), got {decode_at_load!r}")
    if decode_at_load == "c":
        content = _c_decoded(lib, path, limits)
    elif decode_at_load and decoded_tflite is not None:
        content = decoded_tflite(path, max_virtual_weights, max_decoded_bytes)
    model = {"model_content": content} if content is not None else {"model_path": str(path)}
    if use_delegate:
        delegate = mod.load_delegate(str(lib), options={k: str(v) for k, v in limits.items()})
        interp = mod.Interpreter(**model, num_threads=threads, experimental_delegates=[delegate])
        interp._edgepack_delegate = delegate  # the delegate must outlive the interpreter
        interp.allocate_tensors()
        return interp
    if name != "tflite_runtime":
        raise RuntimeError("use_delegate=False needs tflite-runtime (LiteRT hides MutableOpResolver::AddCustom)")
    registerer = _registerer(lib)
    set_limits = registerer.lib.edgepack_tflite_set_limits
    set_limits.argtypes, set_limits.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    with _BUILD_LOCK:  # the ops read the override when the interpreter creates them
        if set_limits(int(limits.get("max_virtual_weights", 0)), int(limits.get("max_decoded_bytes", 0))):
            raise ValueError(f"edgepack limits must be positive integers, got {limits}")
        try:
            interp = mod.InterpreterWithCustomOps(**model, num_threads=threads, custom_op_registerers=[registerer])
        finally:
            set_limits(0, 0)
    interp.allocate_tensors()
    return interp
