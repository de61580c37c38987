"""``edgepack kws calibrate MODEL --data DIR``: pick the detector's settings for a model on a validation stream.

As users of wake-word engines tune a detector: a long stream built like stream-eval's but from the
VALIDATION split's voices (never the test voices, which stream-eval then measures on), the model run
once over it, and every combination of threshold, averaging window, minimum count and suppression
time scored on those posteriors. The setting with the most hits at no more than ``--target-fa`` false
alarms per hour wins and is written to ``detector.json`` beside the model, which ``kws listen``,
``kws stream-eval`` (and through it the native runner) then use by default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .detector import (
    DETECTOR_FILE,
    RecognizeCommands,
    StreamError,
    _check_hop,
    detect_stream,
    load_runner,
    write_detector_settings,
)
from .progress import progress_bar
from .stream_eval import build_stream, sweep

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.5, 0.991, 0.02))
WINDOWS_MS = (250.0, 500.0, 750.0, 1000.0, 1500.0)
MINIMUM_COUNTS = (3, 10, 20)
SUPPRESSIONS_MS = (1000.0, 1500.0, 2000.0, 3000.0)
TARGET_FA_PER_HOUR = 1.0  # a margin below the 2 per hour the stream-eval target allows
CALIBRATION_SEED = 1  # another stream layout than stream-eval's default seed 0


def grid(thresholds=THRESHOLDS, windows_ms=WINDOWS_MS, minimum_counts=MINIMUM_COUNTS,
         suppressions_ms=SUPPRESSIONS_MS) -> list[dict]:
    """Every combination of the four RecognizeCommands settings (as dicts)."""
    return [{"threshold": float(t), "window_ms": float(w), "minimum_count": int(c), "suppression_ms": float(s)}
            for w in windows_ms for c in minimum_counts for s in suppressions_ms for t in thresholds]


def choose(points: list[dict], target_fa_per_hour: float) -> dict | None:
    """The best scored setting with false alarms per hour <= the target: most hits, then fewest false
    alarms, then the shortest median delay, then the highest threshold (the most margin); None when no
    setting meets the target."""
    allowed = [p for p in points if p["false_alarms_per_hour"] <= target_fa_per_hour]
    if not allowed:
        return None

    def rank(p):
        delay = p["delay_median_s"] if p["delay_median_s"] is not None else math.inf
        return (-p["hits"], p["false_alarms"], delay, -p["threshold"], p["window_ms"], p["minimum_count"],
                p["suppression_ms"])
    return min(allowed, key=rank)


def calibrate(model, data, minutes: float = 60.0, seed: int = CALIBRATION_SEED,
              target_fa_per_hour: float = TARGET_FA_PER_HOUR, output=None, model_kind: str | None = None,
              hop_ms: int = 20, tolerance_s: float = 1.0, settings: list[dict] | None = None,
              progress: bool = True, work=None, threads: int = 1) -> dict:
    """Calibrate the detector for ``model`` on a ``minutes`` stream of ``data``'s validation split; write
    the chosen setting to ``output`` (default: detector.json beside a model file; None for a module
    leaves nothing written). ``work`` (a folder) also gets the stream's truth.json, the posteriors
    (posteriors.npz: times, posteriors) and every scored setting (points.json). Returns {"chosen": point
    or None, "points": every scored setting, ...}. ``threads``: torch / ONNX Runtime threads (1 by default:
    fastest on a shared machine, as `kws train`)."""
    from .speech_commands import load_split

    hop = _check_hop(hop_ms)
    if not (isinstance(threads, int) and threads >= 1):
        raise StreamError(f"--threads must be a whole number >= 1, got {threads}")
    if not (target_fa_per_hour >= 0 and math.isfinite(target_fa_per_hour)):
        raise StreamError(f"--target-fa must be a number >= 0 (false alarms per hour), got {target_fa_per_hour}")
    settings = grid() if settings is None else settings
    for setting in settings:
        RecognizeCommands(**setting)  # refuse a bad setting before any work
    if output is None and isinstance(model, (str, Path)):
        output = Path(model).parent / DETECTOR_FILE
    runner = load_runner(model, model_kind, threads)
    split = load_split(data, "validation", unknown_fraction=10.0, silence_fraction=0.0, seed=seed)
    stream = build_stream(split, minutes, seed)
    audio = np.round(np.clip(stream.audio, -1, 1) * 32767) / 32768  # the int16 samples a WAV would hold
    truth = stream.truth()
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task("calibrate: running the model", total=len(audio) // hop)
            _, times, posteriors = detect_stream(runner, audio, RecognizeCommands(), hop_ms=hop_ms,
                                                 progress=lambda n: bar.update(task, completed=n))
    finally:
        torch.set_num_threads(previous)
    if work is not None:
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / "truth.json").write_text(json.dumps(truth))
        np.savez_compressed(work / "posteriors.npz", times=times, posteriors=posteriors)
    points = sweep(times, posteriors, truth, settings, tolerance_s)
    if work is not None:
        (work / "points.json").write_text(json.dumps(points))
    chosen = choose(points, target_fa_per_hour)
    result = {"model": str(model), "data": str(data), "split": "validation", "minutes": minutes, "seed": seed,
              "hop_ms": hop_ms, "tolerance_s": tolerance_s, "target_fa_per_hour": target_fa_per_hour,
              "keywords": len(truth["keywords"]), "non_keyword_hours": points[0]["non_keyword_hours"] if points else 0,
              "settings_tried": len(points), "chosen": chosen, "points": points, "output": None}
    if chosen is not None and output is not None:
        record = {k: result[k] for k in ("model", "data", "split", "minutes", "seed", "hop_ms", "tolerance_s",
                                         "target_fa_per_hour", "keywords", "non_keyword_hours")}
        record.update({k: chosen[k] for k in ("hits", "hit_rate", "false_alarms", "false_alarms_per_hour",
                                              "delay_median_s")})
        rec = RecognizeCommands(**{k: chosen[k] for k in ("threshold", "window_ms", "minimum_count",
                                                          "suppression_ms")})
        result["output"] = str(write_detector_settings(output, rec, record))
    return result


def print_summary(result: dict, top: int = 8) -> None:
    """The chosen setting and the best few others as a rich table (stderr)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title=f"calibrate: {result['minutes']:g} min validation stream, {result['keywords']} keywords, "
                        f"{result['non_keyword_hours'] * 60:.1f} min non-keyword audio, "
                        f"{result['settings_tried']} settings")
    for name in ("threshold", "window", "min count", "suppression", "hits", "false alarms (/h)", "delay"):
        table.add_column(name, justify="right")
    ranked = sorted(result["points"], key=lambda p: (-p["hits"], p["false_alarms"]))
    allowed = [p for p in ranked if p["false_alarms_per_hour"] <= result["target_fa_per_hour"]]
    shown = ([result["chosen"]] if result["chosen"] else []) + [p for p in allowed[:top] if p is not result["chosen"]]
    for p in shown:
        delay = "–" if p["delay_median_s"] is None else f"{p['delay_median_s'] * 1000:.0f} ms"
        table.add_row(f"{p['threshold']:g}", f"{p['window_ms']:g} ms", str(p["minimum_count"]),
                      f"{p['suppression_ms']:g} ms", f"{p['hit_rate']:.1%} ({p['hits']})",
                      f"{p['false_alarms']} ({p['false_alarms_per_hour']:.2f})", delay,
                      style="bold" if p is result["chosen"] else None)
    console.print(table)
    if result["chosen"] is None:
        console.print(f"[red]no setting keeps false alarms at or below {result['target_fa_per_hour']:g} per hour; "
                      "nothing written")
    elif result["output"]:
        console.print(f"wrote {result['output']} (first row); `kws listen` and `kws stream-eval` use it for this "
                      "model's folder")


def add_parser(subparsers) -> None:
    """Add ``calibrate`` to the ``edgepack kws`` sub-commands."""
    p = subparsers.add_parser("calibrate", help="choose detector settings on a validation stream (detector.json)")
    p.add_argument("model", help="a model file: .onnx, .tflite or a `kws train` .safetensors checkpoint")
    p.add_argument("--model-kind", choices=("onnx", "tflite", "torch"), help="override the kind the suffix says")
    p.add_argument("--data", required=True, help="dataset folder (Speech Commands layout; the validation split "
                                                 "is used)")
    p.add_argument("--minutes", type=float, default=60.0, help="validation stream length (default 60)")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED,
                   help=f"stream layout seed (default {CALIBRATION_SEED})")
    p.add_argument("--target-fa", type=float, default=TARGET_FA_PER_HOUR, metavar="PER_HOUR",
                   help=f"most false alarms per hour allowed (default {TARGET_FA_PER_HOUR:g})")
    p.add_argument("--tolerance-ms", type=float, default=1000.0,
                   help="a hit may come up to this long after the keyword clip's end (default 1000)")
    p.add_argument("--hop-ms", type=int, default=20, help="model run interval (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads (default 1)")
    p.add_argument("-o", "--output", help="where to write the settings (default detector.json beside MODEL)")
    p.add_argument("--work", metavar="DIR", help="also write the stream's truth.json, posteriors.npz and every "
                                                 "scored setting (points.json) there")
    p.set_defaults(handler=_calibrate)


def _calibrate(args) -> int:
    result = calibrate(args.model, args.data, args.minutes, args.seed, args.target_fa, args.output,
                       args.model_kind, args.hop_ms, args.tolerance_ms / 1000.0, work=args.work,
                       threads=args.threads)
    print_summary(result)
    if result["chosen"] is None:
        best = min(p["false_alarms_per_hour"] for p in result["points"])
        raise StreamError(f"{args.model}: no detector setting keeps false alarms at or below {args.target_fa:g} per "
                          f"hour on the validation stream (the fewest: {best:.2f} per hour); nothing written. "
                          "Raise --target-fa or train the model further")
    print(json.dumps({"output": result["output"], "chosen": result["chosen"]}))
    return 0
