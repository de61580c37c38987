"""HyperWeight (docs/ops.md) in C: the decode kernel under every variant, the ORT library and the
LiteRT delegate on hand-built one-node models, and the C decoders at load (tflite/decode_model.c,
ort/decode_model.c through the native runner), each equal bit for bit to a numpy decoder written
here from the op contract (and to edgepack.compression.hyper.decode_hyper); every bad input of the
contract refused with the same words by ORT and the delegate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_codebook_ops import _check_both, run_ort, run_tflite, tflite_decoded_and_not

from edgepack.exporter.fallbacks import STANDARD_OPSET
from edgepack.runtime_kernels import KernelError, hyper_decode, onnx_session, tflite_interpreter, use_variant, variants
from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION

tm = pytest.importorskip("tflite_models")
RNG = np.random.default_rng(14)
F = np.float32


# ---- the contract in numpy -------------------------------------------------------------------------

def pack(idx, bits: int) -> np.ndarray:
    """Indices of ``bits`` bits as one LSB-first bit stream: ceil(g·bits/8) bytes."""
    stream = ((np.asarray(idx, np.int64)[:, None] >> np.arange(bits)) & 1).ravel()
    stream = np.concatenate([stream, np.zeros(-len(stream) % 8, np.int64)])
    return (stream.reshape(-1, 8) << np.arange(8)).sum(axis=1).astype(np.uint8)


def reference(w: dict) -> np.ndarray:
    """The decode of the contract, one float32 operation at a time (numpy never fuses)."""
    n, k, rings, bits, V = w["points"], w["group"], w["rings"], w["bits"], math.prod(w["shape"])
    g = -(-V // k)
    stream = (w["indices"][:, None].astype(np.int64) >> np.arange(8)) & 1
    idx = (stream.ravel()[: g * bits].reshape(g, bits) << np.arange(bits)).sum(axis=1)
    t = next(t for t in range(1, n + 1) if t**k >= n)
    c, L = w["center"].astype(F), F(w["side"][0])
    half = F(L * F(0.5))
    corner = (c - half).astype(F)
    step = np.array([F(L / F(t ** (k - j))) for j in range(k)], F)
    r, q = idx // (n + 1), idx % (n + 1)
    theta = np.maximum(q - 1, 0).astype(F)
    p = np.where((q == 0)[:, None], c, np.fmod(theta[:, None] * step, L) + corner).astype(F)
    if rings:
        s = np.concatenate([[F(1)], w["scales"]]).astype(F)[r][:, None]
        p = np.where((r == 0)[:, None], p, (p - c) * s + c).astype(F)
    return p.ravel()[:V].reshape(w["shape"])


def hyper(shape, points, group=2, rings=0, bits=None, side=1.5, fill=None) -> dict:
    """A HyperWeight of random indices (the largest one included) and its attributes."""
    limit = (rings + 1) * (points + 1)
    bits = bits or max(1, (limit - 1).bit_length())
    g = -(-math.prod(shape) // group)
    idx = RNG.integers(0, limit, g) if fill is None else np.full(g, fill)
    idx[g // 2] = limit - 1
    return {"indices": pack(idx, bits), "center": RNG.standard_normal(group).astype(F), "side": np.array([side], F),
            "scales": np.sort(RNG.uniform(1.1, 3.0, rings)).astype(F) if rings else None,
            "shape": tuple(shape), "points": points, "group": group, "rings": rings, "bits": bits}


def attrs_of(w: dict) -> dict:
    return {"shape": list(w["shape"]), **{a: w[a] for a in ("points", "group", "rings", "bits")}}


def inputs_of(w: dict) -> dict:
    return {n: w[n] for n in ("indices", "center", "side", "scales") if w[n] is not None}


def c_decode(w: dict) -> np.ndarray:
    return hyper_decode(w["indices"], w["center"], w["side"], w["scales"], **attrs_of(w))


# (shape, points, group, rings, bits): k 1..4, rings 0..15, odd bits, a padded last group, fewer
# groups than table points (computed per index) and more (the table gathered)
CASES = [((7, 13), 50, 2, 0, None), ((4, 3, 3, 3), 1000, 2, 3, None), ((301,), 3, 1, 0, None),
         ((33, 5), 17, 3, 2, 11), ((9, 31), 200, 4, 15, None), ((2, 2), 65536, 2, 15, 24), ((1,), 1, 1, 0, 1),
         ((64, 65), 1023, 2, 3, 12)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-n{c[1]}-k{c[2]}-R{c[3]}")
def case(request) -> tuple[dict, np.ndarray]:
    w = hyper(*request.param)
    return w, reference(w)


def test_the_numpy_reference_by_hand():
    """n = 3, k = 2, L = 2 around (0.5, 1): t = 2, steps (0.5, 1), corner (-0.5, 0)."""
    w = {"indices": pack([0, 1, 2, 3, 7], 3), "center": np.array([0.5, 1.0], F), "side": np.array([2.0], F),
         "scales": np.array([3.0], F), "shape": (9,), "points": 3, "group": 2, "rings": 1, "bits": 3}
    want = [0.5, 1.0, -0.5, 0.0, 0.0, 1.0, 0.5, 0.0, 0.5 + (0.5 - 0.5) * 3]  # index 7: ring 1, point 3
    assert reference(w).tolist() == want
    assert c_decode(w).tolist() == want


def test_c_kernel_equals_numpy_and_python_decoder(case):
    from edgepack.compression.hyper import decode_hyper

    w, want = case
    for name in variants():
        with use_variant(name):
            assert np.array_equal(c_decode(w), want, equal_nan=True), name
    python = decode_hyper(w["indices"], w["center"], w["side"], w["scales"], **attrs_of(w))
    assert np.array_equal(python, want)


def test_runtimes_equal_numpy(case, tmp_path):
    w, want = case
    for fed in ((), ("indices", "center")):
        assert np.array_equal(run_ort("HyperWeight", attrs_of(w), inputs_of(w), fed), want)
        assert np.array_equal(run_tflite("HyperWeight", attrs_of(w), inputs_of(w), tmp_path, fed), want)


# ---- decode at load in C ----------------------------------------------------------------------------

def hyper_fc_tflite(w: dict) -> bytes:
    """HyperWeight → FULLY_CONNECTED, the decoder's weight the FC's filter."""
    rows, cols = w["shape"]
    g = tm.Graph()
    x = g.tensor("X", (3, cols))
    weights = [g.const(name, value) for name, value in inputs_of(w).items()]
    W, y = g.tensor("W", (rows, cols)), g.tensor("Y", (3, rows))
    g.ops.append(tm.Op(f"{DOMAIN}.HyperWeight", weights, [W], tm.options(**attrs_of(w))))
    g.ops.append(tm.Op(tm.FULLY_CONNECTED, [x, W, -1], [y]))
    g.inputs, g.outputs = [x], [y]
    return tm.build(g)


def filter_of(data: bytes) -> np.ndarray:
    """The constant weight (input 1) of the first operator of a .tflite flatbuffer, as float32."""
    import tflite

    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    tensor = graph.Tensors(graph.Operators(0).Inputs(1))
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    return np.frombuffer(raw.tobytes(), "<f4").reshape(tensor.ShapeAsNumpy())


def test_tflite_c_decode_at_load(tmp_path):
    from test_decode_at_load import tflite_ops

    from edgepack.runtime_kernels import delegate_library_path
    from edgepack.runtime_kernels.tflite_runtime import _c_decoded

    w = hyper((6, 300), 300, 2, 3)
    path = tmp_path / "fc.tflite"
    path.write_bytes(hyper_fc_tflite(w))
    decoded = _c_decoded(delegate_library_path(), path, {})
    assert tflite_ops(decoded) == [tm.FULLY_CONNECTED]
    assert np.array_equal(filter_of(decoded), reference(w))  # the decoded constant, bit for bit
    X = RNG.standard_normal((3, 300)).astype(F)
    outputs = tflite_decoded_and_not(path, X)
    W = reference(w).astype(np.float64)
    np.testing.assert_allclose(outputs[0], X @ W.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    bad = {**w, "indices": pack(np.full(900, 4 * 301), w["bits"])}
    path.write_bytes(hyper_fc_tflite(bad))
    with pytest.raises(Exception, match=r"edgepack HyperWeight node #0 \(output 'W'\): input 'indices': group 0 has "
                                         r"index 1204; every index must be < \(rings\+1\)\*\(points\+1\) = 1204"):
        tflite_interpreter(path, decode_at_load="c")


def hyper_matmul_onnx(w: dict) -> bytes:
    """X [1, cols] · HyperWeight [cols, rows]."""
    cols, rows = w["shape"]
    names = list(inputs_of(w))
    nodes = [helper.make_node("HyperWeight", names, ["W"], domain=DOMAIN, name="hw", **attrs_of(w)),
             helper.make_node("MatMul", ["X", "W"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cols])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, rows])],
                              [numpy_helper.from_array(v, n) for n, v in inputs_of(w).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)]).SerializeToString()


def test_native_runner_decodes_hyper_weight(tmp_path):
    from test_native_decode import decoded_and_fused_outputs, native_libs, run

    w = hyper((40, 300), 500, 2, 2)
    path = tmp_path / "hw.onnx"
    path.write_bytes(hyper_matmul_onnx(w))
    outputs, X = decoded_and_fused_outputs(path)
    np.testing.assert_allclose(outputs[()], X.astype(np.float64) @ reference(w), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[()], outputs[("--keep-fused",)], rtol=1e-5, atol=1e-5)
    path.write_bytes(hyper_matmul_onnx({**w, "side": np.array([-1.0], F)}))
    done = run(native_libs(), path)
    assert done.returncode != 0 and "input 'side' is -1; must be finite and > 0" in done.stderr, done.stderr


# ---- bad input: one message in both runtimes ----------------------------------------------------------

def _good() -> dict:
    """12 weights, k = 2, n = 5, R = 1: 6 indices < 12 of 4 bits (3 bytes)."""
    return {"indices": pack([0, 1, 5, 6, 11, 3], 4), "center": np.array([0.1, -0.2], F), "side": np.array([1.0], F),
            "scales": np.array([2.0], F)}


GOOD_ATTRS = {"shape": [3, 4], "points": 5, "group": 2, "rings": 1, "bits": 4}
NAN, INF = F("nan"), F("inf")
TRAILING = pack([0, 1, 2, 3, 4, 5], 3) | np.array([0, 0, 0x80], np.uint8)  # 18 bits in 3 bytes: 6 spare
BAD = {  # name: (changed inputs (None: absent), attribute changes, the message after the node label)
    "index-out-of-range": ({"indices": pack([0, 1, 12, 6, 11, 3], 4)}, {},
                           "input 'indices': group 2 has index 12; every index must be < (rings+1)*(points+1) = 12"),
    "truncated": ({"indices": pack([0, 1, 5, 6], 4)}, {},
                  "input 'indices' has 2 bytes; 6 groups of 4 bits need ceil(6*4/8) = 3 (truncated packed indices)"),
    "too-long": ({"indices": pack([0, 1, 5, 6, 11, 3, 0, 0], 4)}, {},
                 "input 'indices' has 4 bytes; 6 groups of 4 bits need ceil(6*4/8) = 3 (more bytes than the packed "
                 "indices)"),
    "trailing-bits": ({"indices": TRAILING, "scales": None}, {"bits": 3, "rings": 0},
                      f"input 'indices': the unused high bits of its last byte (byte 2 = 0x{TRAILING[2]:02x}) must be "
                      "0 (6 groups of 3 bits)"),
    "indices-dtype": ({"indices": np.array([1, 2, 3], np.int32)}, {}, "input 'indices' has element type int32; must "
                      "be uint8"),
    "center-dtype": ({"center": np.array([1, 2], np.int32)}, {}, "input 'center' has element type int32; must be "
                     "float32"),
    "center-length": ({"center": np.array([0.1, -0.2, 0.3], F)}, {}, "input 'center' has 3 values; must be [group] "
                      "= [2]"),
    "center-nan": ({"center": np.array([0.1, NAN], F)}, {}, "input 'center': value 1 is nan; must be finite"),
    "center-rank": ({"center": np.zeros((1, 2), F)}, {}, "input 'center' has shape [1, 2]; must be 1-D"),
    "side-shape": ({"side": np.array([1.0, 2.0], F)}, {}, "input 'side' has 2 values; must be [1]"),
    "side-zero": ({"side": np.array([0.0], F)}, {}, "input 'side' is 0; must be finite and > 0"),
    "side-inf": ({"side": np.array([INF], F)}, {}, "input 'side' is inf; must be finite and > 0"),
    "side-times-points": ({"side": np.array([1e38], F)}, {}, "input 'side' is 1e+38; side*points overflows float32 "
                          "(must be <= 6.80565e+37 for 5 points)"),
    "scales-empty-with-rings": ({"scales": np.zeros(0, F)}, {}, "input 'scales' is missing; rings = 1 needs [rings] "
                                "= [1] expansion factors"),
    "scales-missing": ({"scales": None}, {}, "input 'scales' is missing; rings = 1 needs [rings] = [1] expansion "
                       "factors"),
    "scales-present": ({}, {"rings": 0, "bits": 3},
                       "input 'scales' is given but rings = 0; it must be absent when rings = 0"),
    "scales-length": ({"scales": np.array([2.0, 3.0], F)}, {}, "input 'scales' has 2 values; must be [rings] = [1]"),
    "scales-negative": ({"scales": np.array([-2.0], F)}, {}, "input 'scales': value 0 is -2; must be finite and > 0"),
    "scales-nan": ({"scales": np.array([NAN], F)}, {}, "input 'scales': value 0 is nan; must be finite and > 0"),
    "points-zero": ({}, {"points": 0}, "attribute 'points' = 0; must be in [1, 65536]"),
    "points-over": ({}, {"points": 65537}, "attribute 'points' = 65537; must be in [1, 65536]"),
    "group-over": ({}, {"group": 5}, "attribute 'group' = 5; must be in [1, 4]"),
    "rings-over": ({}, {"rings": 16}, "attribute 'rings' = 16; must be in [0, 15]"),
    "bits-over": ({}, {"bits": 25}, "attribute 'bits' = 25; must be in [1, 24]"),
    "bits-zero": ({}, {"bits": 0}, "attribute 'bits' = 0; must be in [1, 24]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_one_message(case, tmp_path):
    changed, attr_changes, want = BAD[case]
    inputs = {k: v for k, v in {**_good(), **changed}.items() if v is not None}
    fed = ("indices", "center") if case in ("index-out-of-range", "center-nan") else ()
    _check_both("HyperWeight", {**GOOD_ATTRS, **attr_changes}, inputs, want, tmp_path, fed)


def test_decoded_size_over_the_limit(tmp_path):
    """A [20, 20] weight under a limit of 100 virtual weights: refused in both runtimes when the
    session / interpreter is made, before the decode allocates."""
    from test_codebook_ops import onnx_model, tflite_model

    w = hyper((20, 20), 30, 2, 1)
    want = r"HyperWeight node .*: shape \[20, 20\] would decode 400 virtual weights, above the limit of 100"
    with pytest.raises(Exception, match=want):
        model = onnx_model("HyperWeight", attrs_of(w), inputs_of(w))
        onnx_session(model, decode_at_load=False, max_virtual_weights=100)
    path = tmp_path / "big.tflite"
    path.write_bytes(tflite_model("HyperWeight", attrs_of(w), inputs_of(w)))
    with pytest.raises(Exception, match=want):
        tflite_interpreter(path, decode_at_load=False, max_virtual_weights=100).allocate_tensors()


def test_empty_scales_with_no_rings_is_absent(tmp_path):
    """A zero-length scales counts as absent (docs/ops.md): ORT, the delegate and the wrapper decode
    as without it."""
    w = hyper((3, 4), 5, 2, 0)
    inputs = {**inputs_of(w), "scales": np.zeros(0, F)}
    want = reference(w)
    assert np.array_equal(run_ort("HyperWeight", attrs_of(w), inputs), want)
    assert np.array_equal(run_tflite("HyperWeight", attrs_of(w), inputs, tmp_path), want)
    assert np.array_equal(hyper_decode(w["indices"], w["center"], w["side"], np.zeros(0, F), **attrs_of(w)), want)


def test_numpy_wrapper_refuses_bad_input():
    w = hyper((5, 5), 7, 2, 0)
    with pytest.raises(KernelError, match=r"input 'indices' has dtype int64; must be a uint8 numpy array"):
        hyper_decode(np.array([0, 300]), w["center"], w["side"], None, **attrs_of(w))
    with pytest.raises(KernelError, match=r"input 'center' has dtype float64; must be a float32 numpy array"):
        hyper_decode(w["indices"], w["center"].astype(np.float64), w["side"], None, **attrs_of(w))
    with pytest.raises(KernelError, match=r"input 'side' has dtype list"):
        hyper_decode(w["indices"], w["center"], [1.5], None, **attrs_of(w))
    with pytest.raises(KernelError, match=r"attribute 'points' = 4294967303; must be an int32"):
        hyper_decode(w["indices"], w["center"], w["side"], None, **{**attrs_of(w), "points": 7 + 2**32})
    with pytest.raises(KernelError, match=r"attribute 'group' = 2.0; must be an int32"):
        hyper_decode(w["indices"], w["center"], w["side"], None, **{**attrs_of(w), "group": 2.0})
    with pytest.raises(KernelError, match=r"input 'side' is -2; must be finite and > 0"):
        hyper_decode(w["indices"], w["center"], np.array([-2.0], F), None, **attrs_of(w))
