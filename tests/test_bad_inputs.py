"""Every bad input to every sub-command gets one clear error line and a non-zero exit.

A corpus of bad files (0-byte, truncated and bit-flipped valid files, random bytes, a wrong
format behind a right extension, a directory, a missing file, protobuf that is not a model, a
model reading an undefined value, invalid ai.edgepack nodes, decompression bombs, bad
checkpoints, bad results files) and bad flag values is fed to the real CLI (``main``, which
the ``edgepack`` script calls; a sample also through the script itself). Each run must exit
non-zero with exactly one ``edgepack <command>: error:`` line and no traceback; the counts per
command (clean error / internal error / traceback) are printed for the release note.
"""

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from edgepack.cli import main
from edgepack.compression import compress, save_checkpoint
from edgepack.demo import digits_mlp
from edgepack.exporter import convert_onnx_to_tflite
from edgepack.exporter.fallbacks import DOMAIN, FUNCTIONS

RNG = np.random.default_rng(9)


def tiny_onnx() -> onnx.ModelProto:
    """A valid 2-node model (Gemm + Relu) with a dynamic batch."""
    weight = numpy_helper.from_array(RNG.standard_normal((4, 8)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, name="fc"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def edgepack_node_model(**attrs) -> onnx.ModelProto:
    """One HashedWeight node with these attributes and its fallback function."""
    buckets = numpy_helper.from_array(RNG.standard_normal(16).astype(np.float32), "buckets")
    graph = helper.make_graph(
        [helper.make_node("HashedWeight", ["buckets"], ["W"], domain=DOMAIN, name="hw", **attrs)], "g",
        [], [helper.make_tensor_value_info("W", TensorProto.FLOAT, ["a", "b"])], [buckets])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    model.functions.append(FUNCTIONS["HashedWeight"]())
    return model


def flip(data: bytes, count: int, seed: int) -> bytes:
    """``data`` with ``count`` random bytes replaced (same length)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(0, len(out), count):
        out[i] = int(rng.integers(0, 256))
    return bytes(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{kind: [(label, path)]} of bad model files, plus valid ones under 'valid'."""
    root = tmp_path_factory.mktemp("bad")
    files = defaultdict(list)

    def put(kind, label, name, data):
        path = root / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[kind].append((label, path))

    good_onnx = tiny_onnx().SerializeToString()
    tflite_path = convert_onnx_to_tflite(tiny_onnx(), root / "valid.tflite")
    good_tflite = tflite_path.read_bytes()
    files["valid"] = [("onnx", root / "valid.onnx"), ("tflite", tflite_path)]
    (root / "valid.onnx").write_bytes(good_onnx)

    for kind, good, other in (("onnx", good_onnx, good_tflite), ("tflite", good_tflite, good_onnx)):
        put(kind, "0-byte", f"empty.{kind}", b"")
        for fraction in (0.1, 0.5, 0.9, 0.99):
            put(kind, f"truncated {fraction:.0%}", f"cut{fraction}.{kind}", good[:int(len(good) * fraction)])
        for seed in range(4):
            put(kind, f"random bytes {seed}", f"random{seed}.{kind}",
                np.random.default_rng(seed).bytes(64 << seed))
        for seed in range(6):
            put(kind, f"bit flips {seed}", f"flip{seed}.{kind}", flip(good, 1 + seed * 3, seed))
        put(kind, "other format", f"other.{kind}", other)
        put(kind, "text", f"text.{kind}", b"hello, I am not a model\n")
        directory = root / kind / f"directory.{kind}"
        directory.mkdir(parents=True)
        files[kind] += [("directory", directory), ("missing file", root / kind / f"missing.{kind}")]
    put("tflite", "TFL3 header + random", "tfl3.tflite",
        b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(7).bytes(400))
    put("tflite", "TFL3 header only", "header.tflite", b"\x1c\x00\x00\x00TFL3")

    put("onnx", "protobuf, not a model", "tensor.onnx",
        numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString())
    put("onnx", "graph without model", "graph.onnx", tiny_onnx().graph.SerializeToString())
    missing_input = tiny_onnx()
    missing_input.graph.node[0].input[0] = "nowhere"
    put("onnx", "node reads an undefined value", "undefined.onnx", missing_input.SerializeToString())
    no_outputs = tiny_onnx()
    del no_outputs.graph.output[:]
    put("onnx", "graph without outputs", "nooutputs.onnx", no_outputs.SerializeToString())
    put("onnx", "ai.edgepack shape 0", "hw_zero.onnx",
        edgepack_node_model(shape=[0, 4], num_hashes=1, seed=0).SerializeToString())
    put("onnx", "ai.edgepack num_hashes 0", "hw_k0.onnx",
        edgepack_node_model(shape=[4, 4], num_hashes=0, seed=0).SerializeToString())
    put("onnx", "ai.edgepack seed 2^32", "hw_seed.onnx",
        edgepack_node_model(shape=[4, 4], num_hashes=1, seed=2**32).SerializeToString())
    put("onnx", "decompression bomb [2, 2^29]", "bomb.onnx",
        edgepack_node_model(shape=[2, 2**29], num_hashes=1, seed=0).SerializeToString())
    put("onnx", "unknown ai.edgepack op", "unknown_op.onnx", edgepack_unknown_op().SerializeToString())
    for label, location in (("external data outside the folder", "../../etc/passwd"),
                            ("external data missing", "nowhere.data")):
        model = tiny_onnx()
        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=location)
        put("onnx", label, f"{location.split('/')[-1]}.onnx", model.SerializeToString())
    return root, files


def edgepack_unknown_op() -> onnx.ModelProto:
    model = tiny_onnx()
    model.graph.node[1].domain = DOMAIN
    model.graph.node[1].op_type = "Frobnicate"
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Bad checkpoint files for ``export``."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model, _ = compress(digits_mlp(hidden=16), {"fc1": {"method": "hashed", "ratio": 0.25}})
    good = save_checkpoint(model, root / "good.safetensors", "edgepack.demo:digits_mlp", {"hidden": 16},
                           {"fc1": {"method": "hashed", "ratio": 0.25}})
    data = good.read_bytes()
    cases = []

    def put(label, name, content):
        path = root / name
        path.write_bytes(content)
        cases.append((label, path))

    put("0-byte", "empty.safetensors", b"")
    put("truncated", "cut.safetensors", data[: len(data) // 2])
    put("header only", "head.safetensors", data[:8])
    put("random bytes", "random.safetensors", np.random.default_rng(1).bytes(2048))
    put("bit flips", "flip.safetensors", flip(data, 8, 3))
    put("text", "text.pt", b"not a checkpoint")
    put("onnx file", "model.onnx", tiny_onnx().SerializeToString())
    plain = root / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    cases.append(("safetensors without metadata", plain))
    meta = {"format": "edgepack.checkpoint", "version": "2", "builder": "edgepack.demo:digits_mlp",
            "builder_kwargs": json.dumps({"hidden": 16}), "recipe": "null"}
    for label, change in (("os:system builder", {"builder": "os:system",
                                                 "builder_kwargs": json.dumps({"command": "true"})}),
                          ("bad kwargs", {"builder_kwargs": json.dumps({"hidden": "wide"})}),
                          ("unknown kwarg", {"builder_kwargs": json.dumps({"depth": 3})}),
                          ("kwargs not JSON", {"builder_kwargs": "{oops"}),
                          ("bad recipe", {"recipe": json.dumps({"fc1": {"method": "magic"}})}),
                          ("version 9", {"version": "9"}),
                          ("state dict mismatch", {"builder_kwargs": json.dumps({"hidden": 8})})):
        path = root / f"{label.replace(' ', '_').replace(':', '_')}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata={**meta, **change})
        cases.append((label, path))
    legacy = root / "legacy_evil.pt"
    torch.save({"format": "edgepack.checkpoint", "version": 1, "builder": "os:system",
                "builder_kwargs": {"command": "true"}, "recipe": None, "state_dict": {}}, legacy)
    cases.append(("v1 os:system builder", legacy))
    cases += [("directory", root), ("missing file", root / "missing.safetensors")]
    return good, cases


def invocations(corpus, checkpoints, tmp_path_factory):
    """(command, label, argv) for every bad input of every sub-command."""
    root, files = corpus
    out = tmp_path_factory.mktemp("out")
    good_ckpt, bad_ckpts = checkpoints
    valid_onnx, valid_tflite = (path for _, path in files["valid"])
    runs = []
    models = [(f"{kind}: {label}", path) for kind in ("onnx", "tflite") for label, path in files[kind]]
    for label, path in models:
        runs.append(("inspect", label, ["inspect", str(path)]))
        if path.suffix == ".onnx":
            runs.append(("convert", label, ["convert", str(path), "-o", str(out / "c.tflite")]))
        runs.append(("bench", label, ["bench", str(path), "--runs", "1", "--warmup", "0",
                                      "--min-seconds", "0", "-o", str(out / "bench.jsonl")]))
    for label, path in bad_ckpts:
        runs.append(("export", f"checkpoint: {label}", ["export", str(path), "--example-shape", "1,64",
                                                        "-o", str(out / "e.onnx")]))
    exp = ["export", str(good_ckpt), "-o", str(out / "e.onnx")]
    for label, extra in (("example width 63", ["--example-shape", "1,63"]),
                         ("example last axis 8", ["--example-shape", "1,1,8,8"]),
                         ("example shape 0", ["--example-shape", "0,64"]),
                         ("example shape text", ["--example-shape", "a,b"]),
                         ("two examples for one input", ["--example-shape", "1,64", "--example-shape", "1,64"]),
                         ("bad mode", ["--example-shape", "1,64", "--mode", "fast"])):
        runs.append(("export", label, exp[:2] + extra + exp[2:]))
    for label, output in (("output .txt", out / "e.txt"), ("output is a directory", out / "dir.onnx"),
                          ("output under a file", out / "file" / "e.onnx")):
        runs.append(("export", label, ["export", str(good_ckpt), "--example-shape", "1,64", "-o", str(output)]))
    (out / "dir.onnx").mkdir()
    (out / "file").write_text("a file, not a directory")
    conv = ["convert", str(valid_onnx)]
    for label, extra in (("batch size 0", ["--batch-size", "0", "-o", str(out / "c.tflite")]),
                         ("batch size -1", ["--batch-size", "-1", "-o", str(out / "c.tflite")]),
                         ("batch size text", ["--batch-size", "x", "-o", str(out / "c.tflite")]),
                         ("output is a directory", ["-o", str(out / "dir.onnx")]),
                         ("output under a file", ["-o", str(out / "file" / "c.tflite")]),
                         ("input shape without name", ["--input-shape", "1,8", "-o", str(out / "c.tflite")]),
                         ("input shape 0", ["--input-shape", "x=0,8", "-o", str(out / "c.tflite")]),
                         ("input shape of an unknown input", ["--input-shape", "nosuch=1,8",
                                                              "-o", str(out / "c.tflite")]),
                         ("input shape of the wrong width", ["--input-shape", "x=1,9",
                                                             "-o", str(out / "c.tflite")]),
                         ("calibration data missing", ["--calibration-data", str(out / "nope.npz"),
                                                       "-o", str(out / "c.tflite")]),
                         ("calibration data not npz", ["--calibration-data", str(valid_onnx),
                                                       "-o", str(out / "c.tflite")])):
        runs.append(("convert", label, conv + extra))
    for label, extra in (("max virtual weights 0", ["--max-virtual-weights", "0"]),
                         ("max virtual weights text", ["--max-virtual-weights", "many"]),
                         ("max decoded bytes -5", ["--max-decoded-bytes", "-5"])):
        runs.append(("inspect", label, ["inspect", str(valid_onnx)] + extra))
    runs.append(("inspect", "unsupported suffix", ["inspect", str(good_ckpt)]))
    bench = ["bench", str(valid_onnx), "-o", str(out / "b.jsonl")]
    npy, no_y = out / "x.npy", out / "no_y.npz"
    np.save(npy, np.zeros((2, 8), np.float32))
    np.savez(no_y, x=np.zeros((2, 8), np.float32))
    for label, extra in (("runs -1", ["--runs", "-1"]), ("runs 0", ["--runs", "0"]),
                         ("threads 0", ["--threads", "0"]), ("warmup -1", ["--warmup", "-1"]),
                         ("min-seconds -1", ["--min-seconds", "-1"]), ("timeout 0", ["--timeout", "0"]),
                         ("runs text", ["--runs", "many"]), ("device bogus", ["--device", "bogus://x"]),
                         ("dataset missing", ["--dataset", str(out / "nope.npz")]),
                         ("dataset not npz", ["--dataset", str(valid_onnx)]),
                         ("dataset .npy", ["--dataset", str(npy)]), ("dataset without y", ["--dataset", str(no_y)]),
                         ("energy bogus", ["--energy", "nuclear"]), ("cpus bad", ["--cpus", "x-y"]),
                         ("runtime bogus", ["--runtime", "gpu"])):
        runs.append(("bench", label, bench + extra))
    runs.append(("bench", "output is a directory", ["bench", str(valid_onnx), "-o", str(out / "dir.onnx"),
                                                    "--runs", "1", "--warmup", "0", "--min-seconds", "0"]))
    results = tmp_path_factory.mktemp("results")
    for label, content in (("0-byte", b""), ("not JSON", b"hello\nworld\n"), ("non-UTF-8", b"\xff\xfe\x00garbage\n"),
                           ("JSON array line", b"[1, 2, 3]\n"), ("record without model", b'{"status": "ok"}\n'),
                           ("record with bad types", b'{"model": 3, "status": "ok", "latency_p50_ms": "fast"}\n'),
                           ("torn line", b'{"model": "a.onnx", "status": "ok", "latency_p5')):
        path = results / f"{label.replace(' ', '_')}.jsonl"
        path.write_bytes(content)
        runs.append(("report", label, ["report", str(path), "-o", str(out / "report")]))
    runs.append(("report", "missing file", ["report", str(results / "missing.jsonl"), "-o", str(out / "r")]))
    runs.append(("report", "directory", ["report", str(results), "-o", str(out / "r")]))
    ok = results / "ok.jsonl"
    ok.write_text(json.dumps({"model": "a.onnx", "status": "ok", "latency_p50_ms": 1.0, "size_kb": 1.0}) + "\n")
    runs.append(("report", "output under a file", ["report", str(ok), "-o", str(out / "file" / "r")]))
    runs.append(("report", "unknown baseline", ["report", str(ok), "-o", str(out / "r2"), "--baseline", "zzz"]))
    for label, extra in (("seed text", ["--seed", "x"]), ("unknown flag", ["--fast"]),
                         ("save is a file", ["--digits", "--quick", "--save", str(out / "file")]),
                         ("save under a file", ["--digits", "--quick", "--save", str(out / "file" / "sub")]),
                         ("save without --digits", ["--quick", "--save", str(out / "s")]),
                         ("work is a file", ["--quick", "--work", str(out / "file")])):
        runs.append(("demo", label, ["demo"] + extra))
    runs.append(("(none)", "unknown command", ["frobnicate"]))
    return runs


def classify(command, label, argv, capsys) -> tuple[str, int, str]:
    """Run ``main(argv)``: (outcome, exit code, stderr); outcome "clean" is what users must get."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - a traceback would reach the user
        captured = capsys.readouterr()
        return "traceback", 1, captured.err + f"{type(error).__name__}: {error}"
    err = capsys.readouterr().err
    if "Traceback" in err:
        return "traceback", code, err
    if code == 0:  # a few flipped bytes may leave a file valid (e.g. inside a weight)
        return ("still valid" if label.endswith(tuple(f"bit flips {i}" for i in range(9))) else "exit 0"), 0, err
    if "internal error" in err:
        return "internal", code, err
    lines = [line for line in err.splitlines() if ": error:" in line]
    if len(lines) == 1 and lines[0].startswith((f"edgepack {command}: error: ", "edgepack: error: ")):
        return "clean", code, err
    name = Path(argv[1]).name if len(argv) > 1 else "?"
    if command == "bench" and label.startswith(("onnx:", "tflite:")) and code == 1 \
            and err.startswith(f"{name}: "):
        # bench keeps going over its models and records each failed one: "<file>: <error>"
        wrapped = err.split(": ", 2)[2] if err.count(": ") >= 2 else ""
        return ("internal" if wrapped.startswith(("TypeError", "KeyError", "AttributeError", "IndexError"))
                else "clean"), code, err
    return "unclear", code, err


COMMANDS = ("export", "convert", "inspect", "bench", "report", "demo")


def test_every_bad_input_gets_one_clear_error(corpus, checkpoints, tmp_path_factory, capsys):
    counts: dict[str, Counter] = defaultdict(Counter)
    bad = []
    for command, label, argv in invocations(corpus, checkpoints, tmp_path_factory):
        outcome, code, err = classify(command, label, argv, capsys)
        counts[command][outcome] += 1
        if outcome not in ("clean", "still valid"):
            bad.append(f"{command} [{label}] -> {outcome} (exit {code}): {err.strip()[-400:]}")
    with capsys.disabled():
        print("\nbad inputs per command (clean error / internal error / traceback or exit 0 / unclear):")
        for command in (*COMMANDS, "(none)"):
            c = counts[command]
            print(f"  {command:8} {sum(c.values()):3} tried: {c['clean']} clean, {c['internal']} internal, "
                  f"{c['traceback'] + c['exit 0']} traceback/exit 0, {c['unclear']} unclear"
                  + (f" ({c['still valid']} bit-flipped files still valid)" if c["still valid"] else ""))
    assert not bad, "\n".join(bad)


def test_the_script_itself_prints_one_line_and_exits_2(corpus, checkpoints, tmp_path):
    """A sample through the installed ``edgepack`` script (a separate process, real stderr)."""
    root, files = corpus
    script = Path(sys.executable).parent / "edgepack"
    empty_onnx = next(path for label, path in files["onnx"] if label == "0-byte")
    truncated = next(path for label, path in files["tflite"] if label == "truncated 50%")
    evil = next(path for label, path in checkpoints[1] if label == "os:system builder")
    for argv in (["convert", str(empty_onnx), "-o", str(tmp_path / "x.tflite")],
                 ["inspect", str(truncated)],
                 ["export", str(evil), "--example-shape", "1,64", "-o", str(tmp_path / "x.onnx")]):
        result = subprocess.run([script, *argv], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"edgepack {argv[0]}: error: ")
    assert not (tmp_path / "x.tflite").exists()  # a 0-byte .onnx no longer "converts"


def test_debug_shows_the_traceback(corpus, capsys):
    _, files = corpus
    empty = next(path for label, path in files["onnx"] if label == "0-byte")
    with pytest.raises(Exception, match="the file is empty"):
        main(["inspect", str(empty), "--debug"])


def test_an_internal_error_is_one_line_with_exit_70(monkeypatch, capsys, corpus):
    """A bug (any non-edgepack exception) is named as one, not shown as a traceback."""
    import edgepack.exporter

    def broken(path):
        raise KeyError("oops")

    monkeypatch.setattr(edgepack.exporter, "inspect_model", broken)
    _, files = corpus
    assert main(["inspect", str(files["valid"][0][1])]) == 70
    err = capsys.readouterr().err
    assert err.strip() == ("edgepack inspect: error: internal error (KeyError: 'oops'); this is a bug in "
                           "edgepack: rerun with --debug for the traceback")
