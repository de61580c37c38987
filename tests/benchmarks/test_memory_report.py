"""File size and resident memory, kept apart: ``inspect``'s memory estimate against hand counts, and
``bench``'s measured file size (os.stat of the model and its external data) and peak RSS (the
runner's VmHWM, bounded by hand-counted weight bytes and by the kernel's own rusage), with decode
at load and with the fused kernels."""

import resource

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.benchmarks.harness import BenchOptions, bench
from edgepack.benchmarks.report import write_report
from edgepack.benchmarks.results import MB
from edgepack.cli import main
from edgepack.exporter import convert_onnx_to_tflite, inspect_model
from edgepack.exporter.fallbacks import DOMAIN, STANDARD_OPSET

RNG = np.random.default_rng(0)


def const(name: str, *shape) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def edgepack_node(op: str, inputs: list[str], output: str, **attributes) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], domain=DOMAIN, name=output, **attributes)


def save(nodes, initializers, inputs, outputs, path, external=False):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, 1)])
    onnx.save(model, path, save_as_external_data=external, location=f"{path.name}.data", size_threshold=0)
    return path


def test_inspect_memory_estimate_against_hand_counts(tmp_path, capsys):
    hashed = {"num_hashes": 1, "seed": 3}
    nodes = [
        # decoded at load: 3·6 weights → 72 B dense; its plan (kernels) is the same 72 B
        edgepack_node("HashedWeight", ["hw_buckets"], "W", shape=[3, 6], **hashed),
        helper.make_node("Gemm", ["X", "W"], ["gemm"], transB=1),
        # stream mode: no plan, stays on the kernels
        edgepack_node("HashedMatMul", ["X", "s_buckets", "", "s_bias"], "stream", in_features=6, out_features=4,
                      mode=1, **hashed),
        # a fused ReLU keeps it on the kernels: plan 4·6·5 = 120 B
        edgepack_node("HashedMatMul", ["X", "a_buckets"], "relu", in_features=6, out_features=5, activation=1,
                      **hashed),
        # buckets computed at run time: not decodable at load, plan 4·6·2 = 48 B
        edgepack_node("HashedMatMul", ["X", "B"], "computed", in_features=6, out_features=2, **hashed),
        # blocks [p=2, q=2, b=4]: spectra 8·2·2·(4/2+1) = 96 B
        edgepack_node("CirculantMatMul", ["X", "blocks"], "circ", in_features=6, out_features=8),
        # G, H [r=2, n=8]: spectra 8·2·(8/2+1) + 8·2·8 = 208 B
        edgepack_node("LDRMatMul", ["X", "G", "H"], "ldr", in_features=6, out_features=8),
    ]
    initializers = [const("hw_buckets", 5), const("s_buckets", 7), const("s_bias", 4), const("a_buckets", 9),
                    const("blocks", 2, 2, 4), const("G", 2, 8), const("H", 2, 8), const("dense", 10)]
    path = save(nodes, initializers, [("X", [2, 6]), ("B", [3])],
                ["gemm", "stream", "relu", "computed", "circ", "ldr"], tmp_path / "m.onnx", external=True)
    summary = inspect_model(path)
    assert summary.file_bytes == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    by_name = {n.name: n for n in summary.nodes}
    assert [by_name[n].decoded_at_load for n in ("W", "stream", "relu", "computed", "circ", "ldr")] == \
        [True, False, False, False, False, False]
    assert [by_name[n].plan_bytes for n in ("W", "stream", "relu", "computed", "circ", "ldr")] == \
        [72, 0, 120, 48, 96, 208]
    stored = 4 * (5 + 7 + 4 + 9 + 16 + 16 + 16 + 10)  # every initializer
    weights = 4 * (5 + 7 + 9 + 16 + 16 + 16)  # the ai.edgepack weight inputs (not s_bias, not dense)
    other = stored - weights
    assert summary.stored_bytes == stored
    # decode at load: W dense (72 B, its buckets dropped); the others stored + plan
    assert summary.memory_decoded == other + 72 + 4 * 7 + (4 * 9 + 120) + 48 + (4 * 16 + 96) + (4 * 32 + 208)
    # fused kernels: every node stored + plan
    assert summary.memory_kernels == other + (4 * 5 + 72) + 4 * 7 + (4 * 9 + 120) + 48 + (4 * 16 + 96) \
        + (4 * 32 + 208)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{summary.file_bytes:,} bytes on disk" in out
    assert f"{summary.memory_decoded:,} B" in out and f"{summary.memory_kernels:,} B" in out


N = 1024  # one hashed 1024×1024 layer: 4 MiB once decoded, 64 kB on disk


def hashed_layer(folder, n: int, name: str):
    node = edgepack_node("HashedMatMul", ["X", "buckets", "", "bias"], "Y", in_features=n, out_features=n,
                         num_hashes=1, seed=5)
    return save([node], [const("buckets", n * n // 64), const("bias", n)], [("X", [1, n])], ["Y"],
                folder / f"{name}.onnx", external=True)


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """The hashed 1024×1024 layer and the same at 64×64 (16 kB decoded), in ONNX and TFLite."""
    folder = tmp_path_factory.mktemp("memory")
    onnx_files = [hashed_layer(folder, N, "hashed"), hashed_layer(folder, 64, "small")]
    return onnx_files + [convert_onnx_to_tflite(path, path.with_suffix(".tflite")) for path in onnx_files]


def on_disk(path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def test_bench_measures_file_size_and_peak_rss_in_both_modes(layers, tmp_path):
    assert layers[0].with_name("hashed.onnx.data").stat().st_size >= 4 * N * N // 64  # the buckets live there
    decoded_bytes = 4 * N * N  # the dense weight (decode at load) or the expand plan (kernels)
    output = tmp_path / "results.jsonl"
    records = []
    for decode in (True, False):
        options = BenchOptions(warmup=1, runs=3, min_seconds=0.0, output=str(output), decode_at_load=decode)
        records += bench(layers, "local", options)
    children_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
    assert [r["status"] for r in records] == ["ok"] * 8, records
    assert [r["weights"] for r in records] == ["decoded at load"] * 4 + ["fused kernels"] * 4
    assert [r["decode_at_load"] for r in records] == [True] * 4 + [False] * 4
    assert [r["runtime"] for r in records] == ["ort", "ort", "tflite", "tflite"] * 2
    for record, path in zip(records, layers * 2):
        metrics = record["metrics"]
        assert metrics["file_size_mb"] * MB == pytest.approx(on_disk(path))
        assert metrics["size_kb"] * 1024 == pytest.approx(on_disk(path))
        assert metrics["peak_rss_mb"] <= children_peak_mb  # the runner is one of this process's children
    for big, little in zip(records[::2], records[1::2]):  # the decoded weight is resident in both modes
        assert big["metrics"]["peak_rss_mb"] >= decoded_bytes / MB
        assert big["metrics"]["peak_rss_mb"] - little["metrics"]["peak_rss_mb"] >= 0.9 * decoded_bytes / MB
    paths = write_report(output, tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "| file size (MB) | peak RSS (MB) |" in markdown
    assert "| hashed [ort, local] | decoded at load |" in markdown
    assert "| hashed [tflite, local, fused kernels] | fused kernels |" in markdown


def test_inspect_estimate_is_the_same_for_onnx_and_tflite(layers):
    for path in layers[::2]:  # the 1024×1024 layer: bias 4·N B, buckets 4·N²/64 B
        summary = inspect_model(path)
        assert summary.file_bytes == on_disk(path)
        assert summary.memory_decoded == 4 * N + 4 * N * N
        assert summary.memory_kernels == 4 * N + 4 * N * N // 64 + 4 * N * N
