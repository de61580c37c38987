"""TFLite latency of a dense DS-CNN-S (XNNPACK) vs its compressed versions on the edgepack delegate
(decode_at_load=False; benchmarks.models measures the decoded-at-load path).

A benchmark, not a test: ``python -m edgepack.benchmarks.tflite_dscnn`` exports each model,
runs every interpreter single-threaded at batch 1, interleaving them round by round so machine
noise hits them alike, and prints a Markdown table (median µs, ratio to dense, file size).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepack import tflite_interpreter
from edgepack.compression import compress
from edgepack.exporter import export
from edgepack.kws.models import ds_cnn

VARIANTS = {
    "dense (XNNPACK)": None,
    "pointwise hashed 1/4": {"pw*": {"method": "hashed", "ratio": 1 / 4}},
    "pointwise hashed 1/8, K=2": {"pw*": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 2}},
    "all convs hashed 1/4": {"conv": {"method": "hashed", "ratio": 1 / 4}, "pw*": {"method": "hashed", "ratio": 1 / 4}},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--runs", type=int, default=50, help="invocations per round")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dense = ds_cnn().eval()
    x = torch.randn(1, 1, 49, 10)
    interpreters, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in VARIANTS.items():
            model = compress(dense, recipe)[0].eval() if recipe else dense
            path = export(model, x, Path(tmp) / f"{len(sizes)}.tflite")
            sizes[name] = path.stat().st_size
            interpreters[name] = tflite_interpreter(path, threads=1, decode_at_load=False)
        samples = {name: [] for name in interpreters}
        feed = x.numpy()
        for _ in range(args.rounds):
            for name, interpreter in interpreters.items():
                interpreter.set_tensor(interpreter.get_input_details()[0]["index"], feed)
                start = time.perf_counter()
                for _ in range(args.runs):
                    interpreter.invoke()
                samples[name].append((time.perf_counter() - start) / args.runs)
    medians = {name: float(np.median(times)) for name, times in samples.items()}
    base = medians["dense (XNNPACK)"]
    print("| model | median µs | × dense time | file bytes |\n|---|---:|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e6:.1f} | {seconds / base:.2f} | {sizes[name]:,} |")


if __name__ == "__main__":
    main()
