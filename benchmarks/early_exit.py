"""``edgepack bench --early-exit``: average latency per example and accuracy of an exported early-exit
model at its threshold, against the full model (``full.onnx``, no exits), in one process.

Each example runs alone (batch 1, as on a device), in ONNX Runtime or (``--runtime tflite``) in LiteRT on the
exported .tflite files (fully int8 ones for an int8 net, whose confidence the runner computes from the exit
logits: the manifest's ``confidence: "logits"``). The two are timed in interleaved rounds (early exit first
in even rounds, the full model first in odd ones) and each figure is the median over rounds of the mean
latency per example, so drifts of the machine hit both alike. ``-o FILE`` appends one record per manifest in
the results format.
"""

from __future__ import annotations

import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from edgepack.exporter.early_exit_export import EarlyExitError, EarlyExitRunner
from edgepack.exporter.model_files import ModelFileError, load_npz

from .results import append_result, check_writable

ROUNDS = 5


def load_dataset(path: str | Path, input_shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(x float32, y int64) of an .npz with ``x`` [N, *input_shape] and ``y`` [N]; EarlyExitError otherwise."""
    try:
        data = load_npz(path, f"--dataset {path}")
        x, y = data["x"], data["y"]
    except (ModelFileError, KeyError) as error:
        raise EarlyExitError(f"--dataset {path}: needs an .npz with arrays x (inputs) and y (labels): "
                             f"{error}") from None
    if list(x.shape[1:]) != list(input_shape) or y.shape != (len(x),) or not len(x):
        raise EarlyExitError(f"--dataset {path}: x {list(x.shape)} and y {list(y.shape)} must be [N, "
                             f"{', '.join(map(str, input_shape))}] and [N] with N >= 1 (the manifest's input)")
    return x.astype(np.float32), y.astype(np.int64)


def bench_early_exit(manifest: str | Path, dataset: str | Path, *, threads: int = 1, rounds: int = ROUNDS,
                     warmup: int = 10, progress: bool = True, runtime: str = "onnxruntime") -> dict:
    """Latency (ms per example, median over rounds) and accuracy of early exit and of the full model on
    ``dataset`` in ``runtime`` (onnxruntime or tflite); also the fraction of examples leaving at each exit."""
    runner = EarlyExitRunner(manifest, threads=threads, runtime=runtime)
    x, y = load_dataset(dataset, runner.manifest["input_shape"])
    examples = [x[i:i + 1] for i in range(len(x))]
    for example in examples[:warmup]:
        runner.run_one(example)
        runner.run_full(example)
    early, full = [], []
    exits = np.zeros(len(x), np.int64)
    early_classes, full_classes = np.zeros(len(x), np.int64), np.zeros(len(x), np.int64)

    def run_early():
        for i, example in enumerate(examples):
            early_classes[i], exits[i] = runner.run_one(example)

    def run_full():
        for i, example in enumerate(examples):
            full_classes[i] = runner.run_full(example)

    with Progress(disable=not progress) as bar:
        task = bar.add_task("early exit vs full", total=2 * rounds)
        for number in range(rounds):
            order = [(run_early, early), (run_full, full)]
            for run, times in order if number % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                run()
                times.append((time.perf_counter() - started) * 1000 / len(examples))
                bar.advance(task)
    count = len(runner.segments)
    return {"manifest": str(manifest), "dataset": str(dataset), "examples": len(x), "threads": threads,
            "runtime": runtime, "rounds": rounds, "threshold": runner.threshold,
            "early_exit_ms": statistics.median(early), "full_ms": statistics.median(full),
            "early_exit_accuracy": float((early_classes == y).mean()),
            "full_accuracy": float((full_classes == y).mean()),
            "exit_fractions": [float((exits == i).mean()) for i in range(count)],
            "exit_names": [entry.get("exit", "final") for entry in runner.segments]}


def result_record(result: dict) -> dict:
    """One results-file record (benchmarks/results.py) of a ``bench_early_exit`` result: metric names carry units."""
    manifest = Path(result["manifest"])
    return {"model": manifest.parent.name, "model_path": str(manifest.resolve()), "device_spec": "local",
            "runtime": result["runtime"], "threads": result["threads"], "status": "ok", "timestamp": time.time(),
            "command": shlex.join(sys.argv), "kind": "early_exit",
            "early_exit": {key: result[key] for key in ("dataset", "examples", "rounds", "threshold", "exit_names",
                                                        "exit_fractions")},
            "metrics": {"early_exit_latency_ms": result["early_exit_ms"], "full_latency_ms": result["full_ms"],
                        "early_exit_accuracy": result["early_exit_accuracy"], "full_accuracy": result["full_accuracy"],
                        "speedup": result["full_ms"] / result["early_exit_ms"]}}


RUNTIME_FLAGS = {"auto": "onnxruntime", "ort": "onnxruntime", "tflite": "tflite"}


def bench_command(args) -> int:
    """The ``edgepack bench --early-exit`` sub-command: one line per manifest in ``args.models`` (and one record
    each in ``args.output`` when given)."""
    if not args.dataset:
        raise EarlyExitError("bench --early-exit needs --dataset X.npz (x inputs, y labels) to measure accuracy")
    if args.device != "local" or args.runtime not in RUNTIME_FLAGS:
        raise EarlyExitError(f"bench --early-exit runs the segments in this process: use --device local and "
                             f"--runtime auto, ort or tflite (got {args.device!r}, {args.runtime!r})")
    runtime = RUNTIME_FLAGS[args.runtime]
    if args.output:
        check_writable(args.output)
    for manifest in args.models:
        result = bench_early_exit(manifest, args.dataset, threads=args.threads, warmup=args.warmup, runtime=runtime)
        fractions = ", ".join(f"{name} {fraction:.1%}" for name, fraction in
                              zip(result["exit_names"], result["exit_fractions"]))
        print(f"{manifest}: early exit {result['early_exit_ms']:.3f} ms/example, accuracy "
              f"{result['early_exit_accuracy']:.2%} (threshold {result['threshold']:.4f}; {fractions}) | full model "
              f"{result['full_ms']:.3f} ms/example, accuracy {result['full_accuracy']:.2%} | "
              f"{result['full_ms'] / result['early_exit_ms']:.2f}x, median of {result['rounds']} interleaved rounds "
              f"over {result['examples']} examples, {result['threads']} thread(s), {runtime}")
        if args.output:
            append_result(args.output, result_record(result))
    if args.output:
        print(f"results appended to {args.output}")
    return 0
