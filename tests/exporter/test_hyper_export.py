"""Hyper-Compression layers exported as HyperWeight: torch == onnx's ReferenceEvaluator (fallback
function) == ORT without our library == ORT decoded at load == LiteRT, the decoded weights bit-exact
with the layers' (``decode_hyper``); the contract's bad inputs refused by the validator by name."""

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from edgepack.cli import main
from edgepack.compression.hyper import HyperConv2d, HyperLinear, decode_hyper, pack_bits
from edgepack.exporter import convert_onnx_to_tflite, export, inspect_onnx
from edgepack.exporter.fallbacks import STANDARD_OPSET, fallback_function
from edgepack.exporter.validate import InvalidNodeError, check_onnx_model, check_tflite_model
from edgepack.runtime_kernels import onnx_session, tflite_interpreter
from edgepack.runtime_kernels.decode_at_load import hyper_weight
from edgepack.runtime_kernels.decode_onnx import decoded_onnx
from edgepack.runtime_kernels.decode_tflite import decoded_tflite
from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION

RNG = np.random.default_rng(14)
INPUTS = ["indices", "center", "side", "scales"]


def hyper_net() -> nn.Module:
    """A conv (odd V = 135, group 2, 3 rings: 10-bit indices), BN, ReLU, then two Linear layers: group 3
    without rings (11 bits) and group 4 with 15 rings (17 bits: indices span 3 bytes, the last group padded)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=(2, 1))
    fc1, fc2 = nn.Linear(5 * 4 * 6, 17), nn.Linear(17, 6)
    model = nn.Sequential(OrderedDict([
        ("conv", HyperConv2d.from_dense(conv, points=225, side=0.3, rings=3, group=2)), ("bn", nn.BatchNorm2d(5)),
        ("relu", nn.ReLU()), ("flatten", nn.Flatten()),
        ("fc1", HyperLinear.from_dense(fc1, points=1600, side=0.15, rings=0, group=3)), ("relu1", nn.ReLU()),
        ("fc2", HyperLinear.from_dense(fc2, points=5000, side=0.3, rings=15, group=4))]))
    model.bn.running_mean.uniform_(-0.5, 0.5), model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The net, an input, and the net exported: (model, x, .onnx path)."""
    model, x = hyper_net(), torch.from_numpy(RNG.standard_normal((3, 3, 8, 6)).astype(np.float32))
    assert [int(getattr(model, name).bits) for name in ("conv", "fc1", "fc2")] == [10, 11, 17]
    return model, x, export(model, x, tmp_path_factory.mktemp("hyper") / "hyper.onnx")


def assert_within_1e6(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


def run_ort(model, x: np.ndarray | None, **kwargs) -> np.ndarray:
    session = onnx_session(model, **kwargs)
    return session.run(None, {session.get_inputs()[0].name: x} if x is not None else {})[0]


def hyper_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN]


def layer_weights(model: nn.Module) -> dict[str, bytes]:
    return {name: getattr(model, name).dense_weight().detach().numpy().tobytes() for name in ("conv", "fc1", "fc2")}


def test_the_exported_nodes(exported):
    """One HyperWeight per layer, all four inputs named (scales "" without rings, as the function
    reads every input), uint8 indices, the layer's attributes; the function from standard ops."""
    model, _, path = exported
    proto = onnx.load(path)
    nodes = hyper_nodes(proto)
    assert [(n.op_type, n.name) for n in nodes] == [("HyperWeight", "conv"), ("HyperWeight", "fc1"),
                                                    ("HyperWeight", "fc2")]
    assert [list(n.input)[3] for n in nodes] == ["conv.scales", "", "fc2.scales"]
    for node in nodes:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        layer = getattr(model, node.name)
        assert attributes == layer.attributes() | {"shape": list(layer.weight_shape)}
    kinds = {t.name: t.data_type for t in proto.graph.initializer}
    assert kinds["conv.indices"] == kinds["fc2.indices"] == TensorProto.UINT8
    (function,) = proto.functions
    assert (function.name, list(function.input)) == ("HyperWeight", INPUTS)
    assert {n.domain for n in function.node} == {""}


def test_the_lowered_model_runs_in_torch(exported):
    """The lowered layers call torch.ops.edgepack.hyper_weight, whose eager body decodes bit-exactly."""
    from edgepack.exporter import lower

    model, x, _ = exported
    lowered = lower(model)
    assert type(lowered.fc1).__name__ == "LoweredHyperLinear" and lowered.fc1.scales is None
    weight = torch.ops.edgepack.hyper_weight(lowered.conv.indices, lowered.conv.center, lowered.conv.side,
                                             lowered.conv.scales, **lowered.conv.attributes)
    assert weight.detach().numpy().tobytes() == layer_weights(model)["conv"]
    assert torch.equal(lowered(x), model(x))


def test_decoded_weights_are_bit_exact(exported):
    """The HyperWeight outputs equal the layers' weights bit for bit: the fallback function in onnx's
    ReferenceEvaluator and in ORT without our library, and the Python decode at load."""
    model, x, path = exported
    want = layer_weights(model)
    proto = onnx.load(path)
    outputs = {node.output[0]: node.name for node in hyper_nodes(proto)}
    proto.graph.output.extend(helper.make_value_info(name, onnx.TypeProto()) for name in outputs)
    feed = {proto.graph.input[0].name: x.numpy()}
    reference = ReferenceEvaluator(proto).run(list(outputs), feed)
    fallback = onnx_session(proto.SerializeToString(), use_kernels=False).run(list(outputs), feed)
    data, _ = decoded_onnx(path)
    decoded = {t.name: numpy_helper.to_array(t) for t in onnx.ModelProto.FromString(data).graph.initializer}
    for (name, layer), ref, ort_value in zip(outputs.items(), reference, fallback):
        assert ref.tobytes() == ort_value.tobytes() == decoded[name].tobytes() == want[layer], layer


def test_outputs_equal_torch(exported, tmp_path):
    """ReferenceEvaluator, ORT without our library, ORT decoded at load and ORT on the C kernels (the
    profile shows our HyperWeight nodes ran, not their functions) all equal torch."""
    import json

    import onnxruntime as ort

    model, x, path = exported
    want = model(x).detach().numpy()
    feed = {onnx.load(path).graph.input[0].name: x.numpy()}
    assert_within_1e6(ReferenceEvaluator(str(path)).run(None, feed)[0], want)
    assert_within_1e6(run_ort(path, x.numpy(), use_kernels=False), want)
    assert_within_1e6(run_ort(path, x.numpy()), want)  # decoded at load
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    session = onnx_session(path, decode_at_load=False, sess_options=options)
    assert_within_1e6(session.run(None, feed)[0], want)
    events = json.loads(open(session.end_profiling()).read())
    ran = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e["args"]}
    assert "HyperWeight" in ran


def test_decoded_at_load_is_the_dense_graph(exported):
    _, x, path = exported
    data, _ = decoded_onnx(path)
    decoded = onnx.ModelProto.FromString(data)
    assert not hyper_nodes(decoded) and not decoded.functions
    assert {"Conv", "Gemm"} <= {n.op_type for n in decoded.graph.node}
    assert DOMAIN not in {o.domain for o in decoded.opset_import}
    np.testing.assert_array_equal(run_ort(data, x.numpy(), use_kernels=False),
                                  run_ort(path, x.numpy(), use_kernels=False))


def test_tflite_custom_op_and_decoded_at_load(exported, tmp_path):
    """The converter (verified against ORT) writes CUSTOM ai.edgepack.HyperWeight ops with uint8 indices,
    float32 center / side / scales, scales -1 without rings, the attributes as flexbuffer options;
    decoded at load LiteRT runs only builtins; both it and the delegate equal torch."""
    import tflite
    from flatbuffers import flexbuffers

    model, x, path = exported
    path = convert_onnx_to_tflite(path, tmp_path / "m.tflite", batch_size=3)
    tfl = tflite.Model.GetRootAs(path.read_bytes(), 0)
    graph = tfl.Subgraphs(0)
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
    custom = [op for op in ops if tfl.OperatorCodes(op.OpcodeIndex()).CustomCode()]
    assert {tfl.OperatorCodes(op.OpcodeIndex()).CustomCode() for op in custom} == {b"ai.edgepack.HyperWeight"}
    by_layer = {}
    for op in custom:
        tensors = [graph.Tensors(int(i)) if i >= 0 else None for i in op.InputsAsNumpy()]
        by_layer[tensors[0].Name().decode().rpartition(".")[0]] = (op, tensors)
    assert set(by_layer) == {"conv", "fc1", "fc2"}
    for name, (op, tensors) in by_layer.items():
        types = [t.Type() if t else None for t in tensors] + [None] * (4 - len(tensors))
        f32 = tflite.TensorType.FLOAT32
        assert types == [tflite.TensorType.UINT8, f32, f32, None if name == "fc1" else f32]
        options = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
        layer = getattr(model, name)
        assert options == layer.attributes() | {"shape": list(layer.weight_shape)}
    assert check_tflite_model(tfl, "test") == 3
    decoded = tflite.Model.GetRootAs(decoded_tflite(path), 0)
    assert not any(decoded.OperatorCodes(c).CustomCode() for c in range(decoded.OperatorCodesLength()))
    for decode_at_load in (True, False):  # LiteRT's builtins on the decoded weights; the delegate's kernels
        interpreter = tflite_interpreter(path, decode_at_load=decode_at_load)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert_within_1e6(got, model(x).detach().numpy())


def test_external_data_and_inspect(exported, tmp_path, capsys):
    """Saved with its tensors in model.onnx.data, the file runs (fallback, decoded at load) and
    ``edgepack inspect`` shows each HyperWeight and its stored bytes (the real arrays' sizes)."""
    model, x, path = exported
    folder = tmp_path / "external"
    folder.mkdir()
    external = folder / "model.onnx"
    onnx.save_model(onnx.load(path), external, save_as_external_data=True, location="model.onnx.data",
                    size_threshold=50)  # the indices and weights; ORT reads shapes only from the file
    assert (folder / "model.onnx.data").stat().st_size > 0
    want = model(x).detach().numpy()
    assert_within_1e6(run_ort(external, x.numpy(), use_kernels=False), want)
    assert_within_1e6(run_ort(external, x.numpy()), want)
    summary = inspect_onnx(external)
    assert summary.op_counts["ai.edgepack::HyperWeight"] == 3
    assert main(["inspect", str(external)]) == 0
    printed = capsys.readouterr().out
    for name in ("conv", "fc1", "fc2"):
        layer = getattr(model, name)
        stored = sum(getattr(layer, a).numel() * getattr(layer, a).element_size() for a in INPUTS)
        dense = 4 * layer.dense_weight().numel()
        assert f"HyperWeight {name}: " in printed
        assert f"weights {stored:,} B stored vs {dense:,} B dense" in printed


# ---- the fallback function against the reference decode ----------------------------------------

def hyper_model(arrays: dict, attributes: dict) -> onnx.ModelProto:
    """One HyperWeight node whose inputs are the given arrays (None: absent, "") as initializers."""
    inputs = [name if arrays.get(name) is not None else "" for name in INPUTS]
    initializers = [numpy_helper.from_array(arrays[name], name) for name in inputs if name]
    node = helper.make_node("HyperWeight", inputs, ["Y"], domain=DOMAIN, name="n", **attributes)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 10
    model.functions.append(fallback_function("HyperWeight"))
    return model


def random_case(rng, weights: int, points: int, group: int, rings: int, bits: int) -> tuple[dict, dict]:
    """Random indices < min((R+1)(n+1), 2^bits) packed in ``bits`` bits, a random center, side and scales."""
    limit = min((rings + 1) * (points + 1), 1 << bits)
    indices = rng.integers(0, limit, -(-weights // group))
    indices[: min(len(indices), 2)] = [0, limit - 1][: len(indices)]  # the centroid and the last entry
    arrays = {"indices": pack_bits(indices, bits), "center": rng.normal(0, 0.2, group).astype(np.float32),
              "side": np.array([rng.uniform(0.01, 2.0)], np.float32),
              "scales": rng.uniform(1.0, 5.0, rings).astype(np.float32) if rings else None}
    return arrays, dict(shape=[weights], points=points, group=group, rings=rings, bits=bits)


def contract_decode(arrays: dict, attributes: dict) -> np.ndarray:
    """The contract's decode written here (not runtime_kernels.hyper_format): the bit stream by
    np.unpackbits, t by counting up, each float32 operation on its own."""
    f32 = np.float32
    n, k, rings, bits = (attributes[a] for a in ("points", "group", "rings", "bits"))
    count = int(np.prod(attributes["shape"]))
    g = -(-count // k)
    stream = np.unpackbits(arrays["indices"], bitorder="little")[:g * bits].reshape(g, bits).astype(np.int64)
    index = (stream << np.arange(bits)).sum(axis=1)
    t = 1
    while t ** k < n:
        t += 1
    c, length = arrays["center"].astype(f32), f32(arrays["side"][0])
    out = np.empty((g, k), f32)
    for j in range(k):
        step = f32(length / f32(t ** (k - j)))
        q, r = index % (n + 1), index // (n + 1)
        theta = np.maximum(q - 1, 0).astype(f32)
        p = np.where(q == 0, c[j], np.fmod(theta * step, length) + f32(c[j] - f32(length * f32(0.5)))).astype(f32)
        if rings:
            s = np.concatenate([[f32(1)], arrays["scales"]]).astype(f32)[r]
            p = np.where(r == 0, p, (p - c[j]) * s + c[j]).astype(f32)
        out[:, j] = p
    return out.ravel()[:count].reshape(attributes["shape"])


# (weights V, points n, group k, rings R, bits): bits 1..24 sampled, more bits than needed included
CASES = [(1, 1, 1, 0, 1), (7, 2, 2, 0, 2), (11, 7, 3, 1, 4), (33, 100, 4, 3, 9), (101, 225, 2, 0, 8),
         (63, 1600, 2, 4, 13), (17, 65536, 1, 0, 17), (29, 65536, 4, 15, 24), (41, 5000, 3, 15, 17),
         (9, 3, 2, 15, 6), (15, 200, 2, 2, 23), (21, 30, 3, 0, 5), (13, 1000, 1, 7, 16), (5, 4, 4, 0, 3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "V{}-n{}-k{}-R{}-b{}".format(*c))
def test_fallback_function_and_decode_at_load_equal_decode_hyper(case):
    """Bit for bit: the function in onnx's ReferenceEvaluator and in ORT without our library, and the
    Python decode at load (decode_onnx / decode_tflite), against the reference ``decode_hyper``."""
    arrays, attributes = random_case(np.random.default_rng(list(case)), *case)
    want = contract_decode(arrays, attributes)
    assert decode_hyper(**arrays, **attributes).tobytes() == want.tobytes()
    model = hyper_model(arrays, attributes)
    assert check_onnx_model(model, "test") == 1
    assert ReferenceEvaluator(model).run(None, {})[0].tobytes() == want.tobytes()
    assert run_ort(model.SerializeToString(), None, use_kernels=False).tobytes() == want.tobytes()
    assert hyper_weight(attributes, **arrays).tobytes() == want.tobytes()


# ---- bad inputs through the validator -----------------------------------------------------------

def good_case() -> tuple[dict, dict]:
    """V = 9 weights in groups of 2 (5 groups of 9 bits: 45 bits in 6 bytes), 2 rings of 100 points."""
    rng = np.random.default_rng(5)
    arrays, attributes = random_case(rng, 9, 100, 2, 2, 9)
    return arrays, attributes


def with_index(value: int) -> np.ndarray:
    """The good case's indices with group 3's index set to ``value``."""
    arrays, attributes = good_case()
    index = np.array([0, 302, 5, value, 17], np.int64)
    return pack_bits(index, attributes["bits"])


BAD = {
    "index out of range": (dict(indices=with_index(303)), {},
                           r"input 'indices': group 3 has index 303; every index must be < "
                           r"\(rings\+1\)\*\(points\+1\) = 303"),
    "truncated": (dict(indices=np.zeros(5, np.uint8)), {},
                  r"input 'indices' has 5 bytes; 5 groups of 9 bits need ceil\(5\*9/8\) = 6 "
                  r"\(truncated packed indices\)"),
    "too long": (dict(indices=np.zeros(7, np.uint8)), {},
                 r"input 'indices' has 7 bytes; .* = 6 \(more bytes than the packed indices\)"),
    "trailing bits": (dict(indices=np.array([0, 0, 0, 0, 0, 0x80], np.uint8)), {},
                      r"input 'indices': the unused high bits of its last byte \(byte 5 = 0x80\) must be 0 "
                      r"\(5 groups of 9 bits\)"),
    "indices 2-D": (dict(indices=np.zeros((2, 3), np.uint8)), {}, r"input 'indices' has shape \[2, 3\]; must be 1-D"),
    "indices int32": (dict(indices=np.zeros(6, np.int32)), {},
                      r"input 'indices' has element type int32; must be uint8"),
    "center float64": (dict(center=np.zeros(2)), {}, r"input 'center' has element type float64; must be float32"),
    "center shape": (dict(center=np.zeros(3, np.float32)), {},
                     r"input 'center' has 3 values; must be \[group\] = \[2\]"),
    "center nan": (dict(center=np.array([0.0, np.nan], np.float32)), {},
                   r"input 'center': value 1 is nan; must be finite"),
    "side shape": (dict(side=np.ones(2, np.float32)), {}, r"input 'side' has 2 values; must be \[1\]"),
    "side zero": (dict(side=np.zeros(1, np.float32)), {}, r"input 'side' is 0; must be finite and > 0"),
    "side inf": (dict(side=np.array([np.inf], np.float32)), {}, r"input 'side' is inf; must be finite and > 0"),
    "side times points": (dict(side=np.array([1e38], np.float32)), {},
                          r"input 'side' is 1e\+38; side\*points overflows float32 \(must be <= 3\.40282e\+36 for "
                          r"100 points\)"),
    "scales missing": (dict(scales=None), {},
                       r"input 'scales' is missing; rings = 2 needs \[rings\] = \[2\] expansion factors"),
    "scales empty": (dict(scales=np.zeros(0, np.float32)), {},
                     r"input 'scales' is missing; rings = 2 needs \[rings\] = \[2\] expansion factors"),
    "scales with rings 0": ({}, dict(rings=0), r"input 'scales' is given but rings = 0; it must be absent"),
    "scales shape": (dict(scales=np.ones(3, np.float32)), {},
                     r"input 'scales' has 3 values; must be \[rings\] = \[2\]"),
    "scales negative": (dict(scales=np.array([1.0, -2.0], np.float32)), {},
                        r"input 'scales': value 1 is -2; must be finite and > 0"),
    "bits 25": ({}, dict(bits=25), r"attribute 'bits' = 25; must be in \[1, 24\]"),
    "points 0": ({}, dict(points=0), r"attribute 'points' = 0; must be in \[1, 65536\]"),
    "group 5": ({}, dict(group=5), r"attribute 'group' = 5; must be in \[1, 4\]"),
    "rings 16": ({}, dict(rings=16), r"attribute 'rings' = 16; must be in \[0, 15\]"),
    "points missing": ({}, dict(points=None), r"missing required int attribute 'points'"),
    "too large": ({}, dict(shape=[1 << 15, 1 << 14]), r"would decode 536870912 virtual weights, above the limit"),
}


@pytest.mark.parametrize("case", BAD)
def test_validator_and_kernels_name_each_bad_input(case):
    """The validator refuses each break of the contract with the words of the ORT library (src/hyper.c)."""
    change, attribute_change, message = BAD[case]
    arrays, attributes = good_case()
    model = hyper_model(arrays | change, {k: v for k, v in (attributes | attribute_change).items() if v is not None})
    with pytest.raises(InvalidNodeError, match=message):
        check_onnx_model(model, "test")
    with pytest.raises(Exception, match=message):  # the ORT library, the same words
        onnx_session(model.SerializeToString(), decode_at_load=False).run(None, {})


def test_empty_scales_count_as_absent():
    """rings = 0 with a zero-length scales: every runtime decodes as without scales (docs/ops.md)."""
    arrays, attributes = random_case(np.random.default_rng(3), 9, 100, 2, 0, 7)
    want = contract_decode(arrays, attributes)
    model = hyper_model(arrays | {"scales": np.zeros(0, np.float32)}, attributes)
    assert check_onnx_model(model, "test") == 1
    assert ReferenceEvaluator(model).run(None, {})[0].tobytes() == want.tobytes()
    assert run_ort(model.SerializeToString(), None, use_kernels=False).tobytes() == want.tobytes()
    for decode_at_load in (False, True):
        got = onnx_session(model.SerializeToString(), decode_at_load=decode_at_load).run(None, {})[0]
        assert got.tobytes() == want.tobytes()
    assert hyper_weight(attributes, **arrays).tobytes() == want.tobytes()
    assert hyper_weight(attributes, **(arrays | {"scales": np.zeros(0, np.float32)})).tobytes() == want.tobytes()


def test_symbolic_lengths_are_left_to_the_kernels():
    """Graph inputs whose lengths are symbolic (-1) pass the validator; the kernel checks them when fed."""
    arrays, attributes = random_case(np.random.default_rng(4), 9, 100, 2, 2, 9)
    fed = ("indices", "center", "side", "scales")
    node = helper.make_node("HyperWeight", list(fed), ["Y"], domain=DOMAIN, name="n", **attributes)
    inputs = [helper.make_tensor_value_info(name, TensorProto.UINT8 if name == "indices" else TensorProto.FLOAT,
                                            [f"len_{name}"]) for name in fed]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 10
    model.functions.append(fallback_function("HyperWeight"))
    assert check_onnx_model(model, "test") == 1
    session = onnx_session(model.SerializeToString(), decode_at_load=False)
    got = session.run(None, {name: arrays[name] for name in fed})[0]
    assert got.tobytes() == contract_decode(arrays, attributes).tobytes()
    with pytest.raises(Exception, match=r"truncated packed indices"):
        session.run(None, {name: arrays[name][:-1] if name == "indices" else arrays[name] for name in fed})


def test_validator_checks_tflite_constants():
    """The TFLite check reads the small float buffers too: a good node passes, a side of 0 is named."""
    import sys
    from pathlib import Path

    import tflite

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime_kernels"))
    import tflite_models as tm

    arrays, attributes = good_case()
    assert check_onnx_model(hyper_model(arrays, attributes), "test") == 1
    for side, count in ((arrays["side"], 1), (np.zeros(1, np.float32), 0)):
        data = tm.fed_op("HyperWeight", INPUTS, attributes, arrays | {"side": side}, ())
        if count:
            assert check_tflite_model(tflite.Model.GetRootAs(data, 0), "test") == count
            continue
        with pytest.raises(InvalidNodeError, match=r"input 'side' is 0; must be finite and > 0"):
            check_tflite_model(tflite.Model.GetRootAs(data, 0), "test")


def test_the_file_runs_in_old_onnxruntime(exported, tmp_path):
    """ONNX Runtime 1.20 (make .venv-ort-old) runs the exported file with and without our library: the
    function's optional scales (a Gemm's C) hold there too."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    from test_old_onnxruntime import OLD_ORT_PYTHON

    from edgepack.runtime_kernels import ort_library_path

    if not OLD_ORT_PYTHON.exists():
        pytest.fail(f"{OLD_ORT_PYTHON} is missing: `make test` creates it (make .venv-ort-old)")
    model, x, path = exported
    shutil.copy(path, tmp_path / "hyper.onnx")
    np.savez(tmp_path / "hyper.npz", x=x.numpy(), y=model(x).detach().numpy())
    result = subprocess.run([str(OLD_ORT_PYTHON), str(Path(__file__).with_name("old_ort_check.py")),
                             ort_library_path(), str(tmp_path)], capture_output=True, text=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rows) == 2 and all(row["ok"] and row["relative_error"] <= 1e-6 for row in rows)
    assert rows[0]["ort"].startswith("1.20.")
