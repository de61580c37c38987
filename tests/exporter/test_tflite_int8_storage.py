"""int8-stored compressed weights (docs/ops.md "int8 storage") through `edgepack convert`: the ONNX chain
Cast(INT8 q) → HashedWeight | CodebookWeight → Cast(INT8) → DequantizeLinear becomes CAST / CUSTOM
[/ TRANSPOSE | RESHAPE in float32] / CAST feeding a per-channel int8 filter, the one quantized tensor of the chain;
decode at load (Python and the delegate's C) folds it into the constant int8 filter a numpy decode of the
weights gives; LiteRT (XNNPACK, builtin kernels) and tflite-runtime 2.14 (decoded at load or not) match ONNX
Runtime running the same ONNX model; bad chains are refused."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
import torch
from onnx import TensorProto, helper, numpy_helper
from test_tflite_int8 import tflite214_outputs

from edgepack.compression.hashing import hash_indices
from edgepack.errors import EdgepackError
from edgepack.exporter.tflite_export import ConversionError, convert_and_verify
from edgepack.exporter.tflite_verify import INT8_BUILTIN_STEPS, INT8_STEPS
from edgepack.runtime_kernels import delegate_library_path, onnx_session, tflite_interpreter
from edgepack.runtime_kernels.decode_tflite import decoded_tflite
from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION

ai_edge_litert = pytest.importorskip("ai_edge_litert")
from ai_edge_litert import interpreter as litert  # noqa: E402

OP = tflite.BuiltinOperator
OP_NAMES = {v: k for k, v in vars(OP).items() if not k.startswith("_")}
C1, HW, OUT = 32, 8, 64  # conv channels, input size, Gemm outputs
FC_IN = C1 * (HW // 2) ** 2
INPUTS = 4


# ---- the weights and their numpy decode (the contract, independent of the kernels) ----------------
def pack(idx: np.ndarray, bits: int) -> np.ndarray:
    """n indices of ``bits`` bits, LSB first, into ceil(n·bits/8) bytes."""
    out = np.zeros((len(idx) * bits + 7) // 8, np.uint8)
    for k, i in enumerate(idx.astype(np.int64)):
        out[k * bits // 8] |= np.uint8(i << (k * bits % 8))
    return out


def unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    return np.array([(int(packed[k * bits // 8]) >> (k * bits % 8)) & ((1 << bits) - 1) for k in range(n)], np.int64)


def weights() -> dict:
    """Per layer: its int8 storage (ONNX inputs, attributes), its numpy-decoded int8 weight and scales."""
    rng = np.random.default_rng(0)
    hashed_shape, seed, buckets = (C1, 3, 3, 3), 7, 40
    q_b = rng.integers(-127, 128, buckets).astype(np.int8)
    index, sign = hash_indices(C1, 27, buckets, seed)
    conv = {"op": "HashedWeight", "q": q_b, "inputs": {}, "attrs": {"shape": list(hashed_shape), "num_hashes": 1,
                                                                    "seed": seed, "signed": 1},
            "wq": (q_b[index[0].numpy()].astype(np.int64) * sign[0].numpy()).reshape(hashed_shape).astype(np.int8),
            "scale": rng.uniform(0.002, 0.006, C1).astype(np.float32)}
    dw_shape, bits = (C1, 1, 3, 3), 4
    q_c = np.sort(rng.choice(np.arange(-127, 128), 16, replace=False)).astype(np.int8)
    idx = rng.integers(0, 16, int(np.prod(dw_shape)))
    dw = {"op": "CodebookWeight", "q": q_c, "inputs": {"indices": pack(idx, bits)},
          "attrs": {"shape": list(dw_shape), "bits": bits}, "wq": q_c[idx].reshape(dw_shape),
          "scale": rng.uniform(0.004, 0.01, C1).astype(np.float32)}
    q_s = np.concatenate([[0], rng.choice(np.r_[-127:0, 1:128], 15, replace=False)]).astype(np.int8)
    dense = np.where(rng.random((OUT, FC_IN)) < 0.1, rng.integers(1, 16, (OUT, FC_IN)), 0)
    row_ptr, gaps, idx = [0], [], []
    for row in dense:
        last = -1
        for col in np.flatnonzero(row):
            gap = col - last
            while gap > 255:
                idx.append(0), gaps.append(255)
                gap -= 255
            idx.append(row[col]), gaps.append(gap)
            last = col
        row_ptr.append(len(idx))
    fc = {"op": "CodebookWeight", "q": q_s,
          "inputs": {"indices": pack(np.array(idx), 4), "row_ptr": np.array(row_ptr, np.int32),
                     "col_gaps": np.array(gaps, np.uint8)},
          "attrs": {"shape": [OUT, FC_IN], "bits": 4}, "wq": q_s[dense],
          "scale": rng.uniform(0.002, 0.004, OUT).astype(np.float32)}
    # the sparse form decoded from its CSR, not from `dense`: the reference reads what is stored
    check = np.zeros((OUT, FC_IN), np.int8)
    entries = unpack(fc["inputs"]["indices"], len(gaps), 4)
    for r in range(OUT):
        col = -1
        for m in range(row_ptr[r], row_ptr[r + 1]):
            col += gaps[m]
            check[r, col] = q_s[entries[m]]
    assert (check == fc["wq"]).all()
    assert (unpack(dw["inputs"]["indices"], idx_count := int(np.prod(dw_shape)), bits) < 16).all() and idx_count
    return {"conv": conv, "dw": dw, "fc": fc}


WEIGHTS = weights()


def float_activations(x: np.ndarray) -> list[np.ndarray]:
    """The float model (dequantized weights) in torch: the activations to pick int8 scales from."""
    w = {k: torch.from_numpy(v["wq"].astype(np.float32) * v["scale"].reshape(-1, *[1] * (v["wq"].ndim - 1)))
         for k, v in WEIGHTS.items()}
    h1 = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), w["conv"], BIASES["conv"], padding=1))
    h2 = torch.nn.functional.conv2d(h1, w["dw"], BIASES["dw"], stride=2, padding=1, groups=C1)
    y = h2.flatten(1) @ w["fc"].T + BIASES["fc"]
    return [t.numpy() for t in (h1, h2, y)]


BIASES = {k: torch.from_numpy(np.random.default_rng(5 + i).uniform(-0.1, 0.1, n).astype(np.float32))
          for i, (k, n) in enumerate((("conv", C1), ("dw", C1), ("fc", OUT)))}
X_SCALE = 4 / 127


def activation_scales() -> list[float]:
    xs = np.random.default_rng(3).uniform(-4, 4, (8, 3, HW, HW)).astype(np.float32)
    return [float(np.abs(a).max()) / 127 for a in float_activations(xs)]


def storage_model(form: str = "stored", edit=None) -> onnx.ModelProto:
    """x → Q/DQ → Conv(hashed) → Relu → Q/DQ → depthwise Conv(dense codebook) → Q/DQ → Flatten → Q/DQ →
    Gemm(sparse codebook, transB=1) → Q/DQ → y; each weight int8-stored (``form`` "stored") or an INT8
    initializer (``form`` "dense", the dense int8 model). ``edit(nodes, inits)`` changes the graph."""
    s1, s2, s3 = activation_scales()
    inits = {"xs": np.float32(X_SCALE), "xz": np.int8(0), "s1": np.float32(s1 * 2 / 1.99), "z1": np.int8(-128),
             "s2": np.float32(s2), "z2": np.int8(0), "s3": np.float32(s3), "z3": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x")]
    for name, w in WEIGHTS.items():
        inits[f"{name}_scale"] = w["scale"]
        inits[f"{name}_zero"] = np.zeros(len(w["scale"]), np.int8)
        inits[f"{name}_bias"] = BIASES[name].numpy()
        if form == "dense":
            inits[f"{name}_wq"] = w["wq"]
        else:
            inits[f"{name}_q"] = w["q"]
            for key, value in w["inputs"].items():
                inits[f"{name}_{key}"] = value
            slots = ["row_ptr", "col_gaps"] if "row_ptr" in w["inputs"] else []
            decoder_inputs = [f"{name}_f"] + ([f"{name}_indices"] + [f"{name}_{k}" for k in slots]
                                              if w["op"] == "CodebookWeight" else [])
            nodes += [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT,
                                       name=f"{name}_cast_f"),
                      helper.make_node(w["op"], decoder_inputs, [f"{name}_w"], domain=DOMAIN, name=f"{name}_decode",
                                       **w["attrs"]),
                      helper.make_node("Cast", [f"{name}_w"], [f"{name}_wq"], to=TensorProto.INT8,
                                       name=f"{name}_cast_q")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_scale", f"{name}_zero"],
                                      [f"{name}_wd"], axis=0, name=f"{name}_dq"))
    nodes += [helper.make_node("Conv", ["xd", "conv_wd", "conv_bias"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
              helper.make_node("QuantizeLinear", ["r1", "s1", "z1"], ["r1q"], name="q_1"),
              helper.make_node("DequantizeLinear", ["r1q", "s1", "z1"], ["r1d"], name="dq_1"),
              helper.make_node("Conv", ["r1d", "dw_wd", "dw_bias"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                               group=C1, name="dw"),
              helper.make_node("QuantizeLinear", ["c2", "s2", "z2"], ["c2q"], name="q_2"),
              helper.make_node("DequantizeLinear", ["c2q", "s2", "z2"], ["c2d"], name="dq_2"),
              helper.make_node("Flatten", ["c2d"], ["f"], name="flatten"),
              helper.make_node("QuantizeLinear", ["f", "s2", "z2"], ["fq"], name="q_f"),
              helper.make_node("DequantizeLinear", ["fq", "s2", "z2"], ["fd"], name="dq_f"),
              helper.make_node("Gemm", ["fd", "fc_wd", "fc_bias"], ["g"], transB=1, name="fc"),
              helper.make_node("QuantizeLinear", ["g", "s3", "z3"], ["gq"], name="q_3"),
              helper.make_node("DequantizeLinear", ["gq", "s3", "z3"], ["y"], name="dq_3")]
    if edit is not None:
        edit(nodes, inits)
    graph = helper.make_graph(nodes, "int8_storage",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HW, HW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)])


def reference_session(model: onnx.ModelProto):
    """ONNX Runtime running ``model`` as it is: our custom op library decodes the weights per run."""
    return onnx_session(model.SerializeToString(), decode_at_load=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The stored and the dense int8 conversions, random inputs and ONNX Runtime's outputs for them."""
    folder = tmp_path_factory.mktemp("int8_storage")
    model = storage_model()
    xs = [np.random.default_rng(20 + i).uniform(-4, 4, (1, 3, HW, HW)).astype(np.float32) for i in range(INPUTS)]
    session = reference_session(model)
    expected = [session.run(None, {"x": x})[0] for x in xs]
    paths, verifications = {}, {}
    for form in ("stored", "dense"):
        paths[form], verifications[form] = convert_and_verify(storage_model(form), folder / f"{form}.tflite")
    return {"paths": paths, "verifications": verifications, "xs": xs, "expected": expected, "folder": folder}


def graph_of(data: bytes):
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = code.CustomCode().decode() if code.CustomCode() else OP_NAMES[max(code.BuiltinCode(),
                                                                                 code.DeprecatedBuiltinCode())]
        ops.append((name, op.InputsAsNumpy().tolist(), op.OutputsAsNumpy().tolist()))
    return model, graph, ops


def tensor_data(model, graph, index: int) -> np.ndarray | None:
    tensor = graph.Tensors(index)
    buffer = model.Buffers(tensor.Buffer())
    if not buffer.DataLength():
        return None
    dtype = {tflite.TensorType.INT8: np.int8, tflite.TensorType.FLOAT32: np.float32,
             tflite.TensorType.INT32: np.int32, tflite.TensorType.UINT8: np.uint8}[tensor.Type()]
    return buffer.DataAsNumpy().view(dtype).reshape(tensor.ShapeAsNumpy())


FILTER_OPS = {"CONV_2D": ("conv", (0, 2, 3, 1), 0), "DEPTHWISE_CONV_2D": ("dw", (1, 2, 3, 0), 3),
              "FULLY_CONNECTED": ("fc", (0, 1), 0)}


def filters(data: bytes) -> dict:
    """Per layer: the filter tensor of its CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, with the model."""
    model, graph, ops = graph_of(data)
    return {FILTER_OPS[name][0]: (model, graph, ops, ins[1]) for name, ins, _ in ops if name in FILTER_OPS}


def check_quantization(tensor, layer: str, dimension: int) -> None:
    q = tensor.Quantization()
    assert tensor.Type() == tflite.TensorType.INT8
    np.testing.assert_array_equal(q.ScaleAsNumpy(), WEIGHTS[layer]["scale"])
    assert not q.ZeroPointAsNumpy().any() and q.QuantizedDimension() == dimension


def test_convert_writes_cast_custom_cast_into_a_per_channel_int8_filter(converted):
    """Each filter: CAST(int8 → float32) of the int8 buffer → CUSTOM decoder [→ TRANSPOSE | RESHAPE, float32] →
    CAST(float32 → int8), the filter tensor carrying the DequantizeLinear's scales and no other tensor of the chain
    quantized (the scales stored once); the converter's verification passed (on the model decoded at load), the
    file is far below the dense int8 one, and `edgepack inspect` sees each decoder's int8 filter."""
    from edgepack.exporter.inspect_model import inspect_model

    data = converted["paths"]["stored"].read_bytes()
    for layer, (model, graph, ops, w) in filters(data).items():
        by_output = {outs[0]: (name, ins) for name, ins, outs in ops}
        perm, dimension = next((p, d) for k, p, d in FILTER_OPS.values() if k == layer)
        check_quantization(graph.Tensors(w), layer, dimension)
        chain, tensors, t = [], [], w
        while t in by_output:
            name, ins = by_output[t]
            chain.append(name)
            t = ins[0]
            tensors.append(t)
        assert chain[0] == "CAST" and chain[-2:] == [f"{DOMAIN}.{WEIGHTS[layer]['op']}", "CAST"]
        assert chain[1:-2] == ([] if layer == "fc" else ["TRANSPOSE"])  # Gemm transB=1: the layout already
        np.testing.assert_array_equal(tensor_data(model, graph, t), WEIGHTS[layer]["q"])
        assert graph.Tensors(t).Type() == tflite.TensorType.INT8
        for between in tensors[:-1]:  # the decoded weight and its layout: float32, not quantized
            tensor = graph.Tensors(between)
            assert tensor.Type() == tflite.TensorType.FLOAT32 and tensor.Quantization() is None
    for form in ("stored", "dense"):
        assert converted["verifications"][form].max_steps <= INT8_STEPS
        assert converted["verifications"][form].max_builtin_steps <= INT8_BUILTIN_STEPS
    assert [(node.op_type, node.int8) for node in inspect_model(converted["paths"]["stored"]).nodes] == [
        (WEIGHTS[layer]["op"], True) for layer in ("conv", "dw", "fc")]
    assert len(data) < 0.4 * converted["paths"]["dense"].stat().st_size


def check_decoded(data: bytes, dense: bytes) -> None:
    """Constant int8 filters equal to the numpy-decoded weights in TFLite's layout, the quantization kept,
    no CAST / CUSTOM / layout op left: the dense int8 conversion's graph."""
    found = filters(data)
    assert set(found) == {"conv", "dw", "fc"}
    for layer, (model, graph, ops, w) in found.items():
        perm, dimension = next((p, d) for k, p, d in FILTER_OPS.values() if k == layer)
        want = WEIGHTS[layer]["wq"].transpose(perm)
        np.testing.assert_array_equal(tensor_data(model, graph, w), want)
        check_quantization(graph.Tensors(w), layer, dimension)
        assert [name for name, *_ in ops] == [name for name, *_ in graph_of(dense)[2]]


def test_python_decode_at_load_folds_the_chain_into_the_numpy_decoded_filter(converted):
    check_decoded(decoded_tflite(converted["paths"]["stored"]), converted["paths"]["dense"].read_bytes())


def steps(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / activation_scales()[2])


def run_content(data: bytes, xs, resolver) -> list[np.ndarray]:
    interpreter = litert.Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    outputs = []
    for x in xs:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return outputs


@pytest.mark.parametrize("decode", [True, "c"])
def test_litert_matches_ort_and_the_dense_int8_model(converted, decode):
    """edgepack's LiteRT wrapper (decode at load in Python or in C, XNNPACK) and LiteRT's builtin kernels on
    the decoded model: within the converter's tolerances of ORT, and equal to the dense int8 model's outputs."""
    xs, expected, path = converted["xs"], converted["expected"], converted["paths"]["stored"]
    interpreter = tflite_interpreter(path, decode_at_load=decode)
    dense = run_content(converted["paths"]["dense"].read_bytes(), xs, litert.OpResolverType.AUTO)
    for x, want, same in zip(xs, expected, dense):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert steps(got, want) <= INT8_STEPS
        np.testing.assert_array_equal(got, same)
    decoded = decoded_tflite(path) if decode is True else c_decoded(path)
    builtin = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    dense = run_content(converted["paths"]["dense"].read_bytes(), xs, builtin)
    for got, want, same in zip(run_content(decoded, xs, builtin), expected, dense):
        assert steps(got, want) <= INT8_BUILTIN_STEPS
        np.testing.assert_array_equal(got, same)


def c_decoded(path: Path) -> bytes:
    from edgepack.runtime_kernels.tflite_runtime import _c_decoded

    return _c_decoded(delegate_library_path(), path, {})


def test_c_decode_at_load_folds_the_chain_into_the_numpy_decoded_filter(converted):
    check_decoded(c_decoded(converted["paths"]["stored"]), converted["paths"]["dense"].read_bytes())


def test_tflite_runtime_214_matches_ort(converted):
    """The model decoded at load, in tflite-runtime 2.14 (XNNPACK and builtin kernels)."""
    decoded = converted["folder"] / "decoded.tflite"
    decoded.write_bytes(decoded_tflite(converted["paths"]["stored"]))
    np.savez(f"{decoded}.npz", xs=np.stack(converted["xs"]))
    results = tflite214_outputs([decoded])[str(decoded)]
    for resolver, tolerance in (("AUTO", INT8_STEPS), ("BUILTIN_WITHOUT_DEFAULT_DELEGATES", INT8_BUILTIN_STEPS)):
        outputs = results[resolver]
        assert max(steps(got, want) for got, want in zip(outputs, converted["expected"])) <= tolerance


def test_tflite_runtime_214_without_decode_at_load_matches_ort(converted):
    """The file as it is in tflite-runtime 2.14, the edgepack delegate running the decoders: with XNNPACK (it may
    take the float32 TRANSPOSE; the convolutions, whose filters are computed, stay on the builtin int8 kernels)
    and with the builtin kernels only, within the builtin kernels' tolerance of ORT (was, with the int8 TRANSPOSE
    after the CAST: "failed to delegate TRANSPOSE node" in allocate_tensors)."""
    stored = converted["folder"] / "stored_214.tflite"
    stored.write_bytes(converted["paths"]["stored"].read_bytes())
    np.savez(f"{stored}.npz", xs=np.stack(converted["xs"]))
    results = tflite214_outputs([stored], delegate_library_path())[str(stored)]
    for resolver in ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        outputs = results[resolver]
        assert len(outputs) == INPUTS
        assert max(steps(got, want) for got, want in zip(outputs, converted["expected"])) <= INT8_BUILTIN_STEPS


def test_without_decode_at_load_the_builtin_int8_kernels_take_the_computed_filter(converted):
    """Loaded as it is (the delegate runs the decoders, LiteRT's CAST / TRANSPOSE build the filter each run),
    LiteRT's builtin int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED accept the non-constant per-channel
    filter (XNNPACK leaves them: its filters must be static): within the builtin kernels' tolerance of ORT."""
    interpreter = tflite_interpreter(converted["paths"]["stored"], decode_at_load=False)
    for x, want in zip(converted["xs"], converted["expected"]):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        assert steps(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), want) <= INT8_BUILTIN_STEPS


def node(nodes, name):
    return next(n for n in nodes if n.name == name)


def float_buckets(nodes, inits):
    inits["conv_q"] = WEIGHTS["conv"]["q"].astype(np.float32)


def cast_to_int32(nodes, inits):
    node(nodes, "conv_cast_f").attribute[0].i = TensorProto.INT32


def decoded_weight_read_as_float(nodes, inits):
    node(nodes, "conv").input[1] = "conv_w"
    nodes.remove(node(nodes, "conv_cast_q"))
    nodes.remove(node(nodes, "conv_dq"))


def weight_read_by_relu(nodes, inits):
    nodes.append(helper.make_node("Relu", ["fc_wd"], ["junk"], name="junk"))


def int8_weight_read_by_relu(nodes, inits):
    nodes.append(helper.make_node("Cast", ["dw_wq"], ["junk"], to=TensorProto.FLOAT, name="junk"))


@pytest.mark.parametrize("edit, words", [
    # the ONNX checks (validate.py) refuse these two before the walk, naming the decoder and the Cast
    (float_buckets, r"HashedWeight node 'conv_decode'.*Cast node 'conv_cast_f'.*INT8"),
    (cast_to_int32, r"HashedWeight node 'conv_decode'.*Cast node 'conv_cast_f'.*FLOAT"),
    (decoded_weight_read_as_float, r"node 'conv_decode' \(HashedWeight\): its output 'conv_w' is read by Conv "
                                   r"'conv' \(input 1\); an int8-stored weight's decoder output is read only by "
                                   r"Cast\(to=INT8\)"),
    (weight_read_by_relu, r"node 'fc_dq' \(DequantizeLinear\): the int8-stored weight 'fc_wd' is read by Gemm 'fc' "
                          r"\(input 1\), Relu 'junk' \(input 0\); it can only be the filter \(input 1\) of Conv, "
                          r"Gemm, MatMul"),
    (int8_weight_read_by_relu, r"node 'dw_cast_q' \(Cast\): its output 'dw_wq' is read by DequantizeLinear 'dw_dq' "
                               r"\(input 0\), Cast 'junk' \(input 0\); an int8-stored weight is read by one "
                               r"DequantizeLinear"),
])
def test_bad_chains_are_refused_naming_the_node(tmp_path, edit, words):
    error = EdgepackError if edit in (float_buckets, cast_to_int32) else ConversionError
    with pytest.raises(error, match=words):
        convert_and_verify(storage_model(edit=edit), tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_a_minus_128_bucket_is_refused_not_saturated(converted, tmp_path):
    """A stored -128 (a sign flip would make it 128): the Python rewrite (exporter/validate.py) and the C
    decode at load refuse it in the same words (was: saturated to 127 / -128)."""
    from edgepack.runtime_kernels.decode_at_load import DecodeError

    data = bytearray(converted["paths"]["stored"].read_bytes())
    model, graph, ops = graph_of(bytes(data))
    source = next(ins[0] for name, ins, _ in ops if name == "CAST" and tensor_data(model, graph, ins[0]) is not None)
    buffer = model.Buffers(graph.Tensors(source).Buffer())
    data[buffer._tab.Vector(buffer._tab.Offset(4)) + 3] = 0x80  # Buffer.data (field 0), value 3
    path = tmp_path / "minus_128.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(EdgepackError) as python:
        decoded_tflite(path)
    with pytest.raises(DecodeError) as c:
        c_decoded(path)
    assert str(c.value) == f"{path}: {python.value}"
    assert "): value 3 is -128; int8-stored weights must be in [-127, 127]" in str(python.value)
