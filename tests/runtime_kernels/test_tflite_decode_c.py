"""The C decode-at-load entry point (``edgepack_tflite_decode_model``, tflite/decode_model.c), called
through ctypes by ``tflite_interpreter(decode_at_load="c")``.

References: the same file on the edgepack delegate's kernels (``decode_at_load=False``), the
Python rewrite (decode_tflite.py), and tflite-runtime 2.14 running the C output. Models: a hashed
DS-CNN and MLP exported by edgepack, and the small files of fuzz/make_seeds.py (conv / depthwise
filters through TRANSPOSE, RESHAPE, expand HashedMatMuls with a fused ReLU next to a stream one)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
import torch
from test_decode_at_load import tflite_ops
from torch import nn

from edgepack.compression import HashedLinear, compress
from edgepack.exporter import export
from edgepack.kws.models import ds_cnn
from edgepack.runtime_kernels import delegate_library_path, tflite_interpreter
from edgepack.runtime_kernels.decode_at_load import DecodeError

pytest.importorskip("ai_edge_litert")
ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "runtime_kernels/fuzz/corpus/fuzz_tflite_decode"
TFLITE214_PYTHON = Path(os.environ.get("EDGEPACK_TFLITE214_PYTHON", ROOT / ".venv-tflite214" / "bin" / "python"))
OP = tflite.BuiltinOperator


def make_seeds():
    spec = importlib.util.spec_from_file_location("make_seeds", ROOT / "runtime_kernels/fuzz/make_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hashed_ds_cnn() -> nn.Module:
    """A small DS-CNN with every conv and the FC hashed (the hashed-all recipe), BatchNorm statistics
    that make the scale visible."""
    torch.manual_seed(3)
    model, _ = compress(ds_cnn(channels=16, blocks=2), {"conv": {"method": "hashed", "ratio": 1 / 4},
                                                        "dw*": {"method": "hashed", "ratio": 1 / 4},
                                                        "pw*": {"method": "hashed", "ratio": 1 / 8, "num_hashes": 2},
                                                        "fc": {"method": "hashed", "ratio": 1 / 4}})
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def hashed_mlp() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(HashedLinear(24, 32, ratio=1 / 4, seed=1), nn.ReLU(),
                         HashedLinear(32, 16, ratio=1 / 4, seed=2, num_hashes=2), nn.ReLU6(),
                         HashedLinear(16, 10, ratio=1 / 2, seed=3, signed=False)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{name: .tflite path}: the exported DS-CNN and MLP, and the ok_* seed files."""
    folder = tmp_path_factory.mktemp("decode_c")
    out = {}
    for name, make, shape in (("ds_cnn", hashed_ds_cnn, (1, 1, 49, 10)), ("mlp", hashed_mlp, (2, 24))):
        out[name] = export(make(), torch.randn(*shape), folder / f"{name}.tflite")
    for name, data in make_seeds().decode_models().items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def inputs(interpreter) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.standard_normal(d["shape"]).astype(np.float32) for d in interpreter.get_input_details()]


def run(path: Path, xs: list[np.ndarray] | None = None, **kwargs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    interpreter = tflite_interpreter(path, **kwargs)
    xs = inputs(interpreter) if xs is None else xs
    for detail, x in zip(interpreter.get_input_details(), xs):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return xs, [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def assert_within_1e6(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-6 * max(1.0, np.abs(w).max())


def c_decoded(path: Path, **limits) -> bytes | None:
    from edgepack.runtime_kernels.tflite_runtime import _c_decoded

    return _c_decoded(delegate_library_path(), path, limits)




def test_the_committed_seeds_are_make_seeds_output():
    for name, data in make_seeds().decode_models().items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: run runtime_kernels/fuzz/make_seeds.py"


INT8_STORAGE = ["ok_int8_storage_conv", "ok_int8_storage_depthwise", "ok_int8_storage_pointwise"]
INT8_FILTERS = {"ok_int8_storage_conv": ([OP.TRANSPOSE, None], [OP.CONV_2D, OP.FULLY_CONNECTED]),
                "ok_int8_storage_depthwise": ([OP.TRANSPOSE], [OP.DEPTHWISE_CONV_2D]),
                "ok_int8_storage_pointwise": ([OP.RESHAPE], [OP.CONV_2D])}  # layout ops (None: none), filters


@pytest.mark.parametrize("name", ["ds_cnn", "mlp", "ok_conv", "ok_depthwise", "ok_mlp", "ok_nhwc_matmul",
                                  "ok_reshape_fc", "ok_weight_output", "ok_codebook_fc", "ok_int8_activation_cast",
                                  *INT8_STORAGE])
def test_c_decoded_equals_the_kernel_path_and_the_python_rewrite(models, name):
    xs, decoded = run(models[name], decode_at_load="c")
    assert_within_1e6(decoded, run(models[name], xs, decode_at_load=True)[1])  # the same int8 model: equal
    kernels = run(models[name], xs, decode_at_load=False)[1]
    if name in INT8_STORAGE:  # LiteRT's builtin int8 kernels on the computed filter (XNNPACK needs it static)
        from edgepack.exporter.tflite_verify import INT8_BUILTIN_STEPS

        scale = make_seeds().INT8_STORAGE_OUTPUT_SCALE[name]
        assert len(decoded) == len(kernels) == 1 and decoded[0].shape == kernels[0].shape
        assert np.abs(decoded[0] - kernels[0]).max() <= INT8_BUILTIN_STEPS * scale * (1 + 1e-6)
        assert np.abs(decoded[0]).max() > 10 * scale  # not all zero / saturated to nothing
    else:
        assert_within_1e6(decoded, kernels)


@pytest.mark.parametrize("name", INT8_STORAGE)
def test_c_folds_int8_storage_into_the_python_rewrites_int8_filters(models, name):
    """CAST -> CUSTOM [-> TRANSPOSE | RESHAPE, float32] -> CAST, only the filter int8 and quantized, becomes a
    constant per-channel int8 filter, byte for byte the Python rewrite's (decode_tflite.py), its quantization
    kept; no CAST or ai.edgepack op left."""
    from edgepack.runtime_kernels.decode_tflite import decoded_tflite

    data = models[name].read_bytes()
    model, layouts = tflite.Model.GetRootAs(data, 0), []
    graph, ops = model.Subgraphs(0), tflite_ops(data)
    producer = {int(graph.Operators(i).OutputsAsNumpy()[0]): i for i in range(len(ops))}
    for i, op in enumerate(ops):  # the seed: filter <- CAST(int8) <- [float32 layout op <-] decoder
        if op not in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED):
            continue
        w = int(graph.Operators(i).InputsAsNumpy()[1])
        cast = producer[w]
        source = int(graph.Operators(cast).InputsAsNumpy()[0])
        assert ops[cast] == OP.CAST and graph.Tensors(w).Quantization().ScaleLength() > 1
        layout = ops[producer[source]] if ops[producer[source]] in (OP.TRANSPOSE, OP.RESHAPE) else None
        layouts.append(layout)
        if layout is not None:
            source = int(graph.Operators(producer[source]).InputsAsNumpy()[0])
        assert isinstance(ops[producer[source]], str) and ops[producer[source]].startswith("ai.edgepack.")
    assert layouts == INT8_FILTERS[name][0]
    quantized = [t for t in range(graph.TensorsLength()) if graph.Tensors(t).Type() == tflite.TensorType.INT8
                 and t in producer and graph.Tensors(t).Quantization() is not None
                 and graph.Tensors(t).Quantization().ScaleLength() > 1]
    assert len(quantized) == len(layouts)  # the filters only: no second copy of the scales

    c, python = c_decoded(models[name]), decoded_tflite(models[name])
    ops = tflite_ops(c)
    assert OP.CAST not in ops and not [op for op in ops if isinstance(op, str)]
    assert ops == tflite_ops(python)

    def filters(data: bytes) -> list:
        model = tflite.Model.GetRootAs(data, 0)
        graph, out = model.Subgraphs(0), []
        for i, op in enumerate(tflite_ops(data)):
            if op in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED):
                w = graph.Tensors(int(graph.Operators(i).InputsAsNumpy()[1]))
                q = w.Quantization()
                out.append((op, w.Type(), w.ShapeAsNumpy().tolist(), model.Buffers(w.Buffer()).DataAsNumpy().tobytes(),
                            q.ScaleAsNumpy().tolist(), q.ZeroPointAsNumpy().tolist(), q.QuantizedDimension()))
        return out

    got = filters(c)
    assert got == filters(python)
    assert [f[0] for f in got] == INT8_FILTERS[name][1]
    for _, dtype, shape, data, scales, zeros, dimension in got:
        assert dtype == tflite.TensorType.INT8 and len(data) == int(np.prod(shape))
        assert len(scales) == len(zeros) == shape[dimension] and not any(zeros)


def test_c_output_has_static_filters_and_no_decoder_left(models):
    ds, mlp = c_decoded(models["ds_cnn"]), c_decoded(models["mlp"])
    assert tflite_ops(mlp) == [OP.FULLY_CONNECTED] * 3  # the ReLU / ReLU6 fused
    ops = tflite_ops(ds)
    assert not [op for op in ops if isinstance(op, str)]
    assert ops.count(OP.CONV_2D) == 1 and ops.count(OP.DEPTHWISE_CONV_2D) == 2 and ops.count(OP.FULLY_CONNECTED) == 3
    assert not {OP.MUL, OP.ADD, OP.RELU} & set(ops)  # BatchNorm and ReLU folded, as in the dense export
    model = tflite.Model.GetRootAs(ds, 0)
    graph, weights = model.Subgraphs(0), 0
    for i, op in enumerate(ops):
        if op in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED):
            weight = graph.Tensors(int(graph.Operators(i).InputsAsNumpy()[1]))
            weights += 4 * int(np.prod(weight.ShapeAsNumpy()))
            assert model.Buffers(weight.Buffer()).DataLength() == 4 * int(np.prod(weight.ShapeAsNumpy()))
    assert OP.TRANSPOSE in ops  # the input's NCHW -> NHWC stays; the filters' transposes are folded
    assert tflite_ops(c_decoded(models["ok_mlp"])) == [OP.FULLY_CONNECTED, OP.FULLY_CONNECTED,
                                                       "ai.edgepack.HashedMatMul"]
    assert len(ds) > models["ds_cnn"].stat().st_size + weights * 3 // 4  # the dense weights appended in memory


@pytest.mark.parametrize("name, words", [
    ("bad_num_hashes", "HashedWeight node #0 (output 'w'): attribute 'num_hashes' = 65; must be in [1, 64]"),
    ("bad_bomb", "shape [2, 2147483647] would decode 4294967294 virtual weights"),
    ("bad_constant_output", "output (tensor 2) is a constant"),
])
def test_bad_files_are_refused_with_the_delegates_words(models, name, words):
    with pytest.raises(DecodeError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        tflite_interpreter(models[name], decode_at_load="c")


INT8_REFUSED = ["bad_int8_minus_128", "bad_int8_short", "bad_int8_graph_input", "bad_int8_recon",
                "bad_int8_matmul_buckets", "bad_int8_not_integer"]


@pytest.mark.parametrize("name", INT8_REFUSED)
def test_int8_storage_is_refused_in_the_same_words_by_c_and_python(models, name):
    """docs/ops.md "int8 storage": a -128 bucket, a short buffer, a CAST of a graph input, into 'recon' or a
    HashedMatMul's buckets (exporter/validate.py and decode_tflite.py), a decoded value that is not an integer
    folded through CAST(float32 -> int8) (decode_tflite.py): the C decode at load says exactly the same."""
    from edgepack.exporter.validate import InvalidNodeError
    from edgepack.runtime_kernels.decode_tflite import decoded_tflite

    with pytest.raises(InvalidNodeError) as python:
        decoded_tflite(models[name])
    with pytest.raises(DecodeError) as c:
        c_decoded(models[name])
    assert str(c.value) == f"{models[name]}: {python.value}"
    assert str(python.value).startswith("edgepack HashedMatMul" if "matmul" in name else "edgepack HashedWeight")


def graph_tensors(data: bytes) -> tuple[list[int], set[int], set[int]]:
    """The tensors each node reads, and those a node writes or a buffer / graph input holds."""
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    read, written = [], set(graph.InputsAsNumpy().tolist())
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        read += [t for t in op.InputsAsNumpy().tolist() if t >= 0]
        written |= set(op.OutputsAsNumpy().tolist())
    constant = {t for t in range(graph.TensorsLength()) if model.Buffers(graph.Tensors(t).Buffer()).DataLength()}
    return read, written, constant


def test_a_cast_into_x_stays(models):
    """An expand HashedMatMul whose X is a CAST of an int8 constant (the reviewer's x_cast.tflite): the CAST
    is not an int8-stored weight and stays; the new FULLY_CONNECTED reads its output (was: removed, the
    FULLY_CONNECTED reading a tensor nothing writes)."""
    from edgepack.runtime_kernels.decode_tflite import decoded_tflite

    for data in (c_decoded(models["ok_int8_activation_cast"]), decoded_tflite(models["ok_int8_activation_cast"])):
        assert tflite_ops(data) == [OP.CAST, OP.FULLY_CONNECTED]
        read, written, constant = graph_tensors(data)
        assert set(read) <= written | constant


def test_a_reverted_matmul_keeps_its_inputs_and_the_decoded_weights_cast_goes(tmp_path):
    """No FULLY_CONNECTED code to reuse (every code still used): the expand HashedMatMul stays as it is (with
    its X CAST) while an int8-stored HashedWeight next to it is decoded and its storage CAST removed (was:
    CASTs marked for removal before the FULLY_CONNECTED decision; revert3.tflite)."""
    from edgepack.exporter.tflite_writer import TFLiteModelBuilder

    seeds, rng = make_seeds(), np.random.default_rng(2)
    hm, hw = "ai.edgepack.HashedMatMul", "ai.edgepack.HashedWeight"
    b = TFLiteModelBuilder()
    xi = b.tensor("x_i8", (2, 6), np.int8)
    x, h, y = b.tensor("x", (2, 6)), b.tensor("h", (2, 5)), b.tensor("y", (2, 3))
    b.operator(OP.CAST, [xi], [x])
    b.operator(hm, [x, b.constant("b1", rng.standard_normal(9).astype(np.float32))], [h],
               seeds.flexbuffer_options({"in_features": 6, "out_features": 5, "num_hashes": 1, "seed": 1}))
    b.operator(hm, [h, b.constant("b3", rng.standard_normal(5).astype(np.float32))], [y],
               seeds.flexbuffer_options({"in_features": 5, "out_features": 3, "num_hashes": 1, "seed": 3, "mode": 1}))
    q = b.constant("q", rng.integers(-127, 128, 5).astype(np.int8))
    qf, w, wq = b.tensor("qf", (5,)), b.tensor("w", (4, 8)), b.tensor("wq", (4, 8), np.int8)
    b.operator(OP.CAST, [q], [qf])
    b.operator(hw, [qf], [w], seeds.flexbuffer_options({"shape": [4, 8], "num_hashes": 1, "seed": 5}))
    b.operator(OP.CAST, [w], [wq])
    bk, w3 = b.tensor("bk_in", (5,)), b.tensor("w3", (4, 8))
    b.operator(hw, [bk], [w3], seeds.flexbuffer_options({"shape": [4, 8], "num_hashes": 1, "seed": 6}))
    path = tmp_path / "revert.tflite"
    path.write_bytes(b.serialize([xi, bk], [y, wq, w3]))
    data = c_decoded(path)
    assert tflite_ops(data) == [OP.CAST, hm, hm, hw]
    read, written, constant = graph_tensors(data)
    assert set(read) <= written | constant
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    out = graph.Tensors(int(graph.OutputsAsNumpy()[1]))
    assert out.Type() == tflite.TensorType.INT8 and model.Buffers(out.Buffer()).DataLength() == 32


def test_a_malformed_quantization_is_refused_as_malformed(models, tmp_path):
    """A QuantizationParameters scale vector running past the file: refused while parsing (was: "internal
    error: the decoded model overran its buffer" when the int8 filter copied it)."""
    data = bytearray(models["ok_int8_storage_conv"].read_bytes())
    graph = tflite.Model.GetRootAs(bytes(data), 0).Subgraphs(0)
    q = next(graph.Tensors(t).Quantization() for t in range(graph.TensorsLength())
             if graph.Tensors(t).Quantization() is not None and graph.Tensors(t).Quantization().ScaleLength() > 1)
    at = q._tab.Vector(q._tab.Offset(8)) - 4  # the scale vector's length (field 2)
    data[at:at + 4] = (1 << 28).to_bytes(4, "little")
    path = tmp_path / "bad_quant.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match=r"a tensor's QuantizationParameters table \(scale, zero_point, "
                                          r"quantized_dimension\) is out of bounds or malformed"):
        c_decoded(path)


def test_limits_from_kwargs_and_env(models, monkeypatch):
    monkeypatch.delenv("EDGEPACK_MAX_DECODED_BYTES", raising=False)
    with pytest.raises(DecodeError, match=r"shape \[4, 2, 4\] would decode 32 virtual weights.*limit of 31"):
        tflite_interpreter(models["ok_reshape_fc"], decode_at_load="c", max_virtual_weights=31)
    with pytest.raises(DecodeError, match=r"needs 128 bytes.*limit of 127"):
        tflite_interpreter(models["ok_reshape_fc"], decode_at_load="c", max_decoded_bytes=127)
    with pytest.raises(DecodeError, match=r"weight \[4, 8\] of node #1 needs 128 bytes; with the 128 bytes already "
                                          r"decoded.*limit of 255"):  # the RESHAPE's copy counts too
        c_decoded(models["ok_reshape_fc"], max_decoded_bytes=255)
    assert c_decoded(models["ok_reshape_fc"], max_virtual_weights=32, max_decoded_bytes=256) is not None
    monkeypatch.setenv("EDGEPACK_MAX_DECODED_BYTES", "127")
    with pytest.raises(DecodeError, match="limit of 127"):
        c_decoded(models["ok_reshape_fc"])


def test_nothing_to_decode_returns_none(models, tmp_path):
    path = tmp_path / "dense.tflite"
    path.write_bytes(c_decoded(models["mlp"]))
    assert c_decoded(path) is None
    path.write_bytes(b"TFL3 is not a model")
    with pytest.raises(DecodeError, match="dense.tflite: model: "):
        c_decoded(path)


_TFLITE214 = """
import json, sys, numpy as np
from tflite_runtime.interpreter import Interpreter, load_delegate
for path in sys.argv[2:]:
    data = np.load(path + ".npz")
    delegates = [load_delegate(sys.argv[1])] if path.endswith("ok_mlp.tflite") else []
    it = Interpreter(model_path=path, experimental_delegates=delegates)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), [data[k] for k in sorted(data) if k.startswith("x")]):
        it.set_tensor(d["index"], x)
    it.invoke()
    got = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    want = [data[k] for k in sorted(data) if k.startswith("y")]
    ok = all(g.shape == w.shape and np.abs(g - w).max() <= 1e-6 * max(1.0, np.abs(w).max()) for g, w in zip(got, want))
    print(json.dumps({"path": path, "ok": bool(ok and got)}))
"""


def test_tflite_runtime_214_runs_the_c_output(models, tmp_path):
    """The C output is a model tflite-runtime 2.14 loads and runs with its builtin kernels (the
    delegate only for the stream-mode node it keeps)."""
    if not TFLITE214_PYTHON.exists():
        pytest.fail(f"{TFLITE214_PYTHON} is missing: `make test` creates it (make .venv-tflite214)")
    paths = []
    for name in ("ds_cnn", "mlp", "ok_conv", "ok_depthwise", "ok_mlp", "ok_reshape_fc"):
        xs, want = run(models[name], decode_at_load=False)
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(c_decoded(models[name]))
        np.savez(f"{path}.npz", **{f"x{i}": x for i, x in enumerate(xs)}, **{f"y{i}": y for i, y in enumerate(want)})
        paths.append(str(path))
    result = subprocess.run([str(TFLITE214_PYTHON), "-c", _TFLITE214, str(delegate_library_path()), *paths],
                            capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rows) == len(paths) and all(row["ok"] for row in rows), rows


def test_deprecated_metadata_buffers_keep_their_bytes(models, tmp_path):
    """Model.metadata_buffer (deprecated, buffer indices) pins its buffers: the first HashedMatMul's
    buckets, listed there, are not reused for a decoded weight, and the output still equals the kernels'."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(models["mlp"].read_bytes(), 0)
    graph = model.subgraphs[0]
    pinned = [graph.tensors[graph.operators[0].inputs[1]].buffer]
    assert model.buffers[pinned[0]].data is not None
    model.metadataBuffer = pinned
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "metadata_buffer.tflite"
    path.write_bytes(bytes(builder.Output()))
    decoded = schema.ModelT.InitFromPackedBuf(c_decoded(path), 0)
    assert list(decoded.metadataBuffer) == pinned
    assert bytes(decoded.buffers[pinned[0]].data) == bytes(model.buffers[pinned[0]].data)
    xs, want = run(path, decode_at_load=False)
    assert_within_1e6(run(path, xs, decode_at_load="c")[1], want)
