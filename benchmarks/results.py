"""Results files: one JSON object per line (model × device × runtime), appended as each finishes.

An interrupted run keeps every complete line; a torn last line is ignored when reading, and
``--resume`` skips what already succeeded.
"""

import json
import os
from pathlib import Path

import numpy as np


def append_result(path: str | Path, record: dict) -> None:
    """Append one record as a single write of one line, then flush it to disk."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def read_results(path: str | Path) -> list[dict]:
    """Every complete record of a results file (a torn or garbled line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def result_key(record: dict) -> tuple:
    """What identifies one measurement for ``--resume``."""
    return (record.get("model_path"), record.get("device_spec"), record.get("runtime"), record.get("threads"))


def latency_metrics(latencies_ms: list[float]) -> dict:
    """p50 / p90 / p99, the 10 %-trimmed mean, min and count of a latency sample, in ms."""
    values = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    trim = len(values) // 10
    trimmed = values[trim: len(values) - trim] if len(values) > 2 * trim else values
    return {"latency_p50_ms": float(np.percentile(values, 50)),
            "latency_p90_ms": float(np.percentile(values, 90)),
            "latency_p99_ms": float(np.percentile(values, 99)),
            "latency_trimmed_mean_ms": float(trimmed.mean()),
            "latency_min_ms": float(values[0]), "runs": int(len(values))}
