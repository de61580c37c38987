"""Decode at load in the native runner (edgepack_ort_runner, runtime_kernels/ort/decode_model.c):
its outputs against the Python ``onnx_session`` (decode at load and the fused kernels), with the
weights in the .onnx and in external data, and bad files refused with a message, never a crash.
Needs `make kernels` (build/host/ort/edgepack_ort_runner and libedgepack_ort.so)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from test_decode_at_load import hashed_cnn, hashed_matmul_model, hashed_mlp, hashed_weight_model

from edgepack.benchmarks.native import run_with_native
from edgepack.compression import compress
from edgepack.exporter import export
from edgepack.exporter.validate import InvalidNodeError
from edgepack.kws.models import ds_cnn
from edgepack.runtime_kernels import limits, onnx_session, ort_library_path
from edgepack.runtime_kernels.artifacts import find_artifact, onnxruntime_library_path
from edgepack.runtime_kernels.op_spec import DOMAIN

ARCH = platform.machine()
CRASHES = (-6, -11, -4, -8)  # SIGABRT, SIGSEGV, SIGILL, SIGFPE


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch):
    for env in (limits.ENV_MAX_VIRTUAL_WEIGHTS, limits.ENV_MAX_DECODED_BYTES):
        monkeypatch.delenv(env, raising=False)


def native_libs() -> tuple[Path, Path, Path]:
    """The runner, ONNX Runtime's library and libedgepack_ort for this machine (skips when not built)."""
    try:
        return (find_artifact("edgepack_ort_runner", ARCH), onnxruntime_library_path(ARCH),
                Path(ort_library_path()))
    except (FileNotFoundError, OSError) as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"{exc} (run `make kernels`)")


@pytest.fixture(scope="module")
def libs():
    return native_libs()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The hashed MLP and DS-CNN block of test_decode_at_load and the keyword-spotting DS-CNN hashed
    1/8 (conv, depthwise, pointwise), each as one .onnx and with its tensors of more than 100 bytes
    (the hashed buckets among them) in an external data file."""
    folder = tmp_path_factory.mktemp("native_decode")
    out = {}
    torch.manual_seed(0)
    dscnn = compress(ds_cnn().eval(), {n: {"method": "hashed", "ratio": 1 / 8} for n in ("conv", "dw*", "pw*")})[0]
    for name, make, shape in (("mlp", hashed_mlp, (1, 24)), ("cnn", hashed_cnn, (1, 1, 20, 9)),
                              ("dscnn", dscnn.eval, (1, 1, 49, 10))):
        path = Path(export(make(), torch.zeros(shape), folder / f"{name}.onnx"))
        model = onnx.load(path)
        external = folder / f"{name}_ext.onnx"
        onnx.save(model, external, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{name}_ext.onnx.data", size_threshold=100)
        out[name], out[f"{name}_ext"] = path, external
    return out


def run(libs, model, *flags, bench=False, env=None):
    """The runner on ``model`` (with libedgepack_ort): its CompletedProcess."""
    runner, ort_lib, edgepack_lib = libs
    argv = [str(runner), "--ort", str(ort_lib), "--lib", str(edgepack_lib), *flags]
    argv += ["--bench", "--runs", "1", "--warmup", "0", str(model)] if bench else ["--model", str(model)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def runner_outputs(libs, model, *flags) -> tuple[dict, np.ndarray]:
    done = run(libs, model, *flags)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (out,) = result["outputs"].values()
    return result, np.array(out["data"], np.float32).reshape(out["shape"])


def decoded_and_fused_outputs(model) -> tuple[dict, np.ndarray]:
    """The runner's outputs on ``model`` with its one custom node decoded at load (key ()) and kept fused
    (key ("--keep-fused",)), each run's decode report checked, and the input the runner fed."""
    outputs = {}
    for flags in ((), ("--keep-fused",)):
        result, outputs[flags] = runner_outputs(native_libs(), model, *flags)
        assert (result["decode_at_load"], result["decoded_nodes"]) == ((False, 0) if flags else (True, 1))
    return outputs, feed(onnx_session(Path(model).read_bytes(), decode_at_load=False))["X"]


def feed(session) -> dict[str, np.ndarray]:
    """The runner's deterministic input (runner.c: fill_value; dynamic dims are 1)."""
    feeds = {}
    for k, meta in enumerate(session.get_inputs()):
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in meta.shape]
        i = np.arange(int(np.prod(shape)), dtype=np.int64)
        feeds[meta.name] = (((i * 7919 + (k + 1) * 104729) % 2001 - 1000) / 1000).astype(np.float32).reshape(shape)
    return feeds


def python_output(model, **kwargs) -> np.ndarray:
    session = onnx_session(model, **kwargs)
    return session.run(None, feed(session))[0]


def assert_within_1e6(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name, nodes", [("mlp", 4), ("cnn", 3), ("mlp_ext", 4), ("cnn_ext", 3), ("dscnn_ext", 9)])
def test_runner_decode_equals_keep_fused_and_python(libs, models, name, nodes):
    path = models[name]
    if name.endswith("_ext"):
        external = [t.name for t in onnx.load(path, load_external_data=False).graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL]
        assert any("bucket" in t for t in external), external
    decoded, got = runner_outputs(libs, path)
    fused, kept = runner_outputs(libs, path, "--keep-fused")
    assert (decoded["decode_at_load"], decoded["decoded_nodes"]) == (True, nodes)
    assert (fused["decode_at_load"], fused["decoded_nodes"]) == (False, 0)
    assert_within_1e6(got, python_output(path))
    assert_within_1e6(got, kept)
    assert_within_1e6(kept, python_output(path, decode_at_load=False))


def test_bench_json_says_which_and_native_passes_the_option(libs, models, tmp_path):
    for flags, want in (((), (True, 3)), (("--keep-fused",), (False, 0))):
        done = run(libs, models["cnn"], *flags, bench=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["status"] == "ok" and (result["decode_at_load"], result["decoded_nodes"]) == want

    class Local:
        def push(self, local, remote=None, *, timeout=None):
            dest = tmp_path / (remote or Path(local).name)
            if Path(local).is_dir():
                shutil.copytree(local, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(local, dest)
            return str(dest)

        def run(self, argv, *, timeout=None):
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    options = SimpleNamespace(threads=1, warmup=0, runs=1, min_seconds=0.0, decode_at_load=False)
    result, command = run_with_native(Local(), models["mlp_ext"], options, ARCH, libs[2])
    assert "--keep-fused" in command and result["decode_at_load"] is False
    options.decode_at_load = True
    result, command = run_with_native(Local(), models["mlp_ext"], options, ARCH, libs[2])
    assert "--keep-fused" not in command and (result["decode_at_load"], result["decoded_nodes"]) == (True, 4)


def test_stream_mode_and_fused_epilogue_stay_on_the_kernels(libs, tmp_path):
    for name, model in (("stream", hashed_matmul_model(1)), ("relu", hashed_matmul_model(0, activation=1)),
                        ("expand", hashed_matmul_model(0))):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model)
        result, got = runner_outputs(libs, path)
        assert result["decoded_nodes"] == (name == "expand")
        np.testing.assert_allclose(got, python_output(model, use_kernels=False), rtol=1e-5, atol=1e-6)


def runner_error(libs, path, env=None) -> str:
    done = run(libs, path, bench=True, env=env)
    assert done.returncode not in (0, *CRASHES), done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "error"
    return result["error"]


def test_bad_nodes_and_limits_get_pythons_message(libs, tmp_path, monkeypatch):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(hashed_weight_model([[3, 4]], num_hashes=0))
    with pytest.raises(InvalidNodeError) as python:
        onnx_session(bad.read_bytes())
    assert str(python.value) in runner_error(libs, bad)
    big = tmp_path / "big.onnx"
    big.write_bytes(hashed_weight_model([[40, 5, 10]]))
    monkeypatch.setenv(limits.ENV_MAX_VIRTUAL_WEIGHTS, "1999")
    with pytest.raises(InvalidNodeError) as python:
        onnx_session(big.read_bytes())
    error = runner_error(libs, big, env=dict(__import__("os").environ))
    assert str(python.value) in error and "limit of 1999" in error
    monkeypatch.setenv(limits.ENV_MAX_VIRTUAL_WEIGHTS, "2000")
    assert run(libs, big, bench=True, env=dict(__import__("os").environ)).returncode == 0


def test_external_data_outside_the_folder_or_short_is_refused(libs, models, tmp_path):
    model = onnx.load(models["mlp_ext"], load_external_data=False)
    data = models["mlp_ext"].with_name("mlp_ext.onnx.data").read_bytes()
    escaped = tmp_path / "escaped.onnx"
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../mlp_ext.onnx.data"
    onnx.save(model, escaped)
    assert "outside the model's folder" in runner_error(libs, escaped)
    short = tmp_path / "short"
    short.mkdir()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "mlp_ext.onnx.data"
    onnx.save(model, short / "mlp_ext.onnx")
    (short / "mlp_ext.onnx.data").write_bytes(data[: len(data) // 2])
    assert "holds no" in runner_error(libs, short / "mlp_ext.onnx")


def test_truncated_and_corrupted_files_are_errors_not_crashes(libs, models, tmp_path):
    """Cut or flipped bytes: a decode-at-load message, or ORT's own when the protobuf is broken."""
    data = models["cnn"].read_bytes()
    assert DOMAIN.encode() in data
    rng = np.random.default_rng(5)
    cases = [data[:n] for n in (1, 7, len(data) // 3, len(data) // 2, len(data) - 9)]
    for _ in range(8):
        corrupt = bytearray(data)
        for at in rng.integers(0, len(data), 3):
            corrupt[at] ^= int(rng.integers(1, 256))
        cases.append(bytes(corrupt))
    for i, case in enumerate(cases):
        path = tmp_path / f"case{i}.onnx"
        path.write_bytes(case)
        done = run(libs, path, bench=True)
        assert done.returncode not in CRASHES, (i, done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["status"] in ("ok", "error") and (result["status"] == "ok") == (done.returncode == 0)


def peak_rss_kib(libs, model) -> tuple[int, str]:
    """The runner's peak resident memory (KiB, from a fresh Python's RUSAGE_CHILDREN) and its error."""
    runner, ort_lib, edgepack_lib = libs
    argv = [str(runner), "--ort", str(ort_lib), "--lib", str(edgepack_lib), "--bench", "--runs", "1", "--warmup", "0",
            str(model)]
    probe = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, "
             "text=True); print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.stdout]))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120, check=True)
    rss, stdout = json.loads(done.stdout)
    return rss, json.loads(stdout.strip().splitlines()[-1])["error"]


def test_many_empty_nodes_cost_memory_of_the_files_order(libs, tmp_path):
    """Only ai.edgepack nodes keep a full record: 500k two-byte empty nodes (a 1 MB file) stay well
    under 32x the file in memory (a ~400-byte record each took ~200x), and a HashedWeight with two
    outputs is refused by name."""
    model = onnx.ModelProto.FromString(hashed_weight_model([[3, 4]]))
    model.graph.node[0].output.append("W0_extra")
    small = tmp_path / "small.onnx"
    small.write_bytes(model.SerializeToString())
    model.graph.node.extend([onnx.NodeProto() for _ in range(500_000)])
    big = tmp_path / "big.onnx"
    big.write_bytes(model.SerializeToString())
    base, error = peak_rss_kib(libs, small)
    assert "HashedWeight node 'w0': has 2 outputs; takes exactly one" in error
    peak, error = peak_rss_kib(libs, big)
    assert "has 2 outputs" in error
    assert (peak - base) * 1024 < 32 * big.stat().st_size, (peak, base, big.stat().st_size)


def test_hashed_matmul_counts_its_weight_and_transpose_against_the_limit(libs, tmp_path, monkeypatch):
    """The decoded [5, 6] weight (120 bytes) and its transpose live at once: 240 bytes are needed."""
    path = tmp_path / "matmul.onnx"
    path.write_bytes(hashed_matmul_model(0))
    monkeypatch.setenv(limits.ENV_MAX_DECODED_BYTES, "239")
    error = runner_error(libs, path, env=dict(os.environ))
    assert "and its transpose needs 240 bytes, above the limit of 239" in error
    monkeypatch.setenv(limits.ENV_MAX_DECODED_BYTES, "240")
    done = run(libs, path, bench=True, env=dict(os.environ))
    assert done.returncode == 0 and json.loads(done.stdout)["decoded_nodes"] == 1, done.stdout + done.stderr


def test_edgepack_node_with_an_unnamed_output_is_refused(libs, tmp_path):
    model = onnx.ModelProto.FromString(hashed_weight_model([[3, 4]]))
    model.graph.node[0].output[0] = ""
    path = tmp_path / "unnamed.onnx"
    path.write_bytes(model.SerializeToString())
    assert "HashedWeight node 'w0': its output has an empty name" in runner_error(libs, path)
