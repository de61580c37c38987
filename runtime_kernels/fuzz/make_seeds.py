"""Write the seed corpora of the libFuzzer harnesses into runtime_kernels/fuzz/corpus/<target>/.

The seeds are valid calls (the cases of tflite/test_delegate.c and tests/test_kernels.c) in each
harness's input format, with FlexBuffers options written by the exporter itself, so the fuzzers
start from inputs that reach the kernels. Run: .venv/bin/python runtime_kernels/fuzz/make_seeds.py
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from edgepack.exporter.tflite_export import flexbuffer_options

CORPUS = Path(__file__).resolve().parent / "corpus"

HASHED_MATMUL = {"in_features": 11, "out_features": 7, "num_hashes": 2, "seed": 4294967295, "signed": 1, "mode": 0}
HASHED_WEIGHT = {"shape": [5, 2, 3], "num_hashes": 1, "seed": 9, "signed": 1}
CIRCULANT = {"in_features": 13, "out_features": 10}
LDR = {"in_features": 12, "out_features": 9}
SPARSE_CODEBOOK = {"in_features": 13, "out_features": 7, "bits": 2, "activation": 1}
CODEBOOK_WEIGHT = {"shape": [7, 13], "bits": 2}


def codebook_weight(rows: int = 7, cols: int = 13, bits: int = 2, seed: int = 3) -> dict[str, bytes]:
    """A valid sparse codebook weight (the CodebookWeight contract): 4 codebook values (0.0 first),
    about a third of the positions set, a row left empty; each input's raw little-endian bytes."""
    rng = random.Random(seed)
    idx, gaps, row_ptr = [], [], [0]
    for r in range(rows):
        last = -1
        for c in range(cols):
            if r != 2 and rng.random() < 0.35:
                idx.append(rng.randrange(1, 4))
                gaps.append(c - last)
                last = c
        row_ptr.append(len(idx))
    packed = bytearray((len(idx) * bits + 7) // 8)
    for k, i in enumerate(idx):
        packed[k * bits // 8] |= i << (k * bits % 8)
    return {"codebook": struct.pack("<4f", 0.0, -0.5, 0.25, 1.0), "indices": bytes(packed),
            "row_ptr": struct.pack(f"<{len(row_ptr)}i", *row_ptr), "col_gaps": bytes(gaps)}


HYPER_WEIGHT = {"shape": [5, 7], "points": 40, "group": 2, "rings": 2, "bits": 7}


def hyper_weight(seed: int = 5) -> dict[str, bytes]:
    """A valid HyperWeight of HYPER_WEIGHT (18 groups of 7 bits, every index < 3·41); each input's raw
    little-endian bytes."""
    rng = random.Random(seed)
    bits, groups = HYPER_WEIGHT["bits"], 18
    idx = [rng.randrange(3 * 41) for _ in range(groups)]
    stream = sum(v << (m * bits) for m, v in enumerate(idx))
    return {"indices": stream.to_bytes((groups * bits + 7) // 8, "little"), "center": struct.pack("<2f", 0.25, -0.5),
            "side": struct.pack("<f", 1.5), "scales": struct.pack("<2f", 1.5, 2.25)}


def write(target: str, name: str, data: bytes) -> None:
    """One seed file."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


# ---- fuzz_flexmap: the options themselves ----------------------------------------------------
def flexmap_seeds() -> None:
    """Real options of every op, and a few edge cases."""
    cases = {
        "hashed_matmul": HASHED_MATMUL, "hashed_matmul_stream": HASHED_MATMUL | {"mode": 1},
        "hashed_weight": HASHED_WEIGHT, "circulant": CIRCULANT, "ldr": LDR, "empty_map": {},
        "big_ints": {"in_features": 2**40, "seed": 2**63 - 1, "shape": [2**31 - 1, 3]},
        "negative": {"in_features": -3, "shape": [-1]},
    }
    for name, attributes in cases.items():
        write("fuzz_flexmap", name, flexbuffer_options(attributes))


# ---- fuzz_tflite -------------------------------------------------------------------------------
ARENA, CONST, PERSISTENT_RO = 0, 2, 4  # allocation indices of fuzz_tflite.c's ALLOC table
OPS = {"HashedWeight": 0, "HashedMatMul": 1, "CirculantMatMul": 2, "LDRMatMul": 3, "CodebookWeight": 7,
       "SparseCodebookMatMul": 8, "HyperWeight": 9}
TFLITE_TYPES = {"int32": 2, "uint8": 3}  # TfLiteType, in bits 4-6 of the allocation byte (bit 7 set)


def tensor(alloc: int, dims: list[int], seed: int, floats: int | None = None, dtype: str = "float32",
           data: bytes = b"") -> bytes:
    """A tensor: allocation (| type), rank, dims, (constants: a buffer of its shape's size or of
    `floats` values), data seed; uint8 / int32 tensors then spell out their bytes."""
    kind = 0x80 | TFLITE_TYPES[dtype] << 4 if dtype != "float32" else 0
    out = bytes([alloc | kind, len(dims), *dims])
    if alloc in (CONST, 3, PERSISTENT_RO):
        out += b"\x01" if floats is None else bytes([2 * floats])
    return out + bytes([seed]) + data


def node(op: str, inputs: list[int], output: int, options: bytes, partition_output: bool = False) -> bytes:
    """A CUSTOM node: op, inputs (-1 absent), output, options."""
    code = OPS[op] | (0x80 if partition_output else 0)
    ins = bytes(255 if i < 0 else i for i in inputs)
    return bytes([code, len(inputs)]) + ins + bytes([output]) + struct.pack("<H", len(options)) + options


def graph(flags: int, tensors: list[bytes], nodes: list[bytes]) -> bytes:
    """flags, tensors, nodes in fuzz_tflite.c's format."""
    return bytes([flags, len(tensors) - 1]) + b"".join(tensors) + bytes([len(nodes) - 1]) + b"".join(nodes)


def tflite_seeds() -> None:
    """Each op through the delegate and the custom-op route, constant and fed weights, a chain."""
    for route in (0, 1):
        for weights in (CONST, ARENA):
            for mode in (0, 1):
                hm = flexbuffer_options(HASHED_MATMUL | {"mode": mode})
                tensors = [tensor(ARENA, [3, 11], 4), tensor(weights, [23], 1), tensor(weights, [13], 2),
                           tensor(weights, [7], 3), tensor(ARENA, [1], 0)]
                write("fuzz_tflite", f"hashed_matmul_m{mode}_w{weights}_r{route}",
                      graph(route | 6, tensors, [node("HashedMatMul", [0, 1, 2, 3], 4, hm)]))
            tensors = [tensor(weights, [10], 5), tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"hashed_weight_w{weights}_r{route}",
                  graph(route, tensors, [node("HashedWeight", [0], 1, flexbuffer_options(HASHED_WEIGHT))]))
            tensors = [tensor(ARENA, [2, 13], 8), tensor(weights, [2, 2, 8], 7), tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"circulant_w{weights}_r{route}",
                  graph(route, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
            tensors = [tensor(ARENA, [3, 12], 11), tensor(weights, [2, 16], 9), tensor(weights, [2, 16], 10),
                       tensor(ARENA, [1], 0)]
            write("fuzz_tflite", f"ldr_w{weights}_r{route}",
                  graph(route, tensors, [node("LDRMatMul", [0, 1, 2, -1], 3, flexbuffer_options(LDR))]))
    chain_hm = flexbuffer_options({"in_features": 6, "out_features": 5, "num_hashes": 1, "seed": 0})
    chain_c = flexbuffer_options({"in_features": 5, "out_features": 4})
    tensors = [tensor(ARENA, [2, 6], 14), tensor(CONST, [9], 12), tensor(CONST, [1, 1, 8], 13),
               tensor(ARENA, [1], 0), tensor(ARENA, [1], 0)]
    for flags, mid_out in ((0, False), (2, True), (4, False)):
        write("fuzz_tflite", f"chain_{flags}", graph(flags, tensors, [
            node("HashedMatMul", [0, 1], 3, chain_hm, partition_output=mid_out),
            node("CirculantMatMul", [3, 2], 4, chain_c)]))
    # issue 9 regressions: a read-only output (written by invoke), a constant buffer longer than its
    # shape (accepted), decode bombs (16 GiB allocations)
    tensors = [tensor(ARENA, [2, 13], 8), tensor(CONST, [2, 2, 8], 7), tensor(PERSISTENT_RO, [2, 10], 0)]
    write("fuzz_tflite", "read_only_output",
          graph(0, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
    tensors = [tensor(ARENA, [2, 13], 8), tensor(CONST, [2, 2, 8], 7, floats=40), tensor(ARENA, [1], 0)]
    write("fuzz_tflite", "constant_longer_than_shape",
          graph(0, tensors, [node("CirculantMatMul", [0, 1], 2, flexbuffer_options(CIRCULANT))]))
    w = codebook_weight()
    n = len(w["col_gaps"])
    for weights in (CONST, ARENA):
        for route in (0, 1):
            cw = [tensor(weights, [4], 21),
                  tensor(weights, [len(w["indices"])], 0, dtype="uint8", data=w["indices"]),
                  tensor(weights, [8], 0, dtype="int32", data=w["row_ptr"]),
                  tensor(weights, [n], 0, dtype="uint8", data=w["col_gaps"])]
            write("fuzz_tflite", f"sparse_codebook_w{weights}_r{route}",
                  graph(route, [tensor(ARENA, [3, 13], 15), *cw, tensor(ARENA, [1], 0)],
                        [node("SparseCodebookMatMul", [0, 1, 2, 3, 4], 5, flexbuffer_options(SPARSE_CODEBOOK))]))
            write("fuzz_tflite", f"codebook_weight_w{weights}_r{route}",
                  graph(route, [*cw, tensor(ARENA, [1], 0)],
                        [node("CodebookWeight", [0, 1, 2, 3], 4, flexbuffer_options(CODEBOOK_WEIGHT))]))
    bomb = flexbuffer_options(HASHED_WEIGHT | {"shape": [2, 2**31 - 1]})
    write("fuzz_tflite", "bomb_hashed_weight",
          graph(0, [tensor(CONST, [10], 5), tensor(ARENA, [1], 0)], [node("HashedWeight", [0], 1, bomb)]))
    bomb = flexbuffer_options(HASHED_MATMUL | {"in_features": 11, "out_features": 2**31 - 1})
    tensors = [tensor(ARENA, [3, 11], 4), tensor(CONST, [23], 1), tensor(CONST, [13], 2), tensor(ARENA, [1], 0)]
    write("fuzz_tflite", "bomb_expand", graph(1, tensors, [node("HashedMatMul", [0, 1, 2], 3, bomb)]))


# ---- fuzz_tflite_decode: whole .tflite files for edgepack_tflite_decode_model ------------------
def decode_models() -> dict[str, bytes]:
    """Small .tflite files: ok_* decode (a conv / depthwise filter through TRANSPOSE with MUL /
    ADD / RELU after it, a RESHAPE, expand HashedMatMuls with an ADD and RELU / RELU6 after them next
    to a stream one kept for the delegate, a HashedWeight graph output, int8-stored weights from
    `edgepack convert`: int8_storage_models()), bad_* are refused.
    tests/runtime_kernels/test_tflite_decode_c.py runs the ok_* ones in LiteRT;
    tflite/test_decode_model.c checks every one."""
    import numpy as np
    import tflite

    from edgepack.exporter.tflite_writer import Options, TFLiteModelBuilder

    op, rng = tflite.BuiltinOperator, np.random.default_rng(3)
    hw, hm = "ai.edgepack.HashedWeight", "ai.edgepack.HashedMatMul"
    recon = np.array([1.0, 0.5, 0.0, 1.0, 0.0], np.float32)  # H=1, K=2: V = relu(z1 + z2/2)

    def floats(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def conv(depthwise: bool, output_data: bool = False) -> bytes:
        b = TFLiteModelBuilder()
        x = b.tensor("x", (1, 6, 5, 3))
        buckets = b.constant("buckets", floats(11))
        shape = [3, 1, 3, 3] if depthwise else [4, 3, 3, 2]
        extra = [b.constant("recon", recon)] if depthwise else []
        w = b.constant("w", np.zeros(shape, np.float32)) if output_data else b.tensor("w", shape)
        attrs = {"shape": shape, "num_hashes": 2 if depthwise else 1, "seed": 7, "signed": int(not depthwise)}
        b.operator(hw, [buckets, *extra], [w], flexbuffer_options(attrs))
        perm = [1, 2, 3, 0] if depthwise else [0, 2, 3, 1]
        filt = b.tensor("filter", [shape[p] for p in perm])
        b.operator(op.TRANSPOSE, [w, b.constant("perm", np.array(perm, np.int32))], [filt])
        bias = b.constant("bias", floats(shape[0]))
        fields = {"Padding": tflite.Padding.SAME, "StrideH": 1, "StrideW": 1}
        c = shape[0]
        y, scaled, shifted, out = (b.tensor(n, (1, 6, 5, c)) for n in ("y", "scaled", "shifted", "out"))
        if depthwise:  # then a scalar MUL and RELU6, folded by the decoder
            b.operator(op.DEPTHWISE_CONV_2D, [x, filt, bias], [y],
                       Options("DepthwiseConv2DOptions", fields | {"DepthMultiplier": 1}))
            b.operator(op.MUL, [y, b.constant("scale", np.array([1.5], np.float32))], [scaled])
            b.operator(op.RELU6, [scaled], [out])
        else:  # then a BatchNorm's per-channel MUL and ADD, and RELU, folded by the decoder
            b.operator(op.CONV_2D, [x, filt, bias], [y], Options("Conv2DOptions", fields))
            b.operator(op.MUL, [y, b.constant("scale", floats(1, 1, 1, c))], [scaled])
            b.operator(op.ADD, [scaled, b.constant("shift", floats(c))], [shifted])
            b.operator(op.RELU, [shifted], [out])
        return b.serialize([x], [out])

    def mlp() -> bytes:
        b = TFLiteModelBuilder()
        x = b.tensor("x", (2, 6))
        h, h2, y1, y = b.tensor("h", (2, 5)), b.tensor("h_relu", (2, 5)), b.tensor("y1", (2, 4)), b.tensor("y", (2, 3))
        attrs = {"in_features": 6, "out_features": 5, "num_hashes": 1, "seed": 1}
        b.operator(hm, [x, b.constant("b1", floats(9)), -1, b.constant("bias1", floats(5))], [h],
                   flexbuffer_options(attrs))
        b.operator(op.RELU, [h], [h2])
        attrs = {"in_features": 5, "out_features": 4, "num_hashes": 2, "seed": 2, "signed": 0}
        b.operator(hm, [h2, b.constant("b2", floats(8)), b.constant("recon", recon)], [y1], flexbuffer_options(attrs))
        attrs = {"in_features": 4, "out_features": 3, "num_hashes": 1, "seed": 3, "mode": 1}
        b.operator(hm, [y1, b.constant("b3", floats(5))], [y], flexbuffer_options(attrs))
        return b.serialize([x], [y])

    def nhwc_matmul() -> bytes:
        b = TFLiteModelBuilder()
        x, h, h2, y = (b.tensor(n, s) for n, s in (("x", (1, 3, 3, 4)), ("h", (1, 3, 3, 5)), ("h2", (1, 3, 3, 5)),
                                                    ("y", (1, 3, 3, 5))))
        attrs = {"in_features": 4, "out_features": 5, "num_hashes": 1, "seed": 4}
        b.operator(hm, [x, b.constant("b", floats(7)), -1, b.constant("bias", floats(5))], [h],
                   flexbuffer_options(attrs))
        b.operator(op.ADD, [h, b.constant("shift", floats(1, 1, 1, 5))], [h2])
        b.operator(op.RELU6, [h2], [y])
        return b.serialize([x], [y])

    def reshape_fc() -> bytes:
        b = TFLiteModelBuilder()
        x, w, wr, y = b.tensor("x", (1, 8)), b.tensor("w", (4, 2, 4)), b.tensor("w2", (4, 8)), b.tensor("y", (1, 4))
        b.operator(hw, [b.constant("buckets", floats(6))], [w], flexbuffer_options({"shape": [4, 2, 4],
                                                                                     "num_hashes": 1, "seed": 5}))
        b.operator(op.RESHAPE, [w, b.constant("new_shape", np.array([4, 8], np.int32))], [wr])
        b.operator(op.FULLY_CONNECTED, [x, wr, -1], [y], Options("FullyConnectedOptions", {}))
        return b.serialize([x], [y])

    def weight_output(attrs: dict) -> bytes:
        b = TFLiteModelBuilder()
        w = b.tensor("w", (1,))  # the runtime resizes it: the decoder writes the real shape
        b.operator(hw, [b.constant("buckets", floats(5))], [w], flexbuffer_options(attrs))
        return b.serialize([], [w])

    def codebook_fc() -> bytes:
        """A sparse CodebookWeight [7, 13] (uint8 / int32 buffers) as a FULLY_CONNECTED filter."""
        b, w = TFLiteModelBuilder(), codebook_weight()
        x, filt, y = b.tensor("x", (2, 13)), b.tensor("w", (7, 13)), b.tensor("y", (2, 7))
        inputs = [b.constant("codebook", np.frombuffer(w["codebook"], "<f4")),
                  b.constant("indices", np.frombuffer(w["indices"], np.uint8)),
                  b.constant("row_ptr", np.frombuffer(w["row_ptr"], "<i4").astype(np.int32)),
                  b.constant("col_gaps", np.frombuffer(w["col_gaps"], np.uint8))]
        b.operator("ai.edgepack.CodebookWeight", inputs, [filt], flexbuffer_options(CODEBOOK_WEIGHT))
        b.operator(op.FULLY_CONNECTED, [x, filt, -1], [y], Options("FullyConnectedOptions", {}))
        return b.serialize([x], [y])

    weight = {"shape": [3, 4], "num_hashes": 1, "seed": 6}
    return {"ok_conv": conv(False), "ok_depthwise": conv(True), "ok_mlp": mlp(), "ok_nhwc_matmul": nhwc_matmul(),
            "ok_reshape_fc": reshape_fc(), "ok_weight_output": weight_output(weight), "ok_codebook_fc": codebook_fc(),
            **int8_storage_models(),
            "bad_num_hashes": weight_output(weight | {"num_hashes": 65}),
            "bad_bomb": weight_output(weight | {"shape": [2, 2**31 - 1]}),
            "bad_constant_output": conv(False, output_data=True), **int8_cast_models()}


def int8_cast_models() -> dict[str, bytes]:
    """CASTs around decoders (docs/ops.md "int8 storage"): ok_int8_activation_cast, an expand HashedMatMul whose
    X is a CAST of an int8 constant (decoded; the CAST stays); bad_int8_*: a -128 bucket, a buffer one byte
    short, a CAST of a graph input, a CAST into 'recon' or into a HashedMatMul's buckets, a decoded value
    that is not an integer folded through CAST(float32 -> int8)."""
    import numpy as np
    import tflite

    from edgepack.exporter.tflite_writer import Options, TFLiteModelBuilder

    op, hw, hm = tflite.BuiltinOperator, "ai.edgepack.HashedWeight", "ai.edgepack.HashedMatMul"
    rng = np.random.default_rng(16)

    def stored(q=None, short: bool = False, fed: bool = False, buckets=None, recon_cast: bool = False) -> bytes:
        """x -> FULLY_CONNECTED(CAST(HashedWeight(CAST(q) or buckets[, recon])) to int8) -> y."""
        b = TFLiteModelBuilder()
        x = b.tensor("x", (1, 8))
        if buckets is None:
            qi = b.tensor("q", (5,), np.int8) if fed else b.constant("q", q)
            if short:
                b.tensors[qi].shape = (len(q) + 1,)
            qf = b.tensor("qf", b.tensors[qi].shape)
            b.operator(op.CAST, [qi], [qf])
        else:
            qf = b.constant("buckets", buckets)
        extra, attrs = [], {"shape": [4, 8], "num_hashes": 1, "seed": 5}
        if recon_cast:
            ri = b.constant("recon_q", np.array([1, 0, 0, 1], np.int8))  # H = 1: the identity recon
            extra = [b.tensor("recon", (4,))]
            b.operator(op.CAST, [ri], extra)
        w, wq, y = b.tensor("w", (4, 8)), b.tensor("wq", (4, 8), np.int8), b.tensor("y", (1, 4))
        b.operator(hw, [qf, *extra], [w], flexbuffer_options(attrs))
        b.operator(op.CAST, [w], [wq])
        b.operator(op.FULLY_CONNECTED, [x, wq, -1], [y], Options("FullyConnectedOptions", {}))
        return b.serialize([x, qi] if fed else [x], [y])

    def matmul(x_cast: bool) -> bytes:
        """An expand HashedMatMul [2, 6] -> [2, 5]: X a CAST of an int8 constant, or its buckets one."""
        b = TFLiteModelBuilder()
        q = b.constant("q", rng.integers(-9, 10, (2, 6) if x_cast else 9).astype(np.int8))
        qf, y = b.tensor("qf", (2, 6) if x_cast else (9,)), b.tensor("y", (2, 5))
        b.operator(op.CAST, [q], [qf])
        x = b.tensor("x", (2, 6))
        inputs = [qf, b.constant("b1", rng.standard_normal(9).astype(np.float32))] if x_cast else [x, qf]
        b.operator(hm, inputs, [y], flexbuffer_options({"in_features": 6, "out_features": 5, "num_hashes": 1,
                                                        "seed": 1}))
        return b.serialize([] if x_cast else [x], [y])

    q = rng.integers(-127, 128, 5).astype(np.int8)
    return {"ok_int8_activation_cast": matmul(True),
            "bad_int8_minus_128": stored(np.array([3, -7, -128, 5, 1], np.int8)),
            "bad_int8_short": stored(q, short=True),
            "bad_int8_graph_input": stored(fed=True),
            "bad_int8_recon": stored(buckets=rng.standard_normal(5).astype(np.float32), recon_cast=True),
            "bad_int8_matmul_buckets": matmul(False),
            "bad_int8_not_integer": stored(buckets=np.full(5, 0.5, np.float32))}


# int8 storage (docs/ops.md): the activation scales of int8_storage_models(), and each seed's output scale
INT8_STORAGE_SCALES = {"x": 4 / 127, "conv": 0.03, "dw": 0.02, "fc": 0.05, "pw": 0.02}
INT8_STORAGE_OUTPUT_SCALE = {"ok_int8_storage_conv": INT8_STORAGE_SCALES["fc"],
                             "ok_int8_storage_depthwise": INT8_STORAGE_SCALES["dw"],
                             "ok_int8_storage_pointwise": INT8_STORAGE_SCALES["pw"]}


def int8_storage_models() -> dict[str, bytes]:
    """int8-stored compressed weights through `edgepack convert` (tflite_quant, no verification): a tiny QDQ
    ONNX model with each weight Cast(INT8 q) -> HashedWeight | CodebookWeight -> Cast(INT8) -> DequantizeLinear
    becomes CAST -> CUSTOM [-> TRANSPOSE | RESHAPE, float32] -> CAST into a per-channel int8 filter (the only
    quantized tensor of the chain). ok_int8_storage_conv: a hashed CONV_2D, ReLU, then a sparse-codebook
    FULLY_CONNECTED; ok_int8_storage_depthwise: a dense-codebook DEPTHWISE_CONV_2D; ok_int8_storage_pointwise: a
    hashed 1x1 CONV_2D (its layout a RESHAPE, not a TRANSPOSE)."""
    import tempfile

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.exporter.tflite_export import convert_onnx_to_tflite
    from edgepack.runtime_kernels.op_spec import DOMAIN, OPSET_VERSION

    rng, scales = np.random.default_rng(15), INT8_STORAGE_SCALES

    def stored(name: str, op: str, q: np.ndarray, rows: int, extra: dict, **attributes) -> tuple[list, dict]:
        """The chain of one int8-stored weight {name}_wd, and its initializers."""
        inits = {f"{name}_q": q, **{f"{name}_{k}": v for k, v in extra.items()},
                 f"{name}_scale": rng.uniform(0.002, 0.006, rows).astype(np.float32),
                 f"{name}_zero": np.zeros(rows, np.int8),
                 f"{name}_bias": rng.uniform(-0.1, 0.1, rows).astype(np.float32)}
        nodes = [helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT, name=f"{name}_cast_f"),
                 helper.make_node(op, [f"{name}_f", *(f"{name}_{k}" for k in extra)], [f"{name}_w"], domain=DOMAIN,
                                  name=f"{name}_decode", **attributes),
                 helper.make_node("Cast", [f"{name}_w"], [f"{name}_wq"], to=TensorProto.INT8, name=f"{name}_cast_q"),
                 helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_scale", f"{name}_zero"],
                                  [f"{name}_wd"], axis=0, name=f"{name}_dq")]
        return nodes, inits

    def qdq(x: str, y: str, scale: str, zero: str) -> list:
        return [helper.make_node("QuantizeLinear", [x, scale, zero], [f"{x}_q"], name=f"q_{x}"),
                helper.make_node("DequantizeLinear", [f"{x}_q", scale, zero], [y], name=f"dq_{x}")]

    def convert(nodes: list, inits: dict, x_shape: list[int], y_shape: list[int]) -> bytes:
        graph = helper.make_graph(nodes, "int8_storage",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                                  [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid(DOMAIN, OPSET_VERSION)])
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "m.tflite"
            convert_onnx_to_tflite(model, path, verify=False)
            return path.read_bytes()

    io = {"xs": np.float32(scales["x"]), "xz": np.int8(0)}
    # ok_int8_storage_conv: x [1, 2, 4, 4] -> hashed Conv 3x3 (4 outputs) -> Relu -> Flatten -> sparse codebook
    # Gemm [5, 64] -> y [1, 5]
    conv_nodes, conv_inits = stored("conv", "HashedWeight", rng.integers(-127, 128, 13).astype(np.int8), 4, {},
                                    shape=[4, 2, 3, 3], num_hashes=1, seed=11, signed=1)
    dense = np.where(rng.random((5, 64)) < 0.2, rng.integers(1, 4, (5, 64)), 0)
    dense[3] = 0  # an empty row
    row_ptr, gaps, idx = [0], [], []
    for row in dense:
        cols = np.flatnonzero(row)
        idx += row[cols].tolist()
        gaps += np.diff(np.r_[-1, cols]).tolist()
        row_ptr.append(len(idx))
    packed = np.zeros((len(idx) * 2 + 7) // 8, np.uint8)
    for k, i in enumerate(idx):
        packed[k * 2 // 8] |= i << (k * 2 % 8)
    fc_nodes, fc_inits = stored("fc", "CodebookWeight", np.array([0, -90, 45, 127], np.int8), 5,
                                {"indices": packed, "row_ptr": np.array(row_ptr, np.int32),
                                 "col_gaps": np.array(gaps, np.uint8)}, shape=[5, 64], bits=2)
    inits = io | conv_inits | fc_inits | {"s1": np.float32(scales["conv"]), "z1": np.int8(-128),
                                          "s2": np.float32(scales["fc"]), "z2": np.int8(0)}
    nodes = [*qdq("x", "xd", "xs", "xz"), *conv_nodes, *fc_nodes,
             helper.make_node("Conv", ["xd", "conv_wd", "conv_bias"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"), *qdq("r1", "r1d", "s1", "z1"),
             helper.make_node("Flatten", ["r1d"], ["f"], name="flatten"), *qdq("f", "fd", "s1", "z1"),
             helper.make_node("Gemm", ["fd", "fc_wd", "fc_bias"], ["g"], transB=1, name="fc"),
             *qdq("g", "y", "s2", "z2")]
    models = {"ok_int8_storage_conv": convert(nodes, inits, [1, 2, 4, 4], [1, 5])}
    # ok_int8_storage_depthwise: x [1, 3, 5, 5] -> dense codebook depthwise Conv 3x3, stride 2 -> y [1, 3, 3, 3]
    dw_idx = rng.integers(0, 4, 27)
    dw_packed = np.zeros(7, np.uint8)
    for k, i in enumerate(dw_idx):
        dw_packed[k * 2 // 8] |= i << (k * 2 % 8)
    dw_nodes, dw_inits = stored("dw", "CodebookWeight", np.array([-127, -20, 33, 100], np.int8), 3,
                                {"indices": dw_packed}, shape=[3, 1, 3, 3], bits=2)
    nodes = [*qdq("x", "xd", "xs", "xz"), *dw_nodes,
             helper.make_node("Conv", ["xd", "dw_wd", "dw_bias"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], group=3,
                              name="dw"), *qdq("c", "y", "s1", "z1")]
    inits = io | dw_inits | {"s1": np.float32(scales["dw"]), "z1": np.int8(0)}
    models["ok_int8_storage_depthwise"] = convert(nodes, inits, [1, 3, 5, 5], [1, 3, 3, 3])
    # ok_int8_storage_pointwise: x [1, 3, 2, 2] -> hashed Conv 1x1 (4 outputs) -> y [1, 4, 2, 2]: a float32 RESHAPE
    pw_nodes, pw_inits = stored("pw", "HashedWeight", rng.integers(-127, 128, 7).astype(np.int8), 4, {},
                                shape=[4, 3, 1, 1], num_hashes=1, seed=3, signed=1)
    nodes = [*qdq("x", "xd", "xs", "xz"), *pw_nodes,
             helper.make_node("Conv", ["xd", "pw_wd", "pw_bias"], ["c"], name="pw"), *qdq("c", "y", "s1", "z1")]
    inits = io | pw_inits | {"s1": np.float32(scales["pw"]), "z1": np.int8(0)}
    models["ok_int8_storage_pointwise"] = convert(nodes, inits, [1, 3, 2, 2], [1, 4, 2, 2])
    return models


def decode_seeds() -> None:
    """The decode_models() files as seeds."""
    for name, data in decode_models().items():
        assert len(data) <= 4096, f"{name}: {len(data)} bytes; ci_fuzz.sh passes -max_len=4096"
        write("fuzz_tflite_decode", name, data)


# ---- fuzz_ort ----------------------------------------------------------------------------------
ATTR_NAMES = ["in_features", "out_features", "num_hashes", "seed", "signed", "mode", "shape", "bogus", "", "Shape",
              "bits", "activation", "points", "group", "rings"]
ORT_TYPES = {"uint8": 0x80, "int32": 0x84}  # fuzz_ort.c's type bits (2-3 and 7) of uint8 / int32


def small_int(value: int) -> bytes:
    """read_int's encoding: -8..214 in one byte, else 0xEF + 8 raw bytes."""
    return bytes([value + 8]) if -8 <= value < 0xEF - 8 else b"\xef" + struct.pack("<q", value)


def ort_attrs(attributes: dict) -> bytes:
    """The attributes in fuzz_ort.c's format (ints for lists, int otherwise)."""
    out = bytes([len(attributes)])
    for key, value in attributes.items():
        if isinstance(value, list):
            out += bytes([ATTR_NAMES.index(key), 3, len(value)]) + b"".join(small_int(v) for v in value)
        else:
            out += bytes([ATTR_NAMES.index(key), 0]) + small_int(value)
    return out


def ort_value(dims: list[int], seed: int, const: bool = False, dtype: str = "float32", data: bytes = b"") -> bytes:
    """A present input (constant initializer or fed at run time): float32 from a seed, uint8 / int32
    with its bytes."""
    if dtype == "float32":
        return bytes([1 | (2 if const else 0), len(dims) << 4, *dims, seed])
    return bytes([1 | (2 if const else 0), len(dims) << 4 | ORT_TYPES[dtype], *dims]) + data


def ort_seeds() -> None:
    """Each op with constant and fed weights, with and without the optional inputs."""
    absent = b"\x00"
    for const in (True, False):
        for mode in (0, 1):
            inputs = [ort_value([3, 11], 4), ort_value([23], 1, const), ort_value([13], 2, const),
                      ort_value([7], 3, const)]
            write("fuzz_ort", f"hashed_matmul_m{mode}_c{int(const)}",
                  bytes([1, 1]) + ort_attrs(HASHED_MATMUL | {"mode": mode}) + bytes([4]) + b"".join(inputs))
        write("fuzz_ort", f"hashed_weight_c{int(const)}",
              bytes([0, 4]) + ort_attrs(HASHED_WEIGHT) + bytes([2]) + ort_value([10], 5, const) + absent)
        write("fuzz_ort", f"circulant_c{int(const)}",
              bytes([2, 8]) + ort_attrs(CIRCULANT) + bytes([3]) + ort_value([2, 13], 8)
              + ort_value([2, 2, 8], 7, const) + ort_value([10], 6))
        write("fuzz_ort", f"ldr_c{int(const)}",
              bytes([3, 0]) + ort_attrs(LDR) + bytes([4]) + ort_value([3, 12], 11)
              + ort_value([2, 16], 9, const) + ort_value([2, 16], 10, const) + absent)
    w = codebook_weight()
    op_index = {"CodebookWeight": 4, "SparseCodebookMatMul": 5}  # ops.inc order
    for const in (True, False):
        cw = [ort_value([4], 21, const), ort_value([len(w["indices"])], 0, const, "uint8", w["indices"]),
              ort_value([8], 0, const, "int32", w["row_ptr"]),
              ort_value([len(w["col_gaps"])], 0, const, "uint8", w["col_gaps"])]
        write("fuzz_ort", f"sparse_codebook_c{int(const)}",
              bytes([op_index["SparseCodebookMatMul"], 1]) + ort_attrs(SPARSE_CODEBOOK) + bytes([6])
              + ort_value([3, 13], 4) + b"".join(cw) + ort_value([7], 6))
        write("fuzz_ort", f"codebook_weight_c{int(const)}",
              bytes([op_index["CodebookWeight"], 0]) + ort_attrs(CODEBOOK_WEIGHT) + bytes([4]) + b"".join(cw))
    # issue 9 regressions: decode bombs (the 227-byte HashedWeight of shape [2, 2^29]; an 11.8 GB plan)
    write("fuzz_ort", "bomb_hashed_weight",
          bytes([0, 4]) + ort_attrs(HASHED_WEIGHT | {"shape": [2, 2**29]}) + bytes([2]) + ort_value([10], 5, True)
          + absent)
    inputs = [ort_value([3, 11], 4), ort_value([23], 1, True), ort_value([13], 2, True)]
    write("fuzz_ort", "bomb_expand",
          bytes([1, 1]) + ort_attrs(HASHED_MATMUL | {"out_features": 1 << 28}) + bytes([3]) + b"".join(inputs))


# ---- fuzz_kernels ------------------------------------------------------------------------------
def kernel_seeds() -> None:
    """Valid calls of every entry point (first byte: the entry point), data from a fixed RNG."""
    rng = random.Random(1)

    def data(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))

    def hashed(rows: int, cols: int, buckets: int, k: int, recon: int, n: int) -> bytes:
        return bytes([rows + 1, cols + 1, buckets + 1, k]) + struct.pack("<I", rng.getrandbits(32)) \
            + bytes([1, recon, 0, 0, n + 1])
    write("fuzz_kernels", "hash_indices", bytes([0]) + hashed(9, 17, 23, 3, 0, 0)[:-3] + b"\x00")
    write("fuzz_kernels", "decode_k1", bytes([1]) + hashed(7, 19, 31, 1, 0, 0) + data(400))
    write("fuzz_kernels", "decode_k3_recon", bytes([1]) + hashed(5, 33, 40, 3, 2, 0) + data(400))
    for n in (1, 3, 5):
        write("fuzz_kernels", f"stream_n{n}", bytes([2]) + hashed(9, 24, 17, 2, 1, n) + data(900))
        write("fuzz_kernels", f"expand_n{n}", bytes([3]) + hashed(9, 24, 17, 1, 0, n) + b"\x00" + data(900))
    write("fuzz_kernels", "dense", bytes([4, 4, 18, 34, 0, 0]) + data(1500))
    for b in (0, 2, 4, 6):  # n = 4 << b
        write("fuzz_kernels", f"rfft_{4 << b}", bytes([5, b, 2, 0]) + data(300))
    write("fuzz_kernels", "circulant", bytes([6, 3, 4, 1, 14, 11, 3, 6, 0]) + data(1200))
    write("fuzz_kernels", "ldr", bytes([7, 3, 2, 13, 10, 3, 6, 0]) + data(1200))
    write("fuzz_kernels", "misc_variant", bytes([8]) + b"\x01\x02\x03\x04" + b"avx2")
    limits = struct.pack("<QBQBqqq", 1 << 28, 0, 1 << 30, 0, 1 << 20, 1 << 29, 1 << 29)
    write("fuzz_kernels", "limits", bytes([9]) + limits + b" 268435456 ")


def codebook_seeds() -> None:
    """fuzz_codebook: flags, rows-1, cols-1 (u16), bits selector, J (u16), J codebook bytes, then (sparse)
    row counts and gaps, then index bytes, in fuzz_codebook.c's order."""
    rng = random.Random(4)

    def data(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))
    for bits_sel, j in ((0, 2), (1, 4), (2, 16), (3, 200)):
        write("fuzz_codebook", f"dense_b{bits_sel}", bytes([0, 4]) + struct.pack("<H", 20) + bytes([bits_sel])
              + struct.pack("<H", j) + data(j) + data(200))
        write("fuzz_codebook", f"sparse_b{bits_sel}", bytes([1, 9]) + struct.pack("<H", 300) + bytes([bits_sel])
              + struct.pack("<H", j) + data(j) + data(10) + bytes(rng.randrange(1, 9) for _ in range(120)) + data(800))
    write("fuzz_codebook", "sparse_raw_gaps", bytes([1 | 16, 3, 40, 0, 1]) + struct.pack("<H", 3) + data(600))
    write("fuzz_codebook", "indices_off_by_one", bytes([64, 2, 9, 0, 2, 5, 0]) + data(200))


def mfcc_seeds() -> None:
    """fuzz_mfcc: flags, sample_rate, log2 fft_length, window, hop, mel bins, coefficients, lower and
    upper Hz (bytes scaled as fuzz_mfcc.c reads them), samples (u16), audio seed (u32), audio."""
    rng = random.Random(2)

    def seed(flags, rate, log2_fft, window, hop, mels, coefficients, lower, upper, samples, extra=b""):
        return bytes([flags, rate, log2_fft, window, hop, mels, coefficients, lower, upper]) + extra + \
            struct.pack("<HI", samples, 7) + rng.randbytes(64)
    write("fuzz_mfcc", "kws_like", seed(0, 124, 9, 232, 124, 124, 124, 1, 112, 4000))
    write("fuzz_mfcc", "short_fft", seed(0, 124, 4, 200, 60, 40, 60, 0, 224, 300))
    write("fuzz_mfcc", "one_window", seed(0, 200, 8, 247, 200, 200, 100, 10, 200, 128))
    write("fuzz_mfcc", "bad_out_len", seed(16, 124, 9, 232, 124, 124, 124, 1, 112, 2000) + b"\x05\x00")
    write("fuzz_mfcc", "log_offset", seed(4, 124, 7, 232, 124, 124, 124, 1, 112, 1000, b"\x20"))


# ---- fuzz_onnx_decode: whole ModelProtos for ort/decode_model.c ---------------------------------
def onnx_decode_seeds() -> None:
    """Small ONNX models: HashedWeight (K=1, and K=2 with recon) and expand HashedMatMul with a bias
    that decode, stream mode, a fused ReLU and weights fed as inputs that stay, a subgraph reading
    the buckets, and an external-data reference (refused: the harness gives no folder)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    recon = np.array([1.0, 0.5, 0.0, 1.0, 0.0], np.float32)  # H=1, K=2

    def init(name: str, *shape: int):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def model(nodes, inits, inputs=(), outputs=("Y",)) -> bytes:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                               for n, s in inputs],
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.edgepack", 1)])
        m.ir_version = 10
        return m.SerializeToString()

    def hm(name: str, mode: int = 0, out: str = "Y", **extra):
        return helper.make_node("HashedMatMul", ["X", "b", "", "bias"], [out], domain="ai.edgepack", name=name,
                                in_features=6, out_features=5, num_hashes=1, seed=3, mode=mode, **extra)

    x = [("X", [2, 6])]
    weight = helper.make_node("HashedWeight", ["b", "r"], ["Y"], domain="ai.edgepack", name="w", shape=[3, 2, 2],
                              num_hashes=2, seed=7, signed=0)
    write("fuzz_onnx_decode", "hashed_weight_k2", model([weight], [init("b", 9), numpy_helper.from_array(recon, "r")]))
    k1 = helper.make_node("HashedWeight", ["b"], ["Y"], domain="ai.edgepack", name="w", shape=[4, 3], num_hashes=1,
                          seed=1)
    write("fuzz_onnx_decode", "hashed_weight_k1", model([k1], [init("b", 5)]))
    write("fuzz_onnx_decode", "expand_bias", model([hm("m")], [init("b", 7), init("bias", 5)], x))
    write("fuzz_onnx_decode", "stream_and_relu", model(
        [hm("s", 1), helper.make_node("Relu", ["Y"], ["Z"]), hm("r", out="R", activation=1)],
        [init("b", 7), init("bias", 5)], x, ("Y", "Z", "R")))
    write("fuzz_onnx_decode", "weights_as_inputs", model([hm("m")], [init("bias", 5)], x + [("b", [7])]))
    branch = helper.make_graph([helper.make_node("Identity", ["b"], ["o"])], "then", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    sub = helper.make_node("If", ["c"], ["Z"], then_branch=branch, else_branch=branch)
    write("fuzz_onnx_decode", "subgraph_reads_buckets", model(
        [hm("m"), sub], [init("b", 7), init("bias", 5), numpy_helper.from_array(np.array(True), "c")], x, ("Y", "Z")))
    external = init("b", 7)
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "m.onnx.data"), ("offset", "0"), ("length", "28")):
        external.external_data.add(key=key, value=value)
    write("fuzz_onnx_decode", "external_buckets", model([hm("m")], [external, init("bias", 5)], x))
    w = codebook_weight()
    arrays = {"codebook": np.frombuffer(w["codebook"], "<f4"), "indices": np.frombuffer(w["indices"], np.uint8),
              "row_ptr": np.frombuffer(w["row_ptr"], "<i4"), "col_gaps": np.frombuffer(w["col_gaps"], np.uint8)}
    for raw in (True, False):  # raw_data, or int32_data for the uint8 / int32 inputs
        inits = [numpy_helper.from_array(v, n) if raw or v.dtype == np.float32 else
                 helper.make_tensor(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape, v.astype(np.int64).tolist())
                 for n, v in arrays.items()]
        cw = helper.make_node("CodebookWeight", list(arrays), ["Y"], domain="ai.edgepack", name="cw",
                              **CODEBOOK_WEIGHT)
        write("fuzz_onnx_decode", f"codebook_weight_{'raw' if raw else 'int32_data'}", model([cw], inits))


def onnx_int8_decode_seeds() -> None:
    """int8 storage (docs/ops.md): INT8 buckets / codebook -> Cast(FLOAT) -> HashedWeight | CodebookWeight ->
    Cast(INT8) -> DequantizeLinear, folded into one int8 weight; the decoder's output also read elsewhere;
    and refused chains: a Cast to DOUBLE, a -128 bucket (also in a node not decoded: recon a graph input), an
    int8 initializer one byte short, a Cast to INT8 of values that are not integers, two Casts to INT8 of one
    decoded weight, a Cast into HashedMatMul's buckets, a Cast with two 'to' attributes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(12)

    def model(nodes, inits, outputs=("Y",), inputs=()) -> bytes:
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                               for n in inputs],
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.edgepack", 1)])
        m.ir_version = 10
        return m.SerializeToString()

    def chain(op: str, extra: list[str], to: int = TensorProto.FLOAT, **attributes) -> list:
        return [helper.make_node("Cast", ["q"], ["qf"], name="to_float", to=to),
                helper.make_node(op, ["qf", *extra], ["W"], domain="ai.edgepack", name="w", **attributes),
                helper.make_node("Cast", ["W"], ["Wq"], name="to_int8", to=TensorProto.INT8),
                helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Y"], axis=0)]

    def qdq(rows: int) -> list:
        return [numpy_helper.from_array(np.full(rows, 0.01, np.float32), "s"),
                numpy_helper.from_array(np.zeros(rows, np.int8), "z")]

    buckets = numpy_helper.from_array(rng.integers(-127, 128, 9).astype(np.int8), "q")
    hashed = chain("HashedWeight", [], shape=[4, 3, 2], num_hashes=1, seed=5, signed=1)
    write("fuzz_onnx_decode", "int8_hashed_weight", model(hashed, [buckets, *qdq(4)]))
    write("fuzz_onnx_decode", "int8_hashed_weight_also_float", model(hashed, [buckets, *qdq(4)], ("Y", "W")))
    as_int32 = helper.make_tensor("q", TensorProto.INT8, [9], numpy_helper.to_array(buckets).astype(np.int64).tolist())
    write("fuzz_onnx_decode", "int8_hashed_int32_data", model(hashed, [as_int32, *qdq(4)]))
    w = codebook_weight()
    codebook = numpy_helper.from_array(np.array([0, -100, 37, 127], np.int8), "q")
    sparse = [numpy_helper.from_array(np.frombuffer(w[n], dtype), n)
              for n, dtype in (("indices", np.uint8), ("row_ptr", "<i4"), ("col_gaps", np.uint8))]
    write("fuzz_onnx_decode", "int8_codebook_sparse", model(
        chain("CodebookWeight", ["indices", "row_ptr", "col_gaps"], **CODEBOOK_WEIGHT), [codebook, *sparse, *qdq(7)]))
    write("fuzz_onnx_decode", "int8_cast_to_double", model(
        chain("HashedWeight", [], TensorProto.DOUBLE, shape=[4, 3], num_hashes=1, seed=1), [buckets, *qdq(4)]))
    low = numpy_helper.from_array(np.array([3, -128, 5], np.int8), "q")
    write("fuzz_onnx_decode", "int8_minus_128", model(chain("HashedWeight", [], shape=[4, 3], num_hashes=1, seed=1),
                                                      [low, *qdq(4)]))
    short = numpy_helper.from_array(np.ones(9, np.int8), "q")
    short.raw_data = short.raw_data[:-1]
    write("fuzz_onnx_decode", "int8_short", model(hashed, [short, *qdq(4)]))
    recon = numpy_helper.from_array(np.array([1.0, 0.5, 0.0, 1.0, 0.25], np.float32), "r")
    write("fuzz_onnx_decode", "int8_fold_not_integer", model(
        chain("HashedWeight", ["r"], shape=[4, 3], num_hashes=2, seed=1), [buckets, recon, *qdq(4)]))
    identity = numpy_helper.from_array(np.array([1, -1, 0, 0, 1, -1, 0], np.float32), "r")
    write("fuzz_onnx_decode", "int8_minus_128_not_decoded", model(
        chain("HashedWeight", ["r"], shape=[4, 3], num_hashes=1, seed=1), [low, identity, *qdq(4)], inputs=("r",)))
    twice = [*hashed, helper.make_node("Cast", ["W"], ["Wq2"], name="to_int8_again", to=TensorProto.INT8)]
    write("fuzz_onnx_decode", "int8_fold_twice", model(twice, [buckets, *qdq(4)], ("Y", "Wq2")))
    matmul = [helper.make_node("Cast", ["q"], ["qf"], name="to_float", to=TensorProto.FLOAT),
              helper.make_node("HashedMatMul", ["X", "qf"], ["Y"], domain="ai.edgepack", name="mm", in_features=3,
                               out_features=2, num_hashes=1, seed=1)]
    write("fuzz_onnx_decode", "int8_cast_into_hashed_matmul", model(matmul, [buckets], inputs=("X",)))
    two_to = chain("HashedWeight", [], shape=[4, 3], num_hashes=1, seed=1)
    two_to[0].attribute.append(helper.make_attribute("to", TensorProto.FLOAT))
    write("fuzz_onnx_decode", "int8_cast_two_to", model(two_to, [buckets, *qdq(4)]))


def wav_seeds() -> None:
    """fuzz_wav: WAV files the streaming runner accepts (extra and odd-sized chunks, the extensible
    'fmt ', a streamed size) and ones it refuses (truncated, stereo, 44.1 kHz, float, out of order)."""
    audio = struct.pack("<64h", *range(-32768, 32768, 1024))

    def chunk(name: bytes, body: bytes) -> bytes:
        return name + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)

    def fmt(tag=1, channels=1, rate=16000, bits=16, extensible=False) -> bytes:
        body = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * channels * bits // 8,
                           channels * bits // 8, bits)
        return body + (struct.pack("<HHI", 22, bits, 4) + struct.pack("<H", tag) + bytes(14) if extensible else b"")

    def wav(*chunks: bytes) -> bytes:
        body = b"WAVE" + b"".join(chunks)
        return b"RIFF" + struct.pack("<I", len(body)) + body

    cases = {
        "plain": wav(chunk(b"fmt ", fmt()), chunk(b"data", audio)),
        "extensible": wav(chunk(b"fmt ", fmt(extensible=True)), chunk(b"data", audio)),
        "list_odd_chunk": wav(chunk(b"fmt ", fmt()), chunk(b"LIST", b"INFOabc"), chunk(b"data", audio[:33])),
        "streamed_size": wav(chunk(b"fmt ", fmt()), b"data\xff\xff\xff\xff" + audio),
        "truncated": wav(chunk(b"fmt ", fmt()), chunk(b"data", audio))[:80],
        "stereo": wav(chunk(b"fmt ", fmt(channels=2)), chunk(b"data", audio)),
        "44k": wav(chunk(b"fmt ", fmt(rate=44100)), chunk(b"data", audio)),
        "float": wav(chunk(b"fmt ", fmt(tag=3, bits=32)), chunk(b"data", audio)),
        "data_first": wav(chunk(b"data", audio), chunk(b"fmt ", fmt())),
        "empty_data": wav(chunk(b"fmt ", fmt()), chunk(b"data", b"")),
        "long_fmt": wav(chunk(b"fmt ", fmt() + bytes(30)), chunk(b"data", audio)),
        "huge_chunk": wav(chunk(b"fmt ", fmt()), b"junk\xff\xff\xff\xff" + audio),
        "raw_odd": audio[:21],
    }
    for name, data in cases.items():
        write("fuzz_wav", name, data)


def hyper_seeds() -> None:
    """HyperWeight: fuzz_hyper's own format (flags, more, weights-1 (u16), points-1 (u16), group-1, rings,
    bits - the fewest, center, side, scales and index bytes, as fuzz_hyper.c reads them), and the op in
    fuzz_ort, fuzz_tflite (constant and fed weights, both routes), fuzz_onnx_decode and fuzz_tflite_decode."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.exporter.tflite_writer import Options, TFLiteModelBuilder

    rng = random.Random(6)

    def data(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))
    for weights, points, group, rings in ((35, 40, 1, 2), (300, 1000, 0, 0), (97, 65535, 3, 15), (1, 0, 0, 0)):
        head = bytes([0, 0]) + struct.pack("<HH", weights - 1, points) + bytes([group, rings, 0])
        write("fuzz_hyper", f"w{weights}_n{points + 1}_k{group + 1}_r{rings}", head + data(600))
    write("fuzz_hyper", "raw_floats", bytes([16, 14]) + struct.pack("<HH", 20, 9) + bytes([1, 3, 1]) + data(300))
    write("fuzz_hyper", "raw_indices", bytes([128 | 64, 0]) + struct.pack("<HH", 50, 30) + bytes([1, 1, 0, 3])
          + data(300))
    write("fuzz_hyper", "lengths_off", bytes([8 | 32, 16]) + struct.pack("<HH", 10, 5) + bytes([0, 2, 0, 3])
          + data(200))
    table_rng = random.Random(7)  # fewer table points than groups: the table + SIMD gather path
    for weights, points, group, rings in ((4096, 16, 1, 0), (4096, 16, 2, 1)):
        head = bytes([0, 0]) + struct.pack("<HH", weights - 1, points - 1) + bytes([group - 1, rings, 0])
        body = bytes(table_rng.randrange(256) for _ in range(2 + 4 * 4096))
        write("fuzz_hyper", f"table_w{weights}_n{points}_k{group}_r{rings}", head + body)

    w = hyper_weight()
    f32 = {n: np.frombuffer(w[n], "<f4") for n in ("center", "side", "scales")}
    op_index = 7  # ops.inc order
    side, scales = positive_seed(1), positive_seed(2)  # fz_fill_seeded values > 0: a valid side and scales
    for const in (True, False):
        inputs = [ort_value([len(w["indices"])], 0, const, "uint8", w["indices"]), ort_value([2], 9, const),
                  ort_value([1], side, const), ort_value([2], scales, const)]
        write("fuzz_ort", f"hyper_weight_c{int(const)}",
              bytes([op_index, 0]) + ort_attrs(HYPER_WEIGHT) + bytes([4]) + b"".join(inputs))
    for weights in (CONST, ARENA):
        for route in (0, 1):
            hw = [tensor(weights, [len(w["indices"])], 0, dtype="uint8", data=w["indices"]),
                  tensor(weights, [2], 21), tensor(weights, [1], side), tensor(weights, [2], scales)]
            write("fuzz_tflite", f"hyper_weight_w{weights}_r{route}",
                  graph(route, [*hw, tensor(ARENA, [1], 0)],
                        [node("HyperWeight", [0, 1, 2, 3], 4, flexbuffer_options(HYPER_WEIGHT))]))
    inits = [numpy_helper.from_array(np.frombuffer(w["indices"], np.uint8), "indices")] + \
        [numpy_helper.from_array(f32[n], n) for n in ("center", "side", "scales")]
    hw = helper.make_node("HyperWeight", ["indices", "center", "side", "scales"], ["W"], domain="ai.edgepack",
                          name="hw", **HYPER_WEIGHT)
    mm = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph_proto = helper.make_graph([hw, mm], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 5])],
                                    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 18),
                                                          helper.make_opsetid("ai.edgepack", 1)])
    model.ir_version = 10
    write("fuzz_onnx_decode", "hyper_weight_matmul", model.SerializeToString())
    b = TFLiteModelBuilder()
    x, filt, y = b.tensor("x", (2, 7)), b.tensor("w", (5, 7)), b.tensor("y", (2, 5))
    consts = [b.constant("indices", np.frombuffer(w["indices"], np.uint8))] + [b.constant(n, f32[n]) for n in f32]
    b.operator("ai.edgepack.HyperWeight", consts, [filt], flexbuffer_options(HYPER_WEIGHT))
    b.operator(tflite_op_fully_connected(), [x, filt, -1], [y], Options("FullyConnectedOptions", {}))
    write("fuzz_tflite_decode", "ok_hyper_fc", b.serialize([x], [y]))


def positive_seed(count: int) -> int:
    """The first seed byte whose fz_fill_seeded values (fuzz_common.h) are all > 0."""
    for seed in range(1, 255):
        state, values = seed, []
        for _ in range(count):
            state = (state * 1664525 + 1013904223) % 2**32
            values.append(((state >> 8) & 0xFFFF) / 32768.0 - 1.0)
        if min(values) > 0:
            return seed
    raise ValueError(f"no seed gives {count} positive values")


def tflite_op_fully_connected() -> int:
    import tflite
    return tflite.BuiltinOperator.FULLY_CONNECTED


def main() -> None:
    """Write every corpus."""
    flexmap_seeds()
    tflite_seeds()
    decode_seeds()
    ort_seeds()
    onnx_decode_seeds()
    onnx_int8_decode_seeds()
    kernel_seeds()
    codebook_seeds()
    hyper_seeds()
    mfcc_seeds()
    wav_seeds()
    for folder in sorted(CORPUS.iterdir()):
        print(f"{folder.name}: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    main()
