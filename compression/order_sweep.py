"""The order search's runs on Ray: each run (an order of stages, a seed) is one Ray task with declared CPU/GPU
resources; results are appended to a JSONL file as each finishes, so an interrupted sweep resumes without
redoing finished runs; a crashed task is retried by Ray, then recorded as failed."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from edgepack.errors import EdgepackError

from .pipeline import append_row, fingerprint, json_default
from .progress import progress_bar
from .stages import StageData, StageError

RUNS = "runs.jsonl"
RUN_CHECKPOINTS = "runs"
MAX_RUNS_BYTES = 256 << 20  # a run's row is a few kB: far more runs than any sweep


@dataclasses.dataclass
class SweepSettings:
    """Where the tasks run and what each may use."""

    address: str | None = None  # None: a local Ray instance; else a cluster's address ("auto", "HOST:PORT")
    cpus: float = 1  # per task; torch in the task uses as many threads
    gpus: float = 0
    retries: int = 2  # Ray reruns a task whose worker died (or that raised) this many times
    local_cpus: int | None = None  # CPUs of the local instance (default: all)


def run_key(start: str, specs: dict[str, dict], order: tuple[str, ...], seed: int) -> str:
    """Identifies a run: the start (model + data digest), the stages' settings in order, the seed. A rerun
    skips a recorded key; changing one stage's settings reruns only the runs that contain it."""
    text = json.dumps([start, [specs[letter] for letter in order], seed], sort_keys=True, default=str)
    return f"{''.join(order)}-s{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def read_runs(path: Path) -> list[dict]:
    """The recorded runs; a line cut short by a crash (or otherwise unreadable) is skipped."""
    rows = []
    if path.is_file():
        if path.stat().st_size > MAX_RUNS_BYTES:
            raise EdgepackError(f"{path}: {path.stat().st_size:,} bytes, more than a sweep writes (at most "
                                f"{MAX_RUNS_BYTES:,}); use another -o or --restart")
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("order"), list):
                rows.append(row)
    return rows


def execute_run(model_bytes: bytes, data: StageData, specs: list[dict], seed: int, trust_builder: list[str],
                threads: int) -> dict:
    """One run, where it is scheduled: load the start checkpoint, run the stages in order (``run_pipeline``, so
    every stage's checkpoint is checked to reload), measure, return the rows and the final checkpoint's bytes.
    A stage that cannot follow the previous one is an "invalid" run (the same on every retry), not a failure."""
    import ray
    import torch

    from .checkpoint import load_checkpoint, read_checkpoint_fields
    from .pipeline import checkpoint_name, run_pipeline
    from .stages import evaluate

    torch.set_num_threads(max(1, int(threads)))
    started = time.perf_counter()
    where = {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
             "pid": os.getpid()}
    data = dataclasses.replace(data, seed=seed)
    with tempfile.TemporaryDirectory(prefix="edgepack-order-") as folder:
        start = Path(folder) / "start.safetensors"
        start.write_bytes(model_bytes)
        fields = read_checkpoint_fields(start)
        model = load_checkpoint(start, trust_builder=trust_builder)
        try:
            model, reports = run_pipeline(model, data, [{s["stage"]: s["params"]} for s in specs], Path(folder) / "out",
                                          fields.builder, fields.kwargs, recipe=fields.recipe,
                                          transforms=fields.transforms, resume=False, progress=False,
                                          trust_builder=trust_builder, echo=lambda _: None)
        except StageError as error:
            return {"status": "invalid", "error": str(error), "seconds": time.perf_counter() - started, **where}
        final = reports[-1]
        test_accuracy = None
        if data.test is not None:
            deployed = getattr(model, "deployed", None)
            test_accuracy = deployed(*data.test)[0] if callable(deployed) else evaluate(model, data, "test")
        checkpoint = (Path(folder) / "out" / checkpoint_name(len(specs), specs[-1]["stage"])).read_bytes()
    return {"status": "ok", "accuracy": final.accuracy, "test_accuracy": test_accuracy,
            "weight_bytes": final.weight_bytes, "macs": final.macs, "bitops": final.bitops,
            "stages": [json.loads(json.dumps(r.row(), default=json_default)) for r in reports[1:]],
            "seconds": time.perf_counter() - started, "checkpoint": checkpoint, **where}


def _check_reachable(address: str) -> None:
    """Fail fast when nothing listens at HOST:PORT: ``ray.init`` would retry for minutes."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EdgepackError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's head (or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise EdgepackError(f"--address {address}: no Ray cluster answers there ({error.strerror or error}); "
                            f"start one with `ray start --head --port {port}`, or leave --address out to run "
                            "on a local instance") from None


@contextlib.contextmanager
def ray_session(settings: SweepSettings):
    """Ray for the sweep: the session already open, else a connection to ``settings.address`` or a local
    instance (kept on loopback), shut down on leaving."""
    if settings.address is None and "ray" not in sys.modules:
        # A local instance: Ray 2.60 would advertise the host's external address and listen on every interface;
        # this (read when ray is imported) keeps it on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise EdgepackError("the order search runs on Ray, which is not installed: pip install 'ray>=2.60' "
                            "(or edgepack[order])") from None
    if ray.is_initialized():
        yield ray
        return
    if settings.address is not None:
        _check_reachable(settings.address)
    try:
        ray.init(address=settings.address, num_cpus=settings.local_cpus if settings.address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as error:
        raise EdgepackError(f"cannot connect to Ray at {settings.address}: {' '.join(str(error).split())[:300]}") \
            from None
    try:
        yield ray
    finally:
        ray.shutdown()


def run_sweep(model: nn.Module, model_bytes: bytes, data: StageData, specs: dict[str, dict],
              orders: list[tuple[str, ...]], seeds: list[int], output_dir: Path, settings: SweepSettings,
              trust_builder=(), progress: bool = True, echo: Callable[[str], None] = print) -> list[dict]:
    """Run every (order, seed) not yet recorded in ``output_dir/runs.jsonl`` as a Ray task, appending each
    result as it arrives (a final checkpoint per successful run in ``output_dir/runs/``). Returns every
    recorded row of these runs. A task that still fails after ``settings.retries`` is recorded as failed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_CHECKPOINTS).mkdir(exist_ok=True)
    results = output_dir / RUNS
    start = fingerprint(model, data, "", {}, None, None)
    wanted = {run_key(start, specs, order, seed): (order, seed) for order in orders for seed in seeds}
    recorded = {row["key"]: row for row in read_runs(results) if row.get("status") in ("ok", "invalid")}
    todo = [key for key in wanted if key not in recorded]
    if len(todo) < len(wanted):
        echo(f"resuming: {len(wanted) - len(todo)} of {len(wanted)} runs are recorded in {results}, "
             f"{len(todo)} to run")
    if todo:
        _run_tasks(todo, wanted, model_bytes, data, specs, output_dir, settings, list(trust_builder), progress, echo)
    rows = {row["key"]: row for row in read_runs(results)}
    return [rows[key] for key in wanted if key in rows]


def _check_feasible(ray, settings: SweepSettings) -> None:
    """A task no node can hold would wait forever: say which resource is short instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for resource, wanted, flag in (("CPU", settings.cpus, "--cpus-per-task"),
                                   ("GPU", settings.gpus, "--gpus-per-task")):
        most = max((node.get(resource, 0) for node in nodes), default=0)
        if wanted > most:
            raise EdgepackError(f"{flag} {wanted:g}: no Ray node has that many {resource}s (the most is {most:g}); "
                                f"ask for at most {most:g}" + (" or add GPU nodes" if resource == "GPU" else ""))


def _run_tasks(todo, wanted, model_bytes, data, specs, output_dir, settings, trust_builder, progress, echo):
    """Submit ``todo`` to Ray and record each result as it finishes (also when the sweep is interrupted)."""
    with ray_session(settings) as ray:
        _check_feasible(ray, settings)
        task = ray.remote(execute_run).options(num_cpus=settings.cpus, num_gpus=settings.gpus,
                                               max_retries=settings.retries, retry_exceptions=True)
        model_ref, data_ref = ray.put(model_bytes), ray.put(data)
        pending = {}
        for key in todo:
            order, seed = wanted[key]
            ref = task.remote(model_ref, data_ref, [specs[letter] for letter in order], seed, trust_builder,
                              max(1, int(settings.cpus)))
            pending[ref] = key
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        echo(f"{len(todo)} runs on Ray ({nodes} node{'s' * (nodes != 1)}, {settings.cpus:g} CPU per task)")
        with progress_bar(enabled=progress) as bar:
            counter = bar.add_task("order sweep", total=len(todo))
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(done[0])
                order, seed = wanted[key]
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayError as error:
                    message = " ".join(str(error).split())[:500]
                    result = {"status": "failed", "error": f"{type(error).__name__}: {message}"}
                    echo(f"run {''.join(order)} seed {seed} failed after {settings.retries} retries: {result['error']}")
                checkpoint = result.pop("checkpoint", None)
                if checkpoint is not None:
                    result["checkpoint"] = f"{RUN_CHECKPOINTS}/{key}.safetensors"
                    _write_atomic(output_dir / result["checkpoint"], checkpoint)
                append_row(output_dir / RUNS, {"key": key, "order": list(order), "seed": seed, **result})
                bar.advance(counter)


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
