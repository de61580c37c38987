"""The order search end to end (Python API of ``edgepack order``): the pairwise (and insertion) runs, the
decisions and the topological sort, then the recommended pipeline against each single stage and random
orders, and the report."""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .order import (
    ALPHA,
    MARGIN,
    Decision,
    InsertionCheck,
    Ordering,
    check_insertions,
    decide_pairs,
    pair_orders,
    recommend,
    runs_of,
    triple_orders,
)
from .order_latency import measure_latencies
from .order_report import write_order_report
from .order_sweep import SweepSettings, ray_session, run_sweep
from .stages import StageData, StageError, evaluate, stage_report


@dataclass
class OrderResult:
    """What the search decided and where it wrote it."""

    ordering: Ordering
    decisions: list[Decision]
    checks: list[InsertionCheck]
    rows: list[dict]
    report: Path


def random_orders(letters: list[str], count: int, avoid: tuple[str, ...], blocked=(), seed: int = 0):
    """Up to ``count`` distinct random orders of all ``letters`` other than ``avoid`` (seeded), drawn from those
    with no ``blocked`` pair (x, y) with x before y — orders the pairwise runs show cannot run — when there are
    any; returns the orders and whether they were drawn from the runnable ones."""
    generator = random.Random(seed)
    if len(letters) <= 8:
        pool = list(itertools.permutations(letters))
    else:  # 9! and more: a sample of them
        pool = list({tuple(generator.sample(letters, len(letters))) for _ in range(20000)})
    pool = [order for order in pool if order != tuple(avoid)]
    runnable = [order for order in pool
                if not any((x, y) in blocked for x, y in itertools.combinations(order, 2))]
    chosen = runnable or pool
    return generator.sample(chosen, min(count, len(chosen))), bool(runnable)


def blocked_pairs(rows: list[dict]) -> set[tuple[str, str]]:
    """(x, y) whose two-stage runs were all invalid: y cannot follow x."""
    pairs = {}
    for row in rows:
        if len(row["order"]) == 2:
            pairs.setdefault(tuple(row["order"]), []).append(row.get("status") == "invalid")
    return {pair for pair, invalid in pairs.items() if all(invalid)}


def search_order(model: nn.Module, model_bytes: bytes, data: StageData, specs: dict[str, dict], output_dir, *,
                 seeds: list[int], epochs: int, triples=(), random_count: int = 3,
                 settings: SweepSettings | None = None, margin: float = MARGIN, alpha: float = ALPHA,
                 trust_builder=(), labels: tuple[str, str] = ("", ""), latency: bool = True,
                 progress: bool = True, echo: Callable[[str], None] = print) -> OrderResult:
    """Decide the order of the stages ``specs`` (letter → {"stage", "params"}) from ``model`` on ``data`` and
    write the report into ``output_dir``; ``labels`` name the model and data in it. ``latency``: also time
    the compared models (their first seed's checkpoint) on this host."""
    if not seeds:
        raise StageError("give at least one seed")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise StageError(f"-o {str(out)!r} is a file; the order search writes a folder")
    settings = settings or SweepSettings()
    letters = list(specs)
    began = time.perf_counter()
    sweep = dict(model=model, model_bytes=model_bytes, data=data, specs=specs, seeds=seeds, output_dir=out,
                 settings=settings, trust_builder=trust_builder, progress=progress, echo=echo)
    echo(f"pairwise runs: {len(letters) * (len(letters) - 1)} orders × {len(seeds)} seed(s)"
         + (f", insertion checks: {len(triples)} triple(s)" if triples else ""))
    with ray_session(settings):
        rows = run_sweep(orders=pair_orders(letters) + triple_orders(list(triples)), **sweep)
        rule = {"margin": margin, "alpha": alpha}
        decisions = decide_pairs(rows, letters, **rule)
        checks = check_insertions(rows, list(triples), decisions, **rule)
        ordering = recommend(letters, decisions)
        echo(f"recommended order: {' → '.join(ordering.order)}")
        recommended = tuple(ordering.order)
        candidates = [("recommended", recommended)] + [(f"{letter} alone", (letter,)) for letter in letters]
        randoms, runnable = random_orders(letters, random_count, recommended, blocked_pairs(rows))
        kind = "random runnable" if runnable else "random"
        candidates += [(f"{kind} {i + 1}", order) for i, order in enumerate(randoms)]
        echo(f"comparison runs: the recommended order, {len(letters)} single stages, {len(randoms)} {kind} orders")
        rows += run_sweep(orders=[order for _, order in candidates], **sweep)
    rows = _unique(rows)
    start = stage_report("input", model, data, {}).row()
    start["test_accuracy"] = evaluate(model, data, "test") if data.test is not None else None
    latencies = _latencies(candidates, rows, model_bytes, data, out, trust_builder, echo) if latency else {}
    report = write_order_report(out, model=labels[0], data=labels[1], specs=specs, seeds=seeds, epochs=epochs,
                                rows=rows, start=start, decisions=decisions, checks=checks, ordering=ordering,
                                candidates=candidates, latencies=latencies, seconds=time.perf_counter() - began)
    echo(f"report: {report} and {report.with_suffix('.html')}")
    return OrderResult(ordering, decisions, checks, rows, report)


def _latencies(candidates, rows, model_bytes: bytes, data: StageData, out: Path, trust_builder, echo) -> dict:
    """Seconds per example on this host of the input model and of each candidate's first successful run."""
    with tempfile.TemporaryDirectory(prefix="edgepack-latency-") as folder:
        start = Path(folder) / "input.safetensors"
        start.write_bytes(model_bytes)
        checkpoints = {"input model": start}
        for label, order in candidates:
            ok = sorted((r for r in runs_of(rows, order) if r.get("status") == "ok"), key=lambda r: r["seed"])
            if ok:
                checkpoints[label] = out / ok[0]["checkpoint"]
        echo(f"latency: {len(checkpoints)} models exported to ONNX and timed in interleaved rounds on this host")
        return measure_latencies(checkpoints, data.val[0].numpy(), Path(folder), trust_builder)


def _unique(rows: list[dict]) -> list[dict]:
    """Rows by key, once each (a run shared by both phases is returned twice)."""
    return list({row["key"]: row for row in rows}.values())
