"""The hashed fallback functions: building an ORT session without our library needs at most 3× the
dense weight bytes (plus a fixed allowance), and both decode paths (folded at session build up to
FOLD_LIMIT virtual weights × hashes, a Loop over row blocks above it) follow the hash contract."""

import json
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import xxhash
from export_helpers import assert_close_relative
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgepack import onnx_session
from edgepack.compression import HashedLinear
from edgepack.exporter import export
from edgepack.exporter.fallbacks import DOMAIN, FOLD_LIMIT, FUNCTIONS, OPSET_VERSION, STANDARD_OPSET

FIXED_ALLOWANCE = 32 * 2**20  # ORT's own session overhead (~12 MiB for a tiny model) with margin

# Peak RSS of building one session in a fresh process, over a baseline taken after importing ORT.
PEAK_SCRIPT = """
import resource, sys
import onnxruntime as ort
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
options = ort.SessionOptions()
options.intra_op_num_threads = 1
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def session_peak_bytes(path) -> int:
    """ru_maxrss growth (bytes; Linux reports KiB) while ORT, without our library, builds a session."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("mode", ["kernels", "portable"])
def test_session_memory_is_at_most_three_dense_copies(mode, tmp_path):
    n = 2048  # 4 Mi virtual weights: before the Loop decode, this session peaked at ~1.4 GB
    torch.manual_seed(0)
    layer = HashedLinear(n, n, ratio=1 / 8, seed=11).eval()
    path = export(layer, torch.randn(1, n), tmp_path / f"hashed_{mode}.onnx", mode=mode)
    peak, dense = session_peak_bytes(path), 4 * n * n
    assert peak <= 3 * dense + FIXED_ALLOWANCE, f"{peak / 2**20:.1f} MiB for {dense / 2**20:.0f} MiB dense"
    x = torch.randn(2, n)
    session = onnx_session(path, use_kernels=False)
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert_close_relative(y, layer(x).detach().numpy())


def hashed_weight_model(shape, buckets, recon, num_hashes, seed, signed) -> onnx.ModelProto:
    """One HashedWeight node with constant inputs and its fallback function (no kernels)."""
    inputs = [numpy_helper.from_array(buckets, "buckets"), numpy_helper.from_array(recon, "recon")]
    node = helper.make_node("HashedWeight", ["buckets", "recon"], ["W"], domain=DOMAIN, shape=shape,
                            num_hashes=num_hashes, seed=seed, signed=signed)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("W", TensorProto.FLOAT, None)],
                              inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", STANDARD_OPSET),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.functions.append(FUNCTIONS["HashedWeight"]())
    return model


@pytest.mark.parametrize("shape", [[1, 2**22], [2**22, 1], [4, 1024, 1024]])
def test_session_memory_of_skinny_weights(shape, tmp_path):
    """Per-row and per-column hash terms are computed per block, never folded over a whole axis."""
    buckets = np.random.default_rng(1).standard_normal(2**19).astype(np.float32)
    identity = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)
    path = tmp_path / "w.onnx"
    onnx.save(hashed_weight_model(shape, buckets, identity, 1, 9, 1), path)
    peak, dense = session_peak_bytes(path), 4 * int(np.prod(shape))
    assert peak <= 3 * dense + FIXED_ALLOWANCE, f"{peak / 2**20:.1f} MiB for {dense / 2**20:.0f} MiB dense"


def xxhash_decode(rows, cols, buckets, recon, num_hashes, seed, signed) -> np.ndarray:
    """V[rows, cols] straight from the hash contract (docs/ops.md) with the xxhash package."""
    z = np.empty((rows * cols, num_hashes))
    for index, (i, j) in enumerate((i, j) for i in range(rows) for j in range(cols)):
        key = struct.pack("<II", i, j)
        for k in range(num_hashes):
            h = xxhash.xxh32_intdigest(key, seed=(seed + k) % 2**32)
            z[index, k] = (-1.0 if signed and h >> 31 else 1.0) * buckets[h % len(buckets)]
    hidden = (len(recon) - 1) // (num_hashes + 2)
    w1 = recon[:hidden * num_hashes].reshape(hidden, num_hashes)
    b1 = recon[hidden * num_hashes:hidden * (num_hashes + 1)]
    w2, b2 = recon[hidden * (num_hashes + 1):-1], recon[-1]
    return (np.maximum(z @ w1.T + b1, 0.0) @ w2 + b2).reshape(rows, cols)


# Both sides of FOLD_LIMIT; above it the last row block is partly padding (rows % block != 0).
@pytest.mark.parametrize("shape,num_hashes,signed", [
    ([256, 16, 16], 1, 1),   # exactly FOLD_LIMIT: folded
    ([257, 256], 1, 1),      # one row over: Loop, 2 blocks of 256 rows
    ([1100, 9, 7], 1, 0),    # Loop, unsigned, blocks of 1040 rows
    ([150, 150], 3, 1),      # K = 3: 67,500 hashes, Loop over blocks of 145 rows
    ([100, 218], 3, 1),      # K = 3: 65,400 hashes, folded
])
def test_both_decode_paths_follow_the_hash_contract(shape, num_hashes, signed):
    rng = np.random.default_rng(5)
    buckets = rng.standard_normal(97).astype(np.float32)
    recon = (rng.standard_normal(4 * (num_hashes + 2) + 1) * 0.5).astype(np.float32)
    seed = 2**32 - 2  # seed + k wraps mod 2^32
    model = hashed_weight_model(shape, buckets, recon, num_hashes, seed, signed)
    rows, cols = shape[0], int(np.prod(shape[1:]))
    want = xxhash_decode(rows, cols, buckets.astype(np.float64), recon.astype(np.float64),
                         num_hashes, seed, signed).reshape(shape)
    got_ort = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    got_reference = ReferenceEvaluator(model).run(None, {})[0]
    for got in (got_ort, got_reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def executed_op_types(path, tmp_path) -> set[str]:
    """The node op types ORT's profiler saw run (fallback functions, no library)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = onnx_session(path, use_kernels=False, sess_options=options)
    x = np.ones((1, session.get_inputs()[0].shape[1]), np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(open(session.end_profiling()).read())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e["args"]}


@pytest.mark.parametrize("out_features,folded", [(256, True), (257, False)])
def test_small_layers_fold_to_a_constant_large_ones_decode_per_run(out_features, folded, tmp_path):
    """Up to FOLD_LIMIT ORT folds the decode (one Gemm runs); above it a Loop decodes at each run."""
    assert 256 * 256 == FOLD_LIMIT
    layer = HashedLinear(256, out_features, ratio=1 / 8, seed=3).eval()
    path = export(layer, torch.randn(1, 256), tmp_path / "m.onnx")
    ops = executed_op_types(path, tmp_path)
    assert ("Loop" not in ops and "BitwiseXor" not in ops) if folded else "Loop" in ops, ops


def test_the_fold_limit_is_an_export_option(tmp_path):
    """A user who wants dense speed in plain ORT raises the limit: the same layer then folds."""
    layer = HashedLinear(256, 257, ratio=1 / 8, seed=3).eval()
    path = export(layer, torch.randn(1, 256), tmp_path / "m.onnx", fallback_fold_limit=256 * 257)
    ops = executed_op_types(path, tmp_path)
    assert "Loop" not in ops and "BitwiseXor" not in ops, ops
    x = torch.randn(4, 256)
    session = onnx_session(path, use_kernels=False)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert_close_relative(got, layer(x).numpy())


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_a_bad_fold_limit_is_refused(bad, tmp_path):
    from edgepack.exporter.onnx_export import ExportError
    with pytest.raises(ExportError, match="fallback_fold_limit must be an int >= 0"):
        export(HashedLinear(8, 4, ratio=1 / 2), torch.randn(1, 8), tmp_path / "m.onnx", fallback_fold_limit=bad)


def test_more_than_two_to_the_32_hashes_fail_at_the_first_run():
    """The keys are u32: such a matrix fails at once instead of decoding until memory runs out."""
    identity = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)
    model = hashed_weight_model([2**32, 1], np.ones(8, np.float32), identity, 1, 0, 1)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="Range"):
        session.run(None, {})
    with pytest.raises(ZeroDivisionError):  # numpy.arange with step 0
        ReferenceEvaluator(model).run(None, {})
