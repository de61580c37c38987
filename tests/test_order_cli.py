"""``edgepack order`` on a real Ray: a tiny sweep end to end in local mode (report checked, runs checked against
their own checkpoints and an in-process pipeline), resumed after an interruption without rerunning finished
runs, a worker killed mid-task (retried; with no retries recorded as failed, then resumed), and the same sweep
on a two-node cluster (head + worker, started by the test) in a network namespace that has only loopback."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.compression import load_checkpoint, run_pipeline, save_checkpoint
from edgepack.compression.stages import evaluate
from edgepack.demo import digits_mlp
from edgepack.pipeline_data import load_data_spec

RAY = Path(sys.executable).with_name("ray")
# Every Ray test stays on loopback: edgepack's local instance sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 itself
# (checked below); token authentication (on by default in Ray 2.60) is off for the test clusters.
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
       "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TASK = "ray::execute_run"


def order(*args, prefix=(), **popen):
    """``edgepack order`` in its own process (Ray starts and stops with it)."""
    command = [*prefix, sys.executable, "-m", "edgepack.cli", "order", *map(str, args)]
    if popen:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def slow_task(tmp_path_factory):
    """A checkpoint and data on which one pruning run takes seconds: long enough to kill its worker."""
    folder = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12000, 64)).astype(np.float32)
    y = (x @ rng.standard_normal((64, 10))).argmax(1)
    np.savez(folder / "data.npz", x_train=x[:10000], y_train=y[:10000], x_val=x[10000:], y_val=y[10000:])
    model = digits_mlp(256)
    path = save_checkpoint(model, folder / "mlp.safetensors", "edgepack.demo:digits_mlp", {"hidden": 256})
    return path, folder / "data.npz"


def test_a_tiny_sweep_end_to_end_and_resumed(digits_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    args = ["--model", digits_checkpoint, "--data", "digits", "--stages", "P,Q", "--seeds", 1, "--budget", 1,
            "--random-orders", 1, "--local-cpus", 2, "-o", out]
    done = order(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recommended order: P → Q" in done.stdout
    rows = rows_of(out)
    assert sorted("".join(r["order"]) for r in rows) == ["P", "PQ", "Q", "QP"]
    assert {r["ip"] for r in rows} == {"127.0.0.1"}  # the local instance stays on loopback
    by_order = {"".join(r["order"]): r for r in rows}
    assert by_order["QP"]["status"] == "invalid" and "cannot follow channels" in by_order["QP"]["error"]
    report = (out / "report.md").read_text()
    assert "**P → Q**" in report and "| P, Q |" in report and "only P→Q runs" in report
    assert "| recommended | P→Q | 1 ok |" in report and "| random 1 | Q→P | 1 invalid |" in report
    assert "latency: 4 models exported to ONNX" in done.stdout
    latency = re.search(r"\| recommended \|.* \| ([0-9.]+) µs \| ([0-9.]+)× \|$", report, re.M)
    assert latency and float(latency.group(1)) > 0 and float(latency.group(2)) > 0, report
    html = (out / "report.html").read_text()
    assert html.count("<img") == 2 and "P before Q" in html
    start = re.search(r"validation accuracy ([0-9.]+)%, .* ([0-9,]+) BitOps per example", report)
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] >= float(start.group(1)) / 100 - 0.05]
    cheapest = min(ok, key=lambda r: r["bitops"])
    assert f"| 5 | {'→'.join(cheapest['order'])} |" in report, report

    data = load_data_spec("digits")
    for name in ("PQ", "P", "Q"):
        run = by_order[name]
        assert run["status"] == "ok" and len(run["stages"]) == len(name)
        model = load_checkpoint(out / run["checkpoint"])
        assert evaluate(model, data) == pytest.approx(run["accuracy"], abs=1e-12)
        assert evaluate(model, data, "test") == pytest.approx(run["test_accuracy"], abs=1e-12)
    # The same pipeline in this process, from the same start and seed: the same result
    local, reports = run_pipeline(load_checkpoint(digits_checkpoint), data, [
        {"prune_channels": {"ratio": 0.5, "epochs": 1}}, {"quantize": {"mode": "ptq", "epochs": 1}}],
        tmp_path / "local", "edgepack.demo:digits_mlp", {"hidden": 16}, progress=False, echo=lambda _: None)
    assert reports[-1].accuracy == pytest.approx(by_order["PQ"]["accuracy"], abs=2 / len(data.val[1]))
    assert reports[-1].bitops == by_order["PQ"]["bitops"] and reports[-1].weight_bytes == by_order["PQ"]["weight_bytes"]

    before = (out / "runs.jsonl").read_bytes()
    again = order(*args)
    assert again.returncode == 0 and "runs on Ray" not in again.stdout
    assert "resuming: 2 of 2 runs are recorded" in again.stdout and "4 of 4" in again.stdout
    assert (out / "runs.jsonl").read_bytes() == before

    # Interrupted after the first run (its line complete, the next one torn): only the rest reruns
    lines = before.decode().splitlines(keepends=True)
    (out / "runs.jsonl").write_text(lines[0] + lines[1][:40])
    resumed = order(*args)
    assert resumed.returncode == 0 and "resuming: 1 of 2 runs are recorded" in resumed.stdout
    after = rows_of_valid(out)
    assert after[0] == json.loads(lines[0]) and len(after) == 4
    assert {r["key"] for r in after} == {r["key"] for r in rows}


def rows_of_valid(out: Path) -> list[dict]:
    from edgepack.compression.order_sweep import read_runs
    return read_runs(out / "runs.jsonl")


def descends(pid: int, ancestor: int, parent: dict[int, int]) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent.get(pid, 0)
    return False


def still_running_a_task(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split()[0].decode() == TASK
    except (OSError, IndexError):
        return False


def kill_first_task(process: subprocess.Popen, timeout: float = 120) -> int:
    """SIGKILL the first worker of ``process``'s Ray instance seen executing a run (after it has run a
    moment); its pid. Only descendants of ``process``: another Ray on this machine is left alone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        listing = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
        table = [line.split(None, 2) for line in listing.splitlines()]
        parent = {int(pid): int(ppid) for pid, ppid, *_ in table}
        pids = [int(pid) for pid, _, *args in table
                if args and args[0].split()[0] == TASK and descends(int(pid), process.pid, parent)]
        if pids:
            time.sleep(1.0)
            if still_running_a_task(pids[0]):  # a quick run may have ended: its idle worker is no test
                os.kill(pids[0], signal.SIGKILL)
                return pids[0]
        time.sleep(0.1)
    raise AssertionError("no Ray worker ran a task: " + (process.stdout.read() if process.poll() is not None else ""))


def sweep_with_a_killed_task(args: list, out: Path, landed) -> tuple[str, Path, int]:
    """Run ``edgepack order ARGS -o OUT<n>`` with its first running task's worker killed; the kill may land
    just after that run ended, so run again (3 times at most) until ``landed(output, out, killed pid)``.
    Returns the last (output, out folder, killed pid)."""
    for attempt in range(3):
        folder = out.with_name(f"{out.name}{attempt}")
        process = order(*args, "-o", folder, popen=True)
        killed = kill_first_task(process)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        if landed(output, folder, killed):
            break
    return output, folder, killed


def test_a_killed_worker_is_retried_or_recorded_as_failed(slow_task, tmp_path):
    model, data = slow_task
    args = ["--model", model, "--data", data, "--stages", "P,Q", "--seeds", 1, "--budget", 6, "--random-orders",
            0, "--local-cpus", 2, "--no-latency"]
    _, out, killed = sweep_with_a_killed_task(args, tmp_path / "retried",
                                              lambda _, out, killed: killed not in {r["pid"] for r in rows_of(out)})
    rows = rows_of(out)
    assert all(r["status"] in ("ok", "invalid") for r in rows) and len(rows) == 4
    assert killed not in {r["pid"] for r in rows}

    output, out, _ = sweep_with_a_killed_task([*args, "--retries", 0], tmp_path / "failed",
                                              lambda _, out, __: any(r["status"] == "failed" for r in rows_of(out)))
    failed = [r for r in rows_of(out) if r["status"] == "failed"]
    assert len(failed) == 1 and "failed after 0 retries" in output
    assert failed[0]["error"].split(":")[0] in {"WorkerCrashedError", "RayTaskError", "NodeDiedError"}
    assert "failed" in (out / "report.md").read_text()
    resumed = order(*args, "-o", out)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout
    latest = {r["key"]: r for r in rows_of(out)}
    assert all(r["status"] in ("ok", "invalid") for r in latest.values())


def _netns_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and RAY.exists()


@pytest.mark.skipif(not _netns_usable(), reason="needs root, iproute2 (ip netns) and the ray CLI")
def test_the_sweep_spreads_over_a_two_node_cluster(digits_checkpoint, tmp_path):
    namespace = f"edgepack-ray-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    inside = ["ip", "netns", "exec", namespace]
    # Two nodes need Ray's cluster mode (ENV has no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER); the namespace keeps it on lo
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    groups = []  # each node's daemons stay in the process group of its `ray start`: stopped by group, not
    try:         # by `ray stop`, which would stop every Ray on this machine
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        common = ["--num-cpus", "1", "--disable-usage-stats"]
        for extra in (["--head", "--port", "6379", "--include-dashboard", "false", "--temp-dir", temp],
                      ["--address", "127.0.0.1:6379"]):
            node = subprocess.Popen([*inside, str(RAY), "start", *extra, *common], env=ENV, start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            groups.append(node.pid)
            output, _ = node.communicate(timeout=120)
            assert node.returncode == 0, output
        out = tmp_path / "cluster"
        done = order("--model", digits_checkpoint, "--data", "digits", "--stages", "P,Q,E", "--seeds", 2, "--budget", 3,
                     "--random-orders", 1, "--no-latency", "--address", "127.0.0.1:6379", "-o", out, prefix=inside)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(2 nodes, 1 CPU per task)" in done.stdout
        rows = rows_of(out)
        assert len({r["node"] for r in rows}) == 2, [(r["order"], r["node"]) for r in rows]
        assert {r["ip"] for r in rows} == {"127.0.0.1"}
        assert "2 Ray node id(s) recorded" in (out / "report.md").read_text()
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def test_bad_input_is_one_error_line_before_ray_starts(digits_checkpoint, tmp_path, capsys):
    from edgepack.cli import main

    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.yaml").write_text("P: [1, 2]\n")
    (tmp_path / "list.yaml").write_text("- P\n")
    (tmp_path / "alias.yaml").write_text("a: &a [1, 2]\nP: {prune: {layers: *a}}\n")
    base = ["order", "--model", str(digits_checkpoint), "--data", "digits", "-o", str(tmp_path / "out")]
    cases = [
        (["--stages", "P"], "two or more different letters"),
        (["--stages", "P,Z"], "unknown stage letter 'Z'"),
        (["--stages", "P,Q", "--triples", "PQ"], "three different letters"),
        (["--stages", "P,Q", "--stages-file", str(tmp_path / "bad.yaml")], "expected {stage: {params}}"),
        (["--stages", "P,Q", "--stages-file", str(tmp_path / "list.yaml")], "a mapping of letters"),
        (["--stages", "P,Q", "--stages-file", str(tmp_path / "alias.yaml")], "aliases (*name) are not allowed"),
        (["--stages", "P,Q", "--stages-file", str(tmp_path / "none.yaml")], "no such file"),
        (["--stages", "P,Q", "--random-orders", "-1"], "--random-orders must be >= 0"),
        (["--stages", "P,Q", "--address", "127.0.0.1:9"], "no Ray cluster answers there"),
        (["--stages", "P,Q", "--address", "nowhere"], "expected HOST:PORT"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert main(base + ["--stages", "P,Q", "--gpus-per-task", "1", "--local-cpus", "1"]) == 2
    assert "--gpus-per-task 1: no Ray node has that many GPUs (the most is 0)" in capsys.readouterr().err
    assert main(["order", "--model", str(digits_checkpoint), "--data", "cifar", "--stages", "P,Q", "-o",
                 str(tmp_path / "o")]) == 2
    assert "not one of the forms" in capsys.readouterr().err
    assert main(["order", "--model", str(digits_checkpoint), "--data", "digits", "--stages", "P,Q", "-o",
                 str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--stages", "P,Q", "--seeds", "0"])
    assert "must be an integer >= 1" in capsys.readouterr().err
