"""The order search's decisions on recorded runs (no Ray here): the pairwise rule against a hand-computed
paired t-test, feasibility, budgets and ties; the topological sort against every decided edge, with ties and
cycles reported; stage settings, triples, run keys and torn results files."""

import itertools
import json
import math
import random

import pytest
from scipy import stats

from edgepack.compression.order import (
    LETTERS,
    check_insertions,
    decide,
    decide_pairs,
    parse_triples,
    recommend,
    stage_specs,
)
from edgepack.compression.order_search import blocked_pairs, random_orders
from edgepack.compression.order_sweep import MAX_RUNS_BYTES, read_runs, run_key
from edgepack.compression.stages import StageError
from edgepack.errors import EdgepackError


def runs(order, accuracies, bitops=1000, weight_bytes=100, status="ok"):
    return [{"order": list(order), "seed": seed, "status": status, "accuracy": accuracy, "bitops": bitops,
             "weight_bytes": weight_bytes} for seed, accuracy in enumerate(accuracies)]


def paired_p(a, b):
    """One-sided paired t-test by hand: t = mean(d) / (sd(d) / sqrt(n)), p = P(T_{n-1} >= t)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return stats.t.sf(mean / (sd / math.sqrt(n)), n - 1)


def test_a_consistent_difference_decides_and_a_noisy_one_does_not():
    a, b = [0.90, 0.91, 0.92, 0.90], [0.88, 0.885, 0.90, 0.87]
    decision = decide(runs("PQ", a), runs("QP", b), "P", "Q")
    assert decision.verdict == "first" and decision.edge == ("P", "Q") and decision.seeds == 4
    assert decision.p_value == pytest.approx(paired_p(a, b), rel=1e-9)
    assert decision.difference == pytest.approx(sum(a) / 4 - sum(b) / 4)
    noisy_a, noisy_b = [0.95, 0.80, 0.93], [0.85, 0.90, 0.84]
    noisy = decide(runs("PQ", noisy_a), runs("QP", noisy_b), "P", "Q")
    assert noisy.verdict == "none" and noisy.edge is None and "not significant" in noisy.reason
    assert noisy.p_value == pytest.approx(paired_p(noisy_a, noisy_b), rel=1e-9) and noisy.p_value >= 0.05
    reverse = decide(runs("QP", a), runs("PQ", b), "Q", "P")
    assert reverse.edge == ("Q", "P")
    backwards = decide(runs("PQ", b), runs("QP", a), "P", "Q")
    assert backwards.verdict == "second" and backwards.edge == ("Q", "P")


def test_one_seed_is_decided_by_the_margin_alone():
    assert decide(runs("DE", [0.9]), runs("ED", [0.89]), "D", "E").verdict == "first"
    within = decide(runs("DE", [0.9]), runs("ED", [0.897]), "D", "E")
    assert within.verdict == "none" and "within the margin" in within.reason
    assert decide(runs("DE", [0.9]), runs("ED", [0.897]), "D", "E", margin=0.001).verdict == "first"


def test_feasibility_failures_and_budgets():
    invalid = [{**r, "error": "cannot follow"} for r in runs("QP", [0, 0], status="invalid")]
    only = decide(runs("PQ", [0.5, 0.5]), invalid, "P", "Q")
    assert only.edge == ("P", "Q") and only.strength == math.inf and "only P→Q runs: cannot follow" in only.reason
    assert decide(invalid, runs("PQ", [0.5, 0.5]), "Q", "P").edge == ("P", "Q")
    both = decide(runs("PQ", [0, 0], status="invalid"), invalid, "P", "Q")
    assert both.edge is None and both.reason == "neither order runs"
    failed = decide(runs("PQ", [0.9, 0.9]), runs("QP", [0.8], status="failed"), "P", "Q")
    assert failed.edge is None and "Q→P failed or are missing" in failed.reason
    missing = decide(runs("PQ", [0.9, 0.9]), [], "P", "Q")
    assert missing.edge is None and "missing" in missing.reason
    dearer = decide(runs("PQ", [0.95, 0.96], bitops=2000), runs("QP", [0.90, 0.905], bitops=1000), "P", "Q")
    assert dearer.edge is None and "trade-off" in dearer.reason and "bitops" in dearer.reason
    cheaper = decide(runs("QE", [0.90, 0.90], bitops=2000), runs("EQ", [0.899, 0.898], bitops=1000), "Q", "E")
    assert cheaper.edge == ("E", "Q") and "2.00× fewer BitOps" in cheaper.reason
    bigger = decide(runs("QE", [0.90], bitops=2000), runs("EQ", [0.90], bitops=1000, weight_bytes=300), "Q", "E")
    assert bigger.edge is None


def test_insertion_checks_compare_with_the_pair():
    rows = runs("PQ", [0.9]) + runs("QP", [0.8]) + runs("PEQ", [0.9]) + runs("QEP", [0.7])
    rows += runs("PDQ", [0.7]) + runs("QDP", [0.9])
    pairs = decide_pairs(rows, ["P", "Q"])
    holds, flips = check_insertions(rows, [("P", "E", "Q"), ("P", "D", "Q")], pairs)
    assert (holds.outcome, flips.outcome) == ("holds", "flips")
    assert check_insertions(rows + runs("PUQ", [0.9]), [("P", "U", "Q")], pairs)[0].outcome == "inconclusive"


def test_the_recommended_order_respects_every_edge_and_reports_ties_and_cycles():
    rows = runs("DP", [0.9]) + runs("PD", [0.8]) + runs("DQ", [0.9]) + runs("QD", [0.8])
    rows += runs("PQ", [0.9]) + runs("QP", [0.8])
    ordering = recommend(["Q", "P", "D"], decide_pairs(rows, ["Q", "P", "D"]))
    assert ordering.order == ["D", "P", "Q"] and not ordering.ties and not ordering.broken
    free = recommend(["E", "D", "Q"], decide_pairs(runs("DQ", [0.9]) + runs("QD", [0.8]), ["E", "D", "Q"]))
    assert free.order == ["E", "D", "Q"] and free.ties == [["E", "D"]]
    # D before P by 5 points, P before Q by 3, Q before D by 1: the weakest edge (Q, D) goes
    cycle = runs("DP", [0.9]) + runs("PD", [0.85]) + runs("PQ", [0.9]) + runs("QP", [0.87])
    cycle += runs("QD", [0.9]) + runs("DQ", [0.89])
    ordering = recommend(["D", "P", "Q"], decide_pairs(cycle, ["D", "P", "Q"]))
    assert ordering.order == ["D", "P", "Q"] and ordering.broken[0][:2] == ("Q", "D")
    assert set(ordering.broken[0][2]) == {"D", "P", "Q"}


def test_random_tournaments_sort_consistently():
    """Random decided pairs (cycles likely): every kept edge is respected, every dropped one closed a cycle
    among the kept ones and was its weakest."""
    generator = random.Random(3)
    for _ in range(40):
        letters = generator.sample("DPQEHSYU", generator.randint(3, 7))
        rows = []
        for a, b in itertools.combinations(letters, 2):
            if generator.random() < 0.8:
                other = 0.9 + generator.choice([-1, 1]) * generator.uniform(0.01, 0.1)
                rows += runs((a, b), [0.9]) + runs((b, a), [other])
        decisions = decide_pairs(rows, letters)
        ordering = recommend(letters, decisions)
        assert sorted(ordering.order) == sorted(letters)
        position = {letter: i for i, letter in enumerate(ordering.order)}
        assert all(position[a] < position[b] for a, b in ordering.edges)
        decided = {d.edge: d.strength for d in decisions if d.edge}
        assert set(ordering.edges) | {(a, b) for a, b, _ in ordering.broken} == set(decided)
        for a, b, cycle in ordering.broken:
            on_cycle = [e for e in zip(cycle, cycle[1:]) if e in decided]
            assert (a, b) in on_cycle and decided[a, b] == min(decided[e] for e in on_cycle)


def test_stage_settings_letters_and_triples():
    specs = stage_specs("D,P,Q,E", epochs=3)
    assert list(specs) == ["D", "P", "Q", "E"]
    assert specs["P"] == {"stage": "prune_channels", "params": {**LETTERS["P"][1], "epochs": 3}}
    assert specs["Q"]["stage"] == "quantize" and specs["E"]["params"]["epochs"] == 3
    assert stage_specs("PY")["Y"] == {"stage": "hyper", "params": {}}  # hyper does not train: no epochs
    custom = stage_specs("PX", {"P": {"prune": {"sparsity": 0.5}}, "X": "hyper"})
    assert custom["P"] == {"stage": "prune", "params": {"sparsity": 0.5, "epochs": 1}}
    assert custom["X"]["stage"] == "hyper"
    for letters, overrides, message in [
            ("D", None, "two or more different letters"), ("DD", None, "two or more different"),
            ("DZ", None, "unknown stage letter 'Z'"), ("DP", {"Q": "hyper"}, "not among --stages"),
            ("DP", {"P": {"prune": {"sparsity": 0.5, "bogus": 1}}}, r"unknown parameters \['bogus'\]"),
            ("DP", {"P": {"nope": {}}}, "unknown stage 'nope'"), ("DP", {"P": [1]}, "expected {stage: {params}}")]:
        with pytest.raises(StageError, match=message):
            stage_specs(letters, overrides)
    assert parse_triples("DQP, PEQ", list("DPQE")) == [("D", "Q", "P"), ("P", "E", "Q")]
    assert parse_triples(None, list("DP")) == []
    for text in ("DQ", "DDP", "DXP"):
        with pytest.raises(StageError, match="three different letters"):
            parse_triples(text, list("DPQE"))


def test_random_orders_are_distinct_avoid_the_recommended_one_and_prefer_runnable_ones():
    orders, runnable = random_orders(list("DPQE"), 5, tuple("DPQE"))
    assert runnable and len(set(orders)) == 5 and tuple("DPQE") not in orders
    assert all(sorted(o) == list("DEPQ") for o in orders)
    assert random_orders(list("DPQE"), 5, tuple("DPQE")) == (orders, True)  # seeded
    assert random_orders(list("DP"), 5, ("D", "P")) == ([("P", "D")], True)
    rows = runs("QP", [0], status="invalid") + runs("PQ", [0.9]) + runs("ED", [0, 0], status="invalid")
    rows += runs("DE", [0.9]) + runs("QE", [0.9]) + runs("EQ", [0.9]) + runs("EQP", [0], status="invalid")
    blocked = blocked_pairs(rows)
    assert blocked == {("Q", "P"), ("E", "D")}
    orders, runnable = random_orders(list("DPQE"), 30, tuple("DPQE"), blocked)
    position = [{letter: i for i, letter in enumerate(o)} for o in orders]
    assert runnable and all(p["P"] < p["Q"] and p["D"] < p["E"] for p in position)
    assert len(orders) == 24 // 4 - 1  # P before Q and D before E: a quarter of the 24 orders, less DPQE
    everything = {(x, y) for x in "DP" for y in "DP" if x != y}
    assert random_orders(list("DP"), 3, ("D", "P"), everything) == ([("P", "D")], False)


def test_run_keys_follow_the_settings_and_torn_results_are_skipped(tmp_path):
    specs = stage_specs("DPQ")
    changed = {**specs, "Q": {"stage": "quantize", "params": {"mode": "qat", "epochs": 1}}}
    assert run_key("start", specs, ("D", "P"), 0) == run_key("start", changed, ("D", "P"), 0)
    assert run_key("start", specs, ("D", "Q"), 0) != run_key("start", changed, ("D", "Q"), 0)
    assert run_key("start", specs, ("D", "P"), 0) not in {run_key("start", specs, ("D", "P"), 1),
                                                           run_key("other", specs, ("D", "P"), 0),
                                                           run_key("start", specs, ("P", "D"), 0)}
    rows = [{"key": "a", "order": ["D", "P"], "seed": 0, "status": "ok"},
            {"key": "b", "order": ["P", "D"], "seed": 0, "status": "invalid"}]
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + '{"key": "c", "ord' + "\n" + "[1, 2]\n" + json.dumps(rows[1]) + "\n")
    assert read_runs(path) == rows
    assert read_runs(tmp_path / "none.jsonl") == []
    generator = random.Random(5)  # garbage of every kind: skipped line by line, never an exception
    for _ in range(200):
        junk = bytes(generator.randrange(256) for _ in range(generator.randrange(200)))
        path.write_bytes(junk + b"\n" + json.dumps(rows[0]).encode() + b"\n" + junk[::-1])
        assert rows[0] in read_runs(path)
    with open(path, "wb") as file:
        file.truncate(MAX_RUNS_BYTES + 1)
    with pytest.raises(EdgepackError, match="more than a sweep writes"):
        read_runs(path)
