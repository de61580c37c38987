"""The analytic estimate: op and byte counts of small ONNX models (hand-built and exported) against
hand counts, in the mode each op really runs."""

from __future__ import annotations

import math
import struct

import numpy as np
import onnx
import pytest
import torch
import xxhash
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgepack.compression import CirculantLinear, HashedLinear, LDRLinear
from edgepack.devices.estimate import Counts, count_work, fft_macs
from edgepack.devices.power import HOROWITZ_45NM, count_macs_and_bytes, estimate_energy, get_power_source
from edgepack.exporter.onnx_export import export_onnx
from edgepack.runtime_kernels.decode_onnx import decoded_onnx
from edgepack.runtime_kernels.op_spec import HASH_HEAD, HASH_TAIL


def weight(name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def save(graph: onnx.GraphProto, path, custom: bool = False) -> str:
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.edgepack", 1)] if custom else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return str(path)


def mlp(path) -> str:
    """x[1,8] → Gemm(W[4,8], b[4]) → Relu → MatMul(W2[4,2]) → y[1,2]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight("w", 4, 8), weight("b", 4), weight("w2", 4, 2)],
    )
    return save(graph, path)


def test_mlp_hand_count(tmp_path):
    macs, moved = count_macs_and_bytes(mlp(tmp_path / "mlp.onnx"))
    assert macs == 4 * 8 + 4 * 2
    # Gemm: x 8 + W 32 + b 4 + h 4; Relu: 4 + 4; MatMul: 4 + W2 8 + y 2 floats — 4 bytes each
    assert moved == 4 * ((8 + 32 + 4 + 4) + (4 + 4) + (4 + 8 + 2))


def test_conv_hand_count(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("w", 3, 2, 3, 3)],
    )
    macs, moved = count_macs_and_bytes(save(graph, tmp_path / "conv.onnx"))
    assert macs == (3 * 3 * 3) * (2 * 3 * 3)  # output elements × (C_in × kh × kw)
    assert moved == 4 * (50 + 54 + 27)


def test_fused_ops_hand_count(tmp_path):
    """HashedMatMul expand reads the dense weight decoded at load; Circulant/LDR their spectra."""
    graph = helper.make_graph(
        [helper.make_node("HashedMatMul", ["x", "buckets", "", "b"], ["h"], domain="ai.edgepack",
                          in_features=8, out_features=4, num_hashes=1, seed=0),
         helper.make_node("CirculantMatMul", ["h", "blocks", "b"], ["c"], domain="ai.edgepack",
                          in_features=4, out_features=4),
         helper.make_node("LDRMatMul", ["c", "G", "H", "b"], ["y"], domain="ai.edgepack",
                          in_features=4, out_features=4)],
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("buckets", 10), weight("b", 4), weight("blocks", 1, 1, 4), weight("G", 2, 4), weight("H", 2, 4)],
    )
    path = save(graph, tmp_path / "fused.onnx", custom=True)
    macs, moved = count_macs_and_bytes(path)
    assert fft_macs(4) == 1.25 * 4 * 2
    hashed = 2 * 8 * 4
    circulant = 2 * ((1 + 1) * 10 + 4 * 1 * 1 * 3)
    ldr = 2 * 2 * 2 * (2 * 10 + 4 * 3)
    assert macs == hashed + circulant + ldr == 64 + 64 + 256
    hashed_bytes = 16 + 8 * 4 + 4 + 8  # x, the dense 8×4 weight decoded at load, bias, output — in floats
    circulant_bytes = 8 + 2 * 1 * 1 * (4 // 2 + 1) + 4 + 8  # the p·q spectra: b/2+1 complex each
    ldr_bytes = 8 + 2 * 2 * (4 // 2 + 1) + 2 * 2 * 4 + 4 + 8  # r rfft spectra of g, r complex spectra of h
    assert moved == 4 * (hashed_bytes + circulant_bytes + ldr_bytes)
    _, load = count_work(path)
    hash_mults = 4 * 2 + 32 * (4 + 2)  # per row: head 2; per weight: tail 4, h mod 10 by reciprocal 2
    hash_ops = 4 * 3 + 32 * (8 + 1 + 2)  # per row: 3; per weight: tail 8, mod 1, sign 2 (signed by default)
    assert (load.int_mults, load.int_ops, load.gathers) == (hash_mults, hash_ops, 32)
    assert load.macs == 1 * 1 * fft_macs(4) + 2 * 3 * fft_macs(4)  # block rffts; rfft(g) + complex FFT(h)
    assert load.bytes_moved == 4 * ((10 + 32) + (4 + 6) + (16 + 28))  # read stored, write decoded / spectra


def test_stream_mode_hashes_every_weight_each_run(tmp_path):
    """Stream mode: buckets (not the dense weight) per run, plus the hash work of every weight;
    nothing at load. B = 10 is not a power of two, signed=0 drops the sign ops."""
    graph = helper.make_graph(
        [helper.make_node("HashedMatMul", ["x", "buckets", "", "b"], ["y"], domain="ai.edgepack",
                          in_features=8, out_features=4, num_hashes=3, seed=0, signed=0, mode=1)],
        "stream",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("buckets", 10), weight("b", 4)],
    )
    inference, load = count_work(save(graph, tmp_path / "stream.onnx", custom=True))
    assert inference.macs == 1 * 8 * 4  # no recon input: no MLP
    assert inference.bytes_moved == 4 * (8 + 10 + 4 + 4)
    assert inference.int_mults == 3 * (4 * 2 + 32 * (4 + 2))
    assert inference.int_ops == 3 * (4 * 3 + 32 * (8 + 1))
    assert inference.gathers == 3 * 32
    assert load == Counts()


def test_hash_op_counts_are_xxh32s():
    """The spec's per-row and per-weight hash costs are the operations of an XXH32 that equals the
    xxhash package on the kernels' 8-byte key u32le(i) ‖ u32le(j)."""
    mask, p2, p3, p4, p5 = 0xFFFFFFFF, 2246822519, 3266489917, 668265263, 374761393
    counted = {"mult": 0, "other": 0}

    def mul(a, b):
        counted["mult"] += 1
        return a * b & mask

    def other(value):
        counted["other"] += 1
        return value & mask

    def word(h, w):  # absorb one 4-byte word: add, rotate, 2 mults
        h = other(h + mul(w, p3))
        return mul(other(h << 17 | h >> 15), p4)

    def avalanche(h):
        for shift, prime in ((15, p2), (13, p3), (16, None)):
            h = other(h ^ other(h >> shift))
            h = mul(h, prime) if prime else h
        return h

    def full(i, j, seed):  # XXH32 of 8 bytes: seed + P5, + len, two words, avalanche
        return avalanche(word(word(other(other(seed + p5) + 8), i), j))

    def head(i, seed):  # the kernels' per-row part: P5 + len folded into one add
        return word(other(seed + (p5 + 8)), i)

    def tail(h, j):
        return avalanche(word(h, j))

    def ops(hash_, *args):
        counted.update(mult=0, other=0)
        return hash_(*args), (counted["mult"], counted["other"])

    for i, j, seed in ((0, 0, 0), (3, 7, 1691), (2**32 - 1, 12345, 2**32 - 1)):
        reference = xxhash.xxh32_intdigest(struct.pack("<II", i, j), seed)
        assert ops(full, i, j, seed) == (reference, (6, 12))
        first, head_ops = ops(head, i, seed)
        assert ops(tail, first, j) == (reference, HASH_TAIL) and head_ops == HASH_HEAD
        assert (HASH_HEAD, HASH_TAIL) == ((2, 3), (4, 8))


def hashed_mlp(kind: str) -> nn.Module:
    """16 → 8 (K=1, B=32) → ReLU → 4 (K=2, H=8, B=16), or the dense layers of the same shapes."""
    torch.manual_seed(0)
    if kind == "dense":
        return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    return nn.Sequential(HashedLinear(16, 8, ratio=1 / 4, seed=3), nn.ReLU(),
                         HashedLinear(8, 4, ratio=1 / 2, num_hashes=2, seed=5)).eval()


# Hand counts of hashed_mlp, per layer: V virtual weights, rows, K hashes, B buckets, H recon hidden.
# Both B are powers of two (index = a mask, 1 op), both layers signed (2 ops). Per row and hash:
# 2 mults + 3 ops; per weight and hash: 4 mults + 8 + 1 + 2 = 11 ops and one gather.
V1, ROWS1, K1, B1 = 16 * 8, 8, 1, 32
V2, ROWS2, K2, B2, H2 = 8 * 4, 4, 2, 16, 8
HASH_MULTS = K1 * (ROWS1 * 2 + V1 * 4) + K2 * (ROWS2 * 2 + V2 * 4)  # 528 + 272
HASH_OPS = K1 * (ROWS1 * 3 + V1 * 11) + K2 * (ROWS2 * 3 + V2 * 11)  # 1432 + 728
GATHERS = K1 * V1 + K2 * V2
RECON_MACS = V2 * H2 * (K2 + 1)  # layer 1's K = 1 identity recon is skipped by the kernels
RECON2 = H2 * (K2 + 2) + 1  # 33 floats
GEMM_MACS = 16 * 8 + 8 * 4  # batch 1
ACTIVATIONS = (16 + 8 + 8) + (8 + 8) + (8 + 4 + 4)  # layer 1 x, bias, y; ReLU in, out; layer 2 x, bias, y
DECODE_LOAD = Counts(RECON_MACS, 4 * ((B1 + V1) + (B2 + RECON2 + V2)), HASH_MULTS, HASH_OPS, GATHERS)


@pytest.mark.parametrize("mode, stream, inference, load", [
    ("kernels", False, Counts(GEMM_MACS, 4 * (ACTIVATIONS + V1 + V2)), DECODE_LOAD),
    ("portable", False, Counts(GEMM_MACS, 4 * (ACTIVATIONS + V1 + V2)), DECODE_LOAD),
    # stream: the ReLU is folded into layer 1 (exporter/passes.py fuse_epilogues), its 8 + 8 not read
    ("kernels", True, Counts(GEMM_MACS + RECON_MACS, 4 * (ACTIVATIONS - 16 + B1 + B2 + RECON2),
                             HASH_MULTS, HASH_OPS, GATHERS), Counts()),
], ids=["expand", "hashed-weight", "stream"])
def test_hashed_mlp_hand_count(tmp_path, mode, stream, inference, load):
    """An exported hashed MLP in each mode: expand and HashedWeight + Gemm read the dense weights
    decoded at load; stream reads buckets (+ recon) and hashes every weight on every run."""
    path = export_onnx(hashed_mlp("hashed"), (torch.zeros(1, 16),), tmp_path / "mlp.onnx", mode=mode, stream=stream)
    assert count_work(path) == (inference, load)
    assert (HASH_MULTS, HASH_OPS, GATHERS, DECODE_LOAD.bytes_moved) == (800, 2160, 192, 964)


def test_decoded_at_load_counts_as_the_decoded_model(tmp_path):
    """HashedWeight + Gemm costs per inference what the model decode-at-load builds (plain Gemms on
    decoded initializers) costs, and what the dense model of the same shapes costs."""
    path = export_onnx(hashed_mlp("hashed"), (torch.zeros(1, 16),), tmp_path / "mlp.onnx", mode="portable")
    decoded, _ = decoded_onnx(path)
    (tmp_path / "decoded.onnx").write_bytes(decoded)
    dense = export_onnx(hashed_mlp("dense"), (torch.zeros(1, 16),), tmp_path / "dense.onnx")
    assert count_work(path)[0] == count_work(tmp_path / "decoded.onnx")[0] == count_work(dense)[0]


def test_expand_mode_is_no_cheaper_than_dense(tmp_path):
    """The bug: counting buckets credited expand mode with ~7× less energy than dense while it runs
    the same dense GEMM. Now equal per inference; stream is cheaper from DRAM but costlier from SRAM."""
    example = (torch.zeros(1, 16),)
    dense = export_onnx(hashed_mlp("dense"), example, tmp_path / "dense.onnx")
    expand = export_onnx(hashed_mlp("hashed"), example, tmp_path / "expand.onnx")
    stream = export_onnx(hashed_mlp("hashed"), example, tmp_path / "stream.onnx", stream=True)
    source = get_power_source("estimate")
    energy = {name: source.estimate(p) for name, p in (("dense", dense), ("expand", expand), ("stream", stream))}
    assert energy["expand"].energy_pj >= energy["dense"].energy_pj
    assert energy["expand"].energy_pj == pytest.approx(energy["dense"].energy_pj)
    assert energy["expand"].load.energy_pj > 0 and energy["dense"].load.energy_pj == 0
    hash_pj = HASH_MULTS * 3.1 + HASH_OPS * 0.1 + GATHERS * 5 + RECON_MACS * 4.6
    assert energy["stream"].compute_pj == pytest.approx(GEMM_MACS * 4.6 + hash_pj)
    assert "estimate" in energy["stream"].assumptions and "int32 mult 3.1 pJ" in energy["stream"].assumptions
    sram = {name: source.estimate(p, memory="sram") for name, p in (("dense", dense), ("stream", stream))}
    assert sram["stream"].energy_pj > sram["dense"].energy_pj


def test_circulant_and_ldr_layers_hand_count(tmp_path):
    """Exported CirculantLinear(37, 21, b=8): p=3, q=5; LDRLinear(30, 17, r=3): n=32."""
    circulant = export_onnx(CirculantLinear(37, 21, block_size=8).eval(), (torch.zeros(1, 37),), tmp_path / "c.onnx")
    p, q, b, f8 = 3, 5, 8, 1.25 * 8 * 3
    spectra = 8 * p * q * (b // 2 + 1)  # 600 bytes
    assert count_work(circulant) == (
        Counts(round((p + q) * f8 + 4 * p * q * (b // 2 + 1)), spectra + 4 * (37 + 21 + 21)),  # x, bias, y
        Counts(round(p * q * f8), 4 * p * q * b + spectra)) == (Counts(540, 916), Counts(450, 1080))
    ldr = export_onnx(LDRLinear(30, 17, rank=3).eval(), (torch.zeros(1, 30),), tmp_path / "l.onnx")
    r, n, f32 = 3, 32, 1.25 * 32 * 5
    spectra = 8 * r * (n // 2 + 1) + 8 * r * n  # 408 + 768 bytes
    assert count_work(ldr) == (
        Counts(round(2 * r * (2 * f32 + 4 * (n // 2 + 1))), spectra + 4 * (30 + 17 + 17)),
        Counts(round(r * 3 * f32), 2 * 4 * r * n + spectra)) == (Counts(2808, 1432), Counts(1800, 1944))


def test_unknown_shape_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight("w", 4, 2)])
    with pytest.raises(ValueError, match=r"node 'mm1' \(MatMul\): the shape of '[xy]' is unknown"):
        count_macs_and_bytes(save(graph, tmp_path / "g.onnx"))


def test_estimate_matches_the_table(tmp_path):
    estimate = estimate_energy(40, 280)
    assert estimate.estimated is True and estimate.method == "estimate"
    assert estimate.compute_pj == pytest.approx(40 * (3.7 + 0.9))
    assert estimate.memory_pj == pytest.approx(280 * 640 / 4)
    assert estimate.energy_mj_per_inference == pytest.approx((184 + 44800) * 1e-9)
    assert "Horowitz" in HOROWITZ_45NM.citation and "ISSCC 2014" in HOROWITZ_45NM.citation
    assert estimate_energy(1, 4, memory="sram").energy_pj == pytest.approx(4.6 + 5)
    assert estimate_energy(1, 0, dtype="int8").energy_pj == pytest.approx(0.2 + 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        estimate_energy(-1, 0)

    source = get_power_source("estimate")
    from_model = source.estimate(mlp(tmp_path / "mlp.onnx"))
    assert from_model.estimated and (from_model.macs, from_model.bytes_moved) == (40, 280)
    assert math.isclose(from_model.energy_pj, estimate.energy_pj)
