"""``edgepack bench`` inputs checked on the host: model files refused before they are pushed, real
.tflite models through the device's Python runner, and the flags checked before anything runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from edgepack.benchmarks.harness import RUNNER, BenchError, BenchOptions, bench
from edgepack.devices import LocalDevice
from edgepack.exporter import export

QUICK = dict(warmup=1, runs=3, min_seconds=0.0)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=400)


class PushRecordingDevice(LocalDevice):
    """The local device, remembering the name of every file it was asked to push."""

    def __init__(self):
        super().__init__()
        self.pushed: list[str] = []

    def push(self, local_path, remote_name=None, *, timeout=None):
        self.pushed.append(Path(local_path).name)
        return super().push(local_path, remote_name, timeout=timeout)


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    """A small conv net exported to .tflite (float32 input [1, 1, 8, 8]) and a labelled dataset."""
    folder = tmp_path_factory.mktemp("tflite")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    path = export(net, torch.randn(1, 1, 8, 8), folder / "net.tflite")
    x = torch.randn(12, 1, 1, 8, 8)
    with torch.no_grad():
        y = net(x[:, 0]).argmax(1)
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    return path, folder / "data.npz"


def test_runner_script_prints_json_for_a_real_tflite_model(tflite_model):
    """runner_script.py itself (as the device runs it): the input shape LiteRT reports is numpy
    int32, which json.dumps refused before the shape was converted to ints."""
    path, _ = tflite_model
    done = subprocess.run([sys.executable, str(RUNNER), str(path), "--runtime", "tflite", "--runs", "2",
                           "--warmup", "0"], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result
    assert result["input_shape"] == [1, 1, 8, 8] and len(result["latencies_ms"]) >= 2


def test_bench_measures_a_real_tflite_model_with_the_python_runner(tflite_model, tmp_path):
    path, dataset = tflite_model
    options = BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl"), dataset=str(dataset))
    record = bench([path], "local", options, console=quiet())[0]
    assert record["status"] == "ok", record
    assert record["runtime"] == "tflite" and "runner_script.py" in record["device_command"]
    assert record["metrics"]["accuracy"] == 1.0  # labels are torch's argmax: LiteRT computed the same
    assert record["metrics"]["size_kb"] == pytest.approx(path.stat().st_size / 1024)


@pytest.mark.parametrize("name, content, message", [
    ("garbage.onnx", b"not a model at all", "not a readable ONNX model"),
    ("empty.onnx", b"", "the file is empty"),
    ("garbage.tflite", b"\x00" * 64, "not a TFLite flatbuffer"),
], ids=["garbage-onnx", "empty-onnx", "zeros-tflite"])
def test_corrupt_model_is_refused_before_it_is_pushed(tflite_model, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    good, _ = tflite_model
    device = PushRecordingDevice()
    records = bench([bad, good], device, BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")),
                    console=quiet())
    assert records[0]["status"] == "error" and records[0]["error"].startswith("ModelFileError: ")
    assert message in records[0]["error"] and str(bad) in records[0]["error"]
    assert name not in device.pushed and "runner_script.py" in device.pushed  # the good one still ran
    assert records[1]["status"] == "ok", records[1]


def test_truncated_tflite_is_refused_before_it_is_pushed(tflite_model, tmp_path):
    good, _ = tflite_model
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    device = PushRecordingDevice()
    record = bench([truncated], device, BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")),
                   console=quiet())[0]
    assert record["status"] == "error" and "ModelFileError" in record["error"], record
    assert device.pushed == []


@pytest.mark.parametrize("device, options, message", [
    ("bogus://x", {}, "unknown device 'bogus://x'; valid forms: local"),
    ("ssh://pi@board:99999", {}, "invalid port in device spec 'ssh://pi@board:99999'"),
    ("ssh://pi@board", {"known_hosts": "/no/such/known_hosts"}, "known_hosts file /no/such/known_hosts does not"),
    ("local", {"energy": "nuclear"}, "--energy: unknown power source 'nuclear'"),
    ("local", {"cpus": "x-y"}, "--cpus 'x-y': expected a CPU list"),
    ("local", {"known_hosts": "k"}, "--known-hosts is for ssh:// devices, not local"),
])
def test_bench_refuses_bad_flags_before_measuring(tmp_path, device, options, message):
    output = tmp_path / "r.jsonl"
    with pytest.raises(BenchError, match=message.replace("(", r"\(")):
        bench([tmp_path / "m.onnx"], device, BenchOptions(**QUICK, output=str(output), **options),
              console=quiet())
    assert not output.exists() or output.read_bytes() == b""  # nothing measured, nothing recorded


def test_bench_refuses_a_dataset_without_x_and_y(tmp_path):
    dataset = tmp_path / "d.npz"
    np.savez(dataset, x=np.zeros((3, 4)), labels=np.zeros(3))
    with pytest.raises(BenchError, match="needs arrays x .* and y"):
        bench([tmp_path / "m.onnx"], "local", BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl"),
                                                           dataset=str(dataset)), console=quiet())
