"""Results files and reports: torn lines are skipped, reports carry tables and plots."""

import json

import numpy as np
import pytest

from edgepack.benchmarks.report import write_report
from edgepack.benchmarks.results import append_result, latency_metrics, read_results


def record(model: str, p50: float, size_kb: float, accuracy: float, energy: float | None = None) -> dict:
    latencies = list(np.random.default_rng(0).normal(p50, p50 / 10, 50).clip(p50 / 2))
    metrics = {**latency_metrics(latencies), "init_ms": 3.0, "size_kb": size_kb, "accuracy": accuracy,
               "peak_rss_mb": 1.5}
    if energy is not None:
        metrics.update(energy_mj_per_inference=energy, energy_method="estimate", energy_estimated=True)
    return {"model": model, "model_path": f"/m/{model}.onnx", "device_spec": "local", "runtime": "ort",
            "threads": 1, "status": "ok", "metrics": metrics, "latencies_ms": latencies,
            "device": {"arch": "x86_64", "cpu_model": "test cpu", "cores": 2}}


def test_latency_metrics_against_numpy():
    values = list(range(1, 101))
    metrics = latency_metrics(values)
    assert metrics["latency_p50_ms"] == np.percentile(values, 50)
    assert metrics["latency_p99_ms"] == np.percentile(values, 99)
    assert metrics["latency_trimmed_mean_ms"] == np.mean(values[10:90])
    assert metrics["runs"] == 100 and metrics["latency_min_ms"] == 1


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, {"model": "a"})
    append_result(path, {"model": "b"})
    with open(path, "a") as stream:
        stream.write('{"model": "c", "trunc')
    assert [r["model"] for r in read_results(path)] == ["a", "b"]


def test_report_has_tables_plots_and_baseline(tmp_path):
    results = tmp_path / "results.jsonl"
    for r in [record("dense_mlp", 2.0, 340.0, 0.97, 0.8), record("hashed_1_8", 1.0, 53.0, 0.95, 0.3),
              {"model": "broken", "device_spec": "ssh://x@nowhere", "status": "error",
               "error": "DeviceError: host unreachable"}]:
        append_result(results, r)
    paths = write_report(results, tmp_path / "report", baseline="dense_mlp.onnx")
    for name in ("latency", "latency_vs_size", "accuracy_vs_size", "energy"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths["markdown"].read_text()
    assert "dense_mlp" in markdown and "hashed_1_8" in markdown
    assert "host unreachable" in markdown and "estimated" in markdown
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| hashed_1_8") and "×" in line)
    # the same random sample scaled: exactly twice as fast, 3 significant digits everywhere
    assert baseline_row.startswith(f"| hashed_1_8 [ort, local] | 2.00× | {340 / 53:.2f}× | 1.00× | "
                                   f"{0.8 / 0.3:.2f}× | -2.00 pt |")
    row = next(line for line in markdown.splitlines() if line.startswith("| hashed_1_8"))
    assert f"| {53 / 1024:.4f} | 1.50 |" in row  # file size in MB (2^20 bytes), peak RSS in MB
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 4 and "hashed_1_8" in page and "<table>" in page


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        write_report(tmp_path / "missing.jsonl", tmp_path / "r")
    results = tmp_path / "r.jsonl"
    append_result(results, record("a", 1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="baseline 'zzz.onnx' is not among"):
        write_report(results, tmp_path / "r", baseline="zzz.onnx")
    assert json.loads(results.read_text())["model"] == "a"


def test_report_skips_garbled_lines_and_incomplete_records(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    good = record("good", 1.0, 10.0, 0.9)
    no_model = {k: v for k, v in record("x", 1.0, 10.0, 0.9).items() if k != "model"}
    no_metrics = {"model": "nometrics", "runtime": "ort", "status": "ok"}
    bad_latencies = {**record("badlat", 1.0, 10.0, 0.9), "latencies_ms": ["fast"]}
    zero_size = {**record("zero", 1.0, 0.0, 0.9)}
    failed = {"status": "error", "error": "a | pipe\nand a newline"}  # no model, no device_spec
    lines = [json.dumps(r).encode() for r in (good, no_model, no_metrics, bad_latencies, zero_size, failed)]
    results.write_bytes(b"\n".join([*lines, b"[1]", b'"text"', b"\xff\xfe\x00", b'{"model": "torn']))
    paths = write_report(results, tmp_path / "report", baseline="zero")
    assert paths.skipped == 3 + 4  # 3 incomplete ok records, 4 unreadable lines
    markdown = paths["markdown"].read_text()
    assert "2 measurements, 1 failed" in markdown and "7 line(s) skipped" in markdown
    assert "a \\| pipe and a newline" in markdown
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| zero [") and "×" in line)
    assert "| 1.00× | – |" in baseline_row  # the baseline against itself: same speed, size ratio 0/0 left out
    assert "<td>a | pipe and a newline</td>" in paths["html"].read_text()

    from edgepack.cli import main
    assert main(["report", str(results), "-o", str(tmp_path / "cli")]) == 0
    assert "skipped 7 unreadable line(s) or incomplete record(s)" in capsys.readouterr().err
    results.write_bytes(b"\xff\n[]\n")
    assert main(["report", str(results), "-o", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "no results to report (2 unreadable line(s)" in err and "Traceback" not in err


def test_report_has_an_early_exit_section(tmp_path):
    from edgepack.benchmarks.early_exit import result_record

    results = tmp_path / "results.jsonl"
    result = {"manifest": str(tmp_path / "dscnn_exits" / "manifest.json"), "dataset": "test.npz", "examples": 300,
              "threads": 1, "runtime": "tflite", "rounds": 5, "threshold": 0.465, "early_exit_ms": 0.036,
              "full_ms": 0.045, "early_exit_accuracy": 0.9583, "full_accuracy": 0.9589,
              "exit_fractions": [0.818, 0.129, 0.053], "exit_names": ["pw1_relu", "pw2_relu", "final"]}
    append_result(results, result_record(result))
    append_result(results, {**result_record(result), "model": "torn", "metrics": {"early_exit_latency_ms": "x"}})
    append_result(results, record("dense", 1.0, 10.0, 0.9))
    paths = write_report(results, tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "2 measurements" in markdown and paths.skipped == 1 and "| torn" not in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| dscnn_exits"))
    assert row == ("| dscnn_exits | tflite | 1 | 0.465 | 36.0 µs | 45.0 µs | 1.25× | 95.8 % | 95.9 % | "
                   "pw1_relu 81.8 %, pw2_relu 12.9 %, final 5.30 % |")
    assert "<h2>Early exit</h2>" in paths["html"].read_text()
