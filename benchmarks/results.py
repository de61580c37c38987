"""Results files: one JSON object per line (model × device × runtime), appended as each finishes.

An interrupted run keeps every complete line. Reading skips (and counts) what is not a record: a
torn last line, a line that is not a JSON object, bytes that are not UTF-8. Appending after a torn
line starts on a new line, so the new record stays readable.
"""

import functools
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

MIN_FREE_BYTES = 64 * 1024  # below this the first record would likely not fit


class ResultsError(EdgepackError, ValueError):
    """A results file cannot be written or read; the message names the file and the cause."""


@dataclass
class Results:
    """The records of a results file and how many lines were skipped as unreadable."""

    records: list[dict] = field(default_factory=list)
    skipped: int = 0


def check_writable(path: str | Path) -> None:
    """Raise ResultsError unless records can be appended to ``path`` (checked before measuring)."""
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"results file {path} is a directory; give a file name with -o (e.g. {path}/results.jsonl)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ResultsError(f"cannot write results file {path}: folder {folder} does not exist")
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise ResultsError(f"cannot write results file {path}: {error.strerror or error}") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ResultsError(f"cannot write results file {path}: only {free} bytes free on its file system "
                           f"(need at least {MIN_FREE_BYTES})")


def append_result(path: str | Path, record: dict) -> None:
    """Append one record as a single write of one line (after a newline when the file lacks its
    last one), then flush it to disk. OSError (disk full, read-only) reaches the caller."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    with open(path, "a+b") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size:
            stream.seek(size - 1)
            if stream.read(1) != b"\n":
                line = b"\n" + line
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def load_results(path: str | Path) -> Results:
    """Every record of a results file, and the count of lines skipped (torn, not a JSON object,
    not UTF-8). A missing file has no records; one that cannot be read raises ResultsError."""
    path = Path(path)
    if not path.exists():
        return Results()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResultsError(f"cannot read results file {path}: {error.strerror or error}") from None
    results = Results()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict):
            results.records.append(record)
        else:
            results.skipped += 1
    return results


def read_results(path: str | Path) -> list[dict]:
    """Every record of a results file (unreadable lines skipped; see load_results for the count)."""
    return load_results(path).records


def result_key(record: dict) -> tuple:
    """What identifies one measurement for ``--resume``: for a kws-stream record also the WAV it
    streamed (path and sha256), so another or a changed recording is measured again."""
    stream = record.get("kws_stream") or {}
    return (*(str(record.get(key)) for key in ("model_path", "device_spec", "runtime", "threads", "decode_at_load")),
            str(stream.get("wav")), str(stream.get("wav_sha256")))


def stream_wav(path: str | Path) -> dict:
    """How a kws-stream record names its WAV: the resolved path and the sha256 of its bytes."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"wav": str(path), "wav_sha256": _sha256(path, stat.st_size, stat.st_mtime_ns)}


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached while its size and mtime stay the same (one hash per bench, not per model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


MB = 1 << 20  # bytes per MB in every report (the kB of /proc/self/status are 1024 bytes)


def significant(value, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, never in e-notation (12,346 / 45.7 / 0.0108);
    "–" for None, integers as they are. One rule for the Markdown, HTML and CLI tables."""
    if value is None:
        return "–"
    if isinstance(value, (bool, int)):
        return f"{value:,}" if not isinstance(value, bool) else str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    value = float(f"{value:.{digits - 1}e}")  # rounded first, so 9.996 becomes 10.0, not 10.00
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:,.{max(decimals, 0)}f}"


def format_time_ms(ms) -> str:
    """A time given in ms with its unit: µs below 1 ms, s from 1000 ms, 3 significant digits."""
    if ms is None:
        return "–"
    ms = float(f"{ms:.2e}")  # rounded first, so 999.96 ms shows as 1.00 s
    if abs(ms) < 1:
        return f"{significant(ms * 1e3)} µs"
    if abs(ms) >= 1e3:
        return f"{significant(ms / 1e3)} s"
    return f"{significant(ms)} ms"


def format_ratio(ratio) -> str:
    """A ratio as "1.95×" (3 significant digits)."""
    return "–" if ratio is None else f"{significant(ratio)}×"
