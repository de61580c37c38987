"""``edgepack bench`` end to end: locally, over a real sshd, under qemu; errors become records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.benchmarks.harness import BenchOptions, bench
from edgepack.benchmarks.report import write_report
from edgepack.benchmarks.results import read_results
from edgepack.compression import compress
from edgepack.demo import accuracy, digits_mlp, load_digits_split, train_classifier
from edgepack.devices import get_device
from edgepack.exporter import export

QUICK = dict(warmup=2, runs=5, min_seconds=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A trained digits MLP (dense and hashed) exported to ONNX, and the digits test set as .npz."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    data = load_digits_split()
    dense = train_classifier(digits_mlp(hidden=64), data, epochs=5)
    hashed, _ = compress(dense, {"fc*": {"method": "hashed", "ratio": 1 / 8}})
    x = data.x_test[:1]
    paths = {"dense": export(dense, x, folder / "dense.onnx"),
             "hashed": export(hashed.eval(), x, folder / "hashed.onnx")}
    np.savez(folder / "digits.npz", x=data.x_test.numpy(), y=data.y_test.numpy())
    expected = {name: accuracy(model, data.x_test, data.y_test)
                for name, model in [("dense", dense), ("hashed", hashed)]}
    return paths, folder / "digits.npz", expected


def test_local_bench_with_accuracy_energy_estimate_and_report(models, tmp_path):
    paths, dataset, expected = models
    output = tmp_path / "results.jsonl"
    records = bench(list(paths.values()), "local", BenchOptions(**QUICK, dataset=str(dataset), energy="estimate",
                                                                output=str(output)))
    assert [r["status"] for r in records] == ["ok", "ok"], records
    for record, name in zip(records, paths):
        metrics = record["metrics"]
        assert metrics["runs"] >= 5 and len(record["latencies_ms"]) == metrics["runs"]
        assert metrics["latency_p50_ms"] <= metrics["latency_p99_ms"]
        assert metrics["size_kb"] == pytest.approx(paths[name].stat().st_size / 1024)
        assert metrics["accuracy"] == pytest.approx(expected[name], abs=1e-6)  # same answers as torch
        assert metrics["energy_estimated"] is True and metrics["energy_mj_per_inference"] > 0
        assert record["device"]["arch"] and record["runtime"] == "ort"
    assert read_results(output) == json.loads(json.dumps(records))
    report = write_report(output, tmp_path / "report", baseline="dense.onnx")
    assert "hashed" in report["markdown"].read_text() and report["latency"].exists()


def test_bench_over_ssh_end_to_end(sshd, models, tmp_path):
    paths, _, _ = models
    device = get_device(sshd.spec, ssh_options=sshd.options())
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x00" * 8)  # the device's Python has no TFLite runtime: refused before it loads
    records = bench([paths["hashed"], tmp_path / "missing.onnx", tflite], device,
                    BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")))
    ok, missing, no_runtime = records
    assert no_runtime["status"] == "error" and "--benchmark-model" in no_runtime["error"]
    assert ok["status"] == "ok", ok
    assert ok["device_spec"] == sshd.spec and ok["device"]["kind"] == "ssh"
    assert ok["metrics"]["runs"] >= 5
    assert missing["status"] == "error" and "does not exist" in missing["error"]


def test_native_runtime_measures_without_python(models, tmp_path):
    paths, _, _ = models
    options = BenchOptions(**QUICK, runtime="native", output=str(tmp_path / "r.jsonl"))
    records = bench([paths["hashed"]], "local", options)
    assert records[0]["status"] == "ok", records[0]
    assert records[0]["runtime"] == "native" and "edgepack_ort_runner" in records[0]["device_command"]
    assert records[0]["metrics"]["runs"] >= 5


def test_unreachable_device_and_broken_model_are_recorded(models, tmp_path):
    paths, _, _ = models
    output = tmp_path / "r.jsonl"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    records = bench([broken, paths["dense"]], "local", BenchOptions(**QUICK, output=str(output)))
    assert records[0]["status"] == "error" and records[1]["status"] == "ok"
    records = bench([paths["dense"]], "ssh://nobody@127.0.0.1:1", BenchOptions(**QUICK, output=str(output)))
    assert records[0]["status"] == "error" and "127.0.0.1" in records[0]["error"]
    records = bench([paths["dense"]], "adb://no-such-phone", BenchOptions(**QUICK, output=str(output)))
    assert records[0]["status"] == "error" and "no-such-phone" in records[0]["error"]
    unreadable = tmp_path / "meter.csv"
    unreadable.write_text("not,a,meter\n")
    records = bench([paths["dense"]], "local", BenchOptions(**QUICK, output=str(output), energy=f"csv:{unreadable}",
                                                            idle_seconds=0.1))
    assert records[0]["status"] == "error" and "meter.csv" in records[0]["error"]
    assert [r["status"] for r in read_results(output)] == ["error", "ok", "error", "error", "error"]


def test_killed_run_keeps_finished_lines_and_resume_continues(models, tmp_path):
    paths, _, _ = models
    output = tmp_path / "results.jsonl"
    copies = []
    for i in range(4):  # distinct files: each is one measurement
        copy = tmp_path / f"model{i}.onnx"
        copy.write_bytes(paths["dense"].read_bytes())
        copies.append(str(copy))
    command = [sys.executable, "-m", "edgepack.cli", "bench", *copies, "--runs", "5", "--warmup", "1",
               "--min-seconds", "2", "-o", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(read_results(output)) < 1 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = read_results(output)
    assert 1 <= len(finished) < 4
    assert all(json.loads(line) for line in output.read_text().splitlines())  # every line is valid JSON
    resumed = subprocess.run(command[:-2] + ["--min-seconds", "0", "-o", str(output), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    results = read_results(output)
    assert sorted(Path(r["model_path"]).name for r in results) == [f"model{i}.onnx" for i in range(4)]
    assert all(r["status"] == "ok" for r in results)


def test_qemu_device_runs_the_aarch64_bench():
    from edgepack.runtime_kernels.artifacts import find_artifact

    binary = find_artifact("edgepack-bench", "aarch64")  # its error names ci_aarch64.sh (make test-c)
    device = get_device("qemu-aarch64")
    result = device.run([device.push(str(binary)), "kernels", "--sizes", "64", "--batch", "1", "--json",
                         "--num_runs", "2", "--warmup_runs", "1"], timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert device.describe()["arch"] == "aarch64" and result.emulated
    assert any("circulant" in json.dumps(row) for row in (rows if isinstance(rows, list) else [rows]))
