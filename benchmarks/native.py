"""The harness's fallback for devices without Python: the C runner ``edgepack_ort_runner --bench``.

It measures an ONNX model the way ``runner_script.py`` does (same JSON fields, latencies from
CLOCK_MONOTONIC, runs until both ``runs`` and ``min_seconds`` are reached) with only the runner,
``libonnxruntime.so`` and, for models with ai.edgepack ops, ``libedgepack_ort.so`` pushed to the
device. The runner and the ONNX Runtime library come from this checkout's builds:

- host architecture: ``build/host/ort/edgepack_ort_runner`` (``make kernels``) and the
  ``libonnxruntime.so*`` inside the installed onnxruntime wheel;
- aarch64 (cross): ``runtime_kernels/build/ort-aarch64/ort/edgepack_ort_runner`` and the arm64
  library of the npm package onnxruntime-node under ``runtime_kernels/build/ort-npm``, both made
  by ``runtime_kernels/scripts/ci_ort_aarch64.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError

from .transfer import command_timeout, push_model

if TYPE_CHECKING:  # the device classes are only used through push/run
    from edgepack.devices import Device

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_KERNELS = ROOT / "runtime_kernels"
RUNNER = "edgepack_ort_runner"
ARCH_ALIASES = {"arm64": "aarch64", "armv8": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


class NativeRunnerError(EdgepackError, RuntimeError):
    """The native runner failed; the message is the runner's own."""


def _arch(arch: str) -> str:
    arch = (arch or "").strip().lower()
    return ARCH_ALIASES.get(arch, arch)


def _is_host(arch: str) -> bool:
    return _arch(arch) == _arch(platform.machine())


def native_runner_path(arch: str) -> Path:
    """The ``edgepack_ort_runner`` built in this checkout for ``arch``; FileNotFoundError if none."""
    arch = _arch(arch)
    candidates, how = [], None
    if _is_host(arch):
        candidates.append(ROOT / "build" / "host" / "ort" / RUNNER)
        how = "run `make kernels` at the repository root (builds build/host/ort/edgepack_ort_runner)"
    if arch == "aarch64":
        candidates.append(RUNTIME_KERNELS / "build" / "ort-aarch64" / "ort" / RUNNER)
        how = how or ("run `bash runtime_kernels/scripts/ci_ort_aarch64.sh` (cross-builds "
                      "runtime_kernels/build/ort-aarch64/ort/edgepack_ort_runner)")
    candidates.append(RUNTIME_KERNELS / "build" / arch / "ort" / RUNNER)
    for path in candidates:
        if path.is_file():
            return path
    how = how or (f"cross-compile runtime_kernels for {arch} into runtime_kernels/build/{arch} "
                  "(runtime_kernels/README.md)")
    raise FileNotFoundError(f"no {arch} build of {RUNNER} (looked at {', '.join(map(str, candidates))}); {how}")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.as_posix()))


def onnxruntime_library_path(arch: str) -> Path:
    """``libonnxruntime.so*`` for ``arch``: the onnxruntime wheel's on the host, else the npm one."""
    arch = _arch(arch)
    if _is_host(arch):
        spec = importlib.util.find_spec("onnxruntime")
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = sorted((lib for loc in locations for lib in (Path(loc) / "capi").glob("libonnxruntime.so*")),
                       key=_version_key)
        if not found:
            raise FileNotFoundError("no libonnxruntime.so* in an installed onnxruntime wheel (onnxruntime/capi/); "
                                    "pip install onnxruntime")
        return found[-1]
    npm_arch = {"aarch64": "arm64", "x86_64": "x64"}.get(arch, arch)
    npm = RUNTIME_KERNELS / "build" / "ort-npm"
    found = sorted(npm.glob(f"*/package/bin/napi-v*/linux/{npm_arch}/libonnxruntime.so*"), key=_version_key)
    if not found:
        raise FileNotFoundError(f"no {arch} libonnxruntime.so* under {npm}/<version>/package/bin/napi-v*/linux/"
                                f"{npm_arch}/; run `bash runtime_kernels/scripts/ci_ort_aarch64.sh` (it fetches "
                                "the npm package onnxruntime-node)")
    return found[-1]


def run_with_native(device: Device, model: Path, options: Any, arch: str,
                    edgepack_ort_lib: Path | None) -> tuple[dict, str]:
    """Measure ``model`` on ``device`` with the native runner; (runner_script.py-style dict, argv).

    ``options`` needs threads, warmup, runs and min_seconds (and may have cpus: pin with taskset, and
    timeout: seconds for each device command). Raises NativeRunnerError (a RuntimeError) with the
    runner's message when the run fails.
    """
    runner = native_runner_path(arch)
    ort_lib = onnxruntime_library_path(arch)
    timeout = command_timeout(options)
    argv = [device.push(str(runner), timeout=timeout), "--bench",
            "--ort-lib", device.push(str(ort_lib), timeout=timeout)]
    if edgepack_ort_lib is not None:
        argv += ["--custom-ops", device.push(str(edgepack_ort_lib), timeout=timeout)]
    argv += ["--threads", str(options.threads), "--warmup", str(options.warmup), "--runs", str(options.runs),
             "--min-seconds", str(options.min_seconds), push_model(device, model, timeout)]
    cpus = getattr(options, "cpus", None)
    if cpus:
        argv = ["taskset", "-c", str(cpus), *argv]
    result = device.run(argv, timeout=timeout)
    lines = [line for line in (result.stdout or "").splitlines() if line.startswith("{")]
    if not lines:
        tail = ((result.stderr or "").strip() or (result.stdout or "").strip())[-500:]
        raise NativeRunnerError(f"{RUNNER} printed no result (exit {result.returncode}): {tail}")
    try:
        measured = json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise NativeRunnerError(f"{RUNNER} printed bad JSON ({error}): {lines[-1][:500]}") from error
    if measured.get("status") != "ok":
        raise NativeRunnerError(measured.get("error") or f"{RUNNER} failed (exit {result.returncode})")
    if result.returncode != 0:
        raise NativeRunnerError(f"{RUNNER} exited with {result.returncode} after printing a result: "
                                f"{(result.stderr or '').strip()[-500:]}")
    return measured, shlex.join(argv)
