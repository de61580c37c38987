"""``edgepack kws stream-eval MODEL --data DIR``: keyword spotting on a long stream with known truth.

The stream is minutes of background noise and non-keyword speech ("unknown" clips) with keywords of
the TEST split (held-out voices) inserted at known times, deterministic from a seed. The detector
runs over it; we report the hit rate (the right keyword detected between the clip's start and
``tolerance`` after its end), false alarms per hour of non-keyword audio and the detection delay
(from the end of the spoken word to the detection).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detector import (
    Detection,
    RecognizeCommands,
    StreamError,
    _check_hop,
    detect_stream,
    load_runner,
    recognizer_for,
    sweep_detections,
)
from .labels import CLASSES, KEYWORDS, SAMPLE_RATE
from .progress import progress_bar

UNKNOWN = CLASSES.index("unknown")
SWEEP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP_WINDOWS_MS = (250.0, 500.0, 1000.0)


@dataclass
class Stream:
    """A built stream: ``audio`` float32 at 16 kHz, the inserted ``keywords`` and ``unknown`` clips as
    dicts (label, start_s, end_s, word_end_s, source)."""

    audio: np.ndarray
    keywords: list[dict] = field(default_factory=list)
    unknown: list[dict] = field(default_factory=list)
    seed: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def truth(self) -> dict:
        """The ground truth as JSON: every inserted clip with its times."""
        return {"sample_rate": SAMPLE_RATE, "duration_s": self.duration_s, "seed": self.seed,
                "keywords": self.keywords, "unknown": self.unknown}


def word_end(clip: np.ndarray) -> int:
    """The sample after the last one within 20 dB of the clip's peak: where the spoken word ends."""
    level = np.abs(clip)
    peak = float(level.max()) if len(level) else 0.0
    if peak == 0.0:
        return len(clip)
    return int(np.nonzero(level >= 0.1 * peak)[0][-1]) + 1


def build_stream(split, minutes: float = 10.0, seed: int = 0, keyword_fraction: float = 0.5,
                 gap_s: tuple[float, float] = (1.0, 3.0), volume: tuple[float, float] = (0.02, 0.1)) -> Stream:
    """A stream of ``minutes`` from a KwsSplit (audio, labels, background): the background recordings
    at a volume drawn per 10 s piece from ``volume`` (MLPerf Tiny trains with up to 0.1; white noise at
    RMS 0.1 × volume if there are none), and every ``gap_s`` seconds a clip: a keyword with probability
    ``keyword_fraction``, else an "unknown" word. Deterministic for a given ``seed``."""
    if minutes <= 0 or not math.isfinite(minutes):
        raise StreamError(f"--minutes must be a positive number, got {minutes}")
    labels = np.asarray(split.labels)
    kw_idx = np.nonzero(labels >= CLASSES.index(KEYWORDS[0]))[0]
    unk_idx = np.nonzero(labels == UNKNOWN)[0]
    if not len(kw_idx):
        raise StreamError("the test split has no keyword clips to insert")
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * SAMPLE_RATE)
    clips = np.asarray(split.audio, np.float32)
    audio = _background(split.background, total, volume, rng)
    stream = Stream(audio=audio, seed=seed)
    pos = int(rng.uniform(*gap_s) * SAMPLE_RATE)
    while pos + clips.shape[1] <= total:
        keyword = not len(unk_idx) or rng.random() < keyword_fraction
        i = int(rng.choice(kw_idx if keyword else unk_idx))
        clip = clips[i]
        audio[pos:pos + len(clip)] += clip
        entry = {"label": CLASSES[labels[i]], "start_s": pos / SAMPLE_RATE, "end_s": (pos + len(clip)) / SAMPLE_RATE,
                 "word_end_s": (pos + word_end(clip)) / SAMPLE_RATE,
                 "source": split.paths[i] if getattr(split, "paths", None) else int(i)}
        (stream.keywords if keyword else stream.unknown).append(entry)
        pos += len(clip) + int(rng.uniform(*gap_s) * SAMPLE_RATE)
    np.clip(audio, -1.0, 1.0, out=audio)
    return stream


def _background(recordings, total: int, volume: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """``total`` samples of background: 10 s pieces of the recordings at random offsets, each at a
    volume drawn from ``volume``."""
    usable = [np.asarray(r, np.float32) for r in recordings if len(r) >= SAMPLE_RATE]
    out = np.zeros(total, np.float32)
    piece = 10 * SAMPLE_RATE
    for start in range(0, total, piece):
        n = min(piece, total - start)
        if usable:
            rec = usable[rng.integers(len(usable))]
            offset = int(rng.integers(max(1, len(rec) - n + 1)))
            noise = np.resize(rec[offset:offset + n], n)
        else:
            noise = rng.standard_normal(n).astype(np.float32) * 0.1
        out[start:start + n] = noise * rng.uniform(*volume)
    return out


def score(detections: list[Detection], truth: dict, tolerance_s: float = 1.0) -> dict:
    """Hit rate, false alarms per hour and delays of ``detections`` against ``truth`` (Stream.truth()).

    A detection is a hit when it names a keyword clip's label between the clip's start and
    ``tolerance_s`` after its end and that clip was not hit yet; every other detection is a false alarm.
    Non-keyword time is the stream minus the keyword clips. Delay: detection time − word end."""
    keywords = truth["keywords"]
    hit = [None] * len(keywords)
    false_alarms = []
    starts = [kw["start_s"] for kw in keywords]
    lasts = [kw["end_s"] + tolerance_s for kw in keywords]
    ordered = starts == sorted(starts) and lasts == sorted(lasts)  # as build_stream lays them out
    for d in detections:
        # only keywords with start <= t <= end + tolerance can match: a contiguous range when ordered
        lo, hi = (bisect.bisect_left(lasts, d.time_s), bisect.bisect_right(starts, d.time_s)) if ordered \
            else (0, len(keywords))
        match = next((k for k in range(lo, hi) if hit[k] is None and keywords[k]["label"] == d.label
                      and keywords[k]["start_s"] <= d.time_s <= lasts[k]), None)
        if match is None:
            false_alarms.append(d)
        else:
            hit[match] = d
    keyword_s = sum(kw["end_s"] - kw["start_s"] for kw in keywords)
    hours = max(truth["duration_s"] - keyword_s, 0.0) / 3600.0
    delays = [d.time_s - kw["word_end_s"] for kw, d in zip(keywords, hit) if d is not None]
    per_label = {}
    for kw, d in zip(keywords, hit):
        entry = per_label.setdefault(kw["label"], {"keywords": 0, "hits": 0})
        entry["keywords"] += 1
        entry["hits"] += d is not None
    hits = sum(d is not None for d in hit)
    return {
        "keywords": len(keywords), "hits": hits, "hit_rate": hits / len(keywords) if keywords else float("nan"),
        "false_alarms": len(false_alarms), "non_keyword_hours": hours,
        "false_alarms_per_hour": len(false_alarms) / hours if hours > 0 else float("nan"),
        "delay_s": {"median": float(np.median(delays)) if delays else None,
                    "p90": float(np.percentile(delays, 90)) if delays else None},
        "per_label": per_label,
        "false_alarm_detections": [d.as_dict() for d in false_alarms],
        "missed": [kw for kw, d in zip(keywords, hit) if d is None],
    }


def evaluate(model, data, minutes: float = 10.0, seed: int = 0, output=None,
             recognizer: RecognizeCommands | None = None, tolerance_s: float = 1.0, model_kind: str | None = None,
             hop_ms: int = 20, progress: bool = True, native: bool = False, threads: int = 1) -> dict:
    """Build the stream from ``data``'s test split, run the detector, score it; with ``output`` (a
    folder) also write stream.wav, truth.json and results.json there. ``native`` (an .onnx model and
    an ``output`` folder) also runs ``edgepack_kws_stream --bench`` on stream.wav: per-hop latency on
    this machine and whether its detections are the Python detector's. ``threads``: torch / ONNX Runtime
    threads for the Python detector (1 by default: fastest on a shared machine). Returns the results dict."""
    from .speech_commands import load_split
    from .wav import read_wav, write_wav

    hop = _check_hop(hop_ms)
    if not (isinstance(threads, int) and threads >= 1):
        raise StreamError(f"--threads must be a whole number >= 1, got {threads}")
    if native:
        if output is None or Path(str(model)).suffix.lower() != ".onnx":
            raise StreamError("--native needs an .onnx model and an output folder (it runs edgepack_kws_stream on "
                              "the stream's WAV)")
        native_runner()
    recognizer = recognizer or recognizer_for(model)
    runner = load_runner(model, model_kind, threads)
    split = load_split(data, "test", unknown_fraction=10.0, silence_fraction=0.0, seed=seed)
    stream = build_stream(split, minutes, seed)
    truth = stream.truth()
    audio = stream.audio
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_wav(out / "stream.wav", stream.audio)
        (out / "truth.json").write_text(json.dumps(truth, indent=1))
        audio = read_wav(out / "stream.wav", max_seconds=stream.duration_s + 1.0)  # the int16 samples native reads
    hops = len(audio) // hop
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task("stream-eval: detecting", total=hops)
            detections, times, posteriors = detect_stream(runner, audio, recognizer, hop_ms=hop_ms,
                                                          progress=lambda n: bar.update(task, completed=n))
    finally:
        torch.set_num_threads(previous)
    results = {"model": str(model), "data": str(data), "minutes": minutes, "seed": seed, "tolerance_s": tolerance_s,
               "detector": {"window_ms": recognizer.window_ms, "threshold": recognizer.threshold,
                            "suppression_ms": recognizer.suppression_ms, "minimum_count": recognizer.minimum_count,
                            "hop_ms": hop_ms},
               **score(detections, truth, tolerance_s), "detections": [d.as_dict() for d in detections],
               "operating_points": operating_points(times, posteriors, truth, recognizer, tolerance_s)}
    if native:
        results["native"] = native_bench(model, Path(output) / "stream.wav", recognizer, hop_ms)
        results["native"]["same_detections"] = [(d["label"], d["time_s"]) for d in results["native"]["detections"]] \
            == [(d["label"], d["time_s"]) for d in results["detections"]]
    if output is not None:
        (Path(output) / "results.json").write_text(json.dumps(results, indent=1))
    return results


def native_runner() -> Path:
    """The host's ``edgepack_kws_stream`` (``make kernels`` builds it into build/host/ort/)."""
    from edgepack.runtime_kernels.artifacts import ROOT

    path = ROOT / "build" / "host" / "ort" / "edgepack_kws_stream"
    if not path.is_file():
        raise StreamError(f"{path} not found; build it with `make kernels`")
    return path


def native_bench(model, wav: Path, recognizer: RecognizeCommands, hop_ms: int = 20) -> dict:
    """``edgepack_kws_stream --bench`` on ``wav`` with the host's ONNX Runtime and libedgepack_ort: its
    JSON (per-hop frontend_ms, model_ms, hop_total_ms statistics and the detections)."""
    import subprocess

    from edgepack.runtime_kernels import ort_library_path
    from edgepack.runtime_kernels.artifacts import onnxruntime_library_path

    argv = [str(native_runner()), "--ort", str(onnxruntime_library_path()), "--lib", ort_library_path(),
            "--model", str(model), "--bench", "--threshold", repr(recognizer.threshold),
            "--window-ms", repr(recognizer.window_ms), "--suppression-ms", repr(recognizer.suppression_ms),
            "--min-count", str(recognizer.minimum_count), "--hop-ms", str(hop_ms), str(wav)]
    done = subprocess.run(argv, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    if done.returncode or result.get("status") != "ok":
        raise StreamError(f"edgepack_kws_stream failed (exit {done.returncode}): "
                          f"{result.get('error') or done.stderr.strip()[-500:]}")
    return result


def operating_points(times, posteriors, truth: dict, recognizer: RecognizeCommands, tolerance_s: float,
                     thresholds=SWEEP_THRESHOLDS, windows_ms=SWEEP_WINDOWS_MS) -> list[dict]:
    """Hit rate and false alarms per hour of the same posteriors under other thresholds and averaging
    windows (the other settings as ``recognizer``): where to set ``--threshold`` for a model."""
    grid = [{**recognizer.settings(), "window_ms": w, "threshold": t} for w in windows_ms for t in thresholds]
    return [{"window_ms": p["window_ms"], "threshold": p["threshold"], "hit_rate": p["hit_rate"],
             "false_alarms_per_hour": p["false_alarms_per_hour"]}
            for p in sweep(times, posteriors, truth, grid, tolerance_s, recognizer.labels, tuple(recognizer.ignore))]


def sweep(times, posteriors, truth: dict, grid: list[dict], tolerance_s: float = 1.0, labels=CLASSES,
          ignore=("silence", "unknown")) -> list[dict]:
    """Each detector setting of ``grid`` scored on the same posteriors: the setting plus hits, keywords,
    hit_rate, false_alarms, non_keyword_hours, false_alarms_per_hour and the median delay (s)."""
    points = []
    for setting, found in zip(grid, sweep_detections(times, posteriors, grid, labels, ignore)):
        result = score(found, truth, tolerance_s)
        points.append({**setting, **{k: result[k] for k in ("hits", "keywords", "hit_rate", "false_alarms",
                                                              "non_keyword_hours", "false_alarms_per_hour")},
                       "delay_median_s": result["delay_s"]["median"]})
    return points


def print_table(results: dict) -> None:
    """The headline figures and per-keyword hits as a rich table."""
    from rich.console import Console
    from rich.table import Table

    delay = results["delay_s"]

    def fmt(seconds):
        return "–" if seconds is None else f"{seconds * 1000:.0f} ms"
    table = Table(title=f"stream-eval: {results['minutes']:g} min, {results['keywords']} keywords")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("hit rate", f"{results['hit_rate']:.1%} ({results['hits']}/{results['keywords']})")
    table.add_row("false alarms / hour", f"{results['false_alarms_per_hour']:.2f} ({results['false_alarms']} in "
                                         f"{results['non_keyword_hours'] * 60:.1f} min)")
    table.add_row("delay after word end (median / p90)", f"{fmt(delay['median'])} / {fmt(delay['p90'])}")
    if "native" in results:
        hop = results["native"]["hop_total_ms"]
        table.add_row("native runner, per hop (median / p99)", f"{hop['median'] * 1000:.0f} µs / "
                                                                f"{hop['p99'] * 1000:.0f} µs")
        table.add_row("native detections = Python's", "yes" if results["native"]["same_detections"] else "NO")
    for label, entry in sorted(results["per_label"].items()):
        table.add_row(f"  {label}", f"{entry['hits']}/{entry['keywords']}")
    console = Console(stderr=True)
    console.print(table)
    points = results.get("operating_points") or []
    if points:
        sweep = Table(title="other settings on the same posteriors (hit rate / false alarms per hour)")
        sweep.add_column("window")
        thresholds = sorted({p["threshold"] for p in points})
        for t in thresholds:
            sweep.add_column(f"threshold {t:g}", justify="right")
        for window in sorted({p["window_ms"] for p in points}):
            row = {p["threshold"]: p for p in points if p["window_ms"] == window}
            sweep.add_row(f"{window:g} ms", *(f"{row[t]['hit_rate']:.0%} / {row[t]['false_alarms_per_hour']:.1f}"
                                              for t in thresholds))
        console.print(sweep)


def add_parser(subparsers) -> None:
    """Add ``stream-eval`` to the ``edgepack kws`` sub-commands."""
    from .listen import add_detector_arguments

    p = subparsers.add_parser("stream-eval", help="hit rate, false alarms/hour and delay on a long synthetic stream")
    add_detector_arguments(p)
    p.add_argument("--data", required=True, help="dataset folder (Speech Commands layout; the test split is used)")
    p.add_argument("--minutes", type=float, default=10.0, help="stream length (default 10)")
    p.add_argument("--seed", type=int, default=0, help="stream layout seed (default 0)")
    p.add_argument("--tolerance-ms", type=float, default=1000.0,
                   help="a hit may come up to this long after the keyword clip's end (default 1000)")
    p.add_argument("-o", "--output", default="stream-eval",
                   help="folder for stream.wav, truth.json, results.json (default stream-eval/)")
    p.add_argument("--native", action="store_true",
                   help="also run edgepack_kws_stream --bench on the stream (.onnx models): per-hop latency here")
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads (default 1)")
    p.set_defaults(handler=_stream_eval)


def _stream_eval(args) -> int:
    from .listen import recognizer_from

    results = evaluate(args.model, args.data, args.minutes, args.seed, args.output, recognizer_from(args),
                       args.tolerance_ms / 1000.0, args.model_kind, args.hop_ms, native=args.native,
                       threads=args.threads)
    print_table(results)
    print(json.dumps({k: results[k] for k in ("hit_rate", "hits", "keywords", "false_alarms", "false_alarms_per_hour",
                                              "non_keyword_hours", "delay_s")}))
    return 0
