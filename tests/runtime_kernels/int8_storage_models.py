"""Small QDQ models whose decoder weights are stored as int8 (docs/ops.md "int8 storage"): an INT8
initializer -> Cast(FLOAT) -> HashedWeight | CodebookWeight -> Cast(INT8) -> DequantizeLinear(axis 0) ->
Conv | Gemm, activations quantized as ORT's quantizer writes them (QuantizeLinear -> DequantizeLinear,
int8, per tensor). Each builder also returns the int8 weight computed independently: the hashed one
with the ``xxhash`` package, the codebook ones as the matrix the indices were encoded from."""

from __future__ import annotations

import struct

import numpy as np
import xxhash
from onnx import TensorProto, helper, numpy_helper

from edgepack.exporter.fallbacks import fallback_function
from edgepack.runtime_kernels.op_spec import DOMAIN

INT8 = TensorProto.INT8
IDENTITY_RECON = np.array([1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0], np.float32)  # K = 1, as the exporter writes it


def hashed_reference(q: np.ndarray, shape, seed: int, signed: bool = True) -> np.ndarray:
    """Wq[o, j] = q[h mod B] * sign with h = XXH32(u32le(o) || u32le(j), seed): one xxhash call per weight."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    out = np.empty((rows, cols), np.int64)
    for o in range(rows):
        for j in range(cols):
            h = xxhash.xxh32_intdigest(struct.pack("<II", o, j), seed)
            out[o, j] = int(q[h % len(q)]) * (-1 if signed and h >> 31 else 1)
    return out.reshape(shape)


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """Indices packed LSB first, ``bits`` each, into uint8."""
    out = np.zeros(-(-len(indices) * bits // 8), np.uint8)
    for k, value in enumerate(indices):
        position = k * bits
        out[position // 8] |= int(value) << (position % 8)
    return out


class Graph:
    """Nodes, initializers and fallback functions of a test model under construction."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.functions = [], [], {}

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq(self, x: str, scale: float, zero_point: int, name: str) -> str:
        s, z = self.init(f"{name}_scale", np.float32(scale)), self.init(f"{name}_zp", np.int8(zero_point))
        self.nodes += [helper.make_node("QuantizeLinear", [x, s, z], [f"{name}_q"], name=f"{name}_quantize"),
                       helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [f"{name}_dq"],
                                        name=f"{name}_dequantize")]
        return f"{name}_dq"

    def int8_weight(self, layer: str, op: str, stored: np.ndarray, inputs: list[str], scale: np.ndarray,
                    **attributes) -> str:
        """stored (int8) -> Cast(FLOAT) -> op -> Cast(INT8) -> DequantizeLinear(axis 0): the weight's name."""
        q = self.init(f"{layer}_q", stored.astype(np.int8))
        sparse = op == "CodebookWeight" and len(inputs) > 1
        self.functions[(op, sparse)] = fallback_function(op, sparse=sparse)
        self.nodes += [
            helper.make_node("Cast", [q], [f"{layer}_qf"], name=f"{layer}_to_float", to=TensorProto.FLOAT),
            helper.make_node(op, [f"{layer}_qf", *inputs], [f"{layer}_w"], domain=DOMAIN, name=f"{layer}_decode",
                             **attributes),
            helper.make_node("Cast", [f"{layer}_w"], [f"{layer}_wq"], name=f"{layer}_to_int8", to=INT8),
            helper.make_node("DequantizeLinear", [f"{layer}_wq", self.init(f"{layer}_scale", scale.astype(np.float32)),
                                                  self.init(f"{layer}_zp", np.zeros(len(scale), np.int8))],
                             [f"{layer}_wd"], name=f"{layer}_dequantize_weight", axis=0)]
        return f"{layer}_wd"

    def model(self, x: str, shape: list, y: str) -> bytes:
        graph = helper.make_graph(self.nodes, "int8_storage",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        functions = list({(f.domain, f.name): f for f in self.functions.values()}.values())
        if len(functions) != len(self.functions):
            raise ValueError("one CodebookWeight form per model: the fallback function is per op")
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                                  functions=functions)
        model.ir_version = 10
        return model.SerializeToString()


def hashed_conv(seed: int = 3, signed: int = 1, buckets: int = 20, rng=None) -> tuple[bytes, dict[str, np.ndarray]]:
    """x [1, 3, 6, 6] -> QDQ -> Conv(HashedWeight [4, 3, 3, 3] from int8 buckets, pads 1) -> QDQ."""
    rng = rng or np.random.default_rng(0)
    g = Graph()
    q = rng.integers(-127, 128, buckets).astype(np.int8)
    scale = rng.uniform(0.002, 0.01, 4)
    w = g.int8_weight("conv", "HashedWeight", q, [g.init("conv_recon", IDENTITY_RECON)], scale, shape=[4, 3, 3, 3],
                      num_hashes=1, seed=seed, signed=signed)
    x = g.qdq("x", 0.02, 3, "input")
    bias = g.init("conv_bias", rng.standard_normal(4).astype(np.float32) * 0.1)
    g.nodes.append(helper.make_node("Conv", [x, w, bias], ["conv_y"], name="conv", pads=[1, 1, 1, 1]))
    y = g.qdq("conv_y", 0.01, -2, "output")
    return g.model("x", [1, 3, 6, 6], y), {"conv_wq": hashed_reference(q, [4, 3, 3, 3], seed, bool(signed))}


def codebook_gemm(sparse: bool, rows: int = 5, cols: int = 12, bits: int = 2, rng=None
                  ) -> tuple[bytes, dict[str, np.ndarray]]:
    """x [2, cols] -> QDQ -> Gemm(CodebookWeight [rows, cols] from an int8 codebook, transB=1) -> QDQ; the
    sparse form keeps about half the entries (a row left empty), the dense one all."""
    rng = rng or np.random.default_rng(1)
    g = Graph()
    codebook = rng.integers(-127, 128, 1 << bits).astype(np.int8)
    index = rng.integers(0, 1 << bits, (rows, cols))
    keep = rng.random((rows, cols)) < (0.5 if sparse else 2)
    keep[2 % rows] = False if sparse else keep[2 % rows]
    want = np.where(keep, codebook[index], 0).astype(np.int64)
    if sparse:
        row_ptr, gaps, entries = [0], [], []
        for r in range(rows):
            last = -1
            for c in np.flatnonzero(keep[r]):
                gaps.append(c - last)
                entries.append(index[r, c])
                last = c
            row_ptr.append(len(entries))
        inputs = [g.init("fc_indices", pack(np.array(entries), bits)),
                  g.init("fc_row_ptr", np.array(row_ptr, np.int32)), g.init("fc_col_gaps", np.array(gaps, np.uint8))]
    else:
        inputs = [g.init("fc_indices", pack(index.ravel(), bits))]
    w = g.int8_weight("fc", "CodebookWeight", codebook, inputs, rng.uniform(0.002, 0.01, rows), shape=[rows, cols],
                      bits=bits)
    x = g.qdq("x", 0.02, 0, "input")
    bias = g.init("fc_bias", rng.standard_normal(rows).astype(np.float32) * 0.1)
    g.nodes.append(helper.make_node("Gemm", [x, w, bias], ["fc_y"], name="fc", transB=1))
    y = g.qdq("fc_y", 0.01, 1, "output")
    return g.model("x", [2, cols], y), {"fc_wq": want}


def hashed_gemm(rng=None) -> tuple[bytes, dict[str, np.ndarray]]:
    """x [2, 12] -> QDQ -> Gemm(HashedWeight [5, 12] unsigned from 7 int8 buckets, recon absent, transB=1) ->
    QDQ, without fallback functions (HashedWeight's needs 'recon': the exporter writes the identity)."""
    rng = rng or np.random.default_rng(2)
    g = Graph()
    q = rng.integers(-127, 128, 7).astype(np.int8)
    w = g.int8_weight("fc", "HashedWeight", q, [], rng.uniform(0.002, 0.01, 5), shape=[5, 12], num_hashes=1,
                      seed=11, signed=0)
    g.functions.clear()
    x = g.qdq("x", 0.02, 0, "input")
    g.nodes.append(helper.make_node("Gemm", [x, w, g.init("fc_bias", np.zeros(5, np.float32))], ["fc_y"], name="fc",
                                    transB=1))
    return g.model("x", [2, 12], g.qdq("fc_y", 0.01, 0, "output")), {"fc_wq": hashed_reference(q, [5, 12], 11, False)}
