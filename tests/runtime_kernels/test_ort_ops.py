"""libedgepack_ort in ONNX Runtime: every ai.edgepack op against numpy references built from the
definitions in docs/ops.md (XXH32 from the ``xxhash`` package), the torch layers, and bad inputs
that must fail with a message naming the node."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from ort_models import (
    make_model,
    ort_library,  # noqa: F401 (a fixture)
    ref_circulant_dense,
    ref_decode,
    ref_ldr_dense,
    ref_linear,
    run,
)

from edgepack.runtime_kernels.ort_session import onnx_session, ort_library_path

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(7)


pytestmark = pytest.mark.usefixtures("ort_library")


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def recon_vector(k, hidden):
    return rand(hidden * (k + 2) + 1, scale=0.5)


def close(got, want, tol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# ---- HashedWeight ---------------------------------------------------------------------------------

@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize("k,signed", [(1, 1), (1, 0), (4, 1), (4, 0)])
def test_hashed_weight(k, signed, as_inputs):
    shape, seed = [5, 3, 2], 2**32 - 3  # seed + k wraps mod 2^32
    buckets = rand(11)
    recon = recon_vector(k, 3) if k > 1 else None
    attrs = dict(shape=shape, num_hashes=k, seed=seed, signed=signed)
    inputs = [("buckets", buckets), ("recon", recon)]
    model = make_model("HashedWeight", inputs, attrs, as_inputs=as_inputs)
    want = ref_decode(5, 6, buckets, seed, k, signed, recon).reshape(shape)
    got = run(model, inputs, as_inputs)
    close(got, want)
    close(run(model, inputs, as_inputs), want)  # the cached copy stays intact across runs


def test_hashed_weight_default_signed():
    buckets = rand(9)
    model = make_model("HashedWeight", [("buckets", buckets)], dict(shape=[4, 5], num_hashes=1, seed=3))
    close(run(model, [("buckets", buckets)]), ref_decode(4, 5, buckets, 3, 1, 1))


# ---- HashedMatMul ---------------------------------------------------------------------------------

X_SHAPES = [(1, 13), (3, 13), (2, 3, 13)]


@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("signed", [1, 0])
@pytest.mark.parametrize("k, with_recon", [(1, False), (1, True), (4, True)])
@pytest.mark.parametrize("mode", [0, 1])
def test_hashed_matmul(mode, k, with_recon, signed, has_bias, as_inputs):
    """K = 1 applies recon when one is given (the exporter passes an identity MLP)."""
    in_f, out_f, seed = 13, 7, 12345
    x_shape = X_SHAPES[(mode + 2 * k + signed + has_bias) % len(X_SHAPES)]
    x = rand(*x_shape)
    buckets = rand(17)
    recon = recon_vector(k, 3) if with_recon else None
    bias = rand(out_f) if has_bias else None
    attrs = dict(in_features=in_f, out_features=out_f, num_hashes=k, seed=seed, signed=signed, mode=mode)
    inputs = [("X", x), ("buckets", buckets), ("recon", recon), ("bias", bias)]
    model = make_model("HashedMatMul", inputs, attrs, as_inputs=as_inputs)
    V = ref_decode(out_f, in_f, buckets, seed, k, signed, recon)
    close(run(model, inputs, as_inputs), ref_linear(x, V, bias, in_f, out_f))


def test_hashed_matmul_default_mode_and_dynamic_batch():
    in_f, out_f = 9, 5
    buckets, bias = rand(8), rand(out_f)
    attrs = dict(in_features=in_f, out_features=out_f, num_hashes=1, seed=1)
    inputs = [("X", rand(4, in_f)), ("buckets", buckets), ("recon", None), ("bias", bias)]
    model = make_model("HashedMatMul", inputs, attrs, x_dims=["N", in_f])
    sess = onnx_session(model.SerializeToString(), decode_at_load=False)
    V = ref_decode(out_f, in_f, buckets, 1)
    for n in (1, 4, 0):
        x = rand(n, in_f)
        close(sess.run(None, {"X": x})[0], ref_linear(x, V, bias, in_f, out_f))


# ---- CirculantMatMul ------------------------------------------------------------------------------

@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("in_f,out_f,b,x_lead", [(13, 9, 4, (1,)), (16, 16, 8, (3,)), (5, 21, 16, (2, 3))])
def test_circulant_matmul(in_f, out_f, b, x_lead, has_bias, as_inputs):
    p, q = -(-out_f // b), -(-in_f // b)
    blocks = rand(p, q, b)
    x, bias = rand(*x_lead, in_f), (rand(out_f) if has_bias else None)
    inputs = [("X", x), ("blocks", blocks), ("bias", bias)]
    model = make_model("CirculantMatMul", inputs, dict(in_features=in_f, out_features=out_f),
                       as_inputs=as_inputs)
    want = ref_linear(x, ref_circulant_dense(blocks), bias, in_f, out_f)
    close(run(model, inputs, as_inputs), want, tol=1e-4)


# ---- LDRMatMul ------------------------------------------------------------------------------------

@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("in_f,out_f,n,r,x_lead", [(11, 6, 16, 2, (1,)), (4, 4, 4, 1, (5,)),
                                                   (30, 32, 32, 3, (2, 2))])
def test_ldr_matmul(in_f, out_f, n, r, x_lead, has_bias, as_inputs):
    G, H = rand(r, n, scale=0.5), rand(r, n, scale=0.5)
    x, bias = rand(*x_lead, in_f), (rand(out_f) if has_bias else None)
    inputs = [("X", x), ("G", G), ("H", H), ("bias", bias)]
    model = make_model("LDRMatMul", inputs, dict(in_features=in_f, out_features=out_f), as_inputs=as_inputs)
    want = ref_linear(x, ref_ldr_dense(G, H), bias, in_f, out_f)
    close(run(model, inputs, as_inputs), want, tol=1e-4)


# ---- torch layers ------------------------------------------------------------------------------------

def _np(t):
    return t.detach().cpu().numpy().astype(np.float32)


@pytest.mark.parametrize("k", [1, 3])
def test_matches_hashed_linear(k):
    comp = pytest.importorskip("edgepack.compression")
    torch = pytest.importorskip("torch")
    layer = comp.HashedLinear(21, 10, ratio=0.25, num_hashes=k, seed=99, recon_hidden=4)
    with torch.no_grad():
        if layer.recon is not None:
            layer.recon.normal_()
    x = rand(3, 21)
    recon = _np(layer.recon) if layer.recon is not None else None
    attrs = dict(in_features=21, out_features=10, num_hashes=k, seed=layer.seed, signed=int(layer.signed))
    inputs = [("X", x), ("buckets", _np(layer.buckets)), ("recon", recon), ("bias", _np(layer.bias))]
    for mode in (0, 1):
        got = run(make_model("HashedMatMul", inputs, dict(attrs, mode=mode)), inputs)
        close(got, _np(layer(torch.from_numpy(x))), tol=1e-4)
    hw = make_model("HashedWeight", inputs[1:3], dict(shape=[10, 21], num_hashes=k, seed=layer.seed,
                                                      signed=int(layer.signed)))
    close(run(hw, inputs[1:3]), _np(layer.dense_weight()), tol=1e-5)


def test_matches_circulant_and_ldr_linear():
    comp = pytest.importorskip("edgepack.compression")
    torch = pytest.importorskip("torch")
    x = rand(2, 3, 19)
    circ = comp.CirculantLinear(19, 12, block_size=8)
    inputs = [("X", x), ("blocks", _np(circ.blocks)), ("bias", _np(circ.bias))]
    got = run(make_model("CirculantMatMul", inputs, dict(in_features=19, out_features=12)), inputs)
    close(got, _np(circ(torch.from_numpy(x))), tol=1e-4)
    ldr = comp.LDRLinear(19, 12, rank=2)
    inputs = [("X", x), ("G", _np(ldr.G)), ("H", _np(ldr.H)), ("bias", _np(ldr.bias))]
    got = run(make_model("LDRMatMul", inputs, dict(in_features=19, out_features=12)), inputs)
    close(got, _np(ldr(torch.from_numpy(x))), tol=1e-4)


# ---- sessions ---------------------------------------------------------------------------------------

def test_concurrent_runs_share_cached_plans():
    in_f, out_f = 16, 12
    blocks, bias = rand(3, 4, 4), rand(out_f)
    inputs = [("X", rand(2, in_f)), ("blocks", blocks), ("bias", bias)]
    model = make_model("CirculantMatMul", inputs, dict(in_features=in_f, out_features=out_f),
                       x_dims=["N", in_f])
    sess = onnx_session(model.SerializeToString(), threads=2, decode_at_load=False)
    xs = [rand(1 + i % 3, in_f) for i in range(32)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda x: sess.run(None, {"X": x})[0], xs))
    dense = ref_circulant_dense(blocks)
    for x, y in zip(xs, outs):
        close(y, ref_linear(x, dense, bias, in_f, out_f), tol=1e-4)


def test_library_path_env_override(monkeypatch, tmp_path):
    real = ort_library_path()
    monkeypatch.setenv("EDGEPACK_LIB_DIR", os.path.dirname(real))
    assert ort_library_path() == real
    monkeypatch.setenv("EDGEPACK_LIB_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="EDGEPACK_LIB_DIR"):
        ort_library_path()


def test_session_from_file(tmp_path):
    buckets = rand(6)
    model = make_model("HashedWeight", [("buckets", buckets)], dict(shape=[3, 4], num_hashes=1, seed=0))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    close(onnx_session(path, decode_at_load=False).run(None, {})[0], ref_decode(3, 4, buckets, 0))


# ---- bad inputs: session creation or run fails with the node's name ------------------------------

def _hmm(**over):
    """HashedMatMul attributes with overrides; None removes one."""
    attrs = dict(in_features=13, out_features=7, num_hashes=1, seed=0) | over
    return {k: v for k, v in attrs.items() if v is not None}


BAD_CASES = {
    "missing_attribute": ("HashedMatMul", _hmm(in_features=None),
                          [("X", rand(2, 13)), ("buckets", rand(5))], "in_features"),
    "attribute_wrong_type": ("HashedMatMul", _hmm(in_features=13.0),
                             [("X", rand(2, 13)), ("buckets", rand(5))], "in_features"),
    "shape_wrong_type": ("HashedWeight", dict(shape=3, num_hashes=1, seed=0), [("buckets", rand(5))],
                         "'shape' must be ints"),
    "shape_floats": ("HashedWeight", dict(shape=[3.0, 2.0], num_hashes=1, seed=0), [("buckets", rand(5))],
                     "got floats"),
    "shape_missing": ("HashedWeight", dict(num_hashes=1, seed=0), [("buckets", rand(5))], "missing"),
    "num_hashes_too_big": ("HashedWeight", dict(shape=[2, 2], num_hashes=65, seed=0), [("buckets", rand(5))],
                           "num_hashes"),
    "signed_string": ("HashedWeight", dict(shape=[2, 2], num_hashes=1, seed=0, signed="yes"),
                      [("buckets", rand(5))], "got string"),
    "mode_out_of_range": ("HashedMatMul", _hmm(mode=2), [("X", rand(2, 13)), ("buckets", rand(5))], "mode"),
    "seed_negative": ("HashedMatMul", _hmm(seed=-1), [("X", rand(2, 13)), ("buckets", rand(5))], "seed"),
    "buckets_empty": ("HashedMatMul", _hmm(), [("X", rand(2, 13)), ("buckets", rand(0))], "buckets"),
    "buckets_2d": ("HashedWeight", dict(shape=[3, 3], num_hashes=1, seed=0), [("buckets", rand(2, 3))],
                   "buckets"),
    "recon_wrong_length": ("HashedMatMul", _hmm(num_hashes=4),
                           [("X", rand(2, 13)), ("buckets", rand(5)), ("recon", rand(10))], "recon"),
    "recon_missing": ("HashedWeight", dict(shape=[3, 3], num_hashes=2, seed=0), [("buckets", rand(5))],
                      "recon"),
    "recon_k1_wrong_length": ("HashedMatMul", _hmm(),
                              [("X", rand(2, 13)), ("buckets", rand(5)), ("recon", rand(8))], "recon"),
    "bias_wrong_length": ("HashedMatMul", _hmm(),
                          [("X", rand(2, 13)), ("buckets", rand(5)), ("recon", None), ("bias", rand(8))],
                          "bias"),
    "x_last_dim": ("HashedMatMul", _hmm(), [("X", rand(2, 12)), ("buckets", rand(5))], "in_features"),
    "circulant_block_not_pow2": ("CirculantMatMul", dict(in_features=12, out_features=6),
                                 [("X", rand(1, 12)), ("blocks", rand(1, 2, 6))], "power of two"),
    "circulant_too_small": ("CirculantMatMul", dict(in_features=13, out_features=6),
                            [("X", rand(1, 13)), ("blocks", rand(2, 3, 4))], "q*b"),
    "ldr_shape_mismatch": ("LDRMatMul", dict(in_features=8, out_features=8),
                           [("X", rand(1, 8)), ("G", rand(2, 8)), ("H", rand(2, 16))], "'H'"),
    "ldr_n_too_small": ("LDRMatMul", dict(in_features=9, out_features=8),
                        [("X", rand(1, 9)), ("G", rand(2, 8)), ("H", rand(2, 8))], "<= n"),
    "circulant_bias": ("CirculantMatMul", dict(in_features=8, out_features=8),
                       [("X", rand(1, 8)), ("blocks", rand(2, 2, 4)), ("bias", rand(2, 4))], "bias"),
}


@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_name_the_node(case, as_inputs):
    op, attrs, inputs, needle = BAD_CASES[case]
    node = f"bad_{case}"
    model = make_model(op, inputs, attrs, as_inputs=as_inputs, name=node)
    with pytest.raises(Exception) as info:
        run(model, inputs, as_inputs)
    msg = str(info.value)
    assert node in msg and needle in msg, msg


def test_float64_input_rejected_with_node_name():
    x = rand(2, 13).astype(np.float64)
    inputs = [("X", x), ("buckets", rand(5))]
    model = make_model("HashedMatMul", inputs, _hmm(), name="double_node", x_dtype=TensorProto.DOUBLE)
    with pytest.raises(Exception) as info:
        run(model, inputs)
    assert "double_node" in str(info.value), str(info.value)


def test_unnamed_node_uses_op_type():
    inputs = [("X", rand(2, 12)), ("buckets", rand(5))]
    model = make_model("HashedMatMul", inputs, _hmm(), name="")
    with pytest.raises(Exception, match="HashedMatMul node"):
        run(model, inputs)


def test_without_kernels_the_library_is_not_registered():
    buckets = rand(6)
    model = make_model("HashedWeight", [("buckets", buckets)], dict(shape=[3, 4], num_hashes=1, seed=0))
    with pytest.raises(Exception, match="HashedWeight"):  # no kernel and no fallback function here
        onnx_session(model.SerializeToString(), use_kernels=False)
