"""Our kernels' threads in ONNX Runtime: a session with threads=2 (the pool splits GEMM panels,
hashed rows, circulant output blocks and LDR batch rows) gives the threads=1 output bit for bit,
on sizes above the split threshold that no split divides, and both match a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_models import (
    make_model,
    ort_library,  # noqa: F401 (a fixture)
    ref_circulant_dense,
    ref_ldr_dense,
)

from edgepack.runtime_kernels.ort_session import onnx_session

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(11)


pytestmark = pytest.mark.usefixtures("ort_library")


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model_bytes(op, x, weights, attrs, as_inputs=False):
    """One ai.edgepack node: X (and, if asked, the weights) as graph inputs, the rest initializers."""
    return make_model(op, [("X", x), *weights.items()], attrs, as_inputs=as_inputs).SerializeToString()


def run(data, feeds, threads):
    return onnx_session(data, threads=threads, decode_at_load=False).run(None, feeds)[0]


def same_for_threads(data, feeds):
    one, two = run(data, feeds, 1), run(data, feeds, 2)
    assert one.dtype == np.float32 and np.isfinite(one).all()
    assert one.tobytes() == two.tobytes(), "threads=2 differs from threads=1"
    return one


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("as_inputs", [False, True])
def test_hashed_matmul_threads(mode, as_inputs):
    in_f, out_f, n = 301, 299, 5
    x, buckets = rand(n, in_f), rand(4099)
    attrs = dict(in_features=in_f, out_features=out_f, num_hashes=1, seed=7, signed=1, mode=mode)
    weights = {"buckets": buckets}
    data = model_bytes("HashedMatMul", x, weights, attrs, as_inputs)
    feeds = {"X": x, **(weights if as_inputs else {})}
    y = same_for_threads(data, feeds)
    # the reference: V decoded by HashedWeight (its own decode path), then numpy
    hw = helper.make_node("HashedWeight", ["buckets"], ["V"], domain="ai.edgepack", shape=[out_f, in_f],
                          num_hashes=1, seed=7, signed=1)
    g = helper.make_graph([hw], "g", [], [helper.make_tensor_value_info("V", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(buckets, "buckets")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.edgepack", 1)])
    m.ir_version = 9
    V = onnx_session(m.SerializeToString(), decode_at_load=False).run(None, {})[0]
    np.testing.assert_allclose(y, x.astype(np.float64) @ V.T.astype(np.float64), rtol=1e-4, atol=1e-3)


def test_hashed_weight_threads():
    buckets = rand(5003)
    node = helper.make_node("HashedWeight", ["buckets"], ["V"], domain="ai.edgepack", shape=[389, 401],
                            num_hashes=1, seed=3, signed=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("buckets", TensorProto.FLOAT, [5003])],
                          [helper.make_tensor_value_info("V", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.edgepack", 1)])
    m.ir_version = 9
    data = m.SerializeToString()
    one = onnx_session(data, threads=1, decode_at_load=False).run(None, {"buckets": buckets})[0]
    two = onnx_session(data, threads=2, decode_at_load=False).run(None, {"buckets": buckets})[0]
    assert one.tobytes() == two.tobytes()
    assert set(np.unique(np.abs(one))) <= set(np.abs(buckets))  # every weight is ± a bucket


@pytest.mark.parametrize("as_inputs", [False, True])
def test_circulant_matmul_threads(as_inputs):
    in_f, out_f, b, n = 1500, 1490, 32, 5
    p, q = -(-out_f // b), -(-in_f // b)
    x, blocks, bias = rand(n, in_f), rand(p, q, b), rand(out_f)
    weights = {"blocks": blocks, "bias": bias}
    data = model_bytes("CirculantMatMul", x, weights, dict(in_features=in_f, out_features=out_f), as_inputs)
    y = same_for_threads(data, {"X": x, **(weights if as_inputs else {})})
    W = ref_circulant_dense(blocks)[:out_f, :in_f]
    np.testing.assert_allclose(y, x.astype(np.float64) @ W.T + bias, rtol=1e-3, atol=1e-2)


def test_ldr_matmul_threads():
    in_f, out_f, nn, r, n = 2000, 1900, 2048, 4, 7
    x, G, H, bias = rand(n, in_f), rand(r, nn) * 0.1, rand(r, nn) * 0.1, rand(out_f)
    weights = {"G": G, "H": H, "bias": bias}
    data = model_bytes("LDRMatMul", x, weights, dict(in_features=in_f, out_features=out_f))
    y = same_for_threads(data, {"X": x})
    W = ref_ldr_dense(G, H)[:out_f, :in_f]
    np.testing.assert_allclose(y, x.astype(np.float64) @ W.T + bias, rtol=1e-3, atol=1e-2)


def test_tflite_delegate_threads(tmp_path):
    """The delegate follows the interpreter's num_threads: 2 threads give the 1-thread output bit for bit."""
    tm = pytest.importorskip("tflite_models")
    from edgepack.runtime_kernels import tflite_runtime as tr

    try:
        tr._runtime()
    except ImportError:
        pytest.skip("neither ai-edge-litert nor tflite-runtime is installed")
    in_f, out_f, b, n = 1500, 1490, 32, 5
    p, q = -(-out_f // b), -(-in_f // b)
    x, blocks, bias = rand(n, in_f), rand(p, q, b), rand(out_f)
    path = tmp_path / "circ.tflite"
    path.write_bytes(tm.single_op("CirculantMatMul", x.shape, [("blocks", blocks), ("bias", bias)],
                                  dict(in_features=in_f, out_features=out_f)))
    outs = []
    for threads in (1, 2):
        it = tr.tflite_interpreter(path, threads=threads, decode_at_load=False)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    assert outs[0].tobytes() == outs[1].tobytes()
    W = ref_circulant_dense(blocks)[:out_f, :in_f]
    np.testing.assert_allclose(outs[0], x.astype(np.float64) @ W.T + bias, rtol=1e-3, atol=1e-2)


def test_bad_thread_env_names_the_variable(monkeypatch):
    """$EDGEPACK_NUM_THREADS (hosts other than onnx_session) must be a positive integer."""
    x, G, H = rand(2, 8), rand(1, 8), rand(1, 8)
    data = model_bytes("LDRMatMul", x, {"G": G, "H": H}, dict(in_features=8, out_features=8))
    monkeypatch.setenv("EDGEPACK_NUM_THREADS", "two")
    with pytest.raises(Exception, match="EDGEPACK_NUM_THREADS='two' is not a positive integer"):
        onnx_session(data, threads=2, decode_at_load=False)
    monkeypatch.setenv("EDGEPACK_NUM_THREADS", "3")
    y = onnx_session(data, decode_at_load=False).run(None, {"X": x})[0]
    W = ref_ldr_dense(G, H)
    np.testing.assert_allclose(y, x.astype(np.float64) @ W.T, rtol=1e-4, atol=1e-4)
