"""``edgepack bench --early-exit``: average latency per example and accuracy of an exported early-exit
model at its threshold, against the full model (``full.onnx``, no exits), in one process.

Each example runs alone (batch 1, as on a device). The two are timed in interleaved rounds (early exit
first in even rounds, the full model first in odd ones) and each figure is the median over rounds of
the mean latency per example, so drifts of the machine hit both alike.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from edgepack.exporter.early_exit_export import EarlyExitError, EarlyExitRunner

ROUNDS = 5


def load_dataset(path: str | Path, input_shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(x float32, y int64) of an .npz with ``x`` [N, *input_shape] and ``y`` [N]; EarlyExitError otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except (OSError, KeyError, ValueError) as error:
        raise EarlyExitError(f"--dataset {path}: needs an .npz with arrays x (inputs) and y (labels): "
                             f"{error}") from None
    if list(x.shape[1:]) != list(input_shape) or y.shape != (len(x),) or not len(x):
        raise EarlyExitError(f"--dataset {path}: x {list(x.shape)} and y {list(y.shape)} must be [N, "
                             f"{', '.join(map(str, input_shape))}] and [N] with N >= 1 (the manifest's input)")
    return x.astype(np.float32), y.astype(np.int64)


def bench_early_exit(manifest: str | Path, dataset: str | Path, *, threads: int = 1, rounds: int = ROUNDS,
                     warmup: int = 10, progress: bool = True) -> dict:
    """Latency (ms per example, median over rounds) and accuracy of early exit and of the full model on
    ``dataset``; also the fraction of examples leaving at each exit and the threshold."""
    runner = EarlyExitRunner(manifest, threads=threads)
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
            "rounds": rounds, "threshold": runner.threshold,
            "early_exit_ms": statistics.median(early), "full_ms": statistics.median(full),
            "early_exit_accuracy": float((early_classes == y).mean()),
            "full_accuracy": float((full_classes == y).mean()),
            "exit_fractions": [float((exits == i).mean()) for i in range(count)],
            "exit_names": [entry.get("exit", "final") for entry in runner.segments]}


def bench_command(args) -> int:
    """The ``edgepack bench --early-exit`` sub-command: one line per manifest in ``args.models``."""
    if not args.dataset:
        raise EarlyExitError("bench --early-exit needs --dataset X.npz (x inputs, y labels) to measure accuracy")
    if args.device != "local" or args.runtime not in ("auto", "ort"):
        raise EarlyExitError(f"bench --early-exit runs the segments in this process with ONNX Runtime: use "
                             f"--device local and --runtime auto or ort (got {args.device!r}, {args.runtime!r})")
    for manifest in args.models:
        result = bench_early_exit(manifest, args.dataset, threads=args.threads, warmup=args.warmup)
        fractions = ", ".join(f"{name} {fraction:.1%}" for name, fraction in
                              zip(result["exit_names"], result["exit_fractions"]))
        print(f"{manifest}: early exit {result['early_exit_ms']:.3f} ms/example, accuracy "
              f"{result['early_exit_accuracy']:.2%} (threshold {result['threshold']:.4f}; {fractions}) | full model "
              f"{result['full_ms']:.3f} ms/example, accuracy {result['full_accuracy']:.2%} | "
              f"{result['full_ms'] / result['early_exit_ms']:.2f}x, median of {result['rounds']} interleaved rounds "
              f"over {result['examples']} examples, {result['threads']} thread(s)")
    return 0
