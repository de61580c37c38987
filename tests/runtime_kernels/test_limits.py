"""Decode limits (docs/ops.md "Limits"): the Python parser in edgepack.runtime_kernels.limits and
the ORT custom-op library. The decompression bomb of issue 9 (a HashedWeight of shape [2, 2^29])
must fail cleanly under a memory cap; raised limits must give the same numbers as ORT's own
standard-op fallback; every error names the node, the shape and the limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.errors import EdgepackError
from edgepack.exporter.fallbacks import FUNCTIONS
from edgepack.runtime_kernels import limits
from edgepack.runtime_kernels.ort_session import onnx_session, ort_library_path

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(9)
IDENTITY = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)
ROOT = Path(__file__).resolve().parents[2]
ENVS = (limits.ENV_MAX_VIRTUAL_WEIGHTS, limits.ENV_MAX_DECODED_BYTES)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    try:
        ort_library_path()
    except FileNotFoundError as exc:  # pragma: no cover - depends on the build
        pytest.skip(str(exc))


# ---- the Python parser --------------------------------------------------------------------------

BAD_VALUES = ["", "0", "-5", "1e9", "12x", "0x10", "1 2", "+7", "٣", "9223372036854775808"]


def test_defaults():
    assert limits.max_virtual_weights() == limits.DEFAULT_MAX_VIRTUAL_WEIGHTS == 2**28
    assert limits.max_decoded_bytes() == limits.DEFAULT_MAX_DECODED_BYTES == 2**30


def test_env_overrides(monkeypatch):
    monkeypatch.setenv(limits.ENV_MAX_VIRTUAL_WEIGHTS, " 1234 ")
    monkeypatch.setenv(limits.ENV_MAX_DECODED_BYTES, "9223372036854775807")
    assert limits.max_virtual_weights() == 1234
    assert limits.max_decoded_bytes() == 2**63 - 1


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("env,getter", [(limits.ENV_MAX_VIRTUAL_WEIGHTS, limits.max_virtual_weights),
                                        (limits.ENV_MAX_DECODED_BYTES, limits.max_decoded_bytes)])
def test_bad_env_value_is_an_error_naming_the_variable(monkeypatch, env, getter, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(limits.LimitError, match=env) as info:
        getter()
    assert isinstance(info.value, EdgepackError)


@pytest.mark.parametrize("value", [0, -1, True, 2**63])
def test_bad_int_limit(value):
    with pytest.raises(limits.LimitError, match="max_decoded_bytes"):
        limits.parse_limit("max_decoded_bytes", value)


# ---- models -----------------------------------------------------------------------------------

def hashed_weight_model(shapes: list[list[int]], with_function: bool = True) -> bytes:
    """One HashedWeight node 'w<i>' per shape (8 buckets, identity recon), each a graph output."""
    inits = [numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(IDENTITY, "r")]
    nodes = [helper.make_node("HashedWeight", ["b", "r"], [f"W{i}"], domain="ai.edgepack", name=f"w{i}",
                              shape=list(s), num_hashes=1, seed=5 + i) for i, s in enumerate(shapes)]
    outs = [helper.make_tensor_value_info(f"W{i}", TensorProto.FLOAT, None) for i in range(len(shapes))]
    graph = helper.make_graph(nodes, "g", [], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.edgepack", 1)],
                              functions=[FUNCTIONS["HashedWeight"]()] if with_function else [])
    model.ir_version = 10
    return model.SerializeToString()


def matmul_model(op: str, weights: dict[str, np.ndarray | None], attrs: dict, runtime_weights=()) -> bytes:
    """One ai.edgepack matmul node 'm' with X [batch, in_features] (dynamic batch) and its fallback."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", attrs["in_features"]])
    ins, inits, names = [x], [], ["X"]
    for name, arr in weights.items():
        names.append(name)
        if name in runtime_weights:
            ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
        else:
            inits.append(numpy_helper.from_array(arr, name))
    node = helper.make_node(op, names, ["Y"], domain="ai.edgepack", name="m", **attrs)
    graph = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.edgepack", 1)],
                              functions=[FUNCTIONS[op]()])
    model.ir_version = 10
    return model.SerializeToString()


# VmHWM is this process's own peak; ru_maxrss would keep the forking pytest's peak across exec.
PEAK_RSS_MB = ("result['maxrss_mb'] = [int(line.split()[1]) for line in open('/proc/self/status') "
               "if line.startswith('VmHWM')][0] / 1024")


def capped_run(code: str, cap_bytes: int = 3 << 30) -> dict:
    """Run ``code`` (which sets ``result``) in a fresh Python whose address space is capped."""
    prog = (f"import json, resource\nresource.setrlimit(resource.RLIMIT_AS, ({cap_bytes}, {cap_bytes}))\n"
            f"{code}\n{PEAK_RSS_MB}\n"
            "print('RESULT ' + json.dumps(result))\n")
    env = {k: v for k, v in os.environ.items() if k not in ENVS}
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# ---- ORT: the bomb --------------------------------------------------------------------------------

def test_ort_bomb_is_refused_before_allocating():
    """Issue 9: a ~200-byte file with HashedWeight shape [2, 2^29] took ORT to 8 GiB; now a clean
    error at session creation, in a process capped at 3 GiB of address space."""
    model = hashed_weight_model([[2, 2**29]], with_function=False)
    assert len(model) < 300
    code = (
        "from edgepack.runtime_kernels import onnx_session\n"
        f"result = {{}}\ntry:\n    onnx_session({model!r}, decode_at_load=False).run(None, {{}})\n"
        "    result['error'] = None\n"
        "except Exception as e:\n    result['error'] = str(e)\n"
    )
    result = capped_run(code)
    err = result["error"] or ""
    for part in ("HashedWeight node 'w0'", "shape [2, 536870912]", "1073741824 virtual weights",
                 "limit of 268435456", "EDGEPACK_MAX_VIRTUAL_WEIGHTS", "max_virtual_weights"):
        assert part in err, (part, err)
    assert result["maxrss_mb"] < 1024


# ---- ORT: limits from keyword arguments and the environment ---------------------------------------

def test_virtual_weights_limit_kwarg_env_and_reference(monkeypatch):
    model = hashed_weight_model([[40, 5, 10]])
    with pytest.raises(Exception, match=r"node 'w0'.*shape \[40, 5, 10\].*2000 virtual weights.*limit of 1999"):
        onnx_session(model, decode_at_load=False, max_virtual_weights=1999)
    got = onnx_session(model, decode_at_load=False, max_virtual_weights=2000).run(None, {})[0]
    want = onnx_session(model, use_kernels=False).run(None, {})[0]  # ORT's own standard ops
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    monkeypatch.setenv(limits.ENV_MAX_VIRTUAL_WEIGHTS, "1999")
    with pytest.raises(Exception, match="limit of 1999 per node"):
        onnx_session(model, decode_at_load=False)
    kwarg_wins = onnx_session(model, decode_at_load=False, max_virtual_weights=2000)
    assert kwarg_wins.run(None, {})[0].shape == (40, 5, 10)


def test_decoded_bytes_budget_is_per_session():
    model = hashed_weight_model([[10, 10], [10, 10]])  # 400 decoded bytes each
    with pytest.raises(Exception, match=r"the decoded weight \(shape \[10, 10\]\) needs 400 bytes; with the 400 bytes "
                       r"already decoded.*limit of 799 decoded bytes.*EDGEPACK_MAX_DECODED_BYTES"):
        onnx_session(model, decode_at_load=False, max_decoded_bytes=799)
    first = onnx_session(model, decode_at_load=False, max_decoded_bytes=800)
    second = onnx_session(model, decode_at_load=False, max_decoded_bytes=800)  # its own budget
    for a, b in zip(first.run(None, {}), second.run(None, {})):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("env", ENVS)
def test_bad_env_value_is_an_ort_error_naming_the_variable(monkeypatch, env, value):
    """The C library parses the environment as strictly as limits.py does."""
    monkeypatch.setenv(env, value)
    with pytest.raises(Exception, match=env):
        onnx_session(hashed_weight_model([[3, 4]]), decode_at_load=False)


def test_ort_output_limit():
    """Y = X·Vᵀ with in=1, out=64: a tiny weight can still ask for a huge output."""
    attrs = dict(in_features=1, out_features=64, num_hashes=1, seed=3, mode=1)
    model = matmul_model("HashedMatMul", {"buckets": RNG.standard_normal(5).astype(np.float32), "recon": IDENTITY,
                                           "bias": np.zeros(64, np.float32)}, attrs)
    sess = onnx_session(model, decode_at_load=False, max_decoded_bytes=4096)
    x = RNG.standard_normal((16, 1)).astype(np.float32)
    want = onnx_session(model, use_kernels=False).run(None, {"X": x})[0]
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match=r"node 'm'.*output 'Y' of shape \[17, 64\] needs 4352 bytes.*limit of 4096"):
        sess.run(None, {"X": np.zeros((17, 1), np.float32)})


def test_circulant_spectra_counted_for_constant_and_run_time_blocks():
    blocks = RNG.standard_normal((2, 2, 8)).astype(np.float32)  # spectra: 4 * 2*2*(8+2) = 160 bytes
    attrs = dict(in_features=16, out_features=16)
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    weights = {"blocks": blocks, "bias": np.zeros(16, np.float32)}
    const = matmul_model("CirculantMatMul", weights, attrs)
    with pytest.raises(Exception, match=r"block spectra \(in_features=16 x out_features=16, input 'blocks' "
                                        r"\[2, 2, 8\]\) needs 160 bytes.*limit of 159"):
        onnx_session(const, max_decoded_bytes=159)
    fed = matmul_model("CirculantMatMul", weights, attrs, runtime_weights=("blocks",))
    sess = onnx_session(fed, max_decoded_bytes=159)  # the size is only known when blocks arrive
    with pytest.raises(Exception, match=r"block spectra \(in_features=16 x out_features=16, input 'blocks' "
                                        r"\[2, 2, 8\]\) needs 160 bytes.*limit of 159"):
        sess.run(None, {"X": x, "blocks": blocks})
    want = onnx_session(fed, use_kernels=False).run(None, {"X": x, "blocks": blocks})[0]
    got = onnx_session(fed, max_decoded_bytes=160).run(None, {"X": x, "blocks": blocks})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_virtual_weights_checked_at_session_creation():
    attrs = dict(in_features=1 << 16, out_features=1 << 13, num_hashes=1, seed=0, mode=1)  # 2^29 > 2^28
    model = matmul_model("HashedMatMul", {"buckets": np.ones(4, np.float32)}, attrs)
    with pytest.raises(Exception, match=r"node 'm'.*in_features=65536 x out_features=8192 would decode "
                                        r"536870912 virtual weights.*limit of 268435456"):
        onnx_session(model, decode_at_load=False)


@pytest.mark.parametrize("kwargs", [dict(max_virtual_weights=0), dict(max_decoded_bytes=-1),
                                    dict(max_virtual_weights="many"), dict(max_decoded_bytes=True)])
def test_bad_kwargs(kwargs):
    with pytest.raises(limits.LimitError, match=next(iter(kwargs))):
        onnx_session(hashed_weight_model([[3, 4]]), **kwargs)


def test_limits_do_not_apply_to_the_fallback_path():
    with pytest.raises(limits.LimitError, match="fallback"):
        onnx_session(hashed_weight_model([[3, 4]]), use_kernels=False, max_virtual_weights=10)



def test_budget_is_shared_by_sessions_of_one_registration_and_given_back(monkeypatch):
    """One SessionOptions registration = one budget; destroying a session returns its bytes."""
    monkeypatch.setenv(limits.ENV_MAX_DECODED_BYTES, "800")
    so = ort.SessionOptions()
    so.register_custom_ops_library(ort_library_path())
    model = hashed_weight_model([[10, 10]])  # 400 bytes
    first = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    second = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="with the 800 bytes already decoded"):
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    want = first.run(None, {})[0]
    del first
    third = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(third.run(None, {})[0], want)
    np.testing.assert_array_equal(second.run(None, {})[0], want)
