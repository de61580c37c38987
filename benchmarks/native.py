"""The harness's C runners, for devices without Python and for streaming: ``edgepack_ort_runner --bench``
and ``edgepack_kws_stream --bench``.

The first measures an ONNX model the way ``runner_script.py`` does (same JSON fields, latencies from
CLOCK_MONOTONIC, runs until both ``runs`` and ``min_seconds`` are reached); the second streams a WAV
through the keyword detector and times every 20 ms hop. Both decode storage-compressed weights at
load unless told to keep the fused kernels. Only the runner, ``libonnxruntime.so`` and, for models
with ai.edgepack ops, ``libedgepack_ort.so`` are pushed to the device (with the model and the WAV).
The runners and the ONNX Runtime library come from ``runtime_kernels.artifacts`` (the host build of
``make kernels`` and the onnxruntime wheel, or a cross build and the npm package onnxruntime-node that
``runtime_kernels/scripts/ci_ort_aarch64.sh`` fetches).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels.artifacts import find_artifact, how_to_build, onnxruntime_library_path

from .transfer import command_timeout, push_model

if TYPE_CHECKING:  # the device classes are only used through push/run
    from edgepack.devices import Device

RUNNER = "edgepack_ort_runner"
KWS_STREAM = "edgepack_kws_stream"
STREAM_FIELDS = ("runtime_version", "input", "hops", "hop_ms", "audio_s", "real_time_factor", "peak_rss_mb",
                 "decode_at_load", "decoded_nodes", "hop_latencies_ms", "frontend_ms", "model_ms", "hop_total_ms",
                 "detections")


class NativeRunnerError(EdgepackError, RuntimeError):
    """The native runner failed; the message is the runner's own."""


def runner_result(result, program: str) -> dict:
    """The JSON object a runner printed last; NativeRunnerError with the runner's message unless its
    status is ok and it exited with 0."""
    lines = [line for line in (result.stdout or "").splitlines() if line.startswith("{")]
    if not lines:
        tail = ((result.stderr or "").strip() or (result.stdout or "").strip())[-500:]
        raise NativeRunnerError(f"{program} printed no result (exit {result.returncode}): {tail}")
    try:
        measured = json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise NativeRunnerError(f"{program} printed bad JSON ({error}): {lines[-1][:500]}") from error
    if measured.get("status") != "ok":
        raise NativeRunnerError(measured.get("error") or f"{program} failed (exit {result.returncode})")
    if result.returncode != 0:
        raise NativeRunnerError(f"{program} exited with {result.returncode} after printing a result: "
                                f"{(result.stderr or '').strip()[-500:]}")
    return measured


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
    return runner_result(device.run(argv, timeout=timeout), RUNNER), shlex.join(argv)


def run_kws_stream(device: Device, model: Path, wav: Path, *, arch: str, edgepack_ort_lib: Path | None = None,
                   threads: int = 1, detector_flags: list[str] | tuple = (), cpus: str | None = None,
                   timeout: float | None = None, decode_at_load: bool = True) -> tuple[dict, str]:
    """``edgepack_kws_stream --bench`` built for ``arch`` on ``device``: the ``model`` (with its external
    data) and the 16 kHz mono 16-bit ``wav`` pushed there; its JSON (hops, frontend_ms / model_ms /
    hop_total_ms statistics, hop_latencies_ms, real_time_factor, peak_rss_mb, decode_at_load,
    decoded_nodes, detections) and the command. With ``edgepack_ort_lib`` the runner decodes compressed
    weights at load unless ``decode_at_load`` is False (--keep-fused: the fused kernels).
    ``detector_flags`` go to the runner as given (e.g. ["--threshold", "0.9"]); ``cpus`` pins it with
    taskset. NativeRunnerError with the runner's message when it fails."""
    runner = find_artifact(KWS_STREAM, arch)
    ort_lib = onnxruntime_library_path(arch)
    argv = [device.push(str(runner), timeout=timeout), "--bench", "--ort", device.push(str(ort_lib), timeout=timeout)]
    if edgepack_ort_lib is not None:
        argv += ["--lib", device.push(str(edgepack_ort_lib), timeout=timeout)]
        if not decode_at_load:
            argv.append("--keep-fused")
    argv += ["--threads", str(threads), *map(str, detector_flags), "--model", push_model(device, Path(model), timeout),
             device.push(str(wav), timeout=timeout)]
    if cpus:
        argv = ["taskset", "-c", str(cpus), *argv]
    measured = runner_result(device.run(argv, timeout=timeout), KWS_STREAM)
    missing = [key for key in STREAM_FIELDS if key not in measured]
    if missing:
        raise NativeRunnerError(f"{runner} printed no {', '.join(missing)}: it is older than this edgepack; "
                                f"to update it, {how_to_build(KWS_STREAM, arch)}")
    return measured, shlex.join(argv)
