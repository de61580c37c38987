"""Forward time of each compressed torch layer vs ``nn.Linear`` of the same shape, single thread.

A benchmark, not a test: ``python -m edgepack.benchmarks.layers [--sizes 256,1024] [--batch 1]``
prints a Markdown table of median times (torch.utils.benchmark, measured side by side in one run)
and the ratio to the dense layer. Hashed layers decode their dense weight on every forward (the
training path); the C kernels are the inference path.
"""

import argparse

import torch
from torch import nn
from torch.utils import benchmark

from edgepack.compression import CirculantLinear, HashedLinear, LDRLinear

LAYERS = {
    "nn.Linear": lambda n: nn.Linear(n, n),
    "HashedLinear 1/8": lambda n: HashedLinear(n, n, ratio=1 / 8),
    "HashedLinear K=4 1/8": lambda n: HashedLinear(n, n, ratio=1 / 8, num_hashes=4),
    "CirculantLinear b=n": lambda n: CirculantLinear(n, n, block_size=n),
    "CirculantLinear b=64": lambda n: CirculantLinear(n, n, block_size=64),
    "LDRLinear r=2": lambda n: LDRLinear(n, n, rank=2),
}


def median_seconds(layer: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """Median wall time of one ``layer(x)`` without autograd."""
    timer = benchmark.Timer("layer(x)", globals={"layer": layer, "x": x},
                            setup="torch.set_grad_enabled(False)", num_threads=1)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096", help="square layer sizes n")
    parser.add_argument("--batch", default="1,64", help="batch sizes")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| layer | n | batch | median µs | × nn.Linear |\n|---|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        layers = {name: make(n).eval() for name, make in LAYERS.items()}
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(batch, n)
            times = {name: median_seconds(layer, x, args.min_run_time)
                     for name, layer in layers.items()}
            for name, seconds in times.items():
                print(f"| {name} | {n} | {batch} | {seconds * 1e6:.1f} | "
                      f"{seconds / times['nn.Linear']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
