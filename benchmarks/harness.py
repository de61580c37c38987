"""``edgepack bench``: measure models on a device and append one result per model to a JSONL file.

For each model: push it (and the runner, the dataset and the edgepack runtime library when the
model needs it) to the device, run ``runner_script.py`` with the device's Python (onnxruntime or
LiteRT / tflite-runtime); without one, ONNX models run through the native runner
(``edgepack_ort_runner --bench``, built for the device's ABI, pushed with libonnxruntime) and
TFLite models through TFLite's ``benchmark_model`` when the user gives its path; add file size
and energy; write the record. File size (the model with its external data, on disk) and peak
resident memory (measured on the device: VmHWM above the RSS before the model was loaded) are kept
apart; ``decode_at_load`` (the default) decodes compressed weights to dense constants at load where
the device can (edgepack installed there, or the native runner), else the fused kernels run, and
the record's ``weights`` says which. Each model file is first checked on the host with the exporter's
loader (corrupt, truncated, ai.edgepack nodes the kernels refuse), so a bad one is never pushed.
A failure (that check, a runner past ``--timeout`` included) becomes a record with
``status: "error"`` and the run goes on with the next model. A record that cannot be written
(disk full) is printed to stderr as JSON and the run goes on. The device's work directory is
removed at the end, on success, failure or Ctrl-C, unless ``keep_workdir``.

With ``kws_stream`` (a 16 kHz mono 16-bit WAV) each .onnx model is measured streaming instead: the C
runner ``edgepack_kws_stream --bench`` (built for the device's ABI, pushed with libonnxruntime) runs the
MFCC front end and the model (decoded at load unless ``decode_at_load`` is False, as the other runners)
every 20 ms hop over the WAV; the record (runtime "kws-stream", the WAV's path and sha256) has per-hop
latency (hop_p50_us, hop_p90_us, hop_p99_us, and latency_*_ms / latencies_ms per hop, so reports plot
it), real_time_factor, peak_rss_mb and the detections.
"""

import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from edgepack.devices import CommandTimeout, Device, DeviceError, get_device
from edgepack.errors import EdgepackError

from .native import run_kws_stream, run_with_native
from .results import (
    MB,
    append_result,
    check_writable,
    format_time_ms,
    latency_metrics,
    load_results,
    result_key,
    significant,
    stream_wav,
)
from .transfer import command_timeout, model_size_bytes, push_model

RUNNER = Path(__file__).with_name("runner_script.py")
RUNTIME_MODULES = {"ort": [["numpy", "onnxruntime"]],
                   "tflite": [["numpy", "ai_edge_litert"], ["numpy", "tflite_runtime"]]}


class BenchError(EdgepackError, RuntimeError):
    """One model could not be measured (the message goes into its record), or the run cannot start."""


# option → (lowest valid value, whether it must be an integer, whether the lowest is excluded)
LIMITS = {"threads": (1, True, False), "warmup": (0, True, False), "runs": (1, True, False),
          "min_seconds": (0, False, False), "idle_seconds": (0, False, False), "timeout": (0, False, True)}
CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")  # taskset -c: 4-7 or 0,2,4


def option_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for the option ``name`` ("must be ..."), or None when it is valid."""
    low, integer, exclusive = LIMITS[name]
    valid = (isinstance(value, int) and not isinstance(value, bool)) if integer else \
        (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if valid and (value > low if exclusive else value >= low):
        return None
    kind = "an integer" if integer else "a number of seconds"
    return f"must be {kind} {'>' if exclusive else '>='} {low}, got {value!r}"


def check_option(name: str, value) -> None:
    """BenchError naming the option and its valid range unless ``value`` is in it."""
    problem = option_problem(name, value)
    if problem:
        raise BenchError(f"--{name.replace('_', '-')} {problem}")


@dataclass
class BenchOptions:
    """The harness's knobs (names follow TFLite's benchmark_model where they exist)."""

    runtime: str = "auto"
    threads: int = 1
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 5.0
    energy: str | None = None
    dataset: str | None = None
    output: str = "results.jsonl"
    resume: bool = False
    benchmark_model: str | None = None
    idle_seconds: float = 2.0
    cpus: str | None = None  # e.g. "4-7": pin the runner with taskset (big cores of a phone)
    timeout: float | None = None  # seconds per device command; None: 600 or 20 × min_seconds
    keep_workdir: bool = False  # keep the device's work directory (its path is printed)
    known_hosts: str | None = None  # ssh devices: known_hosts file to check the host key against
    decode_at_load: bool = True  # False: keep ai.edgepack ops on the fused kernels (less memory)
    kws_stream: str | None = None  # a 16 kHz WAV: per-hop latency of the streaming keyword runner on it

    def __post_init__(self):
        for name in LIMITS:
            if not (name == "timeout" and self.timeout is None):
                check_option(name, getattr(self, name))


class BenchRecords(list):
    """bench()'s records; ``unsaved`` holds those that could not be written to the results file."""

    def __init__(self, records=(), unsaved=None):
        super().__init__(records)
        self.unsaved: list[dict] = list(unsaved or [])


def check_inputs(device: str | Device, options: BenchOptions) -> None:
    """BenchError for a --known-hosts, --energy, --cpus or --dataset value that cannot work, before
    anything is measured (a malformed --device is refused when bench() makes the device)."""

    from edgepack.devices.power import check_spec

    spec = device if isinstance(device, str) else device.spec
    if options.energy is not None:
        try:
            check_spec(options.energy)
        except ValueError as error:
            raise BenchError(f"--energy: {error}") from None
    if options.known_hosts and not spec.startswith("ssh://"):
        raise BenchError(f"--known-hosts is for ssh:// devices, not {spec}")
    if options.cpus and not CPU_LIST.fullmatch(options.cpus):
        raise BenchError(f"--cpus {options.cpus!r}: expected a CPU list such as 4-7 or 0,2,4")
    if options.kws_stream:
        check_stream_inputs(options)
    if options.dataset:
        from edgepack.exporter.model_files import load_npz

        data = load_npz(options.dataset, f"--dataset {options.dataset}")
        if not ({"x", "y"} <= set(data) and len(data["x"]) == len(data["y"])):
            raise BenchError(f"--dataset {options.dataset}: needs arrays x (inputs) and y (labels) of the "
                             "same length")


def check_stream_inputs(options: BenchOptions) -> None:
    """BenchError unless --kws-stream names a WAV the streaming runner reads (16-bit PCM, mono, 16 kHz)
    and the other options fit a streaming run."""
    from edgepack.kws.wav import WavError, wav_info

    wav = options.kws_stream
    clash = [flag for flag, used in (("--energy", options.energy), ("--dataset", options.dataset),
                                     ("--benchmark-model", options.benchmark_model),
                                     ("--runtime tflite", options.runtime == "tflite")) if used]
    if clash:
        raise BenchError(f"--kws-stream measures the C streaming runner per hop; {', '.join(clash)} "
                         "is for whole-model runs: leave it out")
    try:
        info = wav_info(wav)
    except WavError as error:
        raise BenchError(f"--kws-stream: {error}") from None
    if (info["format"], info["bits"], info["channels"], info["sample_rate"]) != ("pcm", 16, 1, 16000):
        raise BenchError(f"--kws-stream {wav}: {info['bits']}-bit {info['format']}, {info['channels']} channel(s), "
                         f"{info['sample_rate']} Hz; the streaming runner reads 16-bit PCM mono 16 kHz WAV "
                         f"(convert with `sox {wav} -r 16000 -c 1 -b 16 OUT.wav`)")


def runtime_for(model: Path, runtime: str) -> str:
    """The runtime to use: as asked, or by the file's suffix."""
    if runtime != "auto":
        return runtime
    suffixes = {".onnx": "ort", ".tflite": "tflite"}
    if model.suffix not in suffixes:
        raise BenchError(f"cannot tell the runtime of {model.name}: use .onnx or .tflite, or --runtime")
    return suffixes[model.suffix]


def check_model_file(model: Path) -> None:
    """The exporter's loader check for an .onnx / .tflite file (empty, corrupt, truncated,
    ai.edgepack nodes the kernels refuse): an EdgepackError here, before anything is pushed,
    instead of a failure on the device."""
    from edgepack.exporter.model_files import load_onnx, load_tflite
    from edgepack.exporter.validate import check_onnx_model, check_tflite_model

    if model.suffix == ".onnx":
        check_onnx_model(load_onnx(model, external_data=False), str(model))
    elif model.suffix == ".tflite":
        check_tflite_model(load_tflite(model)[1], str(model))


def needs_edgepack_library(model: Path) -> bool:
    """Whether the file holds ai.edgepack ops (then our ORT library or TFLite delegate is loaded)."""
    return b"ai.edgepack" in model.read_bytes()


def host_library(runtime: str, arch: str) -> Path:
    """The edgepack runtime library for ``runtime`` ("ort" or "tflite") built for ``arch`` on this host."""
    from edgepack.runtime_kernels.artifacts import find_artifact

    return find_artifact("libedgepack_ort.so" if runtime == "ort" else "libedgepack_tflite_delegate.so", arch)


def pinned(argv: list[str], options: BenchOptions) -> list[str]:
    """``argv`` under ``taskset -c CPUS`` when the user pins the run to some cores."""
    return ["taskset", "-c", options.cpus, *argv] if options.cpus else argv


def run_with_python(device: Device, python: str, model: Path, runtime: str, options: BenchOptions,
                    arch: str) -> tuple[dict, str]:
    """runner_script.py with the device's Python: (its JSON result, the command it ran)."""
    timeout = command_timeout(options)
    remote_model = push_model(device, model, timeout)
    argv = [python, device.push(str(RUNNER), timeout=timeout), remote_model, "--runtime", runtime,
            "--threads", str(options.threads), "--warmup", str(options.warmup),
            "--runs", str(options.runs), "--min-seconds", str(options.min_seconds)]
    if needs_edgepack_library(model):
        argv += ["--library", device.push(str(host_library(runtime, arch)), timeout=timeout)]
    if options.dataset:
        argv += ["--dataset", device.push(options.dataset, timeout=timeout)]
    if not options.decode_at_load:
        argv.append("--keep-fused")
    argv = pinned(argv, options)
    result = device.run(argv, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"runner printed no result (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    measured = json.loads(lines[-1])
    if measured.get("status") != "ok":
        raise BenchError(measured.get("error", "runner failed"))
    return measured, shlex.join(argv)


def run_with_benchmark_model(device: Device, model: Path, options: BenchOptions) -> tuple[dict, str]:
    """TFLite's benchmark_model: parses its 'Inference timings in us' line (mean only)."""
    timeout = command_timeout(options)
    argv = [device.push(options.benchmark_model, timeout=timeout), f"--graph={push_model(device, model, timeout)}",
            f"--num_threads={options.threads}", f"--warmup_runs={options.warmup}",
            f"--num_runs={options.runs}", f"--min_secs={options.min_seconds}"]
    if needs_edgepack_library(model):
        delegate = host_library("tflite", device.describe()["arch"])
        argv.append(f"--external_delegate_path={device.push(str(delegate), timeout=timeout)}")
    argv = pinned(argv, options)
    result = device.run(argv, timeout=timeout)
    match = re.search(r"Init: ([\d.]+), First inference: ([\d.]+), Warmup \(avg\): [\d.e+]+, "
                      r"Inference \(avg\): ([\d.e+]+)", result.stdout + result.stderr)
    if result.returncode != 0 or not match:
        raise BenchError(f"benchmark_model failed (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    init_us, first_us, mean_us = (float(g) for g in match.groups())
    return {"runtime_version": "benchmark_model", "init_ms": init_us / 1e3,
            "first_inference_ms": first_us / 1e3, "latencies_ms": [mean_us / 1e3]}, shlex.join(argv)


def measure_energy(device: Device, spec: str, model: Path, workload, idle_seconds: float) -> dict:
    """Energy per inference by the requested method; an estimate is labelled as such."""
    from edgepack.devices import power

    source = power.get_power_source(spec, device=device)
    if source.estimated:
        if model.suffix != ".onnx":
            raise BenchError(f"the energy estimate counts operations of an .onnx file, not {model.name}; "
                             "use a power meter (--energy rapl|hwmon|battery|csv:FILE) for TFLite files")
        estimate = source.estimate(model)
        return {"energy_mj_per_inference": estimate.energy_mj_per_inference, "energy_method": "estimate",
                "energy_estimated": True, "energy_assumptions": estimate.assumptions,
                "energy_fallback_reason": getattr(source, "reason", "") or None}
    result = power.measure(source, workload, idle_seconds=idle_seconds)
    return {"energy_mj_per_inference": result.energy_mj_per_inference, "energy_method": result.method,
            "energy_estimated": False, "power_idle_w": result.idle_w, "power_active_w": result.active_w}


def choose_runner(device: Device, model: Path, runtime: str, options: BenchOptions, arch: str):
    """A callable that measures ``model`` once on ``device``: the device's Python if it has the
    runtime, else the native ORT runner (ONNX) or benchmark_model (TFLite, when given)."""
    if runtime == "native" and model.suffix != ".onnx":
        raise BenchError(f"--runtime native runs .onnx files through ONNX Runtime's C API, not {model.name}")
    python = None if runtime == "native" else \
        next((p for mods in RUNTIME_MODULES[runtime] if (p := device.python(mods))), None)
    if python:
        return lambda: run_with_python(device, python, model, runtime, options, arch)
    if runtime in ("ort", "native"):
        library = host_library("ort", arch) if needs_edgepack_library(model) else None
        return lambda: run_with_native(device, model, options, arch, library)
    if options.benchmark_model:
        return lambda: run_with_benchmark_model(device, model, options)
    raise BenchError(f"no Python with ai_edge_litert or tflite_runtime on {device.spec}; "
                     "give TFLite's benchmark_model with --benchmark-model PATH")


def new_record(model: Path, device_spec: str, description: dict, options: BenchOptions) -> dict:
    """The fields every record has, whatever happens next."""
    try:
        runtime = runtime_for(model, options.runtime)
    except BenchError:
        runtime = options.runtime
    record = {"model": model.stem, "model_path": str(model.resolve()), "device_spec": device_spec,
              "device": description, "runtime": runtime, "threads": options.threads,
              "emulated": bool(description.get("emulated")), "timestamp": time.time(),
              "command": shlex.join(sys.argv), "decode_at_load": options.decode_at_load}
    if options.kws_stream:
        record.update(runtime="kws-stream", kws_stream=stream_wav(options.kws_stream))
    return record


def measure_stream(device: Device, model: Path, options: BenchOptions, arch: str) -> dict:
    """The metrics, latencies and details of one streaming run of ``model`` over ``options.kws_stream``."""
    if model.suffix != ".onnx":
        raise BenchError(f"--kws-stream runs .onnx models through ONNX Runtime's C API, not {model.name}")
    check_model_file(model)
    library = host_library("ort", arch) if needs_edgepack_library(model) else None
    measured, device_command = run_kws_stream(device, model, Path(options.kws_stream), arch=arch,
                                              edgepack_ort_lib=library, threads=options.threads,
                                              cpus=options.cpus, timeout=command_timeout(options),
                                              decode_at_load=options.decode_at_load)
    hops = measured["hop_latencies_ms"]
    if not hops:
        raise BenchError(f"--kws-stream {options.kws_stream}: shorter than one {measured['hop_ms']:g} ms hop")
    latency = latency_metrics(hops)
    size = model_size_bytes(model)
    metrics = {**latency, "hops": measured["hops"], "audio_s": measured["audio_s"],
               **{f"hop_{q}_us": latency[f"latency_{q}_ms"] * 1e3 for q in ("p50", "p90", "p99")},
               "hop_max_us": max(hops) * 1e3,
               "frontend_p50_us": measured["frontend_ms"]["median"] * 1e3,
               "model_p50_us": measured["model_ms"]["median"] * 1e3,
               "real_time_factor": measured["real_time_factor"], "peak_rss_mb": measured["peak_rss_mb"],
               "size_kb": size / 1024, "file_size_mb": size / MB}
    return {"metrics": metrics, "latencies_ms": hops, "runtime_version": measured["runtime_version"],
            "device_command": device_command, "weights": weights_used(model, measured),
            "kws_stream": {"hop_ms": measured["hop_ms"], "input": measured["input"],
                           "decoded_nodes": measured["decoded_nodes"], "detections": measured["detections"]}}


WEIGHTS = {True: "decoded at load", False: "fused kernels", None: "dense"}


def weights_used(model: Path, measured: dict) -> str:
    """How the run held the model's weights: "dense" (no ai.edgepack ops), "decoded at load" or
    "fused kernels", as the runner reports it (a runner that does not say never decodes)."""
    if not needs_edgepack_library(model):
        return "dense"
    return WEIGHTS[bool(measured.get("decode_at_load"))]


def measure_model(device: Device, description: dict, model: Path, options: BenchOptions) -> dict:
    """One record: metrics on success, ``status: "error"`` with the reason otherwise."""
    record = new_record(model, device.spec, description, options)
    try:
        runtime = runtime_for(model, options.runtime)
        if not model.is_file():
            raise BenchError(f"model file {model} does not exist")
        if options.kws_stream:
            measured = measure_stream(device, model, options, description.get("arch", ""))
            record["kws_stream"].update(measured.pop("kws_stream"))
            record.update(measured, status="ok")
            return record
        run_once = choose_runner(device, model, runtime, options, description.get("arch", ""))
        check_model_file(model)
        measured, device_command = run_once()
        latencies = measured.pop("latencies_ms")
        size = model_size_bytes(model)
        record["metrics"] = {"init_ms": measured["init_ms"],
                             "first_inference_ms": measured["first_inference_ms"],
                             **latency_metrics(latencies), "size_kb": size / 1024, "file_size_mb": size / MB}
        record["weights"] = weights_used(model, measured)
        for key in ("peak_rss_mb", "accuracy"):
            if key in measured:
                record["metrics"][key] = measured[key]
        if options.energy:
            def workload() -> int:  # inferences run: the first, the warm-up and the timed ones
                return 1 + options.warmup + len(run_once()[0]["latencies_ms"])
            record["metrics"].update(measure_energy(device, options.energy, model, workload,
                                                    options.idle_seconds))
        record.update(status="ok", latencies_ms=latencies, runtime_version=measured["runtime_version"],
                      device_command=device_command)
    except CommandTimeout as error:
        record.update(status="error", error=f"timed out: no result within --timeout {command_timeout(options):g} s "
                                            f"(a hanging model, or raise --timeout): {error}")
    except (EdgepackError, OSError, RuntimeError, ValueError) as error:
        record.update(status="error", error=f"{type(error).__name__}: {error}")
    return record


def save(record: dict, options: BenchOptions, console: Console) -> bool:
    """Append the record to the results file; when that fails, say so and print it to stderr as JSON."""
    try:
        append_result(options.output, record)
        return True
    except OSError as error:
        console.print(f"[red]could not write the result of {escape(record['model'])} to "
                      f"{escape(str(options.output))} ({escape(error.strerror or str(error))}); "
                      "the record follows on stderr as one JSON line[/red]")
        print(json.dumps(record, sort_keys=True), file=sys.stderr, flush=True)
        return False


def finish_workdir(device: Device, options: BenchOptions, console: Console) -> None:
    """Remove the device's work directory, or with keep_workdir say where it is."""
    if options.keep_workdir:
        if device.existing_workdir:
            console.print(f"kept the work directory {escape(device.existing_workdir)} on "
                          f"{escape(device.spec)} (--keep-workdir)")
        return
    path = device.existing_workdir
    try:
        device.cleanup()
    except (DeviceError, OSError) as error:
        console.print(f"[red]could not remove the work directory {escape(str(path))} on {escape(device.spec)}: "
                      f"{escape(str(error))}[/red]")


def bench(models: list[str | Path], device: str | Device, options: BenchOptions,
          console: Console | None = None) -> BenchRecords:
    """Measure every model on one device (a spec such as "ssh://pi@board", or a Device); each
    record is appended to ``options.output`` as soon as it is measured. BenchError (bad flags, a
    malformed device spec) or ResultsError (a results file that cannot be written) before anything
    is measured."""
    console = console or Console(stderr=True)
    models = [Path(m) for m in models]
    check_inputs(device, options)
    check_writable(options.output)
    done = set()
    if options.resume:
        previous = load_results(options.output)
        if previous.skipped:
            console.print(f"{escape(str(options.output))}: skipped {previous.skipped} unreadable line(s) "
                          "(torn, not a JSON object, or not UTF-8)")
        done = {result_key(r) for r in previous.records if r.get("status") == "ok"}
    device_spec = device if isinstance(device, str) else device.spec
    connected = None
    try:
        connected = get_device(device, **({"known_hosts": options.known_hosts} if options.known_hosts else {})) \
            if isinstance(device, str) else device
        description = connected.describe()
        usable, device_error = connected, None
    except (DeviceError, ValueError) as error:
        if connected is None and isinstance(error, ValueError):  # a malformed spec or option
            raise BenchError(str(error)) from None
        usable, description, device_error = None, {"spec": device_spec}, error
    records = BenchRecords()
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"benchmarking on {device_spec}", total=len(models))
            for model in models:
                progress.update(task, description=f"{model.name} on {device_spec}")
                if result_key(new_record(model, device_spec, description, options)) in done:
                    console.print(f"skip {escape(model.name)}: already measured (--resume)")
                    progress.advance(task)
                    continue
                if usable is None:
                    record = new_record(model, device_spec, description, options)
                    record.update(status="error", error=f"{type(device_error).__name__}: {device_error}")
                else:
                    record = measure_model(usable, description, model, options)
                if not save(record, options, console):
                    records.unsaved.append(record)
                records.append(record)
                if record["status"] == "ok":
                    metrics = record["metrics"]
                    note = " (emulated)" if record["emulated"] else ""
                    if "real_time_factor" in metrics:
                        note = (f" per {significant(record['kws_stream']['hop_ms'])} ms hop, p99 "
                                f"{format_time_ms(metrics['latency_p99_ms'])}, real-time factor "
                                f"{significant(metrics['real_time_factor'])}, {metrics['hops']} hops, "
                                f"{len(record['kws_stream']['detections'])} detection(s)" + note)
                    rss = metrics.get("peak_rss_mb")
                    console.print(f"{escape(model.name)}: p50 {format_time_ms(metrics['latency_p50_ms'])}{note}, "
                                  f"file {significant(metrics['file_size_mb'])} MB, peak RSS "
                                  f"{significant(rss) + ' MB' if rss is not None else 'not measured'}, "
                                  f"{record['weights']}")
                else:
                    console.print(f"[red]{escape(model.name)}: {escape(record['error'])}[/red]")
                progress.advance(task)
    finally:
        if connected is not None:
            finish_workdir(connected, options, console)
    if records.unsaved:
        console.print(f"[red]{len(records.unsaved)} record(s) could not be written to {escape(str(options.output))}: "
                      "they were printed to stderr as JSON lines; append them to a results file by hand[/red]")
    return records
