"""``edgepack report``: Markdown and a self-contained HTML page, with matplotlib plots, from a
results file: latency distribution per model, accuracy vs size, energy per inference, and a
comparison against a baseline model. Unreadable lines and "ok" records that lack a field the
report needs are skipped and counted, never fatal."""

import base64
import html
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .results import ResultsError, load_results  # noqa: E402

COLUMNS = [("latency_p50_ms", "p50 ms"), ("latency_p90_ms", "p90 ms"), ("latency_p99_ms", "p99 ms"),
           ("latency_trimmed_mean_ms", "trimmed mean ms"), ("init_ms", "init ms"),
           ("peak_rss_mb", "peak RSS MB"), ("size_kb", "size kB"),
           ("energy_mj_per_inference", "energy mJ/inf"), ("accuracy", "accuracy")]


class ReportPaths(dict):
    """write_report()'s files by name; ``skipped`` counts the lines and records it left out."""

    skipped: int = 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def well_formed(record: dict) -> bool:
    """Whether an "ok" record has what the tables and plots read: names, numeric metrics, latencies."""
    metrics = record.get("metrics")
    latencies = record.get("latencies_ms")
    return (isinstance(record.get("model"), str) and isinstance(record.get("runtime"), str)
            and isinstance(metrics, dict) and isinstance(record.get("device", {}), dict)
            and _number(metrics.get("latency_p50_ms")) and _number(metrics.get("size_kb"))
            and all(metrics.get(key) is None or _number(metrics[key]) for key, _ in COLUMNS)
            and isinstance(latencies, list) and bool(latencies) and all(_number(v) for v in latencies))


def _label(record: dict) -> str:
    return f"{record['model']} [{record['runtime']}, {record.get('device_spec', '?')}]"


def _cell(value) -> str:
    if value is None:
        return "–"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.replace("|", "\\|").split())


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if _number(numerator) and _number(denominator) and denominator else None


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _save(figure, path: Path, paths: list[Path]) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    paths.append(path)


def _plots(ok: list[dict], out: Path) -> list[Path]:
    """latency.png always; accuracy_vs_size.png and energy.png when the results have them."""
    paths = []
    figure, axis = plt.subplots(figsize=(8, 0.5 + 0.5 * len(ok)))
    axis.boxplot([r["latencies_ms"] for r in ok], orientation="horizontal", tick_labels=[_label(r) for r in ok])
    axis.set(xlabel="latency per inference (ms)", title="Latency distribution")
    _save(figure, out / "latency.png", paths)
    with_accuracy = [r for r in ok if "accuracy" in r["metrics"]]
    if with_accuracy:
        figure, axis = plt.subplots(figsize=(6, 4))
        for r in with_accuracy:
            point = (r["metrics"]["size_kb"], r["metrics"]["accuracy"])
            axis.scatter(*point)
            axis.annotate(r["model"], point, fontsize=8)
        axis.set(xscale="log", xlabel="model size (kB)", ylabel="accuracy", title="Accuracy vs size")
        _save(figure, out / "accuracy_vs_size.png", paths)
    with_energy = [r for r in ok if "energy_mj_per_inference" in r["metrics"]]
    if with_energy:
        figure, axis = plt.subplots(figsize=(8, 0.5 + 0.5 * len(with_energy)))
        labels = [_label(r) + (" (estimated)" if r["metrics"].get("energy_estimated") else "")
                  for r in with_energy]
        axis.barh(labels, [r["metrics"]["energy_mj_per_inference"] for r in with_energy])
        axis.set(xlabel="energy per inference (mJ)", title="Energy per inference")
        _save(figure, out / "energy.png", paths)
    return paths


def _baseline_rows(ok: list[dict], baseline: str) -> list[list]:
    base = next((r for r in ok if Path(str(r.get("model_path", ""))).name == Path(baseline).name
                 or r["model"] == Path(baseline).stem), None)
    if base is None:
        raise ResultsError(f"baseline {baseline!r} is not among the measured models: "
                         f"{sorted({r['model'] for r in ok})}")
    rows = []
    for r in ok:
        m, b = r["metrics"], base["metrics"]
        accuracy = m["accuracy"] - b["accuracy"] if _number(m.get("accuracy")) and _number(b.get("accuracy")) \
            else None
        energy = _ratio(b.get("energy_mj_per_inference"), m.get("energy_mj_per_inference"))
        rows.append([_label(r), _ratio(b["latency_p50_ms"], m["latency_p50_ms"]), _ratio(b["size_kb"], m["size_kb"]),
                     energy, accuracy])
    return rows


def write_report(results: str | Path, out: str | Path, baseline: str | None = None) -> ReportPaths:
    """Write report.md, report.html and the PNG plots into ``out``; returns their paths (with the
    count of skipped lines and records). ResultsError when there is nothing to report."""
    loaded = load_results(results)
    records = loaded.records
    ok = [r for r in records if r.get("status") == "ok" and well_formed(r)]
    failed = [r for r in records if r.get("status") != "ok"]
    skipped = loaded.skipped + len(records) - len(ok) - len(failed)
    if not ok and not failed:
        raise ResultsError(f"{results}: no results to report" + (
            f" ({skipped} unreadable line(s) or incomplete record(s) skipped)" if skipped else ""))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsError(f"cannot create the report folder {out}: {error.strerror or error}") from None
    sections = [f"# edgepack benchmark report\n\n{len(ok)} measurements, {len(failed)} failed, "
                f"from `{results}`."]
    if skipped:
        sections[0] += (f" {skipped} line(s) skipped: unreadable (torn, not a JSON object, not UTF-8) or "
                        "an ok record without the model, runtime, metrics or latencies.")
    if ok:
        rows = [[_label(r)] + [r["metrics"].get(key) for key, _ in COLUMNS] for r in ok]
        sections.append("## Results\n\n" + _table(["model"] + [h for _, h in COLUMNS], rows))
        emulated = [r["model"] for r in ok if r.get("emulated")]
        if emulated:
            sections.append(f"Timings of {', '.join(emulated)} are emulated (qemu): correctness only.")
        estimated = [r["model"] for r in ok if r["metrics"].get("energy_estimated")]
        if estimated:
            sections.append(f"Energy of {', '.join(estimated)} is estimated (op counts × energy per "
                            "operation), not measured.")
        devices = {str(r.get("device_spec")): r.get("device", {}) for r in ok}
        sections.append("## Devices\n\n" + _table(
            ["device", "arch", "cpu", "cores", "governor", "temperature °C"],
            [[spec, d.get("arch"), d.get("cpu_model"), d.get("cores"), d.get("governor"),
              d.get("temperature_c")] for spec, d in devices.items()]))
    if baseline and ok:
        sections.append(f"## Compared with {Path(baseline).name}\n\n" + _table(
            ["model", "speed-up (p50)", "smaller by", "energy saved by", "Δ accuracy"],
            _baseline_rows(ok, baseline)))
    if failed:
        sections.append("## Failed\n\n" + _table(
            ["model", "device", "error"], [[r.get("model"), r.get("device_spec"), r.get("error")] for r in failed]))
    plots = _plots(ok, out) if ok else []
    sections += [f"![{p.stem}]({p.name})" for p in plots]
    markdown = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(_html(markdown, plots), encoding="utf-8")
    paths = ReportPaths(markdown=out / "report.md", html=out / "report.html", **{p.stem: p for p in plots})
    paths.skipped = skipped
    return paths


def _html(markdown: str, plots: list[Path]) -> str:
    """A self-contained page: Markdown tables as HTML tables, plots inlined as base64 PNGs."""
    images = {p.name: base64.b64encode(p.read_bytes()).decode() for p in plots}
    body, table = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                cells = [html.escape(c.strip().replace("\\|", "|"))
                         for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{images[name]}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgepack report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
