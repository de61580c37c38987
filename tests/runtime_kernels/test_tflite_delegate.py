"""libedgepack_tflite_delegate in a real TFLite runtime (LiteRT in the main venv, tflite-runtime
2.14 in .venv-tflite214): every ai.edgepack op against numpy references written from
docs/ops.md (xxhash for the hash), through the delegate and, on tflite-runtime, through the
InterpreterWithCustomOps registrar; bad models fail with our messages, not crashes."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tflite_models as tm
import xxhash

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(2024)


def _load_runtime_module():
    try:
        from edgepack.runtime_kernels import tflite_runtime

        return tflite_runtime
    except ImportError:  # a venv without edgepack installed (e.g. .venv-tflite214)
        spec = importlib.util.spec_from_file_location(
            "edgepack_tflite_runtime", ROOT / "runtime_kernels/tflite_runtime.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


tr = _load_runtime_module()
try:
    RUNTIME, INTERP = tr._runtime()
except ImportError:
    pytest.skip("neither ai-edge-litert nor tflite-runtime is installed", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _library():
    try:
        tr.delegate_library_path()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (build it first)")


ROUTES = ["delegate", "custom_ops"]


@pytest.fixture(params=ROUTES)
def route(request):
    if request.param == "custom_ops" and RUNTIME != "tflite_runtime":
        pytest.skip("the registrar needs tflite-runtime (LiteRT hides MutableOpResolver::AddCustom)")
    return request.param


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def run(tmp_path, model: bytes, feeds: list[np.ndarray], route="delegate", resize=False):
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    it = tr.tflite_interpreter(path, use_delegate=route == "delegate", decode_at_load=False)
    if resize:
        for d, x in zip(it.get_input_details(), feeds):
            it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def close(got, want, tol=2e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want).max() if got.size else 0.0
    assert err <= tol * max(1.0, np.abs(want).max()), err


# ---- references (docs/ops.md) ----------------------------------------------------------------


def hashed_v(rows, cols, buckets, recon, K, seed, signed=1):
    z = np.empty((rows * cols, K))
    for k in range(K):
        s = (seed + k) % 2**32
        h = np.array(
            [
                xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed=s)
                for i in range(rows)
                for j in range(cols)
            ],
            np.int64,
        )
        sign = np.where(((h >> 31) & 1) & signed, -1.0, 1.0)
        z[:, k] = sign * buckets[h % len(buckets)]
    if recon is None:
        v = z[:, 0]
    else:
        H = (len(recon) - 1) // (K + 2)
        w1, b1 = recon[: H * K].reshape(H, K), recon[H * K : H * K + H]
        w2, b2 = recon[H * K + H : H * K + 2 * H], recon[-1]
        v = np.maximum(z @ w1.T + b1, 0) @ w2 + b2
    return v.reshape(rows, cols)


def circulant_w(blocks):
    p, q, b = blocks.shape
    idx = (np.arange(b)[:, None] - np.arange(b)[None, :]) % b
    return np.block([[blocks[i, j][idx] for j in range(q)] for i in range(p)])


def ldr_w(G, H):
    n = G.shape[1]
    a, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")

    def z(v, f):
        return np.where(a >= c, v[(a - c) % n], f * v[(n + a - c) % n])

    return sum(z(g, 1.0) @ z(h, -1.0) for g, h in zip(G.astype(np.float64), H.astype(np.float64)))


def linear(X, W, in_f, out_f, bias=None):
    Xp = np.zeros(X.shape[:-1] + (W.shape[1],))
    Xp[..., :in_f] = X
    Y = (Xp @ W.T)[..., :out_f]
    return Y + bias if bias is not None else Y


# ---- every op ----------------------------------------------------------------------------------

IDENTITY = np.array([1, -1, 0, 0, 1, -1, 0], np.float32)
HASHED = [  # (x shape, in, out, B, K, recon H or None/'id', seed, signed, bias, mode)
    ((1, 37), 37, 19, 101, 1, None, 77, 1, True, 0),
    ((2, 3, 37), 37, 19, 50, 1, "id", 77, 1, False, 1),
    ((5, 37), 37, 19, 101, 4, 3, 4294967290, 1, True, 0),
    ((5, 37), 37, 19, 101, 4, 3, 4294967290, 1, True, 1),
    ((3, 13), 13, 7, 11, 3, 2, 5, 0, True, 0),
    ((1, 1), 1, 1, 1, 1, None, 0, 1, False, 1),
]


@pytest.mark.parametrize("case", HASHED, ids=lambda c: f"x{c[0]}-K{c[4]}-mode{c[9]}")
def test_hashed_matmul(tmp_path, route, case):
    xs, in_f, out_f, B, K, H, seed, signed, has_bias, mode = case
    buckets = f32(B)
    recon = IDENTITY if H == "id" else (f32(H * (K + 2) + 1) if H else None)
    bias = f32(out_f) if has_bias else None
    model = tm.single_op(
        "HashedMatMul",
        xs,
        [("buckets", buckets), ("recon", recon), ("bias", bias)],
        dict(in_features=in_f, out_features=out_f, num_hashes=K, seed=seed, signed=signed, mode=mode),
        trailing_absent=True,
    )
    X = f32(*xs)
    V = hashed_v(out_f, in_f, buckets, recon, K, seed, signed)
    close(run(tmp_path, model, [X], route), linear(X, V, in_f, out_f, bias))


def test_hashed_weight_into_fully_connected(tmp_path, route):
    """HashedWeight feeding a builtin FULLY_CONNECTED (what a converted Linear looks like)."""
    buckets, recon, bias = f32(64), f32(2 * 4 + 1), f32(9)
    g = tm.Graph()
    x = g.tensor("X", (3, 10))
    w = g.tensor("W", (9, 10))
    y = g.tensor("Y", (3, 9))
    g.ops.append(
        tm.Op(
            "ai.edgepack.HashedWeight",
            [g.const("buckets", buckets), g.const("recon", recon)],
            [w],
            tm.options(shape=[9, 10], num_hashes=2, seed=3, signed=1),
        )
    )
    g.ops.append(tm.Op(tm.FULLY_CONNECTED, [x, w, g.const("bias", bias)], [y]))
    g.inputs, g.outputs = [x], [y]
    X = f32(3, 10)
    close(run(tmp_path, tm.build(g), [X], route), X @ hashed_v(9, 10, buckets, recon, 2, 3).T + bias)


def test_hashed_weight_conv_shape(tmp_path, route):
    buckets = f32(33)
    g = tm.Graph()
    w = g.tensor("W", (1,))
    g.ops.append(
        tm.Op(
            "ai.edgepack.HashedWeight",
            [g.const("buckets", buckets)],
            [w],
            tm.options(shape=[7, 3, 5], num_hashes=1, seed=11),
        )
    )
    g.outputs = [w]
    close(run(tmp_path, tm.build(g), [], route), hashed_v(7, 15, buckets, None, 1, 11).reshape(7, 3, 5))


@pytest.mark.parametrize(
    "xs,in_f,out_f,pqb,bias", [((5, 45), 45, 40, (3, 3, 16), True), ((1, 3), 3, 5, (2, 1, 4), False)]
)
def test_circulant(tmp_path, route, xs, in_f, out_f, pqb, bias):
    blocks, b = f32(*pqb), f32(out_f) if bias else None
    model = tm.single_op(
        "CirculantMatMul",
        xs,
        [("blocks", blocks), ("bias", b)],
        dict(in_features=in_f, out_features=out_f),
        trailing_absent=True,
    )
    X = f32(*xs)
    close(run(tmp_path, model, [X], route), linear(X, circulant_w(blocks), in_f, out_f, b))


@pytest.mark.parametrize(
    "xs,in_f,out_f,rn,bias", [((2, 2, 30), 30, 27, (2, 32), True), ((1, 5), 5, 7, (1, 8), False)]
)
def test_ldr(tmp_path, route, xs, in_f, out_f, rn, bias):
    G, H, b = f32(*rn), f32(*rn), f32(out_f) if bias else None
    model = tm.single_op(
        "LDRMatMul", xs, [("G", G), ("H", H), ("bias", b)], dict(in_features=in_f, out_features=out_f)
    )  # absent bias as index -1
    X = f32(*xs)
    close(run(tmp_path, model, [X], route), linear(X, ldr_w(G, H), in_f, out_f, b))


def test_chain_in_one_partition_then_builtin(tmp_path, route):
    """HashedMatMul -> LDRMatMul (one delegate partition, intermediate kept inside) -> ADD."""
    buckets, recon, G, H, c = f32(40), f32(3 * 3 + 1), f32(2, 16), f32(2, 16), f32(11)
    g = tm.Graph()
    x, h, y, z = g.tensor("X", (4, 13)), g.tensor("h", (4, 9)), g.tensor("y", (4, 11)), g.tensor("Z", (4, 11))
    g.ops.append(
        tm.Op(
            "ai.edgepack.HashedMatMul",
            [x, g.const("buckets", buckets), g.const("recon", recon)],
            [h],
            tm.options(in_features=13, out_features=9, num_hashes=1, seed=9, signed=1, mode=0),
        )
    )
    g.ops.append(
        tm.Op(
            "ai.edgepack.LDRMatMul",
            [h, g.const("G", G), g.const("H", H)],
            [y],
            tm.options(in_features=9, out_features=11),
        )
    )
    g.ops.append(tm.Op(tm.ADD, [y, g.const("c", c)], [z]))
    g.inputs, g.outputs = [x], [z]
    X = f32(4, 13)
    hid = X @ hashed_v(9, 13, buckets, recon, 1, 9).T
    close(run(tmp_path, tm.build(g), [X], route), linear(hid, ldr_w(G, H), 9, 11) + c)


def test_resize_batch(tmp_path, route):
    buckets = f32(60)
    model = tm.single_op(
        "HashedMatMul",
        (1, 8),
        [("buckets", buckets)],
        dict(in_features=8, out_features=6, num_hashes=1, seed=1, mode=0),
    )
    X = f32(7, 8)
    close(run(tmp_path, model, [X], route, resize=True), X @ hashed_v(6, 8, buckets, None, 1, 1).T)


# ---- failures ------------------------------------------------------------------------------------

HM = dict(in_features=8, out_features=6, num_hashes=1, seed=1, signed=1, mode=0)


def _float_in_features() -> bytes:
    b = tm.flexbuffers.Builder()
    with b.Map():
        b.Float("in_features", 8.0)
        b.Int("out_features", 6)
        b.Int("num_hashes", 1)
        b.Int("seed", 1)
    return bytes(b.Finish())


BAD = {
    "truncated_options": (tm.options(**HM)[:-7], (4, 8), 1, "custom options"),
    "wrong_type": (_float_in_features(), (4, 8), 1, "attribute 'in_features' must be an int, got float"),
    "missing_key": (
        tm.options(**{k: v for k, v in HM.items() if k != "seed"}),
        (4, 8),
        1,
        r"missing required int attribute 'seed' \(valid: 0\.\.4294967295\)",
    ),
    "out_of_range": (tm.options(**dict(HM, mode=3)), (4, 8), 1, r"'mode' = 3; must be in \[0, 1\]"),
    "x_shape": (tm.options(**HM), (4, 9), 1, "last axis must equal in_features=8"),
    "too_few_inputs": (tm.options(**HM), (4, 8), 0, "has 1 inputs; must have 2..5"),
    "recon_missing_k4": (tm.options(**dict(HM, num_hashes=4)), (4, 8), 1, "required when num_hashes=4"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_models_raise_our_message(tmp_path, route, name):
    opts, xs, n_weights, msg = BAD[name]
    weights = [("buckets", f32(20))][:n_weights]
    model = tm.single_op("HashedMatMul", xs, weights, opts)
    with pytest.raises((RuntimeError, ValueError), match=msg) as e:
        run(tmp_path, model, [f32(*xs)], route)
    assert "HashedMatMul node" in str(e.value)


def test_bad_weight_shapes(tmp_path, route):
    model = tm.single_op(
        "CirculantMatMul", (2, 12), [("blocks", f32(2, 2, 6))], dict(in_features=12, out_features=8)
    )
    with pytest.raises((RuntimeError, ValueError), match="b a power of two >= 4"):
        run(tmp_path, model, [f32(2, 12)], route)
    model = tm.single_op(
        "LDRMatMul", (2, 5), [("G", f32(1, 8)), ("H", f32(2, 8))], dict(in_features=5, out_features=5)
    )
    with pytest.raises((RuntimeError, ValueError), match="must both be \\[r, n\\]"):
        run(tmp_path, model, [f32(2, 5)], route)


def test_unknown_edgepack_op_is_claimed_and_rejected(tmp_path):
    g = tm.Graph()
    x, y = g.tensor("X", (2, 4)), g.tensor("Y", (2, 4))
    g.ops.append(tm.Op("ai.edgepack.NoSuchOp", [x], [y], tm.options(in_features=4)))
    g.inputs, g.outputs = [x], [y]
    with pytest.raises((RuntimeError, ValueError), match="unknown custom op 'ai.edgepack.NoSuchOp'"):
        run(tmp_path, tm.build(g), [f32(2, 4)])


def test_without_delegate_tflite_reports_unresolved_custom_op(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(tm.single_op("HashedMatMul", (2, 8), [("buckets", f32(20))], HM))
    with pytest.raises((RuntimeError, ValueError), match="(?i)unresolved custom op"):
        it = INTERP.Interpreter(model_path=str(path))
        it.allocate_tensors()


def test_delegate_options(tmp_path):
    lib = str(tr.delegate_library_path())
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        INTERP.load_delegate(lib, {"bogus": "1"})
    d = INTERP.load_delegate(lib, {"kernels": "ref"})
    path = tmp_path / "m.tflite"
    buckets = f32(20)
    path.write_bytes(tm.single_op("HashedMatMul", (2, 8), [("buckets", buckets)], HM))
    it = INTERP.Interpreter(model_path=str(path), experimental_delegates=[d])
    it.allocate_tensors()
    X = f32(2, 8)
    it.set_tensor(it.get_input_details()[0]["index"], X)
    it.invoke()
    close(it.get_tensor(it.get_output_details()[0]["index"]), X @ hashed_v(6, 8, buckets, None, 1, 1).T)
    INTERP.load_delegate(lib, {"kernels": "auto"})  # leave the process on the default variant


# ---- decode limits and tensor checks (issue 9) ---------------------------------------------------

LIMIT_ERRORS = (RuntimeError, ValueError)
_CAPPED = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
try:
    from edgepack.runtime_kernels import tflite_runtime as tr
except ImportError:
    import importlib.util
    spec = importlib.util.spec_from_file_location("tr", {module!r})
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
result = {{}}
try:
    tr.tflite_interpreter({path!r}, use_delegate={use_delegate}, decode_at_load=False).invoke()
    result["error"] = None
except Exception as e:
    result["error"] = str(e)
result["maxrss_mb"] = [int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')][0] / 1024
print("RESULT " + json.dumps(result))
"""


def capped_interpreter(tmp_path, model: bytes, route: str, cap_bytes: int = 3 << 30) -> dict:
    """Build, allocate and invoke ``model`` in a fresh Python capped at ``cap_bytes`` of address
    space: {"error": message or None, "maxrss_mb": peak RSS}. A crash fails the assertion."""
    path = tmp_path / "capped.tflite"
    path.write_bytes(model)
    code = _CAPPED.format(cap=cap_bytes, module=str(ROOT / "runtime_kernels/tflite_runtime.py"), path=str(path),
                          use_delegate=route == "delegate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPACK_MAX_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def hashed_weights_graph(shapes, buckets=None) -> bytes:
    """One HashedWeight per shape (seed 11 + i), each output a graph output."""
    g = tm.Graph()
    b = g.const("buckets", buckets if buckets is not None else np.linspace(-1, 1, 33, dtype=np.float32))
    for i, shape in enumerate(shapes):
        w = g.tensor(f"W{i}", (1,))
        g.ops.append(tm.Op("ai.edgepack.HashedWeight", [b], [w], tm.options(shape=list(shape), num_hashes=1,
                                                                            seed=11 + i)))
        g.outputs.append(w)
    return tm.build(g)


def interp_with(tmp_path, model: bytes, route: str, **limits):
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    return tr.tflite_interpreter(path, use_delegate=route == "delegate", decode_at_load=False, **limits)


@pytest.fixture
def no_limit_env(monkeypatch):
    for name in ("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "EDGEPACK_MAX_DECODED_BYTES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_bomb_is_refused_before_allocating(tmp_path, route):
    """Issue 9: HashedWeight shape [2, 2^31-1] made the delegate allocate 16 GiB; now prepare fails
    with the limit, in a process capped at 3 GiB of address space."""
    model = hashed_weights_graph([[2, 2**31 - 1]])
    result = capped_interpreter(tmp_path, model, route)
    err = result["error"] or ""
    for part in ("HashedWeight node", "shape [2, 2147483647]", "4294967294 virtual weights", "limit of 268435456",
                 "EDGEPACK_MAX_VIRTUAL_WEIGHTS"):
        assert part in err, (part, err)
    assert result["maxrss_mb"] < 1024


def test_limits_from_kwargs_and_env(tmp_path, route, no_limit_env):
    model = hashed_weights_graph([[7, 3, 5]])
    with pytest.raises(LIMIT_ERRORS, match=r"shape \[7, 3, 5\] would decode 105 virtual weights.*limit of 104"):
        interp_with(tmp_path, model, route, max_virtual_weights=104)
    it = interp_with(tmp_path, model, route, max_virtual_weights=105)
    it.invoke()
    buckets = np.linspace(-1, 1, 33, dtype=np.float32)
    close(it.get_tensor(it.get_output_details()[0]["index"]), hashed_v(7, 15, buckets, None, 1, 11).reshape(7, 3, 5))
    no_limit_env.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", "104")
    with pytest.raises(LIMIT_ERRORS, match="limit of 104 per node"):
        interp_with(tmp_path, model, route)
    interp_with(tmp_path, model, route, max_virtual_weights=105)  # the keyword wins


def test_decoded_bytes_budget_per_interpreter(tmp_path, route, no_limit_env):
    model = hashed_weights_graph([[10, 10], [10, 10]])  # 400 decoded bytes each
    with pytest.raises(LIMIT_ERRORS, match=r"needs 400 bytes; with the 400 bytes already decoded.*limit of 799"):
        interp_with(tmp_path, model, route, max_decoded_bytes=799)
    first = interp_with(tmp_path, model, route, max_decoded_bytes=800)
    second = interp_with(tmp_path, model, route, max_decoded_bytes=800)  # its own budget
    first.invoke(), second.invoke()
    for d in first.get_output_details():
        np.testing.assert_array_equal(first.get_tensor(d["index"]), second.get_tensor(d["index"]))


def test_output_limit(tmp_path, route, no_limit_env):
    model = tm.single_op("HashedMatMul", (17, 1), [("buckets", f32(5))],
                         dict(in_features=1, out_features=64, num_hashes=1, seed=3, mode=1))
    with pytest.raises(LIMIT_ERRORS, match=r"output 'Y' of shape \[17, 64\] needs 4352 bytes.*limit of 4096"):
        interp_with(tmp_path, model, route, max_decoded_bytes=4096)


@pytest.mark.parametrize("value", ["0", "12x", "-3", "1e6", ""])
def test_bad_limit_option_or_env_names_it(tmp_path, no_limit_env, value):
    lib = str(tr.delegate_library_path())
    with pytest.raises(ValueError, match="max_decoded_bytes"):
        INTERP.load_delegate(lib, {"max_decoded_bytes": value})
    no_limit_env.setenv("EDGEPACK_MAX_VIRTUAL_WEIGHTS", value)
    with pytest.raises(ValueError, match="EDGEPACK_MAX_VIRTUAL_WEIGHTS"):
        INTERP.load_delegate(lib)


def test_bad_env_fails_custom_ops_at_prepare(tmp_path, no_limit_env):
    if RUNTIME != "tflite_runtime":
        pytest.skip("the registrar needs tflite-runtime")
    no_limit_env.setenv("EDGEPACK_MAX_DECODED_BYTES", "lots")
    with pytest.raises(RuntimeError, match="EDGEPACK_MAX_DECODED_BYTES='lots' is not a positive decimal integer"):
        interp_with(tmp_path, hashed_weights_graph([[3, 4]]), "custom_ops")


def test_constant_output_is_refused_not_written(tmp_path, route):
    """The model gives the op's output a data buffer (read-only, mmapped): writing it crashed."""
    g = tm.Graph()
    w = g.const("W", np.zeros((3, 4), np.float32))
    g.ops.append(tm.Op("ai.edgepack.HashedWeight", [g.const("buckets", f32(4))], [w],
                       tm.options(shape=[3, 4], num_hashes=1, seed=0)))
    g.outputs = [w]
    err = capped_interpreter(tmp_path, tm.build(g), route)["error"] or ""
    assert "output (tensor 0) has allocation type kTfLiteMmapRo" in err and "not a constant" in err, err


def test_constant_input_longer_than_its_shape_is_refused(tmp_path, route):
    g = tm.Graph()
    w = g.tensor("W", (1,))
    g.tensors.append(("buckets", (4,), f32(8)))  # declared [4], 8 floats of data
    g.ops.append(tm.Op("ai.edgepack.HashedWeight", [len(g.tensors) - 1], [w],
                       tm.options(shape=[3, 4], num_hashes=1, seed=0)))
    g.outputs = [w]
    ours = r"input 'buckets' \(tensor 1, kTfLiteMmapRo\) holds 32 bytes; its shape \[4\] needs exactly 16"
    # tflite-runtime 2.14 refuses such a file itself; LiteRT 2.x loads it and leaves the check to the op
    theirs = r"required_bytes != bytes \(16 != 32\)"
    with pytest.raises(LIMIT_ERRORS, match=theirs if RUNTIME == "tflite_runtime" else ours):
        run(tmp_path, tm.build(g), [], route)
