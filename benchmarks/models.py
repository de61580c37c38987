"""Whole-model benchmark: dense vs compressed MLP-1024 and DS-CNN in ONNX Runtime and LiteRT.

A benchmark, not a test: ``python -m edgepack.benchmarks.models`` exports every variant, then per
(model, runtime, batch) group runs all its variants single-threaded in interleaved rounds (each
round times every variant once, the order reversed every other round, so machine noise hits them
alike) and prints a Markdown table: median latency, its ratio to the dense model of the group,
the file size on disk (model + external data) and the peak resident memory of loading the model
and running it once in a fresh process (VmHWM minus the RSS before loading, measured after the
imports).
Hashed models run twice: decoded at load (the default) and on the edgepack kernels
(``decode_at_load=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MLP_VARIANTS = {
    "dense": None,
    "hashed 1/8": {"*": {"method": "hashed", "ratio": 1 / 8}},
    "circulant b=64": {"*": {"method": "circulant", "block_size": 64}},
    "LDR r=4": {"*": {"method": "ldr", "rank": 4}},
}
DSCNN_VARIANTS = {
    "dense": None,
    "hashed 1/8 (conv, dw, pw)": {name: {"method": "hashed", "ratio": 1 / 8} for name in ("conv", "dw*", "pw*")},
    "hashed 1/8 (pw)": {"pw*": {"method": "hashed", "ratio": 1 / 8}},
}

_PEAK = """
import json, sys
import numpy as np
from edgepack.runtime_kernels import onnx_session, tflite_interpreter
import edgepack.exporter.validate, onnxruntime, ai_edge_litert.interpreter  # imports are not the model's memory

def status(field):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))

path, runtime, decode, shape = sys.argv[1], sys.argv[2], sys.argv[3] == "1", json.loads(sys.argv[4])
before = status("VmRSS")
x = np.zeros(shape, np.float32)
if runtime == "ort":
    session = onnx_session(path, threads=1, decode_at_load=decode)
    session.run(None, {session.get_inputs()[0].name: x})
else:
    interpreter = tflite_interpreter(path, threads=1, decode_at_load=decode)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
print(json.dumps({"peak_mb": (status("VmHWM") - before) / 1024, "after_mb": (status("VmRSS") - before) / 1024}))
"""


def mlp():
    """MLP 1024-1024-1024-10 (ReLU)."""
    from torch import nn

    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def dscnn():
    from edgepack.kws.models import ds_cnn

    return ds_cnn()


MODELS = {"MLP-1024": (mlp, (1024,), MLP_VARIANTS), "DS-CNN": (dscnn, (1, 49, 10), DSCNN_VARIANTS)}


def file_bytes(path: Path) -> int:
    from edgepack.exporter.external_data import model_size_bytes

    return model_size_bytes(path) if path.suffix == ".onnx" else path.stat().st_size


def peak_rss(path: Path, runtime: str, decode: bool, shape: tuple[int, ...]) -> float:
    """Peak RSS growth (MB) of loading ``path`` and running it once in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(path), runtime, str(int(decode)), json.dumps(shape)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return float("nan")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def runner(path: Path, runtime: str, decode: bool, x: np.ndarray) -> Callable[[], None]:
    """One inference of ``path`` on ``x``, single-threaded."""
    from edgepack.runtime_kernels import onnx_session, tflite_interpreter

    if runtime == "ort":
        session = onnx_session(path, threads=1, decode_at_load=decode)
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)
    interpreter = tflite_interpreter(path, threads=1, decode_at_load=decode)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    return interpreter.invoke


def interleaved(runs: dict[str, Callable[[], None]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each runner over ``rounds`` interleaved rounds."""
    names = list(runs)
    for name in names:  # warm up: first calls allocate and pack
        for _ in range(3):
            runs[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            run = runs[name]
            start = time.perf_counter()
            for _ in range(calls):
                run()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: float(np.median(times)) for name, times in samples.items()}


def export_variants(folder: Path, model_name: str, runtime: str, batch: int) -> dict[str, Path]:
    """Each variant of ``model_name`` exported for ``runtime`` (ONNX: dynamic batch, one file)."""
    import torch

    from edgepack.compression import compress
    from edgepack.exporter import export

    make, shape, variants = MODELS[model_name]
    suffix = ".onnx" if runtime == "ort" else ".tflite"
    paths = {}
    for index, (name, recipe) in enumerate(variants.items()):
        path = folder / f"{model_name}_{index}_{batch if runtime != 'ort' else 'n'}{suffix}"
        if not path.exists():
            torch.manual_seed(0)
            dense = make().eval()
            model = compress(dense, recipe)[0].eval() if recipe else dense
            export(model, torch.randn(batch, *shape), path)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--runtimes", default="ort,tflite", help="ort and/or tflite")
    parser.add_argument("--batches", default="1,8", help="batch sizes")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median of them)")
    parser.add_argument("--calls", type=int, default=30, help="inferences per variant per round")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread; {args.rounds} interleaved rounds × {args.calls} "
          "calls; median per variant; × dense = time / dense time in the same group\n")
    print("| model | runtime | variant | batch | median µs | × dense | file bytes | × smaller | peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            shape = MODELS[model_name][1]
            for runtime in args.runtimes.split(","):
                for batch in (int(b) for b in args.batches.split(",")):
                    paths = export_variants(Path(tmp), model_name, runtime, batch)
                    rows = {}  # label -> (path, decode)
                    for name, path in paths.items():
                        if name.startswith("hashed"):
                            rows[f"{name}, decoded at load"] = (path, True)
                            rows[f"{name}, edgepack kernels"] = (path, False)
                        else:
                            rows[name] = (path, True)
                    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                    runs = {label: runner(path, runtime, decode, x) for label, (path, decode) in rows.items()}
                    medians = interleaved(runs, args.rounds, args.calls)
                    dense_size = file_bytes(paths["dense"])
                    for label, (path, decode) in rows.items():
                        size = file_bytes(path)
                        rss = float("nan") if args.no_memory else peak_rss(path, runtime, decode, (batch, *shape))
                        print(f"| {model_name} | {'ORT' if runtime == 'ort' else 'LiteRT'} | {label} | {batch} | "
                              f"{medians[label] * 1e6:.1f} | {medians[label] / medians['dense']:.2f} | {size:,} | "
                              f"{dense_size / size:.1f} | {rss:.1f} |", flush=True)


if __name__ == "__main__":
    main()
