"""ONNX models of one ai.edgepack node and numpy references for them (docs/ops.md), shared by the
ORT op tests and the thread tests."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import xxhash
from onnx import TensorProto, helper, numpy_helper

from edgepack.runtime_kernels.ort_session import onnx_session, ort_library_path


@pytest.fixture(scope="module")
def ort_library():
    """Skip the importing module's tests when libedgepack_ort has not been built."""
    try:
        return ort_library_path()
    except FileNotFoundError as exc:  # pragma: no cover - depends on the build
        pytest.skip(str(exc))

# ---- numpy references (docs/ops.md) ---------------------------------------------------------

def ref_decode(rows, cols, buckets, seed, num_hashes=1, signed=1, recon=None):
    """V[rows, cols] by the hash contract, straight from the definition."""
    nb, k = len(buckets), num_hashes
    z = np.empty((rows, cols, k), np.float64)
    for i in range(rows):
        for j in range(cols):
            key = struct.pack("<II", i, j)
            for t in range(k):
                h = xxhash.xxh32_intdigest(key, seed=(seed + t) % 2**32)
                sign = -1.0 if signed and h >> 31 else 1.0
                z[i, j, t] = sign * buckets[h % nb]
    if recon is None:
        return z[..., 0]
    recon = np.asarray(recon, np.float64)
    hidden = (len(recon) - 1) // (k + 2)
    w1 = recon[: hidden * k].reshape(hidden, k)
    b1 = recon[hidden * k: hidden * k + hidden]
    w2 = recon[hidden * k + hidden: hidden * k + 2 * hidden]
    b2 = recon[-1]
    return np.maximum(z @ w1.T + b1, 0.0) @ w2 + b2


def ref_linear(x, w, bias, in_features, out_features):
    """(X zero-padded to W's cols) · Wᵀ, cut to out_features, + bias."""
    x = np.asarray(x, np.float64)
    pad = np.zeros(x.shape[:-1] + (w.shape[1],))
    pad[..., :in_features] = x
    y = (pad @ w.T)[..., :out_features]
    return y if bias is None else y + bias


def ref_circulant_dense(blocks):
    p, q, b = blocks.shape
    r, s = np.meshgrid(np.arange(b), np.arange(b), indexing="ij")
    full = blocks[:, :, (r - s) % b]  # (p, q, b, b)
    return full.transpose(0, 2, 1, 3).reshape(p * b, q * b).astype(np.float64)


def z_matrix(v, f):
    n = len(v)
    a, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.where(a >= c, v[(a - c) % n], f * v[(n + a - c) % n]).astype(np.float64)


def ref_ldr_dense(G, H):
    return sum(z_matrix(g, 1.0) @ z_matrix(h, -1.0) for g, h in zip(G, H))


# ---- model building ----------------------------------------------------------------------------

def make_model(op, inputs, attrs, *, as_inputs=False, name="ep_node", x_dtype=TensorProto.FLOAT,
               x_dims=None):
    """One ai.edgepack node. ``inputs``: list of (name, array or None); ``X`` is always a graph
    input, the rest are initializers (or graph inputs with ``as_inputs``); None = absent ("")."""
    graph_inputs, inits, node_inputs = [], [], []
    for iname, arr in inputs:
        if arr is None:
            node_inputs.append("")
            continue
        node_inputs.append(iname)
        if iname == "X":
            dims = x_dims if x_dims is not None else list(arr.shape)
            graph_inputs.append(helper.make_tensor_value_info("X", x_dtype, dims))
        elif as_inputs:
            graph_inputs.append(helper.make_tensor_value_info(iname, TensorProto.FLOAT, list(arr.shape)))
        else:
            inits.append(numpy_helper.from_array(np.asarray(arr), iname))
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()
    node = helper.make_node(op, node_inputs, ["Y"], domain="ai.edgepack", name=name, **attrs)
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", graph_inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.edgepack", 1)])
    model.ir_version = 9
    return model


def run(model, inputs, as_inputs=False, threads=1):
    sess = onnx_session(model.SerializeToString(), threads=threads, decode_at_load=False)
    feeds = {n: a for n, a in inputs if a is not None and (n == "X" or as_inputs)}
    return sess.run(None, feeds)[0]
