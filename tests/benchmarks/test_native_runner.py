"""The native runner's --bench mode through benchmarks.native on this host (x86_64 or aarch64):
runner_script.py's JSON fields, every timed run reported, and errors as messages, never crashes.
Needs `make kernels` (build/host/ort/edgepack_ort_runner and libedgepack_ort.so). No timing asserts."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgepack.benchmarks.native import NativeRunnerError, run_with_native
from edgepack.runtime_kernels.artifacts import find_artifact, onnxruntime_library_path

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ARCH = platform.machine()


class FakeDevice:
    """Runs on this machine: push copies into a folder, run is subprocess.run."""

    def __init__(self, root: Path):
        self.root = root
        self.pushed: list[str] = []

    def push(self, local_path, remote_name=None, *, timeout=None) -> str:
        dest = self.root / (remote_name or Path(local_path).name)
        if Path(local_path).is_dir():
            shutil.copytree(local_path, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(local_path, dest)
        self.pushed.append(str(dest))
        return str(dest)

    def run(self, argv, *, timeout=None, env=None, cwd=None):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        return SimpleNamespace(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)


def options(**kw):
    return SimpleNamespace(**{"threads": 1, "warmup": 1, "runs": 5, "min_seconds": 0.0, **kw})


@pytest.fixture(scope="module")
def libs():
    try:
        runner, ort_lib = find_artifact("edgepack_ort_runner", ARCH), onnxruntime_library_path(ARCH)
        from edgepack.runtime_kernels import ort_library_path
        edgepack_lib = Path(ort_library_path())
    except (FileNotFoundError, ImportError, OSError) as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"{exc} (run `make kernels`)")
    return runner, ort_lib, edgepack_lib


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from edgepack.compression import HashedLinear
    from edgepack.exporter import export

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    hashed = export(HashedLinear(64, 32, ratio=1 / 8).eval(), torch.randn(1, 64), out / "hashed.onnx")
    dense = export(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()).eval(), torch.randn(1, 64),
                   out / "dense.onnx")
    bad = out / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    # the export carries a model-local ONNX function as a fallback; without it only libedgepack_ort runs it
    kernels_only = onnx.load(hashed)
    del kernels_only.functions[:]
    onnx.save(kernels_only, out / "kernels_only.onnx")
    return {"hashed": Path(hashed), "dense": Path(dense), "bad": bad, "kernels_only": out / "kernels_only.onnx"}


@pytest.fixture
def device(tmp_path):
    remote = tmp_path / "device"
    remote.mkdir()
    return FakeDevice(remote)


def check_result(result: dict, runs: int) -> None:
    assert result["status"] == "ok"
    assert result["runtime_version"].startswith("onnxruntime ")
    assert result["input_shape"] == [1, 64]
    for key in ("init_ms", "first_inference_ms", "peak_rss_mb"):
        assert isinstance(result[key], float) and result[key] >= 0, key
    assert len(result["latencies_ms"]) >= runs
    assert all(isinstance(v, float) and v >= 0 for v in result["latencies_ms"])


def test_edgepack_model(libs, models, device):
    assert b"ai.edgepack" in models["hashed"].read_bytes()
    result, command = run_with_native(device, models["hashed"], options(runs=7), ARCH, libs[2])
    check_result(result, 7)
    assert "--bench" in command and "--custom-ops" in command and str(device.root) in command
    assert {Path(p).name for p in device.pushed} >= {"edgepack_ort_runner", libs[1].name, libs[2].name, "hashed.onnx"}


def test_dense_model_min_seconds(libs, models, device):
    result, command = run_with_native(device, models["dense"], options(runs=2, warmup=0, min_seconds=0.05),
                                      ARCH, None)
    check_result(result, 2)
    assert "--custom-ops" not in command


def test_bad_model_is_a_clear_error(libs, models, device):
    with pytest.raises(NativeRunnerError, match=r"CreateSession: .*bad\.onnx"):
        run_with_native(device, models["bad"], options(), ARCH, libs[2])


def test_missing_custom_ops_is_an_error(libs, models, device):
    with pytest.raises(RuntimeError, match="CreateSession: .*HashedMatMul"):
        run_with_native(device, models["kernels_only"], options(), ARCH, None)
    result, _ = run_with_native(device, models["kernels_only"], options(runs=1), ARCH, libs[2])
    check_result(result, 1)


@pytest.mark.parametrize("flags, message", [
    (["--ort-lib", "/nonexistent/libonnxruntime.so"], "dlopen /nonexistent"),
    (["--runs", "many"], "--runs wants a non-negative integer"),
    (["--custom-ops", "/nonexistent/libedgepack_ort.so"], "RegisterCustomOpsLibrary_V2"),
])
def test_runner_errors_are_json(libs, models, flags, message):
    runner, ort_lib, _ = libs
    argv = [str(runner), "--bench", "--ort-lib", str(ort_lib), *flags, str(models["dense"])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode not in (0, -6, -11)  # an error exit, not a success or a crash
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "error" and message in result["error"]


def test_output_mode_unchanged(libs, models):
    runner, ort_lib, edgepack_lib = libs
    done = subprocess.run([str(runner), "--ort", str(ort_lib), "--lib", str(edgepack_lib),
                           "--model", str(models["hashed"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    (only,) = out["outputs"].values()
    assert only["shape"] == [1, 32] and len(only["data"]) == 32


def test_unknown_arch_names_what_to_build():
    with pytest.raises(FileNotFoundError, match="riscv64"):
        find_artifact("edgepack_ort_runner", "riscv64")
