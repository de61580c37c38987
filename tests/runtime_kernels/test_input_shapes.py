"""One table of bad input shapes through both real runtimes: the ORT library (onnxruntime) and the
LiteRT delegate refuse each case with the same words after their node labels, the words of the C
op layer's ep_op_check_inputs (src/ops.c), whether the weight is a constant (checked when the
session / interpreter is made) or fed at run time (checked at run)."""

from __future__ import annotations

import numpy as np
import pytest
import tflite_models as tm
from onnx import TensorProto, helper, numpy_helper

from edgepack.exporter.fallbacks import FUNCTIONS, STANDARD_OPSET
from edgepack.runtime_kernels import onnx_session, tflite_interpreter
from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION

RNG = np.random.default_rng(11)
IDENTITY = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)  # recon with K = 1, H = 2: relu(v) - relu(-v) = v


def w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


HM = {"in_features": 5, "out_features": 6, "num_hashes": 1, "seed": 7}
CM = {"in_features": 10, "out_features": 7}
LDR = {"in_features": 6, "out_features": 8}

# name: (op, attributes, inputs by spec name (X included; None: absent), inputs fed at run time
# besides X, the message after the node label)
CASES = {
    "buckets-rank": ("HashedMatMul", HM, {"X": w(2, 5), "buckets": w(3, 4)}, (),
                     "input 'buckets' has shape [3, 4]; must be 1-D with 1 <= B < 2^31 buckets"),
    "buckets-rank-fed": ("HashedWeight", {"shape": [6, 5], "num_hashes": 1, "seed": 7}, {"buckets": w(2, 5)},
                         ("buckets",), "input 'buckets' has shape [2, 5]; must be 1-D with 1 <= B < 2^31 buckets"),
    "recon-length": ("HashedMatMul", {**HM, "num_hashes": 3}, {"X": w(2, 5), "buckets": w(11), "recon": w(12)}, (),
                     "input 'recon' has 12 values (rank 1); with num_hashes=3 it must be 1-D of length H*5+1 for "
                     "some H >= 1 (e.g. 6, 11, ...)"),
    "recon-rank-fed": ("HashedWeight", {"shape": [6, 5], "num_hashes": 2, "seed": 7},
                       {"buckets": w(11), "recon": w(3, 3)}, ("recon",),
                       "input 'recon' has 9 values (rank 2); with num_hashes=2 it must be 1-D of length H*4+1 for "
                       "some H >= 1 (e.g. 5, 9, ...)"),
    "recon-missing": ("HashedWeight", {"shape": [6, 5], "num_hashes": 2, "seed": 7}, {"buckets": w(11)}, (),
                      "input 'recon' is required when num_hashes=2: the MLP [W1 (H x K), b1 (H), W2 (H), b2] of "
                      "length H*(K+2)+1"),
    "blocks-not-pow2": ("CirculantMatMul", CM, {"X": w(2, 10), "blocks": w(2, 3, 6)}, (),
                        "input 'blocks' has shape [2, 3, 6]; must be [p, q, b] with p, q >= 1 and b a power of "
                        "two >= 4"),
    "blocks-rank-fed": ("CirculantMatMul", CM, {"X": w(2, 10), "blocks": w(6, 4)}, ("blocks",),
                        "input 'blocks' has shape [6, 4]; must be [p, q, b] with p, q >= 1 and b a power of two "
                        ">= 4"),
    "blocks-too-few": ("CirculantMatMul", {**CM, "in_features": 13}, {"X": w(2, 13), "blocks": w(2, 3, 4)}, (),
                       "input 'blocks' has shape [2, 3, 4]; need in_features=13 <= q*b=12 and out_features=7 <= "
                       "p*b=8"),
    "gh-mismatch": ("LDRMatMul", LDR, {"X": w(2, 6), "G": w(2, 8), "H": w(3, 8)}, (),
                    "inputs 'G' [2, 8] and 'H' [3, 8] must both be [r, n] with r >= 1 and n a power of two >= 4"),
    "gh-not-pow2-fed": ("LDRMatMul", LDR, {"X": w(2, 6), "G": w(2, 6), "H": w(2, 6)}, ("G", "H"),
                        "inputs 'G' [2, 6] and 'H' [2, 6] must both be [r, n] with r >= 1 and n a power of two "
                        ">= 4"),
    "ldr-n-too-small": ("LDRMatMul", {**LDR, "in_features": 9}, {"X": w(2, 9), "G": w(2, 8), "H": w(2, 8)}, (),
                        "in_features=9 and out_features=8 must both be <= n=8 (G, H are [2, 8])"),
    "bias-length": ("HashedMatMul", HM, {"X": w(2, 5), "buckets": w(11), "recon": None, "bias": w(5)}, (),
                    "input 'bias' has shape [5]; must be [out_features] = [6]"),
    "bias-rank-fed": ("CirculantMatMul", CM, {"X": w(2, 10), "blocks": w(2, 3, 4), "bias": w(1, 7)}, ("bias",),
                      "input 'bias' has shape [1, 7]; must be [out_features] = [7]"),
    "x-last-axis": ("HashedMatMul", HM, {"X": w(2, 4), "buckets": w(11)}, (),
                    "input 'X' has shape [2, 4]; its last axis must equal in_features=5"),
    "x-last-axis-3d": ("LDRMatMul", LDR, {"X": w(2, 3, 7), "G": w(2, 8), "H": w(2, 8)}, (),
                       "input 'X' has shape [2, 3, 7]; its last axis must equal in_features=6"),
}


def _runtime_inputs(inputs: dict, fed: tuple) -> list[str]:
    return [name for name, value in inputs.items() if value is not None and (name == "X" or name in fed)]


def onnx_model(op: str, attrs: dict, inputs: dict, fed: tuple, functions: bool = False) -> bytes:
    """One node named 'n'; X and the fed inputs are graph inputs, the rest initializers (with
    ``functions``, plus the op's standard-op fallback function)."""
    names = OPS[op].input_names
    node_inputs = [name if inputs.get(name) is not None else "" for name in names]
    while node_inputs and not node_inputs[-1]:
        node_inputs.pop()
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, inputs[n].shape)
                    for n in _runtime_inputs(inputs, fed)]
    initializers = [numpy_helper.from_array(inputs[n], n) for n in node_inputs
                    if n and n not in _runtime_inputs(inputs, fed)]
    node = helper.make_node(op, node_inputs, ["Y"], domain=DOMAIN, name="n", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    if functions:
        model.functions.append(FUNCTIONS[op]())
    return model.SerializeToString()


def tflite_model(op: str, attrs: dict, inputs: dict, fed: tuple) -> bytes:
    """The same node as a CUSTOM op: X and the fed inputs are graph inputs, the rest buffers."""
    return tm.fed_op(op, OPS[op].input_names, attrs, inputs, _runtime_inputs(inputs, fed))


def ort_message(op: str, attrs: dict, inputs: dict, fed: tuple) -> str:
    """The library's message after "edgepack <op> node 'n': ", from session creation or run."""
    with pytest.raises(Exception) as e:
        session = onnx_session(onnx_model(op, attrs, inputs, fed), decode_at_load=False)
        session.run(None, {n: inputs[n] for n in _runtime_inputs(inputs, fed)})
    text = " ".join(str(e.value).split())
    label = f"edgepack {op} node 'n': "
    assert label in text, text
    return text.split(label, 1)[1]


def delegate_message(op: str, attrs: dict, inputs: dict, fed: tuple, tmp_path) -> str:
    """The delegate's message after "edgepack <op> node #0 (output 'Y'): ", from prepare or invoke."""
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_model(op, attrs, inputs, fed))
    with pytest.raises(Exception) as e:
        interp = tflite_interpreter(path, decode_at_load=False)
        by_name = {d["name"]: d["index"] for d in interp.get_input_details()}
        for name in _runtime_inputs(inputs, fed):
            interp.set_tensor(by_name[name], inputs[name])
        interp.invoke()
    line = str(e.value).splitlines()[0]
    label = f"edgepack {op} node #0 (output 'Y'): "
    assert line.startswith(label), line
    return line[len(label):]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_shape_same_message_in_ort_and_the_delegate(case, tmp_path):
    op, attrs, inputs, fed, want = CASES[case]
    assert ort_message(op, attrs, inputs, fed) == want
    assert delegate_message(op, attrs, inputs, fed, tmp_path) == want


@pytest.mark.parametrize("case", ["recon-length", "blocks-not-pow2", "gh-mismatch", "bias-length"])
def test_the_same_inputs_with_valid_shapes_run_in_both(case, tmp_path):
    """The builders are sound: with the one bad input fixed, both runtimes compute what the op's
    standard-op fallback function computes in plain ORT."""
    op, attrs, inputs, fed, _ = CASES[case]
    good = {"recon-length": {"recon": w(11)}, "blocks-not-pow2": {"blocks": w(2, 3, 4)},
            "gh-mismatch": {"H": w(2, 8)}, "bias-length": {"bias": w(6), "recon": IDENTITY}}[case]
    inputs = {"bias": w(attrs["out_features"]), **inputs, **good}  # the fallbacks take every input
    feeds = {"X": inputs["X"]}
    model = onnx_model(op, attrs, inputs, fed, functions=True)
    want = onnx_session(model, use_kernels=False).run(None, feeds)[0]
    got_ort = onnx_session(model, decode_at_load=False).run(None, feeds)[0]
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_model(op, attrs, inputs, fed))
    interp = tflite_interpreter(path, decode_at_load=False)
    interp.set_tensor(interp.get_input_details()[0]["index"], inputs["X"])
    interp.invoke()
    got_tflite = interp.get_tensor(interp.get_output_details()[0]["index"])
    assert want.shape == (2, attrs["out_features"])
    np.testing.assert_allclose(got_ort, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_tflite, want, rtol=1e-4, atol=1e-4)
