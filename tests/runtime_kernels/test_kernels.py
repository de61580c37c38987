"""The C kernels (every variant) against independent references: xxhash, numpy.fft and dense
numpy math built from the definitions in DESIGN §3, and the torch layers' dense_weight()."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import xxhash

from edgepack import runtime_kernels as rk

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module", autouse=True)
def _library():
    path = rk.library_path()
    assert path.is_file(), f"kernel library missing at {path}: run `make` first"
    rk.load()


def _variants():
    return rk.variants()


@pytest.fixture(params=["ref", "avx2", "avx512", "neon"])
def variant(request):
    if request.param not in rk.variants():
        pytest.skip(f"variant {request.param} not available on this CPU")
    with rk.use_variant(request.param):
        yield request.param


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))) if a.size else 0.0
    assert err <= tol, f"relative error {err:.3g} > {tol}"


# ---- references ----------------------------------------------------------------------------------
def ref_hash(i: int, j: int, seed: int) -> int:
    return xxhash.xxh32_intdigest(
        int(i).to_bytes(4, "little") + int(j).to_bytes(4, "little"), seed & 0xFFFFFFFF
    )


def ref_hashed_matrix(buckets, rows, cols, seed, num_hashes, signed, recon=None):
    V = np.empty((rows, cols))
    k_ = num_hashes
    for i in range(rows):
        for j in range(cols):
            z = []
            for k in range(k_):
                h = ref_hash(i, j, seed + k)
                v = float(buckets[h % len(buckets)])
                z.append(-v if signed and h >> 31 else v)
            if k_ == 1:
                V[i, j] = z[0]
            else:
                H = (len(recon) - 1) // (k_ + 2)
                w1 = np.asarray(recon[: H * k_], np.float64).reshape(H, k_)
                b1 = np.asarray(recon[H * k_ : H * k_ + H], np.float64)
                w2 = np.asarray(recon[H * k_ + H : H * k_ + 2 * H], np.float64)
                V[i, j] = recon[-1] + w2 @ np.maximum(w1 @ np.array(z) + b1, 0)
    return V


def f_circulant(v, f):
    n = len(v)
    Z = np.empty((n, n))
    for a in range(n):
        for c in range(n):
            Z[a, c] = v[a - c] if a >= c else f * v[n + a - c]
    return Z


def circulant_dense(blocks, in_f, out_f):
    p, q, b = blocks.shape
    W = np.zeros((p * b, q * b))
    r, s = np.meshgrid(np.arange(b), np.arange(b), indexing="ij")
    for i in range(p):
        for j in range(q):
            W[i * b : (i + 1) * b, j * b : (j + 1) * b] = blocks[i, j][(r - s) % b]
    return W[:out_f, :in_f]


def ldr_dense(G, H, in_f, out_f):
    W = sum(f_circulant(g, 1.0) @ f_circulant(h, -1.0) for g, h in zip(G, H))
    return W[:out_f, :in_f]


def randf(*shape):
    return RNG.uniform(-1, 1, size=shape).astype(np.float32)


# ---- hashing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 100])
@pytest.mark.parametrize("seed", [0, 1, 0x9747B28C, 0xFFFFFFFF])
def test_xxh32_matches_xxhash(length, seed):
    data = RNG.integers(0, 256, length, dtype=np.uint8).tobytes()
    assert rk.xxh32(data, seed) == xxhash.xxh32_intdigest(data, seed)


@pytest.mark.parametrize("num_hashes,signed", [(1, True), (1, False), (3, True)])
def test_hash_indices(num_hashes, signed):
    rows, cols, B, seed = 7, 13, 37, 0xFFFFFFFE
    idx, sign = rk.hash_indices(rows, cols, B, seed, num_hashes, signed)
    assert idx.shape == sign.shape == (num_hashes, rows, cols)
    for k in range(num_hashes):
        for i in range(rows):
            for j in range(cols):
                h = ref_hash(i, j, seed + k)
                assert idx[k, i, j] == h % B
                assert sign[k, i, j] == (-1 if signed and h >> 31 else 1)


HASH_CASES = [  # rows, cols, buckets, num_hashes, signed, seed, hidden
    (1, 1, 1, 1, True, 0, 0),
    (5, 9, 7, 1, True, 3, 0),
    (17, 31, 64, 1, False, 0xFFFFFFFF, 0),
    (8, 21, 100, 2, True, 11, 3),
    (6, 10, 50, 4, False, 5, 1),
]


@pytest.mark.parametrize("case", HASH_CASES)
def test_hashed_decode_and_matmul(variant, case):
    rows, cols, B, K, signed, seed, hidden = case
    buckets = randf(B)
    recon = randf(hidden * (K + 2) + 1) if K > 1 else None
    V = ref_hashed_matrix(buckets, rows, cols, seed, K, signed, recon)
    kw = dict(seed=seed, num_hashes=K, signed=signed, recon=recon)
    _close(rk.hashed_decode(buckets, rows, cols, **kw), V, 1e-6)
    for n in (1, 5):
        x, bias = randf(n, cols), randf(rows)
        for mode in ("expand", "stream"):
            _close(rk.hashed_matmul(x, buckets, rows, cols, bias=bias, mode=mode, **kw), x @ V.T + bias)
            _close(rk.hashed_matmul(x, buckets, rows, cols, mode=mode, **kw), x @ V.T)
    x3 = randf(2, 3, cols)  # leading dims are kept
    assert rk.hashed_matmul(x3, buckets, rows, cols, **kw).shape == (2, 3, rows)


# ---- dense / FFT / structured --------------------------------------------------------------------
@pytest.mark.parametrize("n,rows,cols", [(1, 1, 1), (1, 7, 3), (3, 5, 9), (8, 33, 31), (9, 64, 100)])
def test_dense(variant, n, rows, cols):
    x, W, b = randf(n, cols), randf(rows, cols), randf(rows)
    _close(rk.dense_matmul(x, W, b), x.astype(np.float64) @ W.T + b)
    _close(rk.dense_matmul(x, W), x.astype(np.float64) @ W.T)


@pytest.mark.parametrize("n", [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
def test_rfft_irfft(variant, n):
    x = randf(3, n)
    X = rk.rfft(x)
    _close(X.view(np.float32), np.fft.rfft(x.astype(np.float64)).astype(np.complex128).view(np.float64), 1e-5)
    Y = np.fft.rfft(randf(2, n).astype(np.float64))
    _close(rk.irfft(Y, n), np.fft.irfft(Y, n), 1e-5)


CIRC_CASES = [  # p, q, b, in, out, batch
    (1, 1, 4, 4, 4, 1),
    (1, 1, 4, 3, 2, 3),
    (2, 3, 8, 21, 13, 1),
    (3, 2, 16, 32, 48, 4),
    (2, 2, 64, 100, 77, 5),
    (1, 1, 512, 512, 500, 2),
]


@pytest.mark.parametrize("case", CIRC_CASES)
def test_circulant(variant, case):
    p, q, b, in_f, out_f, n = case
    blocks, x, bias = randf(p, q, b), randf(n, in_f), randf(out_f)
    W = circulant_dense(blocks.astype(np.float64), in_f, out_f)
    _close(rk.circulant_matmul(x, blocks, out_f, bias), x @ W.T + bias, 2e-5)
    _close(rk.circulant_matmul(x, blocks, out_f), x @ W.T, 2e-5)


LDR_CASES = [(1, 4, 4, 4, 1), (2, 4, 3, 2, 3), (3, 16, 11, 16, 4), (2, 64, 50, 63, 5), (2, 128, 128, 128, 1)]


@pytest.mark.parametrize("case", LDR_CASES)
def test_ldr(variant, case):
    r, n, in_f, out_f, batch = case
    G, H, x, bias = randf(r, n), randf(r, n), randf(batch, in_f), randf(out_f)
    W = ldr_dense(G.astype(np.float64), H.astype(np.float64), in_f, out_f)
    _close(rk.ldr_matmul(x, G, H, out_f, bias), x @ W.T + bias, 5e-5)


def test_variants_agree_with_ref():
    x, blocks = randf(3, 40), randf(2, 3, 16)
    with rk.use_variant("ref"):
        want = rk.circulant_matmul(x, blocks, 30)
    for v in rk.variants():
        with rk.use_variant(v):
            _close(rk.circulant_matmul(x, blocks, 30), want, 1e-5)


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: rk.rfft(np.zeros(12, np.float32)), "power of two"),
        (lambda: rk.rfft(np.zeros(2, np.float32)), "power of two"),
        (lambda: rk.hashed_decode(np.zeros(0, np.float32), 3, 3), "num_buckets"),
        (
            lambda: rk.hashed_decode(
                np.zeros(4, np.float32), 3, 3, num_hashes=2, recon=np.zeros(8, np.float32)
            ),
            "recon_len",
        ),
        (lambda: rk.hashed_decode(np.zeros(4, np.float32), 3, 3, num_hashes=2), "recon"),
        (lambda: rk.hashed_decode(np.zeros(4, np.float32), 0, 3), "rows"),
        (
            lambda: rk.circulant_matmul(np.zeros((1, 9), np.float32), np.zeros((1, 2, 6), np.float32), 4),
            "power of two",
        ),
        (
            lambda: rk.circulant_matmul(np.zeros((1, 9), np.float32), np.zeros((1, 2, 4), np.float32), 4),
            "in_features",
        ),
        (
            lambda: rk.ldr_matmul(
                np.zeros((1, 8), np.float32), np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32), 8
            ),
            "rank",
        ),
        (lambda: rk.set_variant("sse9"), "available"),
        (
            lambda: rk.hashed_matmul(np.zeros((1, 3), np.float32), np.ones(4, np.float32), 2, 3, mode="lazy"),
            "mode",
        ),
    ],
)
def test_errors_raise_kernel_error(call, needle):
    with pytest.raises(rk.KernelError, match=needle):
        call()
    assert issubclass(rk.KernelError, ValueError)


def test_env_forces_reference():
    code = "from edgepack import runtime_kernels as rk; print(rk.variant())"
    env = dict(os.environ, EDGEPACK_KERNELS="ref")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ref"


def test_missing_library_message(monkeypatch, tmp_path):
    from edgepack.runtime_kernels import loader

    monkeypatch.setenv("EDGEPACK_LIB_DIR", str(tmp_path))
    monkeypatch.setattr(loader, "_lib", None)
    with pytest.raises(FileNotFoundError, match="EDGEPACK_LIB_DIR"):
        rk.load()


# ---- the torch layers of edgepack.compression (the other side of the contract) -------------------
torch = pytest.importorskip("torch")


def _compression():
    try:
        from edgepack import compression  # noqa: F401
        from edgepack.compression import circulant, hashed, ldr
    except ImportError as exc:  # pragma: no cover - the layers are developed alongside
        pytest.skip(f"edgepack.compression not importable: {exc}")
    return hashed, circulant, ldr


@pytest.mark.parametrize(
    "num_hashes,signed,hashed_bias", [(1, True, False), (1, False, True), (3, True, False)]
)
def test_hashed_linear_dense_weight(variant, num_hashes, signed, hashed_bias):
    hashed, _, _ = _compression()
    layer = hashed.HashedLinear(
        23, 11, ratio=0.25, num_hashes=num_hashes, seed=0xFFFFFFF0, signed=signed, hashed_bias=hashed_bias
    )
    with torch.no_grad():
        if layer.recon is not None:
            layer.recon.copy_(torch.randn_like(layer.recon))
        recon = None if layer.recon is None else layer.recon.numpy()
        V = rk.hashed_decode(
            layer.buckets.numpy(),
            layer.rows,
            layer.virtual_cols,
            seed=layer.seed,
            num_hashes=layer.num_hashes,
            signed=layer.signed,
            recon=recon,
        )
        _close(V[:, :23], layer.dense_weight().numpy())
        if hashed_bias:
            _close(V[:, 23], layer.dense_bias().numpy())
        if not hashed_bias:
            x = torch.randn(4, 23)
            kw = dict(seed=layer.seed, num_hashes=layer.num_hashes, signed=layer.signed, recon=recon)
            for mode in ("expand", "stream"):
                y = rk.hashed_matmul(
                    x.numpy(),
                    layer.buckets.numpy(),
                    layer.rows,
                    23,
                    bias=layer.dense_bias().numpy(),
                    mode=mode,
                    **kw,
                )
                _close(y, layer(x).numpy())


@pytest.mark.parametrize("in_f,out_f,b", [(20, 13, 4), (64, 64, 16), (100, 37, 32)])
def test_circulant_linear(variant, in_f, out_f, b):
    _, circulant, _ = _compression()
    layer = circulant.CirculantLinear(in_f, out_f, block_size=b)
    with torch.no_grad():
        _close(circulant_dense(layer.blocks.double().numpy(), in_f, out_f), layer.dense_weight().numpy())
        x = torch.randn(3, in_f)
        y = rk.circulant_matmul(x.numpy(), layer.blocks.numpy(), out_f, layer.bias.numpy())
        _close(y, layer(x).numpy(), 2e-5)


@pytest.mark.parametrize("in_f,out_f,r", [(20, 13, 1), (64, 64, 2), (100, 37, 3)])
def test_ldr_linear(variant, in_f, out_f, r):
    _, _, ldr = _compression()
    layer = ldr.LDRLinear(in_f, out_f, rank=r)
    with torch.no_grad():
        _close(
            ldr_dense(layer.G.double().numpy(), layer.H.double().numpy(), in_f, out_f),
            layer.dense_weight().numpy(),
            1e-5,
        )
        x = torch.randn(2, in_f)
        y = rk.ldr_matmul(x.numpy(), layer.G.numpy(), layer.H.numpy(), out_f, layer.bias.numpy())
        _close(y, layer(x).numpy(), 5e-5)
