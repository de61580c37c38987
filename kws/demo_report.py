"""The KWS demo's report: one table (size, accuracy, latency, energy), Pareto plots, the dense
model's confusion matrix and the stream's detections, as Markdown + a self-contained HTML page."""

from __future__ import annotations

import io
import json
from pathlib import Path

from edgepack.benchmarks.results import format_ratio, format_time_ms

HEADERS = ["recipe", "weight bytes", "× smaller", "test acc.", "acc. ONNX", "acc. TFLite", "ONNX file",
           "ORT latency", "× dense (ORT)", "LiteRT latency", "× dense (LiteRT)"]
CONSOLE = {"recipe": "recipe", "weight bytes": "bytes", "× smaller": "smaller", "acc. ONNX": "acc.",
           "ORT latency": "ORT", "× dense (ORT)": "ORT ×", "× dense (LiteRT)": "LiteRT ×"}


def table_rows(summary: dict) -> list[list[str]]:
    """The summary's rows as table cells (times in µs/ms, ratios with 3 significant digits)."""
    return [[r["recipe"], f"{r['weight_bytes']:,}", format_ratio(r["times_smaller"]), f"{r['accuracy']:.1%}",
             f"{r['accuracy_onnx']:.1%}", f"{r['accuracy_tflite']:.1%}", f"{r['onnx_file_bytes']:,} B",
             format_time_ms(r["ort_latency_s"] * 1e3), format_ratio(r["ort_ratio"]),
             format_time_ms(r["litert_latency_s"] * 1e3), format_ratio(r["litert_ratio"])]
            for r in summary["rows"]]


def print_summary(summary: dict, console) -> None:
    """The table and the stream figures on the console."""
    from rich import box
    from rich.table import Table

    table = Table(title="DS-CNN-S keyword spotting: dense vs compressed (test voices unseen in training)",
                  box=box.SIMPLE)
    shown = [HEADERS.index(h) for h in CONSOLE]
    for i in shown:
        table.add_column(CONSOLE[HEADERS[i]], justify="left" if i == 0 else "right", no_wrap=True)
    for cells in table_rows(summary):
        table.add_row(*[cells[i] for i in shown])
    console.print(table)
    for name, s in summary["stream"].items():
        console.print(f"stream ({name}): {_stream_line(s)}")
    console.print(summary["aarch64"]["summary"])
    console.print(f"report: {summary.get('report')}")


def _stream_line(s: dict) -> str:
    delay = s.get("delay_s") or {}
    median = delay.get("median")
    return (f"{s['hit_rate']:.1%} of keywords detected, {s['false_alarms']} false alarm(s) = "
            f"{s['false_alarms_per_hour']:.1f} per hour of non-keyword audio, median delay "
            + (f"{median * 1e3:.0f} ms" if median is not None else "n/a") + f" ({s['minutes']:g} min stream)")


def write_demo_report(summary: dict, out) -> Path:
    """Write report.md, report.html and the plots into ``out``; returns the HTML's path."""
    from edgepack.benchmarks.plots import plot_pareto
    from edgepack.benchmarks.report import html_page, markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary["rows"]
    names = [r["recipe"] for r in rows]
    sizes = [r["weight_bytes"] for r in rows]
    plots = [
        plot_pareto(list(zip(sizes, [r["accuracy"] for r in rows])), names, out / "accuracy_vs_size.png",
                    xlabel="weight bytes", ylabel="test accuracy", title="Accuracy vs size",
                    maximize_y=True),
        plot_pareto(list(zip(sizes, [r["ort_latency_s"] * 1e3 for r in rows])), names, out / "latency_vs_size.png",
                    xlabel="weight bytes", ylabel="ORT latency", title="Latency (ONNX Runtime, 1 thread) vs size",
                    maximize_y=False, time_y=True),
        _confusion(rows[0], summary, out),
    ]
    plots += [_stream_plot(name, s, out) for name, s in summary["stream"].items()]
    sections = [
        "# edgepack demo: keyword spotting end to end",
        "12 classes (10 keywords, unknown, silence), 1 s clips at 16 kHz synthesised with espeak-ng and "
        "sox; test voices never seen in training. DS-CNN-S on 49×10 MFCC features"
        + (" (quick mode: tiny data, 2 epochs — the figures mean nothing)." if summary["quick"] else "."),
        "## Models\n\n" + markdown_table(HEADERS, table_rows(summary)),
        "Weight bytes: the parameters as stored (compressed). Latency: median of interleaved rounds in one "
        "process on this machine, 1 thread, batch 1; × dense is the ratio to the dense model measured in "
        "the same rounds. Compressed weights are decoded to dense constants when the model is loaded.",
        "## Streaming detection\n\n" + "\n\n".join(f"{name}: {_stream_line(s)}"
                                                    for name, s in summary["stream"].items()),
        "## aarch64\n\n" + summary["aarch64"]["summary"],
        "## Step times\n\n" + markdown_table(["step", "seconds"], [[k, f"{v:.0f}"]
                                                                  for k, v in summary["seconds"].items()]),
    ]
    sections += [f"![{p.stem}]({p.name})" for p in plots]
    markdown = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    page = out / "report.html"
    page.write_text(html_page(markdown, plots, title="edgepack demo"), encoding="utf-8")
    return page


def _confusion(row: dict, summary: dict, out: Path) -> Path:
    """The dense ONNX model's confusion matrix on the test split (ONNX Runtime)."""
    from rich.console import Console

    from edgepack.kws.evaluate import evaluate

    quiet = Console(file=io.StringIO())
    result = evaluate(row["onnx"], summary["data"], "test", output=out, console=quiet)
    return Path(result["plot"])


def _stream_plot(name: str, s: dict, out: Path) -> Path:
    """Keywords in the stream (ground truth) and the detector's outputs on one time line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(s["results"]).read_text())
    truth = json.loads((Path(s["results"]).parent / "truth.json").read_text())
    figure, axis = plt.subplots(figsize=(10, 2.6))
    for k in truth["keywords"]:
        axis.axvspan(k["start_s"], k["end_s"], color="tab:green", alpha=0.15)
        axis.text(k["start_s"], 1.12, k["label"], fontsize=6, rotation=90, va="bottom")
    for d in results["detections"]:
        axis.plot([d["time_s"]], [d["score"]], "o", color="tab:blue", ms=4)
    axis.set(ylim=(0, 1.6), xlim=(0, truth["duration_s"]), xlabel="time (s)", ylabel="score",
             title=f"Stream: keywords (green) and detections (dots), {name}")
    figure.tight_layout()
    path = out / f"stream_{name.replace('+', '_')}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
