"""``edgepack demo``: keyword spotting end to end on this machine, the main job of ``make demo``.

Data (espeak-ng + sox) → train a DS-CNN-S → compress it with each method and fine-tune → export
ONNX and TFLite → latency in ONNX Runtime and LiteRT (interleaved rounds in one process, a ratio to
the dense model) → the streaming detector on a long stream → the native C streaming runner for
aarch64 under qemu on a part of it (emulated: the same detections, not ARM timings) → an HTML
report. Data and training are cached in the work folder: a second run reuses them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

RECIPES = ("dense", "hashed-pw", "hashed-all-long", "funhash-all", "hashed+ldr-fc", "hyper")
STEPS = 7
STREAMING_SHIFT_MS = 300.0  # wider than MLPerf's ±100 ms: the stream's hit rate went 58 % → 73 % (README)
QEMU_SECONDS = 20  # of the stream run under qemu (about 1 s of emulation per second of audio)


class DemoError(EdgepackError):
    """The demo cannot run as asked (e.g. its work folder is a file)."""


def _step(console, number: int, title: str) -> float:
    console.rule(f"[bold]{number}/{STEPS} {title}")
    return time.monotonic()


def run_kws_demo(work_dir="edgepack-demo", *, quick: bool = False, seed: int = 0, console=None) -> dict:
    """Run the whole pipeline in ``work_dir``; returns the summary (also in ``summary.json`` there)."""
    from rich.console import Console

    from edgepack.kws.compress_kws import compress_run
    from edgepack.kws.generate import generate
    from edgepack.kws.train import train

    console = console or Console()
    work = Path(work_dir)
    if work.exists() and not work.is_dir():
        raise DemoError(f"{work}: exists and is not a folder; pass another work folder")
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = _step(console, 1, "data: spoken keywords from espeak-ng voices, split by voice")
    generate(work / "data", seed=seed, size="quick" if quick else "small")
    timings["data"] = time.monotonic() - started

    started = _step(console, 2, "train: DS-CNN-S, MLPerf Tiny recipe (short schedule)")
    state = train(work / "data", work / "dense", epochs=2 if quick else None, quick=True, seed=seed,
                  console=console, time_shift_ms=STREAMING_SHIFT_MS)
    timings["train"] = time.monotonic() - started

    started = _step(console, 3, "compress, retrain (distilled from the dense model), export ONNX + TFLite")
    rows = compress_run(work / "dense", RECIPES, work / "compressed",
                        finetune_epochs=1 if quick else None, seed=seed, console=console)
    timings["compress"] = time.monotonic() - started

    started = _step(console, 4, "latency on this machine: ONNX Runtime and LiteRT, 1 thread, interleaved")
    latency = measure_latency(rows, rounds=3 if quick else 9, calls=5 if quick else 40)
    timings["latency"] = time.monotonic() - started

    started = _step(console, 5, "streaming detection on a long stream of held-out voices")
    stream = stream_results(rows, work, minutes=1.0 if quick else 5.0, seed=seed)
    timings["stream"] = time.monotonic() - started

    started = _step(console, 6, "the C streaming runner for aarch64, under qemu (emulated)")
    summary_qemu = aarch64_stream(rows[0]["onnx"]["path"], work)
    console.print(summary_qemu["summary"])
    timings["aarch64"] = time.monotonic() - started

    started = _step(console, 7, "report")
    summary = {"quick": quick, "seed": seed, "data": str(work / "data"),
               "dense_test_accuracy": state.get("test_accuracy"),
               "rows": [_summary_row(row, latency) for row in rows], "stream": stream, "aarch64": summary_qemu,
               "seconds": {k: round(v, 1) for k, v in timings.items()}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from edgepack.kws.demo_report import print_summary, write_demo_report

    summary["report"] = str(write_demo_report(summary, work / "report"))
    timings["report"] = time.monotonic() - started
    summary["seconds"]["report"] = round(timings["report"], 1)
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary, console)
    return summary


def measure_latency(rows: list[dict], rounds: int, calls: int) -> dict:
    """Median latency (s) of every exported model and its ratio to the dense one, per runtime: all
    variants of a runtime timed in the same process in interleaved rounds (benchmarks.models)."""
    from edgepack.benchmarks.models import interleaved, runner

    x = np.random.default_rng(0).standard_normal((1, 1, 49, 10)).astype(np.float32)
    result = {}
    for fmt, runtime in (("onnx", "ort"), ("tflite", "tflite")):
        runs = {row["recipe"]: runner(Path(row[fmt]["path"]), runtime, True, x) for row in rows}
        medians = interleaved(runs, rounds, calls)
        result[fmt] = {name: {"median_s": t, "ratio": t / medians["dense"]} for name, t in medians.items()}
    return result


def stream_results(rows: list[dict], work: Path, minutes: float, seed: int) -> dict:
    """Hit rate, false alarms per hour and delay of the dense ONNX model and of the smallest
    compressed one within 2 points of the dense accuracy, on the same stream."""
    from edgepack.kws import stream_eval

    dense = rows[0]
    close = [r for r in rows[1:] if r["accuracy"] >= dense["accuracy"] - 0.02]
    chosen = [dense] + ([min(close, key=lambda r: r["bytes"])] if close else [])
    results = {}
    for row in chosen:
        out = work / "stream" / row["recipe"]
        result = stream_eval.evaluate(row["onnx"]["path"], work / "data", minutes=minutes, seed=seed, output=out,
                                      progress=True)
        results[row["recipe"]] = {key: result.get(key) for key in
                                  ("hit_rate", "false_alarms", "false_alarms_per_hour", "delay_s", "keywords",
                                   "non_keyword_hours", "minutes")}
        results[row["recipe"]]["results"] = str(out / "results.json")
    return results


def aarch64_stream(model, work: Path) -> dict:
    """The first QEMU_SECONDS of the dense model's stream through ``edgepack_kws_stream`` built for
    aarch64 (runtime_kernels/scripts/kws_stream_aarch64.sh): are its detections the Python
    detector's? A missing cross tool or emulator is reported, not fatal: the rest of the demo stands."""
    import subprocess

    from edgepack.kws.detector import detect_stream
    from edgepack.kws.wav import read_wav, write_wav
    from edgepack.runtime_kernels.artifacts import ROOT

    audio = read_wav(work / "stream" / "dense" / "stream.wav")[:QEMU_SECONDS * 16000]
    excerpt = work / "stream" / "dense" / f"first_{QEMU_SECONDS}s.wav"
    write_wav(excerpt, audio)
    want = [d.as_dict() for d in detect_stream(model, audio)[0]]
    script = ROOT / "runtime_kernels" / "scripts" / "kws_stream_aarch64.sh"
    done = subprocess.run(["bash", str(script), str(model), str(excerpt), "--bench"], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if done.returncode or result.get("status") != "ok":
        why = result.get("error") or done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"ok": False, "summary": f"skipped: {why if isinstance(why, str) else why[0]}"}
    got = [{k: d[k] for k in ("time_s", "label")} for d in result["detections"]]
    same = got == [{k: d[k] for k in ("time_s", "label")} for d in want]
    hop = result["hop_total_ms"]["median"]
    return {"ok": same, "seconds_of_audio": QEMU_SECONDS, "detections": len(got), "python_detections": len(want),
            "hop_ms_median_emulated": hop,
            "summary": f"aarch64 (qemu, emulated): {len(got)} detection(s) in the first {QEMU_SECONDS} s, "
                       + ("the same as the Python detector's" if same else f"but Python found {len(want)}: MISMATCH")
                       + f"; {hop:.2f} ms per 20 ms hop under emulation (not an ARM core's speed)"}


def _summary_row(row: dict, latency: dict) -> dict:
    name = row["recipe"]
    return {"recipe": name, "description": row["description"], "weight_bytes": row["bytes"],
            "times_smaller": row["ratio"], "accuracy": row["accuracy"],
            "accuracy_onnx": row["onnx"]["accuracy"], "accuracy_tflite": row["tflite"]["accuracy"],
            "onnx": row["onnx"]["path"], "tflite": row["tflite"]["path"],
            "onnx_file_bytes": _file_bytes(row["onnx"]["path"]), "tflite_file_bytes": row["tflite"]["file_bytes"],
            "ort_latency_s": latency["onnx"][name]["median_s"], "ort_ratio": latency["onnx"][name]["ratio"],
            "litert_latency_s": latency["tflite"][name]["median_s"], "litert_ratio": latency["tflite"][name]["ratio"]}


def _file_bytes(path) -> int:
    from edgepack.exporter.external_data import model_size_bytes

    return model_size_bytes(Path(path))
