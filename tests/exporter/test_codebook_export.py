"""Codebook layers exported as CodebookWeight / SparseCodebookMatMul: torch == onnx's
ReferenceEvaluator == ORT (fallback functions, kernels, decoded at load) == LiteRT, and the
contract's bad inputs refused by the validator with the kernels' words."""

import json
from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from edgepack.cli import main
from edgepack.compression import encode_codebook, load_checkpoint, save_checkpoint, to_codebook
from edgepack.demo import digits_mlp
from edgepack.exporter import convert_onnx_to_tflite, export
from edgepack.exporter.fallbacks import STANDARD_OPSET, fallback_function
from edgepack.exporter.validate import InvalidNodeError, check_onnx_model
from edgepack.runtime_kernels import onnx_session, tflite_interpreter
from edgepack.runtime_kernels.decode_onnx import decoded_onnx
from edgepack.runtime_kernels.decode_tflite import decoded_tflite
from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION

RNG = np.random.default_rng(13)


def quantize_(layer: nn.Module, levels: int, density: float) -> None:
    """Round the weight to ``levels`` values per unit and keep a random ``density`` of it."""
    with torch.no_grad():
        w = torch.round(layer.weight * levels) / levels
        keep = torch.from_numpy(RNG.random(tuple(w.shape)) < density)
        layer.weight.copy_(torch.where(keep, w, torch.zeros_like(w)))


def codebook_net() -> nn.Module:
    """A conv (dense form: 90 % non-zero), BN, ReLU, then two pruned Linear layers (sparse form),
    one of them long enough (600 inputs) to need filler entries."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 6, 3, padding=1, stride=(2, 1))), ("bn", nn.BatchNorm2d(6)), ("relu", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(6 * 10 * 10, 40)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(40, 7))]))
    model.bn.running_mean.uniform_(-0.5, 0.5), model.bn.running_var.uniform_(0.5, 2.0)
    quantize_(model.conv, 10, 0.9)
    quantize_(model.fc1, 40, 0.01)
    quantize_(model.fc2, 20, 0.3)
    return to_codebook(model.eval(), ["conv", "fc*"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The net, an input and the net exported with each codebook op: {op: .onnx path}."""
    folder = tmp_path_factory.mktemp("codebook")
    model, x = codebook_net(), torch.from_numpy(RNG.standard_normal((3, 1, 20, 10)).astype(np.float32))
    assert [model.conv.sparse, model.fc1.sparse, model.fc2.sparse] == [False, True, True]
    assert int(model.fc1.col_gaps.max()) == 255  # fillers bridge gaps over 255
    paths = {op: export(model, x, folder / f"{op}.onnx", codebook_op=op) for op in ("decode", "sparse")}
    return model, x, paths


def assert_within_1e6(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


def run_ort(model, x: np.ndarray, **kwargs) -> np.ndarray:
    session = onnx_session(model, **kwargs)
    return session.run(None, {session.get_inputs()[0].name: x} if x is not None else {})[0]


def custom_nodes(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(n.op_type, len(n.input)) for n in model.graph.node if n.domain == DOMAIN]


def test_the_exported_nodes(exported):
    _, _, paths = exported
    decode, sparse = (onnx.load(paths[op]) for op in ("decode", "sparse"))
    # one fallback declares one input list, so the dense conv is re-encoded sparse beside the others
    assert custom_nodes(decode) == [("CodebookWeight", 4)] * 3
    assert custom_nodes(sparse) == [("CodebookWeight", 2), ("SparseCodebookMatMul", 6),
                                    ("SparseCodebookMatMul", 6)]
    fused = [n for n in sparse.graph.node if n.op_type == "SparseCodebookMatMul"][0]
    assert {a.name: a.i for a in fused.attribute}["activation"] == 1  # the ReLU folded into it
    assert {(f.name, len(f.input)) for f in sparse.functions} == {("CodebookWeight", 2),
                                                                 ("SparseCodebookMatMul", 6)}
    kinds = {t.name.rpartition(".")[2]: t.data_type for t in decode.graph.initializer if "." in t.name}
    assert kinds["indices"] == kinds["col_gaps"] == TensorProto.UINT8 and kinds["row_ptr"] == TensorProto.INT32


@pytest.mark.parametrize("op", ["decode", "sparse"])
def test_fallbacks_equal_torch(exported, op):
    model, x, paths = exported
    want = model(x).detach().numpy()
    name = onnx.load(paths[op]).graph.input[0].name
    feed = {name: x.numpy()}
    assert_within_1e6(ReferenceEvaluator(str(paths[op])).run(None, feed)[0], want)
    assert_within_1e6(run_ort(paths[op], x.numpy(), use_kernels=False), want)


@pytest.mark.parametrize("op", ["decode", "sparse"])
def test_kernels_equal_torch(exported, op, tmp_path):
    import onnxruntime as ort

    model, x, paths = exported
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    session = onnx_session(paths[op], decode_at_load=False, sess_options=options)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert_within_1e6(got, model(x).detach().numpy())
    events = json.loads(open(session.end_profiling()).read())
    ran = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e["args"]}
    assert {n for n, _ in custom_nodes(onnx.load(paths[op]))} <= ran  # the C kernels, not the fallbacks


def test_decoded_at_load_is_the_dense_graph(exported):
    model, x, paths = exported
    data, _ = decoded_onnx(paths["decode"])
    decoded = onnx.ModelProto.FromString(data)
    assert not custom_nodes(decoded) and not decoded.functions
    assert {"Conv", "Gemm"} <= {n.op_type for n in decoded.graph.node}
    want = run_ort(paths["decode"], x.numpy(), use_kernels=False)
    np.testing.assert_array_equal(run_ort(data, x.numpy(), use_kernels=False), want)
    assert_within_1e6(run_ort(paths["decode"], x.numpy()), model(x).detach().numpy())
    sparse, _ = decoded_onnx(paths["sparse"])  # its conv's CodebookWeight decodes; the sparse ops stay
    assert custom_nodes(onnx.ModelProto.FromString(sparse)) == [("SparseCodebookMatMul", 6)] * 2


def test_tflite_decoded_at_load(exported, tmp_path):
    """The converter writes uint8 / int32 constants for the CUSTOM op; decoded at load, LiteRT runs
    only builtins."""
    import tflite

    model, x, paths = exported
    path = convert_onnx_to_tflite(paths["decode"], tmp_path / "m.tflite", batch_size=3, verify=False)
    tfl = tflite.Model.GetRootAs(path.read_bytes(), 0)
    graph = tfl.Subgraphs(0)
    types = {graph.Tensors(i).Name().decode().rpartition(".")[2]: graph.Tensors(i).Type()
             for i in range(graph.TensorsLength())}
    assert types["indices"] == tflite.TensorType.UINT8 and types["row_ptr"] == tflite.TensorType.INT32
    data = decoded_tflite(path)
    decoded = tflite.Model.GetRootAs(data, 0)
    assert not any(decoded.OperatorCodes(c).CustomCode() for c in range(decoded.OperatorCodesLength()))
    interpreter = tflite_interpreter(path)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["decode", "sparse"])
def test_tflite_delegate_equals_torch(exported, op, tmp_path):
    model, x, paths = exported
    path = convert_onnx_to_tflite(paths[op], tmp_path / f"{op}.tflite", batch_size=3)  # verified against ORT
    interpreter = tflite_interpreter(path, decode_at_load=False)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert_within_1e6(got, model(x).detach().numpy())


def test_cli_codebook_op(tmp_path, capsys):
    torch.manual_seed(0)
    model = digits_mlp(hidden=32)
    for layer in (model.fc1, model.fc2, model.head):
        quantize_(layer, 10, 0.2)
    to_codebook(model.eval(), "*")
    checkpoint = save_checkpoint(model, tmp_path / "cb.safetensors", "edgepack.demo:digits_mlp", {"hidden": 32},
                                 {"*": {"method": "codebook"}})
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    want = load_checkpoint(checkpoint)(torch.from_numpy(x)).detach().numpy()
    for op, node in (("decode", "CodebookWeight"), ("sparse", "SparseCodebookMatMul")):
        out = tmp_path / f"{op}.onnx"
        assert main(["export", str(checkpoint), "--example-shape", "1,64", "-o", str(out), "--codebook-op", op]) == 0
        assert {n for n, _ in custom_nodes(onnx.load(out))} == {node}
        assert_within_1e6(run_ort(out, x, use_kernels=False), want)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "--example-shape", "1,64", "-o", str(out), "--codebook-op", "csr"])
    assert exit_info.value.code == 2 and "invalid choice: 'csr'" in capsys.readouterr().err


# ---- bad inputs through the validator -----------------------------------------------------------

def codebook_model(arrays: dict, attributes: dict, op: str = "CodebookWeight") -> onnx.ModelProto:
    """One node of ``op`` whose inputs are the given arrays (None: absent) as initializers."""
    names = ["codebook", "indices", "row_ptr", "col_gaps"]
    inputs, initializers, graph_inputs = [], [], []
    if op == "SparseCodebookMatMul":
        inputs.append("X")
        graph_inputs.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, attributes["in_features"]]))
    for name in names:
        if arrays.get(name) is None:
            inputs.append("")
            continue
        initializers.append(numpy_helper.from_array(arrays[name], name))
        inputs.append(name)
    while inputs and not inputs[-1]:
        inputs.pop()
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, name="n", **attributes)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.functions.append(fallback_function(op, sparse=arrays.get("row_ptr") is not None))
    return model


def good_arrays() -> dict:
    weight = np.zeros((3, 10), np.float32)
    weight[0, 2], weight[2, 9], weight[2, 4] = 1.0, 2.0, -1.0
    return encode_codebook(weight, sparse=True, bits=2)


BAD = {
    "index >= J": (dict(codebook=np.array([0.0, 1.0], np.float32)),
                   r"input 'indices': entry \d is index 3, but the codebook has 2 values; every index must be < 2"),
    "row_ptr decreasing": (dict(row_ptr=np.array([0, 2, 1, 3], np.int32)),
                           r"input 'row_ptr' decreases at row 1: row_ptr\[1\] = 2 > row_ptr\[2\] = 1"),
    "row_ptr not from 0": (dict(row_ptr=np.array([1, 1, 1, 3], np.int32)), r"input 'row_ptr' starts at 1"),
    "row_ptr end != n": (dict(row_ptr=np.array([0, 1, 1, 2], np.int32)),
                         r"input 'row_ptr' ends at 2; must end at n = 3"),
    "nnz vs col_gaps": (dict(col_gaps=np.array([3, 10, 5, 1], np.uint8)),
                        r"input 'row_ptr' ends at 3; must end at n = 4, the length of 'col_gaps'"),
    "indices too long": (dict(indices=np.zeros(2, np.uint8)),
                         r"input 'indices' has 2 bytes; 3 entries of 2 bits need ceil\(3\*2/8\) = 1 "
                         r"\(an nnz that disagrees with the indices\)"),
    "codebook float64": (dict(codebook=np.array([0.0, 1.0, 2.0, -1.0])),
                         r"input 'codebook' has element type float64; must be float32"),
    "indices int32": (dict(indices=np.zeros(1, np.int32)), r"input 'indices' has element type int32; must be uint8"),
    "only row_ptr": (dict(col_gaps=None), r"only one of 'row_ptr' / 'col_gaps' is given"),
    "gap 0": (dict(col_gaps=np.array([3, 0, 5], np.uint8)), r"input 'col_gaps': entry 1 \(row 2\) is 0"),
    "column >= cols": (dict(col_gaps=np.array([3, 5, 6], np.uint8)),
                       r"input 'col_gaps': entry 2 puts row 2 at column 10; columns must be < cols = 10"),
    "codebook too long": (dict(codebook=np.zeros(257, np.float32)),
                          r"input 'codebook' has 257 values; must have 1..256"),
}


@pytest.mark.parametrize("case", BAD)
def test_validator_and_kernels_name_each_bad_input(case):
    change, message = BAD[case]
    arrays = good_arrays() | change
    model = codebook_model(arrays, dict(shape=[3, 10], bits=2))
    with pytest.raises(InvalidNodeError, match=message):
        check_onnx_model(model, "test")
    with pytest.raises(Exception, match=message):  # the ORT library, the same words
        onnx_session(model.SerializeToString(), decode_at_load=False).run(None, {})


def test_validator_bits_and_the_good_model():
    assert check_onnx_model(codebook_model(good_arrays(), dict(shape=[3, 10], bits=2)), "test") == 1
    with pytest.raises(InvalidNodeError, match=r"attribute 'bits' = 3; must be 1, 2, 4 or 8"):
        check_onnx_model(codebook_model(good_arrays(), dict(shape=[3, 10], bits=3)), "test")
    sparse = codebook_model(good_arrays(), dict(in_features=10, out_features=3, bits=2), "SparseCodebookMatMul")
    assert check_onnx_model(sparse, "test") == 1
    with pytest.raises(InvalidNodeError, match=r"input 'row_ptr' decreases at row 1"):
        check_onnx_model(codebook_model(good_arrays() | BAD["row_ptr decreasing"][0],
                                        dict(in_features=10, out_features=3, bits=2), "SparseCodebookMatMul"), "t")


EDGE_WEIGHTS = {
    "one row, fillers": (np.arange(700) % 300 == 299).astype(np.float32).reshape(1, 700) * 0.5,
    "empty rows": np.diag(np.array([0.0, 1.5, 0.0, -2.0, 0.0], np.float32))[:, :4],
    "all zero": np.zeros((3, 2, 2), np.float32),
    "conv 4-D": np.where(RNG.random((4, 3, 3, 2)) < 0.3, RNG.integers(-3, 4, (4, 3, 3, 2)), 0).astype(np.float32),
}


@pytest.mark.parametrize("case", EDGE_WEIGHTS)
@pytest.mark.parametrize("sparse", [True, False])
def test_fallback_function_equals_the_numpy_reference(case, sparse):
    """The standard-op body on edge cases of the contract (rows without entries, one row, fillers,
    nothing stored), in onnx's ReferenceEvaluator and ORT without our library."""
    from edgepack.compression import decode_codebook

    weight = EDGE_WEIGHTS[case]
    arrays = encode_codebook(weight, sparse=sparse)
    want = decode_codebook(arrays["codebook"], arrays["indices"], weight.shape, arrays["bits"],
                           arrays.get("row_ptr"), arrays.get("col_gaps"))
    assert want.tobytes() == weight.tobytes()
    model = codebook_model(arrays, dict(shape=list(weight.shape), bits=arrays["bits"]))
    assert ReferenceEvaluator(model).run(None, {})[0].tobytes() == weight.tobytes()
    assert run_ort(model.SerializeToString(), None, use_kernels=False).tobytes() == weight.tobytes()


def test_a_soft_weight_sharing_layer_exports_dense_and_as_a_codebook_after_to_codebook(tmp_path):
    """SwsLinear is a dense layer under the prior: exported as Gemm; once its weights are quantized
    and the layers converted, as CodebookWeight; both files equal torch."""
    import onnxruntime as ort

    from edgepack.compression import compress
    from edgepack.compression.sws import SwsLinear

    torch.manual_seed(0)
    model, _ = compress(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), {"*": {"method": "sws"}})
    assert isinstance(model[0], SwsLinear)
    x = torch.randn(3, 16)

    def ops_and_error(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        return {n.op_type for n in onnx.load(path).graph.node}, float(np.abs(got - model(x).detach().numpy()).max())

    ops, error = ops_and_error(export(model, x, tmp_path / "before.onnx"))
    assert "CodebookWeight" not in ops and error < 1e-6
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.round(layer.weight * 8) / 8)
    to_codebook(model, "*")
    ops, error = ops_and_error(export(model, x, tmp_path / "after.onnx"))
    assert "CodebookWeight" in ops and error < 1e-6


def _decoded(arrays: dict) -> np.ndarray:
    from edgepack.compression import decode_codebook

    return decode_codebook(arrays["codebook"], arrays["indices"], (3, 10), 2, arrays["row_ptr"], arrays["col_gaps"])


def test_validator_leaves_external_data_to_the_model_folder(tmp_path, monkeypatch):
    from edgepack.exporter.inspect_model import inspect_onnx

    folder, cwd = tmp_path / "model", tmp_path / "cwd"
    folder.mkdir(), cwd.mkdir()
    for name, arrays in (("good", good_arrays()), ("bad", good_arrays() | BAD["index >= J"][0])):
        onnx.save_model(codebook_model(arrays, dict(shape=[3, 10], bits=2)), folder / f"{name}.onnx",
                        save_as_external_data=True, location=f"{name}.data", size_threshold=0)
        (cwd / f"{name}.data").write_bytes(b"\xff" * 64)  # an unrelated file of the same name
    monkeypatch.chdir(cwd)
    assert inspect_onnx(folder / "good.onnx").op_counts["ai.edgepack::CodebookWeight"] == 1
    with pytest.raises(InvalidNodeError, match=BAD["index >= J"][1]):  # with its data: fully checked
        check_onnx_model(onnx.load(folder / "bad.onnx"), "test")
    got = run_ort(onnx.load(folder / "good.onnx").SerializeToString(), None, use_kernels=False)
    np.testing.assert_array_equal(got, _decoded(good_arrays()))


@pytest.mark.parametrize("moved", ["indices", "row_ptr", "col_gaps"])
def test_integer_inputs_from_constant_nodes_are_checked_like_initializers(moved):
    def with_constant(arrays):
        model = codebook_model(arrays, dict(shape=[3, 10], bits=2))
        tensor = next(t for t in model.graph.initializer if t.name == moved)
        model.graph.initializer.remove(tensor)
        model.graph.node.insert(0, helper.make_node("Constant", [], [moved], value=tensor))
        return model

    model = with_constant(good_arrays())
    assert check_onnx_model(model, "test") == 1
    np.testing.assert_array_equal(run_ort(model.SerializeToString(), None, use_kernels=False),
                                  _decoded(good_arrays()))
    change, message = {"indices": BAD["index >= J"], "row_ptr": BAD["row_ptr decreasing"],
                       "col_gaps": BAD["gap 0"]}[moved]
    with pytest.raises(InvalidNodeError, match=message):
        check_onnx_model(with_constant(good_arrays() | change), "test")
