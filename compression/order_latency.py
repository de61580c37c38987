"""Latency of the order search's final models on this host: each exported to ONNX (an early-exit model as its
segments, stopping at the first confident exit) and run in ONNX Runtime, one thread, batch 1, over the same
validation examples, all models in interleaved rounds (a ratio of two such medians is what the report shows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

ROUNDS = 7
EXAMPLES = 50


def _runner(model, example, folder: Path, inputs: np.ndarray) -> Callable[[], None]:
    """One pass over ``inputs`` (one example per call), as a device would run the exported model."""
    from edgepack.exporter.early_exit_export import EarlyExitRunner, export_early_exit
    from edgepack.exporter.onnx_export import export_onnx
    from edgepack.runtime_kernels import onnx_session

    from .early_exit import EarlyExitNet

    examples = [inputs[i:i + 1] for i in range(len(inputs))]
    if isinstance(model, EarlyExitNet):
        runner = EarlyExitRunner(export_early_exit(model, example, folder), threads=1)
        return lambda: [runner.run_one(x) for x in examples]
    session = onnx_session(export_onnx(model, example, folder / "model.onnx"), threads=1)
    name = session.get_inputs()[0].name
    return lambda: [session.run(None, {name: x}) for x in examples]


def measure_latencies(checkpoints: dict[str, Path], inputs: np.ndarray, folder: Path, trust_builder=(),
                      rounds: int = ROUNDS) -> dict[str, float | str]:
    """Median seconds per example of each checkpoint (label → path) over ``rounds`` interleaved rounds; a
    model that does not export gets the reason instead."""
    import torch

    from edgepack.benchmarks.models import interleaved

    from .checkpoint import load_checkpoint

    inputs = np.ascontiguousarray(inputs[:EXAMPLES], dtype=np.float32)
    example = torch.from_numpy(inputs[:1])
    runs, results = {}, {}
    for number, (label, path) in enumerate(checkpoints.items()):
        where = folder / f"model{number}"
        where.mkdir(parents=True, exist_ok=True)
        try:
            runs[label] = _runner(load_checkpoint(path, trust_builder=trust_builder), example, where, inputs)
        except EdgepackError as error:
            results[label] = f"not exported: {' '.join(str(error).split())[:200]}"
    if runs:
        results.update({label: seconds / len(inputs) for label, seconds in interleaved(runs, rounds, 1).items()})
    return results
