"""Decode at load (runtime_kernels/decode_onnx.py, decode_tflite.py): storage-compressed weights
become constants of an in-memory model, so ORT / LiteRT run their own dense kernels.

References: the same file on the edgepack kernels (``decode_at_load=False``), the torch model,
and ORT's fallback functions; messages are compared with the kernels' own."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import tflite
import tflite_models as tm
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgepack.compression import HashedConv2d, HashedLinear
from edgepack.exporter import export
from edgepack.exporter.fallbacks import FUNCTIONS
from edgepack.exporter.validate import InvalidNodeError
from edgepack.runtime_kernels import limits, onnx_session, tflite_interpreter
from edgepack.runtime_kernels.decode_onnx import decoded_onnx
from edgepack.runtime_kernels.decode_tflite import decoded_tflite
from edgepack.runtime_kernels.op_spec import DOMAIN

pytest.importorskip("ai_edge_litert")
RNG = np.random.default_rng(7)
IDENTITY = np.array([1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0], np.float32)


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch):
    for env in (limits.ENV_MAX_VIRTUAL_WEIGHTS, limits.ENV_MAX_DECODED_BYTES):
        monkeypatch.delenv(env, raising=False)


def hashed_mlp() -> nn.Module:
    """One HashedLinear per configuration: K = 1 and K = 2 (recon), signed and unsigned."""
    torch.manual_seed(0)
    return nn.Sequential(
        HashedLinear(24, 32, ratio=1 / 4, seed=1), nn.ReLU(),
        HashedLinear(32, 32, ratio=1 / 4, seed=2, signed=False), nn.ReLU(),
        HashedLinear(32, 16, ratio=1 / 4, seed=3, num_hashes=2), nn.ReLU(),
        HashedLinear(16, 10, ratio=1 / 2, seed=4, num_hashes=3, signed=False)).eval()


def hashed_cnn() -> nn.Module:
    """A small DS-CNN block: hashed k×k conv + BN + ReLU, hashed depthwise, hashed pointwise, FC."""
    torch.manual_seed(0)
    layers = OrderedDict([
        ("conv", HashedConv2d(1, 8, (5, 3), ratio=1 / 4, stride=2, padding=(2, 1), bias=False)),
        ("bn", nn.BatchNorm2d(8)), ("relu", nn.ReLU()),
        ("dw", HashedConv2d(8, 8, 3, ratio=1 / 2, padding=1, groups=8, bias=False, signed=False)),
        ("dw_bn", nn.BatchNorm2d(8)), ("dw_relu", nn.ReLU()),
        ("pw", HashedConv2d(8, 8, 1, ratio=1 / 4, num_hashes=2)), ("pw_relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 4))])
    model = nn.Sequential(layers)
    for bn in (model.bn, model.dw_bn):  # statistics that make the folding visible
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


MODELS = {"mlp": (hashed_mlp, (3, 24)), "cnn": (hashed_cnn, (1, 1, 20, 9))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported to .onnx and .tflite once: {name: (model, x, onnx path, tflite path)}."""
    folder = tmp_path_factory.mktemp("decode")
    out = {}
    for name, (make, shape) in MODELS.items():
        model, x = make(), torch.from_numpy(RNG.standard_normal(shape).astype(np.float32))
        out[name] = (model, x, export(model, x, folder / f"{name}.onnx"), export(model, x, folder / f"{name}.tflite"))
    return out


def run_ort(model, x: np.ndarray, **kwargs) -> np.ndarray:
    session = onnx_session(model, **kwargs)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_tflite(path, x: np.ndarray, **kwargs) -> np.ndarray:
    interpreter = tflite_interpreter(path, **kwargs)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def assert_within_1e6(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


def tflite_ops(data: bytes) -> list[int | str]:
    """Each operator of a flatbuffer: its builtin code, or its custom code."""
    model = tflite.Model.GetRootAs(data, 0)
    graph, ops = model.Subgraphs(0), []
    for i in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        ops.append(code.CustomCode().decode() if code.CustomCode() else max(code.BuiltinCode(),
                                                                            code.DeprecatedBuiltinCode()))
    return ops


@pytest.mark.parametrize("name", MODELS)
def test_ort_decoded_equals_the_kernel_path(exported, name):
    model, x, onnx_path, _ = exported[name]
    decoded = run_ort(onnx_path, x.numpy())
    assert_within_1e6(decoded, run_ort(onnx_path, x.numpy(), decode_at_load=False))
    np.testing.assert_allclose(decoded, run_ort(onnx_path, x.numpy(), use_kernels=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decoded, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_ort_weights_in_place_or_inline_with_the_callers_options(exported):
    """Without sess_options the decoded weights reach ORT as external initializers (placeholders in
    the bytes); with the caller's options (left without them) they are inline initializers."""
    import onnxruntime as ort

    from edgepack.runtime_kernels.decode_onnx import IN_MEMORY

    _, x, onnx_path, _ = exported["cnn"]
    data, arrays = decoded_onnx(onnx_path, inline=False)
    placeholders = [t for t in onnx.ModelProto.FromString(data).graph.initializer if t.external_data]
    assert sorted(t.name for t in placeholders) == sorted(arrays) and len(arrays) == 3
    assert {t.external_data[0].value for t in placeholders} == {IN_MEMORY}
    inline = run_ort(onnx_path, x.numpy(), sess_options=ort.SessionOptions())
    np.testing.assert_array_equal(inline, run_ort(onnx_path, x.numpy()))


@pytest.mark.parametrize("name", MODELS)
def test_litert_decoded_equals_the_kernel_path(exported, name):
    model, x, _, tflite_path = exported[name]
    decoded = run_tflite(tflite_path, x.numpy())
    assert_within_1e6(decoded, run_tflite(tflite_path, x.numpy(), decode_at_load=False))
    np.testing.assert_allclose(decoded, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_rewritten_onnx_has_no_edgepack_node_left(exported, name):
    _, _, onnx_path, _ = exported[name]
    original = onnx.load(onnx_path)
    assert any(node.domain == DOMAIN for node in original.graph.node)
    model = onnx.ModelProto.FromString(decoded_onnx(onnx_path)[0])
    assert not [node.op_type for node in model.graph.node if node.domain == DOMAIN]
    assert not model.functions and DOMAIN not in {o.domain for o in model.opset_import}
    consumers = {node.op_type: node.input[1] for node in model.graph.node if node.op_type in ("MatMul", "Conv")}
    initializers = {t.name for t in model.graph.initializer}
    assert consumers and all(weight in initializers for weight in consumers.values())
    assert onnx.load(onnx_path) == original  # the file is unchanged


def test_rewritten_tflite_is_dense_builtins_with_constant_weights(exported):
    op = tflite.BuiltinOperator
    mlp, cnn = decoded_tflite(exported["mlp"][3]), decoded_tflite(exported["cnn"][3])
    assert tflite_ops(mlp) == [op.FULLY_CONNECTED, op.RELU] * 3 + [op.FULLY_CONNECTED]
    ops = tflite_ops(cnn)
    assert not [code for code in ops if isinstance(code, str) or code == op.CUSTOM]
    assert op.DEPTHWISE_CONV_2D in ops and ops.count(op.CONV_2D) == 2
    assert op.MUL not in ops and op.TRANSPOSE in ops  # BatchNorm folded; the input transpose stays
    model = tflite.Model.GetRootAs(cnn, 0)
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        operator = graph.Operators(i)
        if ops[i] in (op.CONV_2D, op.DEPTHWISE_CONV_2D, op.FULLY_CONNECTED):
            weight = graph.Tensors(int(operator.InputsAsNumpy()[1]))
            assert model.Buffers(weight.Buffer()).DataLength() == 4 * int(np.prod(weight.ShapeAsNumpy()))


def test_external_data_model(exported, tmp_path):
    _, x, onnx_path, _ = exported["mlp"]
    model = onnx.load(onnx_path)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    assert not onnx.load(path, load_external_data=False).graph.initializer[0].raw_data
    assert_within_1e6(run_ort(path, x.numpy()), run_ort(onnx_path, x.numpy(), decode_at_load=False))


# ---- hand-made models: bad nodes, limits, modes ----------------------------------------------------

def hashed_weight_model(shapes, **attributes) -> bytes:
    """One HashedWeight 'w<i>' per shape over 8 buckets and the identity recon, each a graph output."""
    inits = [numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(IDENTITY, "r")]
    nodes = [helper.make_node("HashedWeight", ["b", "r"], [f"W{i}"], domain=DOMAIN, name=f"w{i}", shape=list(s),
                              **({"num_hashes": 1, "seed": 5 + i} | attributes)) for i, s in enumerate(shapes)]
    outs = [helper.make_tensor_value_info(f"W{i}", TensorProto.FLOAT, None) for i in range(len(shapes))]
    model = helper.make_model(helper.make_graph(nodes, "g", [], outs, inits),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                              functions=[FUNCTIONS["HashedWeight"]()])
    model.ir_version = 10
    return model.SerializeToString()


def hashed_matmul_model(mode: int, **epilogue) -> bytes:
    attrs = dict(in_features=6, out_features=5, num_hashes=1, seed=3, mode=mode, **epilogue)
    inits = [numpy_helper.from_array(RNG.standard_normal(7).astype(np.float32), "buckets"),
             numpy_helper.from_array(IDENTITY, "recon"),
             numpy_helper.from_array(np.arange(5, dtype=np.float32), "bias")]
    node = helper.make_node("HashedMatMul", ["X", "buckets", "recon", "bias"], ["Y"], domain=DOMAIN, name="m", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                              functions=[FUNCTIONS["HashedMatMul"]()])
    model.ir_version = 10
    return model.SerializeToString()


def test_expand_matmul_is_decoded_and_stream_mode_keeps_its_kernel():
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    for mode in (0, 1):
        model = hashed_matmul_model(mode)
        want = run_ort(model, x, use_kernels=False)
        np.testing.assert_allclose(run_ort(model, x), want, rtol=1e-5, atol=1e-6)
        rewritten = decoded_onnx(model)
        if mode == 0:
            ops = [node.op_type for node in onnx.ModelProto.FromString(rewritten[0]).graph.node]
            assert ops == ["MatMul", "Add"]
        else:
            assert rewritten is None  # O(buckets) memory was asked for: the file runs as it is


def test_an_expand_matmul_with_a_fused_activation_stays_on_the_kernels():
    """Decoding would drop the epilogue: the node keeps its kernel, which applies the ReLU."""
    model = hashed_matmul_model(0, activation=1)
    assert decoded_onnx(model) is None
    x = RNG.standard_normal((16, 6)).astype(np.float32)
    got = run_ort(model, x)
    want = run_ort(model, x, use_kernels=False)  # the fallback function applies the ReLU too
    assert (got == 0).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attributes, words", [
    ({"num_hashes": 0}, "attribute 'num_hashes' = 0; must be in [1, 64]"),
    ({"num_hashes": 1, "seed": -1}, "attribute 'seed' = -1; must be in [0, 4294967295]"),
    ({"num_hashes": 1, "signed": 2}, "attribute 'signed' = 2; must be in [0, 1]"),
])
def test_bad_onnx_node_is_refused_with_the_kernels_message(attributes, words):
    model = hashed_weight_model([[3, 4]], **attributes)
    with pytest.raises(Exception) as kernels:
        onnx_session(model, decode_at_load=False)
    with pytest.raises(InvalidNodeError) as decoded:
        onnx_session(model)
    assert words in str(kernels.value) and "HashedWeight node 'w0'" in str(kernels.value)
    assert str(decoded.value) == f"edgepack HashedWeight node 'w0': {words}"


def test_onnx_limits_from_kwargs_and_env(monkeypatch):
    model = hashed_weight_model([[40, 5, 10]])
    with pytest.raises(InvalidNodeError, match=r"node 'w0'.*shape \[40, 5, 10\].*2000 virtual weights.*limit of 1999"):
        onnx_session(model, max_virtual_weights=1999)
    want = onnx_session(model, use_kernels=False).run(None, {})[0]
    assert_within_1e6(onnx_session(model, max_virtual_weights=2000).run(None, {})[0], want)
    monkeypatch.setenv(limits.ENV_MAX_VIRTUAL_WEIGHTS, "1999")
    with pytest.raises(InvalidNodeError, match="limit of 1999 per node"):
        onnx_session(model)
    onnx_session(model, max_virtual_weights=2000)  # the keyword wins
    assert limits.max_virtual_weights() == 1999  # and the environment is left as it was


def test_onnx_decoded_bytes_budget_and_bomb():
    model = hashed_weight_model([[10, 10], [10, 10]])  # 400 decoded bytes each
    with pytest.raises(InvalidNodeError, match=r"needs 400 bytes; with the 400 bytes already decoded.*limit of 799"):
        onnx_session(model, max_decoded_bytes=799)
    onnx_session(model, max_decoded_bytes=800)
    with pytest.raises(InvalidNodeError, match=r"shape \[2, 536870912\] would decode 1073741824 virtual weights"):
        onnx_session(hashed_weight_model([[2, 2**29]]))  # refused before anything is decoded


def tflite_hashed_weight(shapes, output_data: bool = False, **options) -> bytes:
    """One HashedWeight per shape over 33 buckets, each output a graph output."""
    g = tm.Graph()
    b = g.const("buckets", np.linspace(-1, 1, 33, dtype=np.float32))
    for i, shape in enumerate(shapes):
        w = g.const(f"W{i}", np.zeros(shape, np.float32)) if output_data else g.tensor(f"W{i}", (1,))
        g.ops.append(tm.Op("ai.edgepack.HashedWeight", [b], [w],
                           tm.options(shape=list(shape), **({"num_hashes": 1, "seed": 11 + i} | options))))
        g.outputs.append(w)
    return tm.build(g)


def tflite_outputs(path, **kwargs) -> list[np.ndarray]:
    interpreter = tflite_interpreter(path, **kwargs)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def test_tflite_hashed_weight_equals_the_delegate_and_limits(tmp_path):
    path = tmp_path / "w.tflite"
    path.write_bytes(tflite_hashed_weight([[7, 3, 5], [4, 2]]))
    for got, want in zip(tflite_outputs(path), tflite_outputs(path, decode_at_load=False)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidNodeError, match=r"HashedWeight node #0 .*shape \[7, 3, 5\] would decode 105 .*"
                                               r"limit of 104 per node"):
        tflite_interpreter(path, max_virtual_weights=104)
    with pytest.raises(InvalidNodeError, match=r"needs 32 bytes; with the 420 bytes already decoded.*limit of 451"):
        tflite_interpreter(path, max_decoded_bytes=451)
    tflite_interpreter(path, max_virtual_weights=105, max_decoded_bytes=452)


def test_bad_tflite_node_is_refused_with_the_delegate_message(tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(tflite_hashed_weight([[3, 4]], num_hashes=65))
    with pytest.raises(InvalidNodeError) as decoded:
        tflite_interpreter(path)
    assert "HashedWeight node #0 (output 'W0'): attribute 'num_hashes' = 65; must be in [1, 64]" in str(decoded.value)
    path.write_bytes(tflite_hashed_weight([[3, 4]], output_data=True))
    with pytest.raises(InvalidNodeError, match=r"output \(tensor 1\) has allocation type kTfLiteMmapRo.*not a "
                                               "constant"):
        tflite_interpreter(path)


def test_tflite_rewrite_carries_builtin_options_over(tmp_path):
    """Options the rewrite does not touch survive it, vector fields included (RESHAPE's new_shape)."""
    from edgepack.runtime_kernels import decode_tflite as dt

    op = tflite.BuiltinOperator
    buckets = np.linspace(-1, 1, 9, dtype=np.float32)
    tensors = [dt._Tensor(b"x", [1, 6], 0, None), dt._Tensor(b"buckets", [9], 0, buckets.tobytes()),
               dt._Tensor(b"W", [1], 0, None), dt._Tensor(b"y", [1, 2], 0, None),
               dt._Tensor(b"shape", [2], 2, np.array([2, 1], np.int32).tobytes()), dt._Tensor(b"out", [2, 1], 0, None)]
    ops = [dt._Op((op.CUSTOM, f"{DOMAIN}.HashedWeight", 1), [1], [2],
                  custom=tm.options(shape=[2, 6], num_hashes=1, seed=4)),
           dt._Op((op.FULLY_CONNECTED, None, 1), [0, 2, -1], [3], "FullyConnectedOptions", {"KeepNumDims": False}),
           dt._Op((op.RESHAPE, None, 1), [3, 4], [5], "ReshapeOptions", {"NewShape": np.array([2, 1], np.int32)})]
    path = tmp_path / "options.tflite"
    path.write_bytes(dt._write(tensors, ops, [0], [5], b"test"))
    rewritten = tflite.Model.GetRootAs(decoded_tflite(path), 0)
    reshape = rewritten.Subgraphs(0).Operators(1)
    assert tflite_ops(decoded_tflite(path)) == [op.FULLY_CONNECTED, op.RESHAPE]
    options = tflite.ReshapeOptions()
    options.Init(reshape.BuiltinOptions().Bytes, reshape.BuiltinOptions().Pos)
    assert options.NewShapeAsNumpy().tolist() == [2, 1]
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(path, x), run_tflite(path, x, decode_at_load=False), rtol=1e-6, atol=1e-6)
