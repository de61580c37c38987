"""``edgepack bench`` under faults: results file unwritable or full, torn/garbled lines, hanging
runners (--timeout), Ctrl-C, work directories, option ranges, and ONNX models with external data."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console

from edgepack.benchmarks.harness import BenchError, BenchOptions, bench
from edgepack.benchmarks.results import ResultsError, append_result, load_results, read_results
from edgepack.cli import main
from edgepack.devices import LocalDevice, get_device

QUICK = dict(warmup=1, runs=5, min_seconds=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small MLP from torch.onnx.export (dynamo): with external data (model.onnx + model.onnx.data,
    torch 2.13's default) and the same model with its weights inside; a dataset labelled by torch."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)).eval()
    external = folder / "external" / "mlp.onnx"
    external.parent.mkdir()
    torch.onnx.export(net, (torch.randn(1, 64),), str(external), dynamo=True, external_data=True)
    assert (external.parent / "mlp.onnx.data").is_file()
    embedded = folder / "embedded.onnx"
    onnx.save_model(onnx.load(str(external)), str(embedded))  # weights inside the .onnx
    x = torch.randn(40, 1, 64)
    with torch.no_grad():
        y = net(x[:, 0]).argmax(1)
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    return {"external": external, "embedded": embedded, "dataset": folder / "data.npz"}


def copies(model: Path, folder: Path, count: int) -> list[Path]:
    """Distinct copies of a model file (each one is its own measurement)."""
    paths = []
    for i in range(count):
        path = folder / f"m{i}.onnx"
        path.write_bytes(model.read_bytes())
        paths.append(path)
    return paths


class RecordingDevice(LocalDevice):
    """The local device, remembering every workdir it used and every command it ran."""

    def __init__(self):
        super().__init__()
        self.workdirs: set[str] = set()
        self.commands: list[list[str]] = []

    def run(self, argv, **options):
        self.commands.append([str(a) for a in argv])
        if self.existing_workdir:
            self.workdirs.add(self.existing_workdir)
        return super().run(argv, **options)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=400)


# -- 5: the results file ------------------------------------------------------------------------
def test_output_directory_is_refused_before_measuring(models, tmp_path, capsys):
    device = RecordingDevice()
    with pytest.raises(ResultsError, match=f"{tmp_path} is a directory"):
        bench([models["embedded"]], device, BenchOptions(**QUICK, output=str(tmp_path)), console=quiet())
    assert device.commands == []
    assert main(["bench", str(models["embedded"]), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh 1 MiB tmpfs (mounting needs root; skipped elsewhere); yields a mount function."""
    mounted = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write into ``folder`` until its file system is full; the filler file's path."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_read_only_and_full_file_systems_are_refused_before_measuring(models, tmp_path, tmpfs):
    device = RecordingDevice()
    read_only = tmpfs("ro,size=1m")
    with pytest.raises(ResultsError, match=f"cannot write results file {read_only}/r.jsonl: Read-only file system"):
        bench([models["embedded"]], device, BenchOptions(**QUICK, output=str(read_only / "r.jsonl")), console=quiet())
    full = tmpfs("size=1m")
    fill(full)
    with pytest.raises(ResultsError, match="bytes free on its file system"):
        bench([models["embedded"]], device, BenchOptions(**QUICK, output=str(full / "r.jsonl")), console=quiet())
    with pytest.raises(ResultsError, match="folder .*missing does not exist"):
        bench([models["embedded"]], device, BenchOptions(**QUICK, output=str(tmp_path / "missing" / "r.jsonl")),
              console=quiet())
    assert device.commands == []


def test_write_failures_keep_the_run_going_and_print_the_lost_records(models, tmp_path, capsys):
    paths = copies(models["embedded"], tmp_path, 2)
    records = bench(paths, "local", BenchOptions(**QUICK, output="/dev/full"), console=quiet())
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records.unsaved == list(records)
    lost = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lost == json.loads(json.dumps(list(records)))

    assert main(["bench", str(paths[0]), "-o", "/dev/full", "--runs", "2", "--warmup", "0",
                 "--min-seconds", "0"]) == 1
    captured = capsys.readouterr()
    assert "could not be written to /dev/full" in captured.out and "Traceback" not in captured.err
    assert json.loads([line for line in captured.err.splitlines() if line.startswith("{")][0])["status"] == "ok"


class DiskFillingDevice(LocalDevice):
    """Fills a folder's file system while the runner measures the model named ``when``."""

    def __init__(self, folder: Path, when: str):
        super().__init__()
        self.folder, self.when = folder, when

    def run(self, argv, **options):
        if any(str(a).endswith(self.when) for a in argv):
            fill(self.folder)
        return super().run(argv, **options)


def test_disk_full_mid_run_then_resume(models, tmp_path, tmpfs, capsys):
    folder = tmpfs("size=1m")
    output = folder / "results.jsonl"
    paths = copies(models["embedded"], tmp_path, 3)
    options = BenchOptions(warmup=0, runs=600, min_seconds=0.0, output=str(output))  # records > one page
    records = bench(paths, DiskFillingDevice(folder, "m1.onnx"), options, console=quiet())
    assert [r["status"] for r in records] == ["ok", "ok", "ok"]  # the run went on after the failure
    assert [Path(r["model_path"]).name for r in records.unsaved] == ["m1.onnx", "m2.onnx"]
    assert [Path(r["model_path"]).name for r in read_results(output)] == ["m0.onnx"]
    lost = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [Path(r["model_path"]).name for r in lost] == ["m1.onnx", "m2.onnx"]
    (folder / "filler").unlink()
    options.resume = True
    bench(paths, "local", options, console=quiet())
    results = load_results(output)
    assert [Path(r["model_path"]).name for r in results.records] == ["m0.onnx", "m1.onnx", "m2.onnx"]
    assert results.skipped <= 1  # at most the line torn by ENOSPC


def test_torn_and_garbled_lines_are_skipped_and_counted(models, tmp_path):
    output = tmp_path / "results.jsonl"
    path = copies(models["embedded"], tmp_path, 1)[0]
    good = {"model": "old", "status": "error", "error": "x"}
    output.write_bytes(json.dumps(good).encode() + b"\n[1, 2]\n42\nnull\n\xff\xfe not utf-8\n\n"
                       + b'{"model": "torn", "sta')
    console = Console(file=io.StringIO(), width=400)
    records = bench([path], "local", BenchOptions(**QUICK, output=str(output), resume=True), console=console)
    assert records[0]["status"] == "ok"
    assert "skipped 5 unreadable line(s)" in console.file.getvalue()
    loaded = load_results(output)
    assert [r["model"] for r in loaded.records] == ["old", "m0"] and loaded.skipped == 5
    append_result(output, {"model": "next"})
    assert [r["model"] for r in read_results(output)] == ["old", "m0", "next"]


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    output = tmp_path / "r.jsonl"
    output.write_text('{"model": "a"}\n{"model": "to')
    append_result(output, {"model": "b"})
    append_result(output, {"model": "c"})
    assert [r["model"] for r in read_results(output)] == ["a", "b", "c"]
    assert output.read_text().endswith('{"model": "c"}\n')


# -- 6: work directories ----------------------------------------------------------------------
def test_workdirs_are_removed_on_success_failure_and_by_spec(models, tmp_path, monkeypatch):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    device = RecordingDevice()
    records = bench([models["embedded"], broken, models["external"]], device,
                    BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")), console=quiet())
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert device.workdirs and not any(Path(w).exists() for w in device.workdirs)

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    records = bench([models["external"], broken], "local", BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")),
                    console=quiet())
    assert [r["status"] for r in records] == ["ok", "error"]
    assert "edgepack-" in records[0]["device_command"] and list(temp.glob("edgepack*")) == []


class InterruptedDevice(RecordingDevice):
    """Ctrl-C while the runner measures."""

    def run(self, argv, **options):
        if any("runner_script" in str(a) for a in argv):
            self.workdirs.add(self.existing_workdir)
            raise KeyboardInterrupt
        return super().run(argv, **options)


def test_ctrl_c_removes_the_workdir(models, tmp_path):
    device = InterruptedDevice()
    with pytest.raises(KeyboardInterrupt):
        bench([models["external"]], device, BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")), console=quiet())
    assert device.workdirs and not any(Path(w).exists() for w in device.workdirs)


def test_keep_workdir_keeps_it_and_says_where(models, tmp_path):
    device = RecordingDevice()
    console = Console(file=io.StringIO(), width=400)
    records = bench([models["external"]], device,
                    BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl"), keep_workdir=True), console=console)
    assert records[0]["status"] == "ok"
    kept = Path(device.existing_workdir)
    assert f"kept the work directory {kept} on local" in console.file.getvalue()
    for name in ("mlp.onnx", "mlp.onnx.data"):  # the model travelled with its external data
        assert (kept / "mlp.model" / name).read_bytes() == (models["external"].parent / name).read_bytes()
    device.cleanup()
    assert not kept.exists()


# -- 7: --timeout -----------------------------------------------------------------------------
class SleepyDevice(LocalDevice):
    """The device's "python" sleeps instead of measuring (a hanging model); it logs its pid."""

    def __init__(self, folder: Path):
        super().__init__()
        self.pids = folder / "pids"
        self.script = folder / "python"
        self.script.write_text(f"#!/bin/sh\necho $$ >> {self.pids}\nexec sleep 300\n")
        self.script.chmod(0o755)

    def python(self, modules):
        return str(self.script)


def test_timeout_fails_the_model_kills_the_runner_and_goes_on(models, tmp_path):
    paths = copies(models["embedded"], tmp_path, 2)
    device = SleepyDevice(tmp_path)
    records = bench(paths, device, BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl"), timeout=1.5),
                    console=quiet())
    assert [r["status"] for r in records] == ["error", "error"]
    assert all("timed out: no result within --timeout 1.5 s" in r["error"] for r in records)
    pids = [int(p) for p in device.pids.read_text().split()]
    assert len(pids) == 2 and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert [r["status"] for r in read_results(tmp_path / "r.jsonl")] == ["error", "error"]


# -- option ranges ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, message", [
    ("--runs", "-1", "integer >= 1"), ("--warmup", "-1", "integer >= 0"), ("--min-seconds", "-1", ">= 0"),
    ("--threads", "0", "integer >= 1"), ("--timeout", "0", "> 0"), ("--timeout", "inf", "> 0"),
])
def test_bench_numbers_out_of_range_are_argparse_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "m.onnx", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("field, value", [("runs", -1), ("warmup", -1), ("min_seconds", -1.0), ("threads", 0),
                                          ("timeout", 0), ("runs", 2.5), ("min_seconds", float("nan"))])
def test_bench_options_check_their_ranges(field, value):
    with pytest.raises(BenchError, match=f"--{field.replace('_', '-')} must be"):
        BenchOptions(**{field: value})


# -- 12: external data ------------------------------------------------------------------------
def test_external_data_is_pushed_and_counted(models, tmp_path):
    external = models["external"]
    total = sum(p.stat().st_size for p in external.parent.iterdir())
    for runtime in ("auto", "native"):
        options = BenchOptions(**QUICK, runtime=runtime, output=str(tmp_path / "r.jsonl"),
                               dataset=str(models["dataset"]) if runtime == "auto" else None)
        record = bench([external], "local", options, console=quiet())[0]
        assert record["status"] == "ok", record
        assert record["metrics"]["size_kb"] == pytest.approx(total / 1024)
    assert record["metrics"]["size_kb"] > external.stat().st_size / 1024 * 2


def test_external_data_accuracy_matches_torch(models, tmp_path):
    options = BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl"), dataset=str(models["dataset"]))
    record = bench([models["external"]], "local", options, console=quiet())[0]
    assert record["metrics"]["accuracy"] == 1.0  # the labels are torch's argmax: the weights arrived


def with_location(model: Path, folder: Path, location: str) -> Path:
    """A copy of ``model`` whose external tensors point at ``location``."""
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "evil.onnx"
    onnx.save_model(proto, str(path))
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin"])
def test_external_data_outside_the_model_folder_is_refused(models, tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"secret" * 1000)
    device = RecordingDevice()
    record = bench([with_location(models["external"], folder, location)], device,
                   BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")), console=quiet())[0]
    assert record["status"] == "error"
    assert f"keeps its data at {location!r}, outside the model's folder" in record["error"]
    assert not any("evil" in " ".join(command) for command in device.commands)  # never ran


def test_missing_external_data_is_named(models, tmp_path):
    path = tmp_path / "mlp.onnx"
    path.write_bytes(models["external"].read_bytes())
    record = bench([path], "local", BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")), console=quiet())[0]
    assert record["status"] == "error" and "'mlp.onnx.data'" in record["error"]
    assert f"{tmp_path}/mlp.onnx.data does not exist" in record["error"]


def test_external_data_over_ssh_and_workdir_removed(sshd, models, tmp_path):
    device = get_device(sshd.spec, ssh_options=sshd.options())
    record = bench([models["external"]], device, BenchOptions(**QUICK, output=str(tmp_path / "r.jsonl")),
                   console=quiet())[0]
    assert record["status"] == "ok", record
    total = sum(p.stat().st_size for p in models["external"].parent.iterdir())
    assert record["metrics"]["size_kb"] == pytest.approx(total / 1024)
    pushed = next(word for word in shlex.split(record["device_command"]) if word.startswith("/tmp/edgepack."))
    workdir = "/".join(pushed.split("/")[:3])
    assert "mlp.model/mlp.onnx" in record["device_command"]
    assert device.run(["test", "-e", workdir]).returncode == 1  # removed on the device


def test_cli_bench_with_external_data(models, tmp_path):
    output = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "edgepack.cli", "bench", str(models["external"]), "--runs", "3",
                           "--warmup", "0", "--min-seconds", "0", "--timeout", "120", "-o", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_results(output)[0]["status"] == "ok"


def test_known_hosts_option_reaches_the_ssh_device(sshd, models, tmp_path):
    scanned = tmp_path / "scanned"
    scanned.write_text(subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "127.0.0.1"], capture_output=True,
                                      text=True, timeout=30, check=True).stdout)
    empty = tmp_path / "empty"
    empty.write_text("")
    output = str(tmp_path / "r.jsonl")
    unknown = bench([models["embedded"]], sshd.spec, BenchOptions(**QUICK, output=output, known_hosts=str(empty)),
                    console=quiet())[0]
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in unknown["error"]
    # with the scanned key the host is trusted; this spec carries no client key, so login is what fails next
    known = bench([models["embedded"]], sshd.spec, BenchOptions(**QUICK, output=output, known_hosts=str(scanned)),
                  console=quiet())[0]
    assert known["status"] == "error" and "authentication failed" in known["error"]
    with pytest.raises(BenchError, match="--known-hosts is for ssh:// devices, not local"):
        bench([models["embedded"]], "local", BenchOptions(**QUICK, output=output, known_hosts=str(scanned)))


def test_ctrl_c_on_the_cli_stops_the_runner_and_removes_the_workdir(models, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    command = [sys.executable, "-m", "edgepack.cli", "bench", str(models["embedded"]), "--runs", "100000000",
               "--warmup", "0", "--min-seconds", "600", "-o", str(tmp_path / "r.jsonl")]
    # SIGINT as a terminal delivers it: a suite started as a background job (`make test &` in a script)
    # inherits SIGINT ignored, and Python then never installs its Ctrl-C handler in the CLI
    process = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(temp.glob("edgepack-*/runner_script.py")) and time.monotonic() < deadline:
        time.sleep(0.1)
    workdir = str(next(temp.glob("edgepack-*")))
    # wait until the runner (its command line names the workdir) has started
    while not any(workdir in _cmdline(p) for p in Path("/proc").glob("[0-9]*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the runner is measuring now
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert list(temp.glob("edgepack-*")) == []
    running = [p for p in Path("/proc").glob("[0-9]*") if workdir in _cmdline(p)]
    assert running == []  # the runner was stopped with it


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
