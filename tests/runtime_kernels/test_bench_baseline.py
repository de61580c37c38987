"""`edgepack-bench kernels --baseline LIB`: the linked kernels and a dlopen'ed library run side by
side on the same inputs; the report's structure, the output check (its max abs diff against one
computed here with the Python wrappers) and the exit codes of bad baselines. Never asserts on time."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepack import runtime_kernels as rk
from edgepack.runtime_kernels.artifacts import find_artifact

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--sizes", "16,128", "--batch", "1,3", "--rounds", "3", "--min_time_ms", "2", "--warmup", "1"]


def bench(*args: str) -> subprocess.CompletedProcess:
    """Run the built edgepack-bench with the default variant (EDGEPACK_KERNELS unset)."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEPACK_KERNELS"}
    return subprocess.run([str(find_artifact("edgepack-bench")), "kernels", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def library() -> str:
    return str(find_artifact("libedgepack_kernels.so"))


def bench_inputs(count: int, seed: int) -> np.ndarray:
    """The bench's rnd_vec: a 32-bit LCG, (state >> 8) / 2^24 - 0.5 as float32."""
    out = np.empty(count, np.float32)
    for i in range(count):
        seed = (seed * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = (seed >> 8) / 16777216.0 - 0.5
    return out


def expected_entries(sizes, batches, block=64):
    """(kernel, params, n, batch) of every entry, in the bench's order."""
    rows = []
    for n in sizes:
        for j, batch in enumerate(batches):
            rows.append(("dense", "-", n, batch))
            rows += [("circulant", f"b={b}", n, batch) for b in dict.fromkeys([min(block, n), n])]
            rows += [("ldr", "r=2", n, batch), ("hashed_expand", "ratio=1/8", n, batch),
                     ("hashed_stream", "ratio=1/8", n, batch)]
            if j == 0:
                rows.append(("rfft", "-", n, 1))
    return rows


def test_the_current_library_as_baseline_gives_equal_outputs_and_finite_ratios():
    out = bench("--baseline", library(), "--json", *TINY)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["baseline"]["path"] == library() and report["rounds"] == 3 and report["interleaved"] is True
    assert report["baseline"]["variant"] == report["variant"] and report["variant"] in rk.variants()
    assert report["baseline"]["version"] == report["version"]
    results = report["results"]
    assert [(r["kernel"], r["params"], r["n"], r["batch"]) for r in results] == expected_entries([16, 128], [1, 3])
    for r in results:
        assert r["max_abs_diff"] == 0.0, r  # the same sources and variant: bit-identical outputs
        assert r["rounds"] == 3 and r["block_calls"] >= 1
        for key in ("current_us", "baseline_us", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        low, high = r["round_ratio_iqr"]
        assert math.isfinite(high) and 0 < low <= high, r


def test_current_from_a_library_too_gives_equal_outputs():
    """--current dlopens the current side as well (same code placement on both sides)."""
    out = bench("--baseline", library(), "--current", library(), "--json", *TINY)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert results and all(r["max_abs_diff"] == 0.0 for r in results)


def test_a_missing_current_library_exits_2_naming_it(tmp_path):
    path = tmp_path / "libnone.so"
    out = bench("--baseline", library(), "--current", str(path), *TINY)
    assert out.returncode == 2 and "--current" in out.stderr and str(path) in out.stderr


def test_plain_and_markdown_output_name_both_sides():
    plain = bench("--baseline", library(), "--sizes", "16", "--batch", "1", "--rounds", "2", "--min_time_ms", "1")
    assert plain.returncode == 0, plain.stderr
    assert "interleaved rounds" in plain.stdout and f"baseline: {library()}" in plain.stdout
    assert sum(line.startswith(("dense ", "rfft ")) for line in plain.stdout.splitlines()) == 2
    md = bench("--baseline", library(), "--sizes", "16", "--batch", "1", "--rounds", "2", "--min_time_ms", "1",
               "--markdown")
    assert md.returncode == 0, md.stderr
    table = [line for line in md.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| kernel |") and len(table) == 1 + len(expected_entries([16], [1]))


def test_max_abs_diff_is_that_of_the_two_variants_outputs():
    """Baseline forced to ref: the dense entry's max abs diff is |default - ref| of the same product
    computed here through the Python wrappers, and stays within the default tolerance."""
    if rk.variants() == ["ref"]:
        pytest.skip("only the ref variant on this CPU")
    n, batch = 64, 3
    out = bench("--baseline", library(), "--baseline_variant", "ref", "--json", "--sizes", str(n), "--batch",
                str(batch), "--rounds", "2", "--min_time_ms", "1")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["baseline"]["variant"] == "ref" and report["variant"] != "ref"
    x, bias, w = bench_inputs(batch * n, 1).reshape(batch, n), bench_inputs(n, 2), bench_inputs(n * n, 3).reshape(n, n)
    with rk.use_variant(report["variant"]):
        y_current = rk.dense_matmul(x, w, bias)
    with rk.use_variant("ref"):
        y_ref = rk.dense_matmul(x, w, bias)
    np.testing.assert_allclose(y_ref, x.astype(np.float64) @ w.T.astype(np.float64) + bias, atol=1e-4)
    expected = float(np.max(np.abs(y_current.astype(np.float64) - y_ref)))
    dense = next(r for r in report["results"] if r["kernel"] == "dense")
    assert dense["max_abs_diff"] == pytest.approx(expected, rel=1e-2)
    assert all(r["max_abs_diff"] <= 1e-3 * max(1.0, float(np.abs(y_ref).max())) for r in report["results"])


def test_outputs_beyond_tolerance_are_refused_with_exit_3():
    if rk.variants() == ["ref"]:
        pytest.skip("only the ref variant on this CPU")
    out = bench("--baseline", library(), "--baseline_variant", "ref", "--tolerance", "0", "--sizes", "64",
                "--batch", "3", "--rounds", "2", "--min_time_ms", "1", "--json")
    assert out.returncode == 3
    assert "different results for dense" in out.stderr and "--tolerance 0" in out.stderr


def test_a_missing_file_exits_2_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "libedgepack_kernels.so"
    out = bench("--baseline", str(path), *TINY)
    assert out.returncode == 2 and str(path) in out.stderr and "cannot load" in out.stderr
    assert out.stdout == ""


def test_a_file_that_is_no_library_exits_2_naming_the_path(tmp_path):
    path = tmp_path / "libfake.so"
    path.write_text("not an ELF file\n")
    out = bench("--baseline", str(path), *TINY)
    assert out.returncode == 2 and str(path) in out.stderr and "cannot load" in out.stderr


def test_a_library_without_the_kernel_symbols_exits_2_naming_the_symbol():
    """libedgepack_ort.so links the kernels statically and exports none of them."""
    ort = str(find_artifact("libedgepack_ort.so"))
    out = bench("--baseline", ort, *TINY)
    assert out.returncode == 2 and ort in out.stderr and "has no symbol ep_" in out.stderr


@pytest.mark.parametrize("args", [["--baseline_variant", "ref"], ["--current", "x.so"],
                                  ["--baseline", "x.so", "--rounds", "0"],
                                  ["--baseline", "x.so", "--json", "--markdown"]])
def test_bad_option_combinations_exit_2(args):
    assert bench(*args).returncode == 2


def test_before_after_script_refuses_an_unknown_revision():
    script = ROOT / "runtime_kernels/scripts/bench_before_after.sh"
    out = subprocess.run(["bash", str(script), "no-such-revision-xyz"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'no-such-revision-xyz' is not a commit" in out.stderr
