"""`edgepack bench MODEL.onnx --kws-stream STREAM.wav`: the C streaming runner pushed to a device (this
machine, and qemu-aarch64, marked emulated) with its model, libraries and WAV; its detections checked
against the Python detector (kws/detector.py), its per-hop record readable by `edgepack report`; the
runner's WAV reader on files the Python reader takes (a streamed sox header, odd chunks); bad input;
decode at load (the same detections as on the fused kernels); --resume keyed by the WAV; the qemu
device's ARM /proc/cpuinfo."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepack.benchmarks.report import well_formed
from edgepack.cli import main
from edgepack.devices.qemu import QemuDevice, can_bind_cpuinfo
from edgepack.kws.detector import detect_stream
from edgepack.kws.frontend import mfcc_numpy
from edgepack.kws.wav import read_wav, write_wav
from edgepack.runtime_kernels.artifacts import ArtifactNotFoundError, find_artifact, onnxruntime_library_path

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def energy_model(path: Path, hashed: bool, gain: float = 0.0) -> None:
    """A toy keyword model: "yes" when the last half second is loud, else silence (as ci_ort_aarch64.sh);
    ``hashed`` adds a HashedMatMul branch, so the model needs libedgepack_ort; it adds ``gain`` times
    the branch to "yes" and takes it from silence (0: the scores are the plain model's)."""
    rng = np.random.default_rng(1)
    quiet, loud = (mfcc_numpy(rng.standard_normal(16000) * a)[:, 0].mean() for a in (0.003, 0.3))
    w, b = np.zeros((1, 12), np.float32), np.full((1, 12), -10.0, np.float32)
    w[0, 0], w[0, 2], b[0, 0], b[0, 2] = -2.0, 2.0, 0.0, 0.0
    consts = {"starts": np.array([25, 0]), "ends": np.array([49, 1]), "axes": np.array([2, 3]),
              "shape": np.array([1, 1]), "t": np.array([[(quiet + loud) / 2]], np.float32), "w": w, "b": b}
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["r"]), helper.make_node("Sub", ["r", "t"], ["d"]),
             helper.make_node("Mul", ["d", "w"], ["dw"])]
    if hashed:
        consts.update(flat=np.array([1, 490]), buckets=rng.standard_normal(50).astype(np.float32),
                      gain=np.array([[-gain, 0, gain] + [0] * 9], np.float32))
        nodes += [helper.make_node("Reshape", ["x", "flat"], ["xf"]),
                  helper.make_node("HashedMatMul", ["xf", "buckets"], ["h"], domain="ai.edgepack", in_features=490,
                                   out_features=12, num_hashes=1, seed=7, signed=1),
                  helper.make_node("Mul", ["h", "gain"], ["hz"]), helper.make_node("Add", ["dw", "hz"], ["dwh"]),
                  helper.make_node("Add", ["dwh", "b"], ["y"])]
    else:
        nodes.append(helper.make_node("Add", ["dw", "b"], ["y"]))
    g = helper.make_graph(nodes, "energy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 49, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.edgepack", 1)] if hashed else [])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 9
    onnx.save(m, path)


def stream(seconds: int, bursts: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(16000 * seconds) * 0.003).astype(np.float32)
    for s in bursts:
        audio[s * 16000:(s + 1) * 16000] = rng.standard_normal(16000) * 0.3
    return audio


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("kws_bench")
    energy_model(out / "energy.onnx", hashed=False)
    energy_model(out / "hashed.onnx", hashed=True)
    write_wav(out / "stream.wav", stream(8, (2, 5)))
    write_wav(out / "short.wav", stream(3, (1,)))
    return out


def python_detections(model: Path, wav: Path) -> list[tuple[str, float]]:
    return [(d.label, d.time_s) for d in detect_stream(model, read_wav(wav))[0]]


def bench_records(argv: list[str], out: Path) -> list[dict]:
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    main(["bench", *argv, "-o", str(results)])
    return [json.loads(line) for line in results.read_text().splitlines()]


def check_record(record: dict, wav: Path, want: list[tuple[str, float]], emulated: bool) -> None:
    assert record["status"] == "ok", record.get("error")
    assert record["runtime"] == "kws-stream" and record["emulated"] is emulated
    metrics = record["metrics"]
    assert metrics["hops"] == len(read_wav(wav)) // 320 == len(record["latencies_ms"]) == metrics["runs"]
    assert metrics["hop_p50_us"] == pytest.approx(metrics["latency_p50_ms"] * 1e3)
    assert metrics["hop_p50_us"] <= metrics["hop_p90_us"] <= metrics["hop_p99_us"] <= metrics["hop_max_us"] * (1 + 1e-9)
    assert metrics["real_time_factor"] == pytest.approx(sum(record["latencies_ms"]) / (metrics["audio_s"] * 1e3),
                                                        rel=1e-3)
    assert metrics["peak_rss_mb"] >= 0 and metrics["size_kb"] > 0
    assert [(d["label"], d["time_s"]) for d in record["kws_stream"]["detections"]] == want
    assert record["kws_stream"]["wav"] == str(wav.resolve())
    assert well_formed(record)  # `edgepack report` plots and tabulates it


def test_local_device_streams_dense_and_hashed_models(toy):
    want = python_detections(toy / "energy.onnx", toy / "stream.wav")
    assert [label for label, _ in want] == ["yes", "yes"]
    records = bench_records([str(toy / "energy.onnx"), str(toy / "hashed.onnx"), "--kws-stream",
                             str(toy / "stream.wav")], toy)
    for record in records:
        check_record(record, toy / "stream.wav", want, emulated=False)
    assert [r["weights"] for r in records] == ["dense", "decoded at load"]
    assert "--lib" not in records[0]["device_command"] and "--lib" in records[1]["device_command"]


def test_qemu_aarch64_device_is_marked_emulated(toy):
    if not shutil.which("qemu-aarch64"):
        pytest.skip("qemu-aarch64 not installed (scripts/setup-system.sh installs qemu-user)")
    if platform.machine() != "aarch64" and not can_bind_cpuinfo():
        pytest.skip("ONNX Runtime under qemu-user needs an ARM /proc/cpuinfo, bind-mounted only as root")
    try:
        find_artifact("edgepack_kws_stream", "aarch64")
        onnxruntime_library_path("aarch64")
    except ArtifactNotFoundError as error:
        pytest.skip(str(error))
    want = python_detections(toy / "energy.onnx", toy / "short.wav")
    assert [label for label, _ in want] == ["yes"]
    (record,) = bench_records([str(toy / "energy.onnx"), "--kws-stream", str(toy / "short.wav"),
                               "--device", "qemu-aarch64"], toy)
    check_record(record, toy / "short.wav", want, emulated=True)
    npm_version = next(p for p in onnxruntime_library_path("aarch64").parts if re.fullmatch(r"\d+\.\d+\.\d+", p))
    assert record["device"]["arch"] == "aarch64" and record["runtime_version"] == f"onnxruntime {npm_version}"


def riff(*chunks: tuple[bytes, bytes], data_size: int | None = None) -> bytes:
    body = b"WAVE"
    for name, payload in chunks:
        size = data_size if name == b"data" and data_size is not None else len(payload)
        body += name + struct.pack("<I", size) + payload + b"\0" * (len(payload) & 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_runner_reads_what_the_python_reader_reads(toy, tmp_path):
    """A sox / espeak-ng WAV written to a pipe (data size 0x7FFFF000), an odd-sized LIST chunk before
    the audio and the extensible 'fmt ' chunk: the C runner hears the same samples as kws/wav.py."""
    pcm = np.round(read_wav(toy / "short.wav") * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    extensible = struct.pack("<HHIIHH", 0xFFFE, 1, 16000, 32000, 2, 16) + struct.pack("<HHIH14x", 22, 16, 4, 1)
    files = {"sox_pipe": riff((b"fmt ", fmt), (b"data", pcm), data_size=0x7FFFF000),
             "list_chunk": riff((b"fmt ", fmt), (b"LIST", b"INFOodd"), (b"data", pcm)),
             "extensible": riff((b"fmt ", extensible), (b"data", pcm + b"\x01"))}
    runner = [str(find_artifact("edgepack_kws_stream")), "--ort", str(onnxruntime_library_path()),
              "--model", str(toy / "energy.onnx"), "--bench"]
    for name, data in files.items():
        wav = tmp_path / f"{name}.wav"
        wav.write_bytes(data)
        want = python_detections(toy / "energy.onnx", wav)
        done = subprocess.run([*runner, str(wav)], capture_output=True, text=True, timeout=60)
        got = json.loads(done.stdout.splitlines()[-1])
        assert done.returncode == 0 and got["status"] == "ok", (name, got)
        assert got["hops"] == len(read_wav(wav)) // 320 == 150
        assert [(d["label"], d["time_s"]) for d in got["detections"]] == want == [("yes", want[0][1])]


def test_bad_stream_input_is_refused_before_anything_runs(toy, tmp_path, capsys):
    stereo = tmp_path / "stereo.wav"
    write_wav(stereo, np.zeros((1600, 2), np.float32))
    results = tmp_path / "results.jsonl"
    cases = [([str(stereo)], f"--kws-stream {stereo}: 16-bit pcm, 2 channel(s), 16000 Hz"),
             ([str(tmp_path / "missing.wav")], "missing.wav: cannot read"),
             ([str(toy / "stream.wav"), "--dataset", "d.npz"], "--dataset is for whole-model runs"),
             ([str(toy / "stream.wav"), "--runtime", "tflite"], "--runtime tflite is for whole-model runs")]
    for extra, message in cases:
        assert main(["bench", str(toy / "energy.onnx"), "-o", str(results), "--kws-stream", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edgepack bench: error:") and message in err, err
    assert not results.exists() or not results.read_text()
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\0" * 64)
    (record,) = bench_records([str(tflite), "--kws-stream", str(toy / "stream.wav")], tmp_path)
    assert record["status"] == "error" and "runs .onnx models" in record["error"]


def test_the_runner_is_an_artifact_like_the_ort_runner():
    assert find_artifact("edgepack_kws_stream") == ROOT / "build" / "host" / "ort" / "edgepack_kws_stream"
    with pytest.raises(ArtifactNotFoundError, match=r"edgepack_kws_stream for riscv64 not found.*CMake target "
                                                    r"edgepack_kws_stream"):
        find_artifact("edgepack_kws_stream", "riscv64")


def stream_runner(toy: Path, model: Path, *flags: str) -> dict:
    """``edgepack_kws_stream --bench`` on this machine with libedgepack_ort over stream.wav: its JSON."""
    done = subprocess.run([str(find_artifact("edgepack_kws_stream")), "--ort", str(onnxruntime_library_path()),
                           "--lib", str(find_artifact("libedgepack_ort.so")), "--model", str(model), "--bench",
                           *flags, str(toy / "stream.wav")], capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0 and result["status"] == "ok", result
    return result


def test_decoded_at_load_the_detections_are_those_of_the_fused_kernels(toy, tmp_path):
    """A model whose HashedMatMul branch moves the scores: decoded at load (the default with --lib, as
    edgepack_ort_runner) and on the fused kernels (--keep-fused), the runner detects what the Python
    detector does; `bench --no-decode-at-load` keeps the fused kernels."""
    model = tmp_path / "hashed_gain.onnx"
    energy_model(model, hashed=True, gain=0.1)
    want = detect_stream(model, read_wav(toy / "stream.wav"))[0]
    plain = detect_stream(toy / "energy.onnx", read_wav(toy / "stream.wav"))[0]
    assert [d.label for d in want] == ["yes", "yes"]
    assert all(abs(a.score - b.score) > 2e-3 for a, b in zip(want, plain))  # the branch counts
    decoded, fused = stream_runner(toy, model), stream_runner(toy, model, "--keep-fused")
    assert (decoded["decode_at_load"], decoded["decoded_nodes"]) == (True, 1)
    assert (fused["decode_at_load"], fused["decoded_nodes"]) == (False, 0)
    for got in (decoded, fused):
        assert [(d["label"], d["time_s"]) for d in got["detections"]] == [(d.label, round(d.time_s, 3)) for d in want]
        assert [d["score"] for d in got["detections"]] == pytest.approx([d.score for d in want], abs=1.5e-4)
    records = {flag: bench_records([str(model), "--kws-stream", str(toy / "stream.wav"), *flag], tmp_path)[0]
               for flag in ((), ("--no-decode-at-load",))}
    assert [(r["decode_at_load"], r["weights"], r["kws_stream"]["decoded_nodes"]) for r in records.values()] == \
        [(True, "decoded at load", 1), (False, "fused kernels", 0)]
    assert "--keep-fused" in records[("--no-decode-at-load",)]["device_command"]


def test_resume_measures_another_or_a_changed_stream_again(toy, tmp_path):
    """--resume skips a model only for the same WAV: another file, or new bytes at the same path, is a
    new measurement."""
    wav, results = tmp_path / "stream.wav", tmp_path / "results.jsonl"
    shutil.copy(toy / "short.wav", wav)

    def bench(path: Path) -> list[dict]:
        assert main(["bench", str(toy / "energy.onnx"), "--kws-stream", str(path), "-o", str(results),
                     "--resume"]) == 0
        return [json.loads(line) for line in results.read_text().splitlines()]

    assert len(bench(wav)) == 1
    assert len(bench(wav)) == 1  # the same stream: skipped
    assert len(bench(toy / "short.wav")) == 2  # the same bytes elsewhere: another stream
    write_wav(wav, stream(2, (1,)))
    records = bench(wav)
    assert len(records) == 3 and records[0]["kws_stream"]["wav"] == records[2]["kws_stream"]["wav"] == str(wav)
    assert records[0]["kws_stream"]["wav_sha256"] != records[2]["kws_stream"]["wav_sha256"]
    assert records[2]["metrics"]["hops"] == 100


CPUINFO_C = r"""
#include <stdio.h>
int main(void) {
    char line[256];
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 1;
    while (fgets(line, sizeof line, f)) fputs(line, stdout);
    return fclose(f);
}
"""


def test_every_qemu_command_sees_an_arm_cpuinfo(tmp_path):
    """Any aarch64 program run on the qemu device (not only the C runners) reads an ARM /proc/cpuinfo."""
    if not shutil.which("aarch64-linux-gnu-gcc") or not shutil.which("qemu-aarch64"):
        pytest.skip("aarch64-linux-gnu-gcc / qemu-aarch64 are not installed (scripts/setup-system.sh)")
    if not can_bind_cpuinfo():
        pytest.skip("an ARM /proc/cpuinfo needs root with unshare -m on a non-ARM host")
    (tmp_path / "cpuinfo.c").write_text(CPUINFO_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-o", str(tmp_path / "cpuinfo"),
                    str(tmp_path / "cpuinfo.c")], check=True)
    with QemuDevice() as device:
        result = device.run([device.push(tmp_path / "cpuinfo")], timeout=60)
    assert result.returncode == 0 and result.emulated
    cpus = result.stdout.count("processor\t:")
    assert cpus == (os.cpu_count() or 1) and result.stdout.count("CPU implementer\t: 0x41") == cpus
    assert "vendor_id" not in result.stdout
