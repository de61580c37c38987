"""The order search's report (Markdown + a self-contained HTML page): the recommended order, the pairwise
decisions and matrix with their margins, the insertion checks, the precedence graph, and the recommended
pipeline against each single stage and random orders."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

from edgepack.benchmarks import plots
from edgepack.benchmarks.report import html_page, markdown_table
from edgepack.benchmarks.results import format_ratio, format_time_ms

from .order import ALPHA, COST_TOLERANCE, LETTER_NAMES, MARGIN, Decision, InsertionCheck, Ordering, runs_of


def _mean(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get("status") == "ok" and r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _percent(value) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def _short(text: str, limit: int = 160) -> str:
    """A reason cut to ``limit`` characters for a table cell (runs.jsonl keeps the whole message)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _arrow(order) -> str:
    return "→".join(order)


def _status(rows: list[dict]) -> str:
    counts = Counter(r.get("status") for r in rows)
    if not rows:
        return "not run"
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _decision_rows(decisions: list[Decision], rows: list[dict]) -> list[list]:
    table = []
    for d in decisions:
        forward, backward = runs_of(rows, (d.first, d.second)), runs_of(rows, (d.second, d.first))
        chosen = {"first": f"{d.first} before {d.second}", "second": f"{d.second} before {d.first}"}
        table.append([f"{d.first}, {d.second}", _percent(_mean(forward, "accuracy")) or _status(forward),
                      _percent(_mean(backward, "accuracy")) or _status(backward),
                      None if d.difference is None else f"{100 * d.difference:+.2f}",
                      None if d.p_value is None else f"{d.p_value:.3f}", d.seeds,
                      _mean(forward, "bitops"), _mean(backward, "bitops"),
                      chosen.get(d.verdict, "no preference"), _short(d.reason)])
    return table


def _matrix(letters: list[str], decisions: list[Decision]) -> list[list]:
    """Row X, column Y: accuracy(X→Y) − accuracy(Y→X) in points; "runs" / "fails" where only one order runs."""
    cells = {}
    for d in decisions:
        for x, y, sign, side in ((d.first, d.second, 1, "first"), (d.second, d.first, -1, "second")):
            if d.difference is not None:
                text = f"{sign * 100 * d.difference:+.2f}"
            elif d.verdict != "none":
                text = "only this runs" if d.verdict == side else "cannot run"
            else:
                text = "–"
            cells[x, y] = text + (" ✓" if d.verdict == side else "")
    return [[x] + [cells.get((x, y), "") for y in letters] for x in letters]


def _insertion_rows(checks: list[InsertionCheck]) -> list[list]:
    verdict = {"first": "{a} before {b}", "second": "{b} before {a}"}
    return [[f"{c.first}·{c.middle}·{c.second}",
             verdict.get(c.pair.verdict, "none").format(a=c.first, b=c.second),
             verdict.get(c.triple.verdict, "none").format(a=c.first, b=c.second),
             None if c.triple.difference is None else f"{100 * c.triple.difference:+.2f}", c.outcome,
             _short(c.triple.reason)]
            for c in checks]


def _comparison_rows(candidates: list[tuple[str, tuple[str, ...]]], rows: list[dict], start: dict,
                     latencies: dict) -> list[list]:
    base = latencies.get("input model")
    table = [["input model", "", "", _percent(start["accuracy"]), _percent(start.get("test_accuracy")),
              float(start["weight_bytes"]), "1×",
              float(start["bitops"]), "1×", *_latency_cells(base, base)]]
    for label, order in candidates:
        runs = runs_of(rows, order)
        bytes_, bitops = _mean(runs, "weight_bytes"), _mean(runs, "bitops")
        table.append([label, _arrow(order), _status(runs), _percent(_mean(runs, "accuracy")),
                      _percent(_mean(runs, "test_accuracy")), bytes_,
                      format_ratio(start["weight_bytes"] / bytes_) if bytes_ else None, bitops,
                      format_ratio(start["bitops"] / bitops) if bitops else None,
                      *_latency_cells(latencies.get(label), base)])
    return table


def _latency_cells(seconds, base) -> list:
    """Latency per example and the input model's over it; a reason in place of a number when not measured."""
    if isinstance(seconds, str):
        return [_short(seconds, 80), None]
    if seconds is None:
        return [None, None]
    ratio = format_ratio(base / seconds) if isinstance(base, float) else None
    return [format_time_ms(1e3 * seconds), ratio]


TOLERANCES = (0.1, 0.5, 1.0, 2.0, 5.0)  # points; the paper's headline is 859x at -0.09


def _within_tolerance(rows: list[dict], start: dict) -> list[list]:
    """Per tolerance: the order with the fewest mean BitOps among those within it of the input's accuracy."""
    orders = {tuple(r["order"]) for r in rows if r.get("status") == "ok"}
    means = [(o, _mean(runs_of(rows, o), "accuracy"), _mean(runs_of(rows, o), "bitops")) for o in orders]
    table = []
    for tolerance in TOLERANCES:
        within = [m for m in means if m[1] is not None and m[1] >= start["accuracy"] - tolerance / 100]
        if within:
            order, accuracy, bitops = min(within, key=lambda m: (m[2], -m[1]))
            table.append([f"{tolerance:g}", _arrow(order), _percent(accuracy), bitops,
                          format_ratio(start["bitops"] / bitops)])
        else:
            table.append([f"{tolerance:g}", "none within it", None, None, None])
    return table


def plot_precedence(letters: list[str], ordering: Ordering, decisions: list[Decision], path: Path) -> Path:
    """The stages on a circle, an arrow for every decided pair (before → after) labelled with its margin;
    edges dropped to break a cycle dashed in red."""
    figure, axis = plots.plt.subplots(figsize=(5.5, 5))
    angle = {letter: math.pi / 2 - 2 * math.pi * i / len(letters) for i, letter in enumerate(letters)}
    where = {letter: (math.cos(a), math.sin(a)) for letter, a in angle.items()}
    label = {d.edge: ("runs" if d.difference is None else f"{100 * abs(d.difference):.1f} pt")
             for d in decisions if d.edge}
    broken = {(before, after) for before, after, _ in ordering.broken}
    for edge in [*ordering.edges, *broken]:
        (x0, y0), (x1, y1) = where[edge[0]], where[edge[1]]
        dashed = edge in broken
        axis.annotate("", xy=(x1, y1), xytext=(x0, y0),
                      arrowprops={"arrowstyle": "-|>", "color": "tab:red" if dashed else "0.3", "shrinkA": 18,
                                  "shrinkB": 18, "linestyle": "--" if dashed else "-"})
        axis.text((x0 + x1) / 2, (y0 + y1) / 2, label.get(edge, ""), fontsize=8, ha="center",
                  bbox={"boxstyle": "round", "fc": "white", "ec": "none", "alpha": 0.8})
    for letter, (x, y) in where.items():
        axis.scatter(x, y, s=900, color="tab:blue", zorder=3)
        axis.text(x, y, letter, ha="center", va="center", color="white", fontsize=14, zorder=4)
    axis.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal",
             title="Precedence graph: before → after (margin)")
    axis.axis("off")
    return plots.save_figure(figure, path)


def write_order_report(out: Path, *, model: str, data: str, specs: dict[str, dict], seeds: list[int], epochs: int,
                       rows: list[dict], start: dict, decisions: list[Decision], checks: list[InsertionCheck],
                       ordering: Ordering, candidates: list[tuple[str, tuple[str, ...]]], latencies: dict,
                       seconds: float) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and the plots; returns the Markdown's path. ``latencies``:
    label → seconds per example on this host (or why not measured), "input model" the baseline."""
    letters = list(specs)
    graph = plot_precedence(letters, ordering, decisions, out / "precedence.png")
    ok = [(label, order) for label, order in candidates if _mean(runs_of(rows, order), "bitops")]
    images = [graph]
    if ok:
        images.append(plots.plot_pareto(
            [(_mean(runs_of(rows, o), "bitops"), 100 * _mean(runs_of(rows, o), "accuracy")) for _, o in ok],
            [_arrow(o) for _, o in ok], out / "accuracy_vs_bitops.png", xlabel="BitOps per example",
            ylabel="validation accuracy (%)", title="Accuracy vs BitOps", maximize_y=True))
    nodes = Counter(r.get("node") for r in rows if r.get("node"))
    exclusive = [f"{d.first}–{d.second}" for d in decisions if d.reason == "neither order runs"]
    stage_lines = [f"- {letter} = {LETTER_NAMES.get(letter, spec['stage'])}: `{spec['stage']}` "
                   f"{', '.join(f'{k}={v}' for k, v in spec['params'].items())}" for letter, spec in specs.items()]
    text = [
        "# Order of compression", "",
        f"Model `{model}` on data `{data}`: validation accuracy {100 * start['accuracy']:.2f}%, "
        f"{start['weight_bytes']:,} weight bytes, {start['bitops']:,} BitOps per example.", "",
        *stage_lines, "",
        f"Budget: every stage gets the settings above and {epochs} training epoch(s), in either order. Seeds: "
        f"{', '.join(map(str, seeds))}. Rule: an order that runs beats one that cannot; otherwise the mean paired "
        f"validation-accuracy difference must exceed {100 * MARGIN:.2f} points and, with two seeds or more, a "
        f"one-sided paired t-test give p < {ALPHA}; an order that costs more than {100 * COST_TOLERANCE:.0f}% more "
        "BitOps or bytes is a trade-off (no preference).", "",
        "## Recommended order", "", f"**{' → '.join(ordering.order)}**", "",
        *[f"Tie (no decided order; placed as given in --stages): {', '.join(t)}" for t in ordering.ties],
        *[f"Cycle {_arrow(cycle)}: dropped its weakest edge {a} → {b}" for a, b, cycle in ordering.broken],
        *([f"Exclusive (neither order runs, so no one pipeline holds both): {', '.join(exclusive)}"]
          if exclusive else []), "",
        "## Pairwise decisions", "",
        markdown_table(["pair", "A→B accuracy", "B→A accuracy", "Δ (pt)", "p", "seeds", "BitOps A→B", "BitOps B→A",
                        "decision", "evidence"], _decision_rows(decisions, rows)), "",
        "Matrix: row X, column Y = accuracy(X→Y) − accuracy(Y→X) in points; ✓ = X goes before Y.", "",
        markdown_table(["", *letters], _matrix(letters, decisions)), "",
    ]
    if checks:
        text += ["## Insertion checks", "", "Does a stage C between A and B flip their order (A·C·B against B·C·A)?",
                 "", markdown_table(["A·C·B", "pair decision", "with C between", "Δ (pt)", "outcome", "evidence"],
                                    _insertion_rows(checks)), ""]
    text += ["## Precedence graph", "", f"![precedence graph]({graph.name})", "",
             "## The recommended pipeline against single stages and random orders", "",
             "Accuracy on the validation split (used for the decisions) and on the test split (held out); × against "
             "the input model; means over the seeds. Latency: per example on this host, ONNX Runtime, 1 thread, "
             "batch 1, the first seed's model exported to ONNX (an early-exit model stops at its first confident "
             "exit) over the same validation examples, median of interleaved rounds; × = the input model's over it."
             if latencies else "Accuracy on the validation split (used for the decisions) and on the test split "
             "(held out); × against the input model; means over the seeds. Latency not measured.", "",
             markdown_table(["pipeline", "order", "runs", "val accuracy", "test accuracy", "weight bytes", "×",
                             "BitOps", "×", "latency", "× faster"],
                            _comparison_rows(candidates, rows, start, latencies)), ""]
    if ok:
        text += [f"![accuracy vs BitOps]({images[1].name})", ""]
    text += ["## BitOps reduction within an accuracy tolerance", "",
             "Among every order run (pairs, triples, comparisons; means over its seeds): the fewest BitOps whose "
             "validation accuracy is within the tolerance of the input model's.", "",
             markdown_table(["tolerance (pt)", "order", "val accuracy", "BitOps", "× fewer"],
                            _within_tolerance(rows, start)), ""]
    task_seconds = sum(r.get("seconds", 0) for r in rows)
    text += ["## Runs", "", f"{_status(rows)} runs, {task_seconds / 60:.1f} task-minutes in all; this invocation "
             f"took {seconds:.0f} s wall time; {len(nodes)} Ray node id(s) recorded (a local instance gets a new "
             "one each start)" + (": " + ", ".join(f"{node[:8]} {n} runs" for node, n in nodes.items()) if nodes
                                  else "") + ".", ""]
    failed = [r for r in rows if r.get("status") == "failed"]
    text += [f"- {_arrow(r['order'])} seed {r['seed']} failed: {r.get('error', '')}" for r in failed]
    markdown = "\n".join(text).rstrip() + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(html_page(markdown, images, "edgepack order"), encoding="utf-8")
    return out / "report.md"

