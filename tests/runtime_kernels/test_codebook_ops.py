"""CodebookWeight and SparseCodebookMatMul (docs/ops.md) in both real runtimes, the ORT library and
the LiteRT delegate, on hand-built one-node models: against a small numpy encoder / decoder written
here from the op contract, and every bad input of the contract refused with the same words. Then the
C decoders at load (tflite/decode_model.c, ort/decode_model.c through the native runner)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.exporter.fallbacks import STANDARD_OPSET
from edgepack.runtime_kernels import onnx_session, tflite_interpreter
from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION

tm = pytest.importorskip("tflite_models")
RNG = np.random.default_rng(13)


# ---- the contract in numpy -------------------------------------------------------------------

def pack(idx: np.ndarray, bits: int) -> np.ndarray:
    """n indices of ``bits`` bits, LSB first, into ceil(n·bits/8) bytes."""
    out = np.zeros((len(idx) * bits + 7) // 8, np.uint8)
    for k, i in enumerate(idx.astype(np.int64)):
        out[k * bits // 8] |= np.uint8(i << (k * bits % 8))
    return out


def encode(W: np.ndarray, sparse: bool, bits: int) -> dict:
    """A codebook weight of W (its few distinct values); sparse: CSR with gaps, fillers over 255."""
    values = np.unique(W)
    if not sparse:
        return {"codebook": values.astype(np.float32),
                "indices": pack(np.searchsorted(values, W.ravel()), bits)}
    codebook = np.concatenate([[0.0], values[values != 0]]).astype(np.float32)
    rows = W.reshape(W.shape[0], -1)
    idx, gaps, row_ptr = [], [], [0]
    for row in rows:
        last = -1
        for col in np.flatnonzero(row):
            gap = col - last
            while gap > 255:
                idx.append(0)
                gaps.append(255)
                gap -= 255
            idx.append(int(np.searchsorted(codebook[1:], row[col])) + 1)
            gaps.append(gap)
            last = col
        row_ptr.append(len(idx))
    return {"codebook": codebook, "indices": pack(np.array(idx, np.int64), bits),
            "row_ptr": np.array(row_ptr, np.int32), "col_gaps": np.array(gaps, np.uint8)}


def decode(shape, w: dict, bits: int) -> np.ndarray:
    """The reference decoder, straight from the contract."""
    packed, n = w["indices"], int(np.prod(shape)) if "row_ptr" not in w else len(w["col_gaps"])
    idx = [(int(packed[k * bits // 8]) >> (k * bits % 8)) & ((1 << bits) - 1) for k in range(n)]
    if "row_ptr" not in w:
        return w["codebook"][np.array(idx, np.int64)].reshape(shape)
    W = np.zeros((shape[0], int(np.prod(shape[1:]))), np.float32)
    for r in range(shape[0]):
        col = -1
        for m in range(w["row_ptr"][r], w["row_ptr"][r + 1]):
            col += int(w["col_gaps"][m])
            W[r, col] = w["codebook"][idx[m]]
    return W.reshape(shape)


def random_weight(rows: int, cols: int, density: float, values: int) -> np.ndarray:
    """rows × cols with about ``density`` non-zeros drawn from ``values`` distinct non-zero floats."""
    table = RNG.uniform(0.1, 1.0, values).astype(np.float32) * RNG.choice([-1, 1], values)
    W = table[RNG.integers(0, values, (rows, cols))]
    return np.where(RNG.random((rows, cols)) < density, W, 0).astype(np.float32)


# ---- one-node models ---------------------------------------------------------------------------

def onnx_model(op: str, attrs: dict, inputs: dict, fed: tuple = ()) -> bytes:
    """One node named 'n'; X and the ``fed`` inputs are graph inputs, the rest initializers."""
    names = [n if inputs.get(n) is not None else "" for n in OPS[op].input_names]
    while names and not names[-1]:
        names.pop()
    runtime = [n for n in names if n and (n == "X" or n in fed)]
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inputs[n].dtype),
                                                  inputs[n].shape) for n in runtime]
    inits = [numpy_helper.from_array(inputs[n], n) for n in names if n and n not in runtime]
    node = helper.make_node(op, names, ["Y"], domain=DOMAIN, name="n", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    return model.SerializeToString()


def tflite_model(op: str, attrs: dict, inputs: dict, fed: tuple = ()) -> bytes:
    """The same node as a CUSTOM op with FlexBuffers options."""
    return tm.fed_op(op, OPS[op].input_names, attrs, inputs, {"X", *fed})


def run_ort(op, attrs, inputs, fed=()):
    session = onnx_session(onnx_model(op, attrs, inputs, fed), decode_at_load=False)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: inputs[n] for n in names})[0]


def tflite_decoded_and_not(path, X: np.ndarray) -> list[np.ndarray]:
    """A one-input TFLite model's output on X, decoded at load by the C decoder and then left to the
    delegate's kernels (in that order)."""
    outputs = []
    for mode in ("c", False):
        interp = tflite_interpreter(path, decode_at_load=mode)
        interp.set_tensor(interp.get_input_details()[0]["index"], X)
        interp.invoke()
        outputs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    return outputs


def run_tflite(op, attrs, inputs, tmp_path, fed=()):
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_model(op, attrs, inputs, fed))
    interp = tflite_interpreter(path, decode_at_load=False)
    for d in interp.get_input_details():
        interp.resize_tensor_input(d["index"], inputs[d["name"]].shape)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], inputs[d["name"]])
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def linear(X, W, bias=None, scale=None, activation=0):
    Y = X.astype(np.float64) @ W.astype(np.float64).T
    Y = Y * (scale if scale is not None else 1) + (bias if bias is not None else 0)
    return np.clip(Y, 0, 6 if activation == 2 else None) if activation else Y


# ---- results -------------------------------------------------------------------------------------

# (rows, cols, density, distinct values, bits, batch)
MATMUL_CASES = [(7, 13, 0.3, 3, 2, (2,)), (16, 300, 0.05, 15, 4, (3, 5)), (9, 600, 0.01, 1, 1, (1,)),
                (33, 20, 1.0, 200, 8, (70,)), (5, 9, 0.0, 1, 1, (4,))]


@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: f"{c[0]}x{c[1]}-d{c[2]}-b{c[4]}")
@pytest.mark.parametrize("fed", [(), ("codebook", "indices", "row_ptr", "col_gaps")], ids=["const", "fed"])
def test_sparse_matmul_equals_dense_math(case, fed, tmp_path):
    rows, cols, density, values, bits, batch = case
    W = random_weight(rows, cols, density, values)
    w = encode(W, True, bits)
    assert np.array_equal(decode(W.shape, w, bits), W)  # the encoder here is sound
    X = RNG.standard_normal((*batch, cols)).astype(np.float32)
    bias, scale = RNG.standard_normal(rows).astype(np.float32), RNG.uniform(0.5, 2, rows).astype(np.float32)
    attrs = {"in_features": cols, "out_features": rows, "bits": bits, "activation": 2}
    inputs = {"X": X, **w, "bias": bias, "scale": scale}
    want = linear(X, W, bias, scale, 2)
    np.testing.assert_allclose(run_ort("SparseCodebookMatMul", attrs, inputs, fed), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run_tflite("SparseCodebookMatMul", attrs, inputs, tmp_path, fed), want, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codebook_weight_decodes_bit_for_bit(sparse, bits, tmp_path):
    shape = (4, 3, 3, 30)  # a conv weight: rows 4, cols 270 (gaps over 255 need fillers when sparse)
    values = min(2 ** bits - (1 if sparse else 0), 9)
    W = random_weight(shape[0], int(np.prod(shape[1:])), 0.02 if sparse else 1.0, values).reshape(shape)
    if sparse:
        W[1] = 0
        W[2] = 0
        W[2, 0, 0, 0] = W[2, -1, -1, -1] = W[W != 0][0] if W.any() else 0.5  # a gap over 255 in row 2
    w = encode(W, sparse, bits)
    assert len(w["codebook"]) <= 2 ** bits
    attrs = {"shape": list(shape), "bits": bits}
    assert np.array_equal(run_ort("CodebookWeight", attrs, w), W)
    assert np.array_equal(run_tflite("CodebookWeight", attrs, w, tmp_path), W)


# ---- bad input: one message in both runtimes --------------------------------------------------

def _good():
    W = np.array([[0, 0.5, 0, -1], [0, 0, 0, 0], [2, 0, 0, 0.5]], np.float32)
    return encode(W, True, 2)  # codebook [0, -1, 0.5, 2], 4 entries: indices one byte


SMM = {"in_features": 4, "out_features": 3, "bits": 2}
BAD = {  # name: (changed inputs, attribute changes, the message after the node label)
    "index-over-codebook": ({"codebook": np.array([0, -1, 0.5], np.float32)}, {},
                            "input 'indices': entry 2 is index 3, but the codebook has 3 values; every index must be "
                            "< 3"),
    "row-ptr-decreasing": ({"row_ptr": np.array([0, 3, 2, 4], np.int32)}, {},
                           "input 'row_ptr' decreases at row 1: row_ptr[1] = 3 > row_ptr[2] = 2; row pointers must "
                           "never decrease"),
    "row-ptr-start": ({"row_ptr": np.array([1, 2, 2, 4], np.int32)}, {},
                      "input 'row_ptr' starts at 1; must start at 0"),
    "row-ptr-end": ({"row_ptr": np.array([0, 2, 2, 3], np.int32)}, {},
                    "input 'row_ptr' ends at 3; must end at n = 4, the length of 'col_gaps' (an nnz that disagrees "
                    "with the entries)"),
    "row-ptr-length": ({"row_ptr": np.array([0, 2, 4], np.int32)}, {},
                       "input 'row_ptr' has 3 values; must have rows+1 = 4"),
    "nnz-vs-indices": ({"indices": np.array([1, 2], np.uint8)}, {},
                       "input 'indices' has 2 bytes; 4 entries of 2 bits need ceil(4*2/8) = 1 (an nnz that disagrees "
                       "with the indices)"),
    "high-bits": ({"col_gaps": np.array([2, 2, 1], np.uint8), "row_ptr": np.array([0, 2, 2, 3], np.int32)}, {},
                  "input 'indices': the unused high bits of its last byte (byte 0 = 0xb6) must be 0 (3 entries of 2 "
                  "bits)"),
    "gap-zero": ({"col_gaps": np.array([2, 0, 1, 4], np.uint8)}, {},
                 "input 'col_gaps': entry 1 (row 0) is 0; every gap must be >= 1"),
    "column-past-cols": ({"col_gaps": np.array([2, 3, 1, 4], np.uint8)}, {},
                         "input 'col_gaps': entry 1 puts row 0 at column 4; columns must be < cols = 4"),
    "codebook-dtype": ({"codebook": np.array([0, -1, 0.5, 2], np.int32)}, {},
                       "input 'codebook' has element type int32; must be float32"),
    "indices-dtype": ({"indices": np.array([0x9e], np.int32)}, {},
                      "input 'indices' has element type int32; must be uint8"),
    "row-ptr-dtype": ({"row_ptr": np.array([0, 2, 2, 4], np.float32)}, {},
                      "input 'row_ptr' has element type float32; must be int32"),
    "codebook-empty": ({"codebook": np.zeros(0, np.float32)}, {}, "input 'codebook' has 0 values; must have 1..256"),
    "codebook-too-long": ({"codebook": np.zeros(257, np.float32)}, {},
                          "input 'codebook' has 257 values; must have 1..256"),
    "bits-not-pow2": ({}, {"bits": 3}, "attribute 'bits' = 3; must be 1, 2, 4 or 8"),
    "codebook-rank": ({"codebook": np.zeros((2, 2), np.float32)}, {}, "input 'codebook' has shape [2, 2]; must be 1-D"),
}


def _message(run, label):
    with pytest.raises(Exception) as e:
        run()
    text = " ".join(str(e.value).split())
    assert label in text, text
    return text.split(label, 1)[1]


def _check_both(op, attrs, inputs, want, tmp_path, fed=()):
    got_ort = _message(lambda: run_ort(op, attrs, inputs, fed), f"edgepack {op} node 'n': ")
    got_tflite = _message(lambda: run_tflite(op, attrs, inputs, tmp_path, fed), f"edgepack {op} node #0 (output 'Y'): ")
    assert got_ort.startswith(want), got_ort
    assert got_tflite.startswith(want), got_tflite


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sparse_matmul_inputs(case, tmp_path):
    changed, attr_changes, want = BAD[case]
    inputs = {"X": RNG.standard_normal((2, 4)).astype(np.float32), **_good(), **changed}
    _check_both("SparseCodebookMatMul", {**SMM, **attr_changes}, inputs, want, tmp_path)


@pytest.mark.parametrize("case", ["index-over-codebook", "row-ptr-decreasing", "nnz-vs-indices", "codebook-dtype"])
def test_bad_codebook_weight_inputs_constant_and_fed(case, tmp_path):
    """The acceptance's four cases through the decoder, with the weights constant and fed at run time."""
    changed, _, want = BAD[case]
    inputs = {**_good(), **changed}
    for fed in ((), ("indices", "row_ptr")):
        _check_both("CodebookWeight", {"shape": [3, 4], "bits": 2}, inputs, want, tmp_path, fed)


def test_only_one_of_row_ptr_and_col_gaps(tmp_path):
    w = _good()
    inputs = {"codebook": w["codebook"], "indices": w["indices"], "row_ptr": w["row_ptr"]}
    _check_both("CodebookWeight", {"shape": [3, 4], "bits": 2}, inputs,
                "only one of 'row_ptr' / 'col_gaps' is given; the sparse form needs both, the dense form neither",
                tmp_path)


# ---- decode at load in C (tflite/decode_model.c) -------------------------------------------------

def codebook_fc_model(w: dict, rows: int, cols: int, bits: int) -> bytes:
    """CodebookWeight → FULLY_CONNECTED, the decoder's weight the FC's filter."""
    g = tm.Graph()
    x = g.tensor("X", (3, cols))
    weights = [g.const(name, w[name]) for name in OPS["CodebookWeight"].input_names if name in w]
    W, y = g.tensor("W", (rows, cols)), g.tensor("Y", (3, rows))
    g.ops.append(tm.Op(f"{DOMAIN}.CodebookWeight", weights, [W], tm.options(shape=[rows, cols], bits=bits)))
    g.ops.append(tm.Op(tm.FULLY_CONNECTED, [x, W, -1], [y]))
    g.inputs, g.outputs = [x], [y]
    return tm.build(g)


@pytest.mark.parametrize("sparse", [False, True])
def test_c_decode_at_load(sparse, tmp_path):
    """The C decoder removes the node, its output becomes the FC's constant filter: the same output
    as the delegate's kernel and as numpy."""
    from test_decode_at_load import tflite_ops

    from edgepack.runtime_kernels import delegate_library_path
    from edgepack.runtime_kernels.tflite_runtime import _c_decoded

    W = random_weight(6, 300, 0.1 if sparse else 1.0, 7)
    path = tmp_path / "fc.tflite"
    path.write_bytes(codebook_fc_model(encode(W, sparse, 4), 6, 300, 4))
    assert tflite_ops(_c_decoded(delegate_library_path(), path, {})) == [tm.FULLY_CONNECTED]
    X = RNG.standard_normal((3, 300)).astype(np.float32)
    outputs = tflite_decoded_and_not(path, X)
    np.testing.assert_allclose(outputs[0], linear(X, W), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_fully_pruned_layer_is_decoded_at_load_in_c_and_python(tmp_path):
    """An all-zero layer has empty indices and col_gaps (count 0, no buffer): still constants, so
    both TFLite decoders replace the node, and the FC gives torch's zeros."""
    import torch
    from test_decode_at_load import tflite_ops

    from edgepack.runtime_kernels import delegate_library_path
    from edgepack.runtime_kernels.decode_tflite import decoded_tflite
    from edgepack.runtime_kernels.tflite_runtime import _c_decoded

    w = encode(np.zeros((7, 13), np.float32), True, 8)
    assert w["indices"].size == 0 and w["col_gaps"].size == 0
    path = tmp_path / "pruned.tflite"
    path.write_bytes(codebook_fc_model(w, 7, 13, 8))
    assert tflite_ops(_c_decoded(delegate_library_path(), path, {})) == [tm.FULLY_CONNECTED]
    assert tflite_ops(decoded_tflite(path)) == [tm.FULLY_CONNECTED]
    X = RNG.standard_normal((3, 13)).astype(np.float32)
    want = torch.nn.functional.linear(torch.from_numpy(X), torch.zeros(7, 13)).numpy()
    for mode in ("c", True):
        interp = tflite_interpreter(path, decode_at_load=mode)
        interp.set_tensor(interp.get_input_details()[0]["index"], X)
        interp.invoke()
        np.testing.assert_array_equal(interp.get_tensor(interp.get_output_details()[0]["index"]), want)


def test_c_decode_at_load_refuses_bad_contents_with_the_delegates_words(tmp_path):
    w = {**_good(), "row_ptr": np.array([0, 3, 2, 4], np.int32)}
    path = tmp_path / "bad.tflite"
    path.write_bytes(codebook_fc_model(w, 3, 4, 2))
    with pytest.raises(Exception, match=r"edgepack CodebookWeight node #0 \(output 'W'\): input 'row_ptr' decreases "
                                         r"at row 1"):
        tflite_interpreter(path, decode_at_load="c")


# ---- decode at load in the native ORT runner (ort/decode_model.c) -------------------------------

def codebook_matmul_onnx(w: dict, cols: int, rows: int, bits: int, raw: bool) -> bytes:
    """X [1, cols] · CodebookWeight [cols, rows]; ``raw``: raw_data initializers, else int32_data."""
    def init(name, value):
        if raw or value.dtype == np.float32:
            return numpy_helper.from_array(value, name)
        kind = helper.np_dtype_to_tensor_dtype(value.dtype)
        return helper.make_tensor(name, kind, value.shape, value.astype(np.int64).tolist())
    names = [n for n in OPS["CodebookWeight"].input_names if n in w]
    nodes = [helper.make_node("CodebookWeight", names, ["W"], domain=DOMAIN, name="cw", shape=[cols, rows], bits=bits),
             helper.make_node("MatMul", ["X", "W"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cols])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, rows])],
                              [init(n, w[n]) for n in names])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                   helper.make_opsetid(DOMAIN, OPSET_VERSION)]).SerializeToString()


@pytest.mark.parametrize("sparse, raw", [(True, True), (True, False), (False, True)])
def test_native_runner_decodes_codebook_weight(sparse, raw, tmp_path):
    from test_native_decode import decoded_and_fused_outputs

    W = random_weight(40, 300, 0.05 if sparse else 1.0, 9)  # [cols, rows] as MatMul reads it
    path = tmp_path / "cw.onnx"
    path.write_bytes(codebook_matmul_onnx(encode(W, sparse, 4), 40, 300, 4, raw))
    outputs, X = decoded_and_fused_outputs(path)
    np.testing.assert_allclose(outputs[()], linear(X, W.T), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[()], outputs[("--keep-fused",)], rtol=1e-5, atol=1e-5)


# ---- the numpy wrappers (runtime_kernels/kernels.py) ---------------------------------------------

def test_numpy_wrappers_against_the_reference():
    from edgepack.runtime_kernels import KernelError, codebook_decode, sparse_codebook_matmul, use_variant, variants

    W = random_weight(11, 700, 0.03, 5)  # gaps over 255: fillers
    for sparse in (False, True):
        w = encode(W, sparse, 4)
        assert np.array_equal(codebook_decode(W.shape, bits=4, **w), W)
    w = encode(W, True, 4)
    X = RNG.standard_normal((2, 70, 700)).astype(np.float32)  # 140 rows: blocks of 64 and a tail
    bias = RNG.standard_normal(11).astype(np.float32)
    for name in variants():
        with use_variant(name):
            got = sparse_codebook_matmul(X, w["codebook"], w["indices"], w["row_ptr"], w["col_gaps"], 11, 4, bias)
            np.testing.assert_allclose(got, linear(X, W, bias), rtol=1e-4, atol=1e-4)
    with pytest.raises(KernelError, match="input 'row_ptr' starts at [0-9]+; must start at 0"):
        codebook_decode(W.shape, w["codebook"], w["indices"], w["row_ptr"][::-1], w["col_gaps"], bits=4)


@pytest.mark.parametrize("field, value, words", [
    ("indices", [257], r"input 'indices' has values in \[257, 257\]; every value must be in \[0, 255\]"),
    ("col_gaps", [-255], r"input 'col_gaps' has values in \[-255, -255\]; every value must be in \[0, 255\]"),
    ("row_ptr", [0, 2**32], r"input 'row_ptr' has values in \[0, 4294967296\]; every value must be in "
                            r"\[-2147483648, 2147483647\]"),
    ("indices", [1.5], r"input 'indices' has dtype float64; must be integers"),
])
def test_numpy_wrappers_refuse_values_a_cast_would_wrap(field, value, words):
    """257 cast to uint8 is 1, 2**32 to int32 is 0: each would decode to a valid, wrong weight."""
    from edgepack.runtime_kernels import KernelError, codebook_decode

    w = {"codebook": np.array([0.0, 2.0], np.float32), "indices": np.array([1], np.uint8),
         "row_ptr": np.array([0, 1], np.int32), "col_gaps": np.array([1], np.uint8)}
    w[field] = np.array(value)
    with pytest.raises(KernelError, match=words):
        codebook_decode((1, 2), bits=8, **w)
