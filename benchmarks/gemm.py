"""Our packed GEMM against the runtimes' own (ORT's MLAS, LiteRT's XNNPACK), same shapes and weights.

A benchmark, not a test: ``python -m edgepack.benchmarks.gemm`` exports one HashedLinear at 1/8 (run
on the edgepack kernels, ``decode_at_load=False``: expand mode, our GEMM on the expanded weight) and
an ``nn.Linear`` holding the same decoded weight and bias (the runtime's dense kernel), runs both
single-threaded in interleaved rounds in one process, checks that the outputs agree and prints a
Markdown table: median µs each and the ratio ours / theirs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from .models import interleaved, runner

SHAPES = ("125x64x64", "1x1024x1024", "8x1024x1024")  # rows of X × out × in: DS-CNN pointwise, MLP


def export_pair(folder: Path, rows: int, out: int, inp: int, runtime: str) -> tuple[Path, Path]:
    """(hashed, dense) files of one layer whose dense twin holds the hashed layer's decoded weight."""
    import torch

    from edgepack.compression import HashedLinear
    from edgepack.exporter import export

    torch.manual_seed(0)
    hashed = HashedLinear(inp, out, ratio=1 / 8, seed=42).eval()
    dense = torch.nn.Linear(inp, out).eval()
    with torch.no_grad():
        dense.weight.copy_(hashed.dense_weight())
        dense.bias.copy_(hashed.dense_bias())
    suffix = ".onnx" if runtime == "ort" else ".tflite"
    example = torch.randn(rows, inp)
    return (export(hashed, example, folder / f"hashed_{rows}x{out}x{inp}{suffix}"),
            export(dense, example, folder / f"dense_{rows}x{out}x{inp}{suffix}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="rows x out x in, comma-separated")
    parser.add_argument("--runtimes", default="ort,tflite", help="ort and/or tflite")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (median of them)")
    parser.add_argument("--calls", type=int, default=50, help="calls per side per round")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread; {args.rounds} interleaved rounds × {args.calls} calls\n")
    print("| runtime | rows × out × in | theirs | theirs µs | ours µs | ours / theirs | max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes.split(","):
            for shape in args.shapes.split(","):
                rows, out, inp = (int(v) for v in shape.split("x"))
                hashed, dense = export_pair(Path(tmp), rows, out, inp, runtime)
                x = np.random.default_rng(0).standard_normal((rows, inp)).astype(np.float32)
                runs = {"ours": runner(hashed, runtime, False, x), "theirs": runner(dense, runtime, True, x)}
                outputs = {name: np.array(run()[0] if runtime == "ort" else _tflite_output(run)) for name, run in
                           runs.items()}
                diff = float(np.abs(outputs["ours"] - outputs["theirs"]).max())
                medians = interleaved(runs, args.rounds, args.calls)
                theirs = "MLAS" if runtime == "ort" else "XNNPACK"
                print(f"| {'ORT' if runtime == 'ort' else 'LiteRT'} | {shape} | {theirs} | "
                      f"{medians['theirs'] * 1e6:.2f} | {medians['ours'] * 1e6:.2f} | "
                      f"{medians['ours'] / medians['theirs']:.2f} | {diff:.1e} |", flush=True)


def _tflite_output(invoke) -> np.ndarray:
    """The output of the interpreter whose bound ``invoke`` this is, after one call."""
    invoke()
    interpreter = invoke.__self__
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


if __name__ == "__main__":
    main()
