"""The harness's fallback for devices without Python: the C runner ``edgepack_ort_runner --bench``.

It measures an ONNX model the way ``runner_script.py`` does (same JSON fields, latencies from
CLOCK_MONOTONIC, runs until both ``runs`` and ``min_seconds`` are reached) with only the runner,
``libonnxruntime.so`` and, for models with ai.edgepack ops, ``libedgepack_ort.so`` pushed to the
device. The runner and the ONNX Runtime library come from ``runtime_kernels.artifacts`` (the host
build of ``make kernels`` and the onnxruntime wheel, or a cross build and the npm package
onnxruntime-node that ``runtime_kernels/scripts/ci_ort_aarch64.sh`` fetches).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels.artifacts import find_artifact, onnxruntime_library_path

from .transfer import command_timeout, push_model

if TYPE_CHECKING:  # the device classes are only used through push/run
    from edgepack.devices import Device

RUNNER = "edgepack_ort_runner"


class NativeRunnerError(EdgepackError, RuntimeError):
    """The native runner failed; the message is the runner's own."""


def run_with_native(device: Device, model: Path, options: Any, arch: str,
                    edgepack_ort_lib: Path | None) -> tuple[dict, str]:
    """Measure ``model`` on ``device`` with the native runner; (runner_script.py-style dict, argv).

    ``options`` needs threads, warmup, runs and min_seconds (and may have cpus: pin with taskset,
    timeout: seconds for each device command, and decode_at_load: False keeps the fused edgepack
    kernels, as ``onnx_session(decode_at_load=False)``; the runner's default decodes storage-compressed
    weights at load). Raises NativeRunnerError (a RuntimeError) with the
    runner's message when the run fails.
    """
    runner = find_artifact(RUNNER, arch)
    ort_lib = onnxruntime_library_path(arch)
    timeout = command_timeout(options)
    argv = [device.push(str(runner), timeout=timeout), "--bench",
            "--ort-lib", device.push(str(ort_lib), timeout=timeout)]
    if edgepack_ort_lib is not None:
        argv += ["--custom-ops", device.push(str(edgepack_ort_lib), timeout=timeout)]
    if getattr(options, "decode_at_load", True) is False:
        argv.append("--keep-fused")
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
