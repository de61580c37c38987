"""ORT session latency of each ai.edgepack op (kernels mode) vs a dense ONNX MatMul of the same shape.

A benchmark, not a test: ``python -m edgepack.benchmarks.onnx_ops [--sizes 1024,4096]`` exports
one layer per op, runs every session single-threaded (``intra_op_num_threads=1``) at batch 1,
interleaving the sessions round by round so machine noise hits them alike, and prints medians
and ratios to dense as a Markdown table.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepack import onnx_session
from edgepack.compression import CirculantLinear, HashedLinear, LDRLinear
from edgepack.exporter import export

LAYERS = {
    "dense MatMul": (lambda n: nn.Linear(n, n), {}),
    "CirculantMatMul b=n": (lambda n: CirculantLinear(n, n, block_size=n), {}),
    "CirculantMatMul b=64": (lambda n: CirculantLinear(n, n, block_size=64), {}),
    "LDRMatMul r=2": (lambda n: LDRLinear(n, n, rank=2), {}),
    "HashedMatMul expand 1/8": (lambda n: HashedLinear(n, n, ratio=1 / 8), {}),
    "HashedMatMul stream 1/8": (lambda n: HashedLinear(n, n, ratio=1 / 8), {"stream": True}),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096", help="square layer sizes n")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--runs", type=int, default=20, help="session.run calls per round")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("| op | n | median µs | × dense |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            x = torch.randn(1, n)
            sessions = {}
            for name, (make, options) in LAYERS.items():
                path = export(make(n).eval(), x, Path(tmp) / f"{n}_{len(sessions)}.onnx", **options)
                sessions[name] = onnx_session(path, use_kernels=True, threads=1, decode_at_load=False)
            feed = x.numpy()
            samples = {name: [] for name in sessions}
            for _ in range(args.rounds):
                for name, session in sessions.items():
                    input_name = session.get_inputs()[0].name
                    start = time.perf_counter()
                    for _ in range(args.runs):
                        session.run(None, {input_name: feed})
                    samples[name].append((time.perf_counter() - start) / args.runs)
            medians = {name: float(np.median(times)) for name, times in samples.items()}
            for name, seconds in medians.items():
                ratio = medians["dense MatMul"] / seconds
                print(f"| {name} | {n} | {seconds * 1e6:.1f} | {ratio:.2f}× faster |", flush=True)


if __name__ == "__main__":
    main()
