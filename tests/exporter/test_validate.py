"""The Python validator of ai.edgepack nodes agrees with the real ORT library, node by node.

Each case is one ai.edgepack node with constant weights; the library (``onnx_session``) and
``check_onnx_model`` must both refuse every invalid set and both accept every valid one. The
fallback functions (ORT without the library) accept many of the invalid sets: that is why
export, inspect and convert run the validator.
"""

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.cli import main
from edgepack.exporter.fallbacks import DOMAIN, FUNCTIONS, OP_INPUTS, STANDARD_OPSET
from edgepack.exporter.model_files import load_tflite
from edgepack.exporter.validate import (
    InvalidNodeError,
    check_onnx_model,
    check_tflite_model,
)
from edgepack.runtime_kernels import onnx_session
from edgepack.runtime_kernels.op_spec import OPS, OPSET_VERSION

RNG = np.random.default_rng(0)
IDENTITY = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)
# Small limits, so the limit cases stay cheap even where a runtime would not check them.
VIRTUAL, DECODED = 4096, 60_000


def w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def recon(k, hidden=2):
    return w(hidden * (k + 2) + 1)


def hashed_weight(shape=(6, 5), num_hashes=1, seed=7, signed=None, buckets=None, rec=IDENTITY, **extra):
    attrs = {"shape": shape, "num_hashes": num_hashes, "seed": seed, "signed": signed, **extra}
    return "HashedWeight", attrs, {"buckets": w(11) if buckets is None else buckets, "recon": rec}, None


def hashed_matmul(in_f=5, out_f=6, num_hashes=1, seed=7, mode=None, buckets=None, rec=IDENTITY,
                  bias=None, x=None, **extra):
    attrs = {"in_features": in_f, "out_features": out_f, "num_hashes": num_hashes, "seed": seed,
             "mode": mode, **extra}
    weights = {"buckets": w(11) if buckets is None else buckets, "recon": rec,
               "bias": w(out_f if isinstance(out_f, int) and 0 < out_f < 1000 else 3) if bias is None else bias}
    return "HashedMatMul", attrs, weights, x if x is not None else in_f


def circulant(in_f=10, out_f=7, blocks=None, bias=None, x=None, scale=None, **extra):
    weights = {"blocks": w(2, 3, 4) if blocks is None else blocks,
               "bias": w(out_f if isinstance(out_f, int) and 0 < out_f < 1000 else 3) if bias is None else bias,
               "scale": scale}
    attrs = {"in_features": in_f, "out_features": out_f, **extra}
    return "CirculantMatMul", attrs, weights, x if x is not None else in_f


def ldr(in_f=6, out_f=8, G=None, H=None, bias=None, x=None, scale=None, **extra):
    weights = {"G": w(2, 8) if G is None else G, "H": w(2, 8) if H is None else H,
               "bias": w(out_f if isinstance(out_f, int) and 0 < out_f < 1000 else 3) if bias is None else bias,
               "scale": scale}
    attrs = {"in_features": in_f, "out_features": out_f, **extra}
    return "LDRMatMul", attrs, weights, x if x is not None else in_f


VALID = {
    "hw": hashed_weight(),
    "hw-3d-unsigned": hashed_weight(shape=(4, 3, 2), signed=0),
    "hw-k3": hashed_weight(num_hashes=3, rec=recon(3)),
    "hw-seed-max": hashed_weight(seed=2**32 - 1),
    "hw-at-limit": hashed_weight(shape=(64, 64)),
    "hm": hashed_matmul(),
    "hm-stream-k2": hashed_matmul(mode=1, num_hashes=2, rec=recon(2, 3)),
    "hm-big-stream": hashed_matmul(in_f=64, out_f=64, mode=1),  # mode 1 decodes nothing
    "circ": circulant(),
    "circ-exact": circulant(in_f=12, out_f=8),
    "circ-scale-relu6": circulant(scale=w(7), activation=2),
    "hm-stream-relu": hashed_matmul(mode=1, activation=1),
    "ldr": ldr(),
    "ldr-full": ldr(in_f=8, out_f=8),
}
INVALID = {
    "hw-shape-missing": hashed_weight(shape=None),
    "hw-shape-empty": hashed_weight(shape=()),
    "hw-shape-zero": hashed_weight(shape=(0, 3)),
    "hw-shape-negative": hashed_weight(shape=(4, -2)),
    "hw-shape-2^32-rows": hashed_weight(shape=(2**32, 1)),
    "hw-shape-2^32-cols": hashed_weight(shape=(1, 2**16, 2**16)),
    "hw-shape-17-dims": hashed_weight(shape=(1,) * 17),
    "hw-shape-floats": hashed_weight(shape=[2.0, 3.0]),
    "hw-shape-int": hashed_weight(shape=6),
    "hw-k0": hashed_weight(num_hashes=0),
    "hw-k65": hashed_weight(num_hashes=65, rec=recon(65)),
    "hw-k-missing": hashed_weight(num_hashes=None),
    "hw-k-float": hashed_weight(num_hashes=1.0),
    "hw-seed-negative": hashed_weight(seed=-1),
    "hw-seed-2^32": hashed_weight(seed=2**32),
    "hw-seed-missing": hashed_weight(seed=None),
    "hw-signed-2": hashed_weight(signed=2),
    "hw-signed-negative": hashed_weight(signed=-1),
    "hw-buckets-2d": hashed_weight(buckets=w(3, 4)),
    "hw-buckets-empty": hashed_weight(buckets=w(0)),
    "hw-recon-missing-k2": hashed_weight(num_hashes=2, rec=None),
    "hw-recon-length": hashed_weight(num_hashes=2, rec=w(10)),
    "hw-recon-2d": hashed_weight(num_hashes=2, rec=w(3, 3)),
    "hw-recon-k1-length": hashed_weight(rec=w(8)),
    "hw-virtual-limit": hashed_weight(shape=(65, 64)),
    "hw-virtual-limit-3d": hashed_weight(shape=(2, 64, 33)),
    "hm-in-missing": hashed_matmul(in_f=None, x=5),
    "hm-in-zero": hashed_matmul(in_f=0, x=5),
    "hm-in-negative": hashed_matmul(in_f=-5, x=5),
    "hm-in-2^32": hashed_matmul(in_f=2**32, x=5),
    "hm-out-zero": hashed_matmul(out_f=0),
    "hm-out-float": hashed_matmul(out_f=6.0),
    "hm-k0": hashed_matmul(num_hashes=0),
    "hm-k65": hashed_matmul(num_hashes=65),
    "hm-seed-negative": hashed_matmul(seed=-3),
    "hm-mode-2": hashed_matmul(mode=2),
    "hm-mode-negative": hashed_matmul(mode=-1),
    "hm-signed-5": hashed_matmul(signed=5),
    "hm-activation-3": hashed_matmul(activation=3),
    "circ-activation-negative": circulant(activation=-1),
    "ldr-activation-float": ldr(activation=1.0),
    "circ-scale-length": circulant(scale=w(3)),
    "ldr-scale-2d": ldr(scale=w(1, 8)),
    "hm-buckets-2d": hashed_matmul(buckets=w(2, 6)),
    "hm-recon-missing-k3": hashed_matmul(num_hashes=3, rec=None),
    "hm-recon-length": hashed_matmul(num_hashes=3, rec=w(12)),
    "hm-bias-length": hashed_matmul(bias=w(5)),
    "hm-bias-2d": hashed_matmul(bias=w(1, 6)),
    "hm-x-width": hashed_matmul(x=4),
    "hm-virtual-limit": hashed_matmul(in_f=4097, out_f=1, mode=1, bias=w(1)),
    "hm-decoded-limit": hashed_matmul(in_f=64, out_f=64),  # mode 0 caches 16 KiB < 60 000: ok alone…
    "circ-in-zero": circulant(in_f=0, x=10),
    "circ-out-missing": circulant(out_f=None),
    "circ-b-3": circulant(blocks=w(2, 3, 3)),
    "circ-b-2": circulant(blocks=w(2, 3, 2)),
    "circ-b-6": circulant(blocks=w(2, 2, 6)),
    "circ-blocks-2d": circulant(blocks=w(6, 4)),
    "circ-p-zero": circulant(blocks=w(0, 3, 4)),
    "circ-in-too-big": circulant(in_f=13, x=13),
    "circ-out-too-big": circulant(out_f=9),
    "circ-bias-length": circulant(bias=w(3)),
    "circ-x-width": circulant(x=11),
    "circ-virtual-limit": circulant(in_f=4096, out_f=2, blocks=w(1, 1024, 4), bias=w(2)),
    "ldr-gh-mismatch": ldr(H=w(3, 8)),
    "ldr-n-6": ldr(G=w(2, 6), H=w(2, 6), in_f=6, out_f=6),
    "ldr-n-2": ldr(G=w(2, 2), H=w(2, 2), in_f=2, out_f=2),
    "ldr-r-zero": ldr(G=w(0, 8), H=w(0, 8)),
    "ldr-g-3d": ldr(G=w(1, 2, 8), H=w(1, 2, 8)),
    "ldr-in-too-big": ldr(in_f=9, x=9),
    "ldr-out-too-big": ldr(out_f=9),
    "ldr-out-2^32": ldr(out_f=2**32),
    "ldr-bias-length": ldr(bias=w(7)),
    "ldr-x-width": ldr(x=5),
}


def build(op, attrs, weights, x_width, functions=False, count=1):
    """A model with ``count`` copies of one ai.edgepack node, weights as initializers."""
    names = OP_INPUTS[op]
    initializers, nodes, outputs = [], [], []
    inputs = []
    if x_width is not None:
        inputs.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, x_width]))
    node_attrs = {k: v for k, v in attrs.items() if v is not None and v != ()}
    for c in range(count):
        node_inputs = []
        for name in names:
            if name == "X":
                node_inputs.append("X")
            elif weights.get(name) is None:
                node_inputs.append("")
            else:
                initializers.append(numpy_helper.from_array(weights[name], f"{name}{c}"))
                node_inputs.append(f"{name}{c}")
        while node_inputs and not node_inputs[-1]:
            node_inputs.pop()
        node = helper.make_node(op, node_inputs, [f"Y{c}"], domain=DOMAIN, name=f"node{c}", **node_attrs)
        if attrs.get("shape") == ():
            node.attribute.append(helper.make_attribute("shape", [], attr_type=onnx.AttributeProto.INTS))
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(f"Y{c}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    if functions:
        model.functions.append(FUNCTIONS[op]())
    return model


def run_ort(model, x_width, use_kernels=True):
    kwargs = dict(max_virtual_weights=VIRTUAL, max_decoded_bytes=DECODED) if use_kernels else {}
    session = onnx_session(model.SerializeToString(), use_kernels=use_kernels, decode_at_load=False, **kwargs)
    feeds = {"X": w(2, x_width)} if x_width is not None else {}
    return session.run(None, feeds)


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", str(VIRTUAL))
    monkeypatch.setenv("EDGEPACK_MAX_DECODED_BYTES", str(DECODED))


@pytest.mark.parametrize("case", VALID)
def test_valid_sets_are_accepted_by_both(case):
    op, attrs, weights, x_width = VALID[case]
    model = build(op, attrs, weights, x_width)
    assert check_onnx_model(model) == 1
    got = run_ort(model, x_width)[0]
    assert np.isfinite(got).all()


@pytest.mark.parametrize("case", INVALID)
def test_invalid_sets_are_refused_by_both(case):
    op, attrs, weights, x_width = INVALID[case]
    count = 4 if case == "hm-decoded-limit" else 1  # …but 4 of them exceed the model budget
    model = build(op, attrs, weights, x_width, count=count)
    with pytest.raises(InvalidNodeError) as ours:
        check_onnx_model(model)
    with pytest.raises(Exception) as theirs:
        run_ort(model, x_width)
    ours, theirs = str(ours.value), " ".join(str(theirs.value).split())
    assert ours.startswith(f"edgepack {op} node 'node"), ours
    assert ours in theirs, (ours, theirs)  # word for word the library's message


def test_counts_and_the_fallback_gap(capsys):
    """How many invalid sets plain ORT (the fallback functions) would run without a word."""
    ran = []
    for case, (op, attrs, weights, x_width) in INVALID.items():
        model = build(op, attrs, weights, x_width, functions=True)
        try:
            with np.errstate(all="ignore"):
                run_ort(model, x_width, use_kernels=False)
            ran.append(case)
        except Exception:
            pass
    with capsys.disabled():
        print(f"\nai.edgepack attribute sets: {len(INVALID)} invalid refused by the validator and "
              f"libedgepack_ort, {len(VALID)} valid accepted by both; the fallback functions alone "
              f"ran {len(ran)} of the invalid ones: {', '.join(ran)}")
    assert len(ran) > 0  # the gap the validator closes is real


def test_export_runs_the_validator_on_the_fallback_math():
    """Valid sets: the library and the fallback functions compute the same thing."""
    for case in ("hw-k3", "hm-stream-k2", "circ", "ldr"):
        op, attrs, weights, x_width = VALID[case]
        model = build(op, attrs, weights, x_width, functions=True)
        feeds = {"X": w(2, x_width)} if x_width is not None else {}
        kernels = onnx_session(model.SerializeToString(), decode_at_load=False).run(None, feeds)[0]
        so = ort.SessionOptions()
        fallback = ort.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(kernels, fallback, rtol=1e-4, atol=1e-4)


def test_inspect_refuses_an_invalid_node(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS")
    op, attrs, weights, x_width = INVALID["hw-shape-zero"]
    path = tmp_path / "bad.onnx"
    onnx.save(build(op, attrs, weights, x_width, functions=True), path)
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgepack inspect: error: edgepack HashedWeight node 'node0': attribute 'shape' dim 0 = 0; "
        "every dim must be in [1, 4294967295], with the product of the dims after the first < 2^32")
    # the 227-byte bomb: shape [2, 2^29]
    op, attrs, weights, x_width = hashed_weight(shape=(2, 2**29))
    onnx.save(build(op, attrs, weights, x_width, functions=True), path)
    assert main(["inspect", str(path)]) == 2
    assert "shape [2, 536870912] would decode 1073741824 virtual weights, above the limit of " \
           "268435456 per node" in capsys.readouterr().err
    assert main(["inspect", str(path), "--max-virtual-weights", str(2**30)]) == 2
    assert "needs 4294967296 bytes, above the limit of 60000" in capsys.readouterr().err
    assert main(["inspect", str(path), "--max-virtual-weights", str(2**30),
                 "--max-decoded-bytes", str(2**33)]) == 0
    try:  # a bad flag value: argparse's one-line error and exit 2
        code = main(["inspect", str(path), "--max-virtual-weights", "lots"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "is not a positive decimal integer" in capsys.readouterr().err


def test_tflite_rules_use_the_delegate_limits(tmp_path, monkeypatch):
    """A converted file is checked with the delegate's rules (dims < 2^31, its wording)."""
    import torch

    from edgepack.compression import HashedLinear
    from edgepack.exporter import export

    torch.manual_seed(0)
    path = export(HashedLinear(12, 5, ratio=0.5), torch.randn(1, 12), tmp_path / "m.tflite")
    _, model = load_tflite(path)
    assert check_tflite_model(model) == 1
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "59")
    with pytest.raises(InvalidNodeError, match=r"in_features=12 x out_features=5 would decode 60 "
                                               r"virtual weights, above the limit of 59 per node"):
        check_tflite_model(model)


def tflite_options(attrs: dict) -> bytes:
    """The node's attributes as the FlexBuffers map a converted file carries (None: left out)."""
    from flatbuffers import flexbuffers

    b = flexbuffers.Builder()
    with b.Map():
        for key, value in attrs.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                kind = flexbuffers.Type.FLOAT if any(isinstance(v, float) for v in value) else flexbuffers.Type.INT
                b.Key(key)
                b.TypedVectorFromElements(list(value), kind)
            elif isinstance(value, float):
                b.Float(key, value)
            else:
                b.Int(key, value)
    return bytes(b.Finish())


def build_tflite(op, attrs, weights, x_width) -> bytes:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime_kernels"))
    import tflite_models as tm

    g = tm.Graph()
    ins = []
    if x_width is not None:
        ins.append(g.tensor("X", (2, x_width)))
        g.inputs.append(ins[0])
    for name in OP_INPUTS[op]:
        if name != "X":
            ins.append(-1 if weights.get(name) is None else g.const(name, weights[name]))
    while ins and ins[-1] == -1:
        ins.pop()
    y = g.tensor("Y", (1,))
    g.ops.append(tm.Op(f"ai.edgepack.{op}", ins, [y], tflite_options(attrs)))
    g.outputs = [y]
    return tm.build(g)


def run_delegate(path, x_width):
    from edgepack.runtime_kernels import tflite_interpreter

    interp = tflite_interpreter(path, max_virtual_weights=VIRTUAL, max_decoded_bytes=DECODED, decode_at_load=False)
    if x_width is not None:
        interp.set_tensor(interp.get_input_details()[0]["index"], w(2, x_width))
    interp.invoke()


TFLITE_SKIP = {"hw-shape-empty"}  # an empty typed vector cannot be written by the flexbuffers package


@pytest.mark.parametrize("case", [c for c in {**VALID, **INVALID} if c not in TFLITE_SKIP])
def test_tflite_rules_agree_with_the_delegate(case, tmp_path):
    op, attrs, weights, x_width = {**VALID, **INVALID}[case]
    if case == "hm-decoded-limit":
        attrs = {**attrs, "mode": None}
    path = tmp_path / "m.tflite"
    path.write_bytes(build_tflite(op, attrs, weights, x_width))
    _, model = load_tflite(path)
    if case in VALID:
        assert check_tflite_model(model) == 1
        run_delegate(path, x_width)
        return
    if case == "hm-decoded-limit":
        pytest.skip("needs 4 nodes; covered by the ONNX case")
    with pytest.raises(InvalidNodeError) as ours:
        check_tflite_model(model)
    with pytest.raises(Exception) as theirs:
        run_delegate(path, x_width)
    assert str(ours.value).startswith(f"edgepack {op} node #0 (output 'Y'): ")
    assert str(theirs.value).splitlines()[0] == str(ours.value)  # the delegate's words exactly


def _in_tflite_words(op: str, message: str) -> str:
    """The ORT message with the delegate's bound where the spec gives the attribute it names
    another range in TFLite (in_features, out_features, shape dims: < 2^31 there)."""
    named = re.search(r"attribute '(\w+)'", message)
    if named:
        spec = OPS[op].attribute(named.group(1))
        (_, ort_hi), (_, tflite_hi) = spec.valid("ort"), spec.valid("tflite")
        if ort_hi != tflite_hi:
            message = message.replace(f"{ort_hi}]", f"{tflite_hi}]").replace(f"..{ort_hi})", f"..{tflite_hi})")
    return message


@pytest.mark.parametrize("case", [c for c in INVALID if c not in TFLITE_SKIP | {"hm-decoded-limit"}])
def test_one_table_gets_the_same_message_in_both_runtimes(case, tmp_path):
    """src/ops.c words every bad set once: the real ORT library and the real delegate refuse it with
    the same text after their node label, the range bound of ops.inc's runtime column aside."""
    op, attrs, weights, x_width = INVALID[case]
    with pytest.raises(Exception) as in_ort:
        run_ort(build(op, attrs, weights, x_width), x_width)
    ort_text = " ".join(str(in_ort.value).split())
    ort_label = f"edgepack {op} node 'node0': "
    assert ort_label in ort_text, ort_text
    ort_message = ort_text.split(ort_label, 1)[1]
    path = tmp_path / "m.tflite"
    path.write_bytes(build_tflite(op, attrs, weights, x_width))
    with pytest.raises(Exception) as in_tflite:
        run_delegate(path, x_width)
    tflite_line = str(in_tflite.value).splitlines()[0]
    tflite_label = f"edgepack {op} node #0 (output 'Y'): "
    assert tflite_line.startswith(tflite_label), tflite_line
    tflite_message = tflite_line[len(tflite_label):]
    assert _in_tflite_words(op, ort_message) == tflite_message, (ort_message, tflite_message)


def test_convert_applies_the_delegate_rules(tmp_path, capsys, monkeypatch):
    """in_features = 2^31 is valid for the ORT library (u32) but not for the delegate (int32 dims)."""
    monkeypatch.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", str(2**40))
    op, attrs, weights, _ = hashed_matmul(in_f=2**31, mode=1)
    model = build(op, attrs, weights, None)
    model.graph.input.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "K"]))
    model.functions.append(FUNCTIONS[op]())
    assert check_onnx_model(model) == 1
    path = tmp_path / "wide.onnx"
    onnx.save(model, path)
    assert main(["convert", str(path), "-o", str(tmp_path / "wide.tflite")]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgepack convert: error: edgepack HashedMatMul node 'node0': attribute 'in_features' = "
        "2147483648; must be in [1, 2147483647]")
    assert not (tmp_path / "wide.tflite").exists()


def test_tflite_constant_whose_buffer_does_not_match_its_shape(tmp_path):
    """The delegate refuses a constant whose buffer is longer than its shape says; so does inspect."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime_kernels"))
    import tflite_models as tm

    g = tm.Graph()
    buckets = g.tensor("buckets", (10,), w(11))  # 44 bytes behind a shape of 10 floats
    y = g.tensor("Y", (1,))
    g.ops.append(tm.Op("ai.edgepack.HashedWeight", [buckets], [y],
                       tflite_options({"shape": [6, 5], "num_hashes": 1, "seed": 7})))
    g.outputs = [y]
    path = tmp_path / "m.tflite"
    path.write_bytes(tm.build(g))
    with pytest.raises(InvalidNodeError) as ours:
        check_tflite_model(load_tflite(path)[1])
    assert str(ours.value) == ("edgepack HashedWeight node #0 (output 'Y'): input 'buckets' (tensor 0, "
                               "kTfLiteMmapRo) holds 44 bytes; its shape [10] needs exactly 40")
    with pytest.raises(Exception) as theirs:
        run_delegate(path, None)
    assert str(theirs.value).splitlines()[0] == str(ours.value)


def test_convert_writes_only_the_attributes_the_kernels_read(tmp_path):
    """Extra attributes (ignored by ORT) used to go into the options map: a string one crashed convert
    with flexbuffers' RuntimeError, a float one was truncated to an int."""
    import tflite
    from flatbuffers import flexbuffers

    from edgepack.exporter import convert_onnx_to_tflite

    op, attrs, weights, x_width = hashed_matmul(note="hello", gain=2.7)
    model = build(op, attrs, weights, x_width, functions=True)
    path = convert_onnx_to_tflite(model, tmp_path / "m.tflite")  # verified against ORT
    flat = tflite.Model.GetRootAs(path.read_bytes(), 0)
    options = flexbuffers.Loads(bytes(flat.Subgraphs(0).Operators(0).CustomOptionsAsNumpy()))
    assert options == {"in_features": 5, "out_features": 6, "num_hashes": 1, "seed": 7, "signed": 1, "mode": 0,
                       "activation": 0}


def test_inspect_counts_external_data_without_reading_it(tmp_path, capsys, monkeypatch):
    """`inspect` used to report the .onnx alone as the size on disk, and loaded the data to do it."""
    import onnx.external_data_helper

    op, attrs, weights, x_width = hashed_matmul(buckets=w(4000))
    model = build(op, attrs, weights, x_width, functions=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    total = path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    assert (tmp_path / "m.onnx.data").stat().st_size >= 16_000

    def no_loading(*args, **kwargs):
        raise AssertionError("inspect read the external data")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", no_loading)
    monkeypatch.setattr(onnx, "load_external_data_for_model", no_loading)  # what onnx.load calls
    assert main(["inspect", str(path)]) == 0
    assert f"{total:,} bytes on disk" in capsys.readouterr().out
    (tmp_path / "m.onnx.data").unlink()
    assert main(["inspect", str(path)]) == 2
    assert "keeps its data in 'm.onnx.data', but" in capsys.readouterr().err


def test_symbolic_codebook_lengths_are_left_to_the_kernels():
    """CodebookWeight / SparseCodebookMatMul inputs fed at run time with symbolic (-1) lengths pass the
    validator (the kernels check the fed lengths), and the node then runs in ORT."""
    codebook = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    indices = np.array([0b11100100, 0b00011011, 0b01010101], np.uint8)  # 12 entries of 2 bits
    fed = {"codebook": (TensorProto.FLOAT, codebook), "indices": (TensorProto.UINT8, indices)}
    node = helper.make_node("CodebookWeight", list(fed), ["Y"], domain=DOMAIN, name="n", shape=[3, 4], bits=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(name, dtype, [f"len_{name}"])
                                            for name, (dtype, _) in fed.items()],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 10
    model.functions.append(FUNCTIONS["CodebookWeight"]())
    assert check_onnx_model(model, "test") == 1
    got = onnx_session(model.SerializeToString(), decode_at_load=False).run(None, {n: v for n, (_, v) in fed.items()})
    index = (np.unpackbits(indices, bitorder="little").reshape(-1, 2) * [1, 2]).sum(axis=1)
    assert np.array_equal(got[0], codebook[index].reshape(3, 4))
