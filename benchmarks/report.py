"""``edgepack report``: Markdown and a self-contained HTML page, with matplotlib plots, from a
results file: latency distribution per model, accuracy and latency vs file size (Pareto plots),
energy per inference, and a comparison against a baseline model. Times read in µs / ms / s and
every number has 3 significant digits (results.significant). Unreadable lines and "ok" records
that lack a field the report needs are skipped and counted, never fatal."""

import base64
import html
import math
import re
from pathlib import Path

from . import plots
from .results import MB, ResultsError, format_ratio, format_time_ms, load_results, significant


def _percent(value) -> str:
    return "–" if value is None else f"{significant(100 * value)} %"


def _file_mb(size_kb) -> str:
    return "–" if size_kb is None else significant(size_kb * 1024 / MB)


# (metric, table header, how a value reads): times carry their unit, sizes are in MB (2^20 bytes)
COLUMNS = [("latency_p50_ms", "p50", format_time_ms), ("latency_p90_ms", "p90", format_time_ms),
           ("latency_p99_ms", "p99", format_time_ms), ("latency_trimmed_mean_ms", "trimmed mean", format_time_ms),
           ("init_ms", "init", format_time_ms), ("size_kb", "file size (MB)", _file_mb),
           ("peak_rss_mb", "peak RSS (MB)", significant),
           ("energy_mj_per_inference", "energy (mJ/inference)", significant), ("accuracy", "accuracy", _percent)]


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
            and all(metrics.get(key) is None or _number(metrics[key]) for key, _, _ in COLUMNS)
            and isinstance(latencies, list) and bool(latencies) and all(_number(v) for v in latencies))


def early_exit_record(record: dict) -> bool:
    """Whether ``record`` is a well-formed ``edgepack bench --early-exit`` result (benchmarks/early_exit.py)."""
    metrics, details = record.get("metrics"), record.get("early_exit")
    keys = ("early_exit_latency_ms", "full_latency_ms", "early_exit_accuracy", "full_accuracy")
    return (record.get("kind") == "early_exit" and isinstance(record.get("model"), str)
            and isinstance(record.get("runtime"), str) and isinstance(metrics, dict) and isinstance(details, dict)
            and all(_number(metrics.get(key)) for key in keys) and metrics["early_exit_latency_ms"] > 0
            and isinstance(details.get("exit_names"), list) and isinstance(details.get("exit_fractions"), list)
            and all(_number(v) for v in details["exit_fractions"]))


def _early_exit_rows(records: list[dict]) -> list[list]:
    rows = []
    for r in records:
        m, d = r["metrics"], r["early_exit"]
        exits = ", ".join(f"{name} {significant(100 * share)} %" for name, share in
                          zip(map(str, d["exit_names"]), d["exit_fractions"]))
        rows.append([r["model"], r["runtime"], r.get("threads"), d.get("threshold"),
                     format_time_ms(m["early_exit_latency_ms"]), format_time_ms(m["full_latency_ms"]),
                     format_ratio(m["full_latency_ms"] / m["early_exit_latency_ms"]),
                     _percent(m["early_exit_accuracy"]), _percent(m["full_accuracy"]), exits])
    return rows


def _label(record: dict) -> str:
    kernels = ", fused kernels" if record.get("weights") == "fused kernels" else ""
    return f"{record['model']} [{record['runtime']}, {record.get('device_spec', '?')}{kernels}]"


def _short_labels(ok: list[dict]) -> list[str]:
    """Model names for plot points; the full label where a name alone would be ambiguous."""
    names = [r["model"] for r in ok]
    return [name if names.count(name) == 1 else _label(r) for name, r in zip(names, ok)]


def _cell(value) -> str:
    if value is None:
        return "–"
    text = significant(value) if isinstance(value, float) else str(value)
    return " ".join(text.replace("|", "\\|").split())


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if _number(numerator) and _number(denominator) and denominator else None


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; cells through _cell (None as "—", numbers to 3 significant digits)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plots(ok: list[dict], out: Path) -> list[Path]:
    """latency.png and latency_vs_size.png always; accuracy_vs_size.png and energy.png when some
    results have accuracy / energy (the others are left out of those plots)."""
    names = dict(zip(map(id, ok), _short_labels(ok)))
    sizes = {id(r): r["metrics"]["size_kb"] * 1024 / MB for r in ok}
    paths = [plots.plot_latency([r["latencies_ms"] for r in ok], [_label(r) for r in ok], out / "latency.png"),
             plots.plot_pareto([(sizes[id(r)], r["metrics"]["latency_p50_ms"]) for r in ok],
                               [names[id(r)] for r in ok], out / "latency_vs_size.png",
                               xlabel="file size (MB)", ylabel="p50 latency", title="Latency vs file size",
                               maximize_y=False, time_y=True)]
    with_accuracy = [r for r in ok if _number(r["metrics"].get("accuracy"))]
    if with_accuracy:
        paths.append(plots.plot_pareto(
            [(sizes[id(r)], 100 * r["metrics"]["accuracy"]) for r in with_accuracy],
            [names[id(r)] for r in with_accuracy], out / "accuracy_vs_size.png",
            xlabel="file size (MB)", ylabel="accuracy (%)", title="Accuracy vs file size",
            maximize_y=True))
    with_energy = [r for r in ok if _number(r["metrics"].get("energy_mj_per_inference"))]
    if with_energy:
        labels = [_label(r) + (" (estimated)" if r["metrics"].get("energy_estimated") else "")
                  for r in with_energy]
        paths.append(plots.plot_energy([r["metrics"]["energy_mj_per_inference"] for r in with_energy], labels,
                                       out / "energy.png"))
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
        accuracy = f"{significant(100 * (m['accuracy'] - b['accuracy']))} pt" \
            if _number(m.get("accuracy")) and _number(b.get("accuracy")) else None
        energy = _ratio(b.get("energy_mj_per_inference"), m.get("energy_mj_per_inference"))
        rows.append([_label(r), format_ratio(_ratio(b["latency_p50_ms"], m["latency_p50_ms"])),
                     format_ratio(_ratio(b["size_kb"], m["size_kb"])),
                     format_ratio(_ratio(b.get("peak_rss_mb"), m.get("peak_rss_mb"))),
                     format_ratio(energy), accuracy])
    return rows


def write_report(results: str | Path, out: str | Path, baseline: str | None = None) -> ReportPaths:
    """Write report.md, report.html and the PNG plots into ``out``; returns their paths (with the
    count of skipped lines and records). ResultsError when there is nothing to report."""
    loaded = load_results(results)
    records = loaded.records
    ok = [r for r in records if r.get("status") == "ok" and well_formed(r)]
    exits = [r for r in records if r.get("status") == "ok" and early_exit_record(r)]
    failed = [r for r in records if r.get("status") != "ok"]
    skipped = loaded.skipped + len(records) - len(ok) - len(exits) - len(failed)
    if not ok and not exits and not failed:
        raise ResultsError(f"{results}: no results to report" + (
            f" ({skipped} unreadable line(s) or incomplete record(s) skipped)" if skipped else ""))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsError(f"cannot create the report folder {out}: {error.strerror or error}") from None
    sections = [f"# edgepack benchmark report\n\n{len(ok) + len(exits)} measurements, {len(failed)} failed, "
                f"from `{results}`."]
    if skipped:
        sections[0] += (f" {skipped} line(s) skipped: unreadable (torn, not a JSON object, not UTF-8) or "
                        "an ok record without the model, runtime, metrics or latencies.")
    if ok:
        rows = [[_label(r), r.get("weights")]
                + [show(r["metrics"].get(key)) for key, _, show in COLUMNS] for r in ok]
        sections.append("## Results\n\n" + markdown_table(["model", "weights"] + [h for _, h, _ in COLUMNS], rows))
        sections.append("File size: the model file with its external data, on disk. Peak RSS: measured "
                        "peak resident memory of the runner process (VmHWM) above its memory before the "
                        "model was loaded. Weights: dense (no ai.edgepack ops), compressed weights decoded to "
                        "dense constants at load, or run on the edgepack fused kernels. 1 MB = 2^20 bytes.")
        emulated = [r["model"] for r in ok if r.get("emulated")]
        if emulated:
            sections.append(f"Timings of {', '.join(emulated)} are emulated (qemu): correctness only.")
        estimated = [r["model"] for r in ok if r["metrics"].get("energy_estimated")]
        if estimated:
            sections.append(f"Energy of {', '.join(estimated)} is estimated (op counts × energy per "
                            "operation), not measured.")
        devices = {str(r.get("device_spec")): r.get("device", {}) for r in ok}
        sections.append("## Devices\n\n" + markdown_table(
            ["device", "arch", "cpu", "cores", "governor", "temperature °C"],
            [[spec, d.get("arch"), d.get("cpu_model"), d.get("cores"), d.get("governor"),
              d.get("temperature_c")] for spec, d in devices.items()]))
    if baseline and ok:
        sections.append(f"## Compared with {Path(baseline).name}\n\n" + markdown_table(
            ["model", "speed-up (p50)", "file smaller by", "peak RSS smaller by", "energy saved by",
             "Δ accuracy"],
            _baseline_rows(ok, baseline)))
    if exits:
        sections.append("## Early exit\n\n" + markdown_table(
            ["model", "runtime", "threads", "threshold", "early exit (per input)", "full model (per input)",
             "speed-up", "accuracy (early exit)", "accuracy (full)", "stopped at"], _early_exit_rows(exits)))
        sections.append("Early exit: the segments run until the first exit whose confidence reaches the threshold; "
                        "full model: every input through the whole net. Both timed in the same process in "
                        "interleaved rounds (median), `edgepack bench --early-exit`.")
    if failed:
        sections.append("## Failed\n\n" + markdown_table(
            ["model", "device", "error"], [[r.get("model"), r.get("device_spec"), r.get("error")] for r in failed]))
    plots = _plots(ok, out) if ok else []
    sections += [f"![{p.stem}]({p.name})" for p in plots]
    markdown = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(html_page(markdown, plots), encoding="utf-8")
    paths = ReportPaths(markdown=out / "report.md", html=out / "report.html", **{p.stem: p for p in plots})
    paths.skipped = skipped
    return paths


def html_page(markdown: str, plots: list[Path], title: str = "edgepack report") -> str:
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
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
