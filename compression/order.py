"""Order of compression (Shen et al. 2024): which of two stages should run first is decided by experiment
(A→B against B→A from the same start, several seeds, a stated rule), a third stage inserted between two is
checked not to flip their order, and a topological sort of the decided pairs gives the pipeline.

This module is the decision logic on recorded runs; ``order_sweep`` runs them on Ray."""

from __future__ import annotations

import graphlib
import heapq
import itertools
import math
import statistics
from dataclasses import dataclass, field

from scipy import stats

from .stages import STAGES, StageError, stage_parameters

# One letter per stage, as the paper names D, P, Q, E; edgepack's own methods get the others. The settings
# are what both orders of a pair apply, so A→B and B→A end at the same compression (checked: COST_TOLERANCE).
LETTERS: dict[str, tuple[str, dict]] = {
    "D": ("distill", {"width": 0.5}),
    "P": ("prune_channels", {"ratio": 0.5}),
    "U": ("prune", {"sparsity": 0.9, "steps": 1}),
    "Q": ("quantize", {"mode": "ptq"}),
    "E": ("early_exit", {"exits": [0.5]}),
    "H": ("recipe", {"recipe": {"*": {"method": "hashed", "ratio": 0.25}}}),
    "S": ("sws", {"tau": 0.005}),
    "Y": ("hyper", {}),
}
LETTER_NAMES = {"D": "distillation", "P": "channel pruning", "U": "magnitude pruning", "Q": "int8 quantization",
                "E": "early exit", "H": "hashing", "S": "soft weight-sharing", "Y": "hyper-compression"}
MARGIN = 0.005  # accuracy difference (0.5 points) below which the two orders are equally good
ALPHA = 0.05  # one-sided paired t-test level, with two seeds or more
COST_TOLERANCE = 0.05  # the orders' BitOps / bytes may differ this much and still count as the same budget


def stage_specs(letters: str, overrides: dict | None = None, epochs: int = 1) -> dict[str, dict]:
    """``{letter: {"stage", "params"}}`` for ``letters`` ("D,P,Q,E" or "DPQE"): the defaults of LETTERS, each
    replaced by ``overrides[letter]`` (``{stage: params}``) where given, ``epochs`` (the training budget every
    stage gets) added where the stage trains. Unknown letters, stages or parameters → StageError."""
    chosen = [c for c in letters.replace(",", "").replace(" ", "")]
    overrides = dict(overrides or {})
    known = sorted(set(LETTERS) | set(overrides))
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise StageError(f"--stages {letters!r}: give two or more different letters, e.g. D,P,Q,E; known: "
                         f"{', '.join(known)}")
    for letter in overrides:
        if letter not in chosen:
            raise StageError(f"stage settings for {letter!r}, which is not among --stages {letters!r}")
    specs = {}
    for letter in chosen:
        if letter not in LETTERS and letter not in overrides:
            raise StageError(f"unknown stage letter {letter!r}; known: " + ", ".join(
                f"{k} ({LETTER_NAMES.get(k, LETTERS.get(k, overrides.get(k)))})" for k in known)
                + "; others can be defined in the stages file")
        stage, params = LETTERS[letter] if letter not in overrides else _override(letter, overrides[letter])
        if stage not in STAGES:
            raise StageError(f"{letter}: unknown stage {stage!r}; valid: {', '.join(sorted(STAGES))}")
        accepted = stage_parameters(STAGES[stage])
        unknown = set(params) - accepted
        if unknown:
            raise StageError(f"{letter} ({stage}): unknown parameters {sorted(unknown)}; valid: {sorted(accepted)}")
        params = dict(params)
        if "epochs" in accepted:
            params.setdefault("epochs", epochs)
        specs[letter] = {"stage": stage, "params": params}
    return specs


def _override(letter: str, value) -> tuple[str, dict]:
    """A stages file's entry ``{stage: {params}}`` (or a bare stage name) as (stage, params)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and len(value) == 1:
        (stage, params), = value.items()
        if isinstance(params, dict) or params is None:
            return stage, dict(params or {})
    raise StageError(f"stage settings for {letter!r}: expected {{stage: {{params}}}}, e.g. "
                     f"{{prune: {{sparsity: 0.8}}}}, got {value!r}")


def parse_triples(text: str | None, letters: list[str]) -> list[tuple[str, str, str]]:
    """``"DQP,PEQ"`` → [(D, Q, P), (P, E, Q)]: A, the inserted C, B; each a stage of the sweep."""
    triples = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        if len(item) != 3 or len(set(item)) != 3 or not set(item) <= set(letters):
            raise StageError(f"--triples: {item!r} must be three different letters among --stages "
                             f"({''.join(letters)}): A, the stage inserted, B (e.g. DQP checks D·Q·P against P·Q·D)")
        triples.append(tuple(item))
    return triples


def pair_orders(letters: list[str]) -> list[tuple[str, ...]]:
    """Both orders of every pair: A→B and B→A."""
    return [order for a, b in itertools.combinations(letters, 2) for order in ((a, b), (b, a))]


def triple_orders(triples: list[tuple[str, str, str]]) -> list[tuple[str, ...]]:
    """A→C→B and B→C→A for every requested (A, C, B)."""
    return [order for a, c, b in triples for order in ((a, c, b), (b, c, a))]


@dataclass
class Decision:
    """Which of ``first``→…→``second`` and the reverse is better, and the evidence for it."""

    first: str
    second: str
    verdict: str  # "first", "second" or "none"
    reason: str
    difference: float | None = None  # mean accuracy(first→second) − accuracy(second→first), over paired seeds
    p_value: float | None = None
    seeds: int = 0
    costs: dict = field(default_factory=dict)  # {"forward": {...}, "backward": {...}}: mean BitOps and bytes

    @property
    def edge(self) -> tuple[str, str] | None:
        """The precedence edge this decision adds (before, after), if any."""
        return {"first": (self.first, self.second), "second": (self.second, self.first)}.get(self.verdict)

    @property
    def strength(self) -> float:
        """How sure the decision is, to break the weakest edge of a cycle: only-one-runs beats any margin."""
        return math.inf if self.difference is None else abs(self.difference)


def _mean_costs(rows: list[dict]) -> dict:
    return {key: statistics.fmean(r[key] for r in rows) for key in ("bitops", "weight_bytes")} if rows else {}


def _cheaper(forward: dict, backward: dict, tolerance: float) -> str | None:
    """"first" / "second" when that order needs fewer BitOps by more than ``tolerance`` and not more bytes."""
    for side, mine, other in (("first", forward, backward), ("second", backward, forward)):
        fewer_bitops = mine["bitops"] * (1 + tolerance) < other["bitops"]
        if fewer_bitops and mine["weight_bytes"] <= (1 + tolerance) * other["weight_bytes"]:
            return side
    return None


def decide(forward: list[dict], backward: list[dict], first: str, second: str, margin: float = MARGIN,
           alpha: float = ALPHA, cost_tolerance: float = COST_TOLERANCE) -> Decision:
    """Decide ``first``…``second`` (runs ``forward``) against the reverse (``backward``), rows with "seed",
    "status" ("ok", "invalid": a stage cannot follow the other, "failed": crashed) and "accuracy".

    The rule: an order that runs beats one that cannot; when both run, the mean paired (by seed) accuracy
    difference must exceed ``margin`` and, with two seeds or more, a one-sided paired t-test must give p <
    ``alpha``; a better order that costs more than ``cost_tolerance`` more BitOps or bytes is a trade-off, not a
    preference; within the margin, an order that needs fewer BitOps (by more than the tolerance, and not more
    bytes) is preferred. Anything else is "none", with the reason."""
    def by_status(rows, status):
        return [r for r in rows if r.get("status") == status]

    ok_f, ok_b = by_status(forward, "ok"), by_status(backward, "ok")
    decision = Decision(first, second, "none", "", costs={"forward": _mean_costs(ok_f), "backward": _mean_costs(ok_b)})
    invalid_f, invalid_b = by_status(forward, "invalid"), by_status(backward, "invalid")
    if not forward or not backward or by_status(forward, "failed") or by_status(backward, "failed"):
        missing = [f"{a}→{b}" for a, b, rows in ((first, second, forward), (second, first, backward))
                   if not rows or by_status(rows, "failed")]
        decision.reason = f"undecided: runs of {', '.join(missing)} failed or are missing"
        return decision
    if invalid_f or invalid_b:
        if invalid_f and invalid_b:
            decision.reason = "neither order runs"
        elif ok_f and not ok_b:
            decision.verdict, decision.reason = "first", f"only {first}→{second} runs: {invalid_b[0].get('error', '')}"
        elif ok_b and not ok_f:
            decision.verdict, decision.reason = "second", f"only {second}→{first} runs: {invalid_f[0].get('error', '')}"
        else:
            decision.reason = "an order runs for some seeds only"
        return decision
    seeds = sorted({r["seed"] for r in ok_f} & {r["seed"] for r in ok_b})
    a = [next(r["accuracy"] for r in ok_f if r["seed"] == s) for s in seeds]
    b = [next(r["accuracy"] for r in ok_b if r["seed"] == s) for s in seeds]
    decision.seeds = len(seeds)
    decision.difference = statistics.fmean(x - y for x, y in zip(a, b))
    if abs(decision.difference) <= margin:
        within = (f"the accuracies differ by {100 * decision.difference:+.2f} points, within the margin "
                  f"{100 * margin:.2f}")
        cheaper = _cheaper(decision.costs["forward"], decision.costs["backward"], cost_tolerance)
        if cheaper is None:
            decision.reason = within
        else:
            decision.verdict = cheaper
            ratio = decision.costs["backward"]["bitops"] / decision.costs["forward"]["bitops"]
            decision.reason = f"{within}; {max(ratio, 1 / ratio):.2f}× fewer BitOps"
        return decision
    better = "first" if decision.difference > 0 else "second"
    if len(seeds) >= 2:
        differences = [x - y for x, y in zip(a, b)]
        if statistics.pstdev(differences) == 0:
            decision.p_value = 0.0
        else:
            decision.p_value = float(stats.ttest_rel(a, b, alternative="greater" if better == "first" else "less")
                                     .pvalue)
        if decision.p_value >= alpha:
            decision.reason = f"{100 * decision.difference:+.2f} points is not significant (paired t-test p = " \
                              f"{decision.p_value:.3f} ≥ {alpha})"
            return decision
    winner, loser = (decision.costs["forward"], decision.costs["backward"])[::1 if better == "first" else -1]
    dearer = [key for key in ("bitops", "weight_bytes") if winner[key] > (1 + cost_tolerance) * loser[key]]
    if dearer:
        decision.reason = f"trade-off: the more accurate order costs more {' and '.join(dearer)}"
        return decision
    decision.verdict = better
    evidence = "single seed, by the margin only" if len(seeds) == 1 else f"p = {decision.p_value:.3f}"
    decision.reason = f"{100 * abs(decision.difference):.2f} points more accurate ({evidence})"
    return decision


def runs_of(rows: list[dict], order: tuple[str, ...]) -> list[dict]:
    """The recorded rows of ``order`` (one per seed, the last recorded wins)."""
    latest = {}
    for row in rows:
        if tuple(row.get("order", ())) == tuple(order):
            latest[row["seed"]] = row
    return list(latest.values())


def decide_pairs(rows: list[dict], letters: list[str], **rule) -> list[Decision]:
    """A decision for every pair of ``letters`` from the recorded runs."""
    return [decide(runs_of(rows, (a, b)), runs_of(rows, (b, a)), a, b, **rule)
            for a, b in itertools.combinations(letters, 2)]


@dataclass
class InsertionCheck:
    """Does inserting ``middle`` between ``first`` and ``second`` keep their order? ``outcome``: holds, flips or
    inconclusive (one of the two has no preference)."""

    first: str
    middle: str
    second: str
    pair: Decision
    triple: Decision
    outcome: str


def check_insertions(rows: list[dict], triples: list[tuple[str, str, str]], pairs: list[Decision],
                     **rule) -> list[InsertionCheck]:
    """Decide A→C→B against B→C→A for each triple and compare with the pair's own decision."""
    checks = []
    for a, c, b in triples:
        pair = next(d for d in pairs if {d.first, d.second} == {a, b})
        triple = decide(runs_of(rows, (a, c, b)), runs_of(rows, (b, c, a)), a, b, **rule)
        if pair.edge is None or triple.edge is None:
            outcome = "inconclusive"
        else:
            outcome = "holds" if pair.edge == triple.edge else "flips"
        checks.append(InsertionCheck(a, c, b, pair, triple, outcome))
    return checks


@dataclass
class Ordering:
    """The recommended order and how it was reached: ties (stages with no decided order between them, placed
    in the order given) and the edges dropped to break cycles (the weakest of each)."""

    order: list[str]
    edges: list[tuple[str, str]]
    ties: list[list[str]]
    broken: list[tuple[str, str, list[str]]]  # (before, after, the cycle it broke)


def recommend(letters: list[str], decisions: list[Decision]) -> Ordering:
    """Topologically sort the decided pairs; among stages free at the same time the one given first goes
    first (recorded as a tie); a cycle loses its weakest edge (recorded with the cycle), then the sort reruns."""
    strength = {d.edge: d.strength for d in decisions if d.edge}
    edges = list(strength)
    broken = []
    while True:
        graph = {letter: {before for before, after in edges if after == letter} for letter in letters}
        sorter = graphlib.TopologicalSorter(graph)
        try:
            sorter.prepare()
        except graphlib.CycleError as error:
            cycle = error.args[1]
            on_cycle = [(x, y) for x, y in zip(cycle, cycle[1:]) if (x, y) in strength]
            weakest = min(on_cycle, key=lambda e: strength[e])
            edges.remove(weakest)
            broken.append((*weakest, cycle))
            continue
        break
    rank = {letter: i for i, letter in enumerate(letters)}
    ready, order, ties = [], [], []
    while sorter.is_active():
        pushed = sorter.get_ready()
        for letter in pushed:
            heapq.heappush(ready, (rank[letter], letter))
        if pushed and len(ready) > 1:
            ties.append(sorted((letter for _, letter in ready), key=rank.get))
        _, letter = heapq.heappop(ready)
        order.append(letter)
        sorter.done(letter)
    return Ordering(order, edges, ties, broken)
