"""Standard-op bodies for the ai.edgepack operators, as model-local ONNX FunctionProtos.

Every ``ai.edgepack`` node in an exported file carries one of these functions, so any ONNX
runtime (ORT without our library, ``onnx.reference.ReferenceEvaluator``) can run the file: the
hash is XXH32 written with int64 arithmetic (ORT has no uint32 Mul), the circulant and LDR
structures are expanded with Range / Mod / Gather. The semantics are those of docs/ops.md.
"""

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION

STANDARD_OPSET = 18  # BitwiseAnd / BitwiseXor need 18
# Each op's inputs, in order, from the op spec.
OP_INPUTS = {name: op.input_names for name, op in OPS.items()}
__all__ = ["DOMAIN", "FUNCTIONS", "OPSET_VERSION", "OP_INPUTS", "STANDARD_OPSET"]
MASK32 = 0xFFFFFFFF
PRIME32_2, PRIME32_3, PRIME32_4, PRIME32_5 = 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1


class Body:
    """A small builder for a function body: every call appends a node and returns its output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        output = f"_{len(self.nodes)}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value, dtype=np.int64) -> str:
        """A constant tensor (a Python scalar becomes a 0-d tensor)."""
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        return self.op("Constant", value=tensor)

    def attribute(self, name: str, kind: int) -> str:
        """The value of the function's attribute ``name`` as an int64 tensor."""
        field = "value_int" if kind == AttributeProto.INT else "value_ints"
        node = helper.make_node("Constant", [], [f"_{len(self.nodes)}_{name}"])
        node.attribute.append(helper.make_attribute_ref(field, kind, ref_attr_name=name))
        self.nodes.append(node)
        return node.output[0]

    # uint32 arithmetic on non-negative int64 tensors that hold values < 2**32
    def mul32(self, a: str, constant: int) -> str:
        low = self.op("Mul", a, self.const(constant & 0xFFFF))
        high = self.op("BitwiseAnd", self.op("Mul", a, self.const(constant >> 16)), self.const(0xFFFF))
        total = self.op("Add", low, self.op("Mul", high, self.const(1 << 16)))
        return self.op("BitwiseAnd", total, self.const(MASK32))

    def add32(self, a: str, b: str) -> str:
        return self.op("BitwiseAnd", self.op("Add", a, b), self.const(MASK32))

    def shr(self, a: str, bits: int) -> str:
        return self.op("Div", a, self.const(1 << bits))

    def rotl32(self, a: str, bits: int) -> str:
        left = self.op("BitwiseAnd", self.op("Mul", a, self.const(1 << bits)), self.const(MASK32))
        return self.op("Add", left, self.shr(a, 32 - bits))

    def xorshift(self, a: str, bits: int) -> str:
        return self.op("BitwiseXor", a, self.shr(a, bits))

    def xxh32_pair(self, i: str, j: str, seed: str) -> str:
        """XXH32 of the 8-byte keys u32le(i) ‖ u32le(j), broadcasting i, j and seed."""
        h = self.add32(seed, self.const(PRIME32_5 + 8))
        for word in (i, j):
            h = self.add32(h, self.mul32(word, PRIME32_3))
            h = self.mul32(self.rotl32(h, 17), PRIME32_4)
        h = self.mul32(self.xorshift(h, 15), PRIME32_2)
        h = self.mul32(self.xorshift(h, 13), PRIME32_3)
        return self.xorshift(h, 16)

    def slice1d(self, x: str, start: str, end: str) -> str:
        return self.op("Slice", x, self.op("Reshape", start, self.const([1])),
                       self.op("Reshape", end, self.const([1])))

    def decode_hashed(self, buckets: str, recon: str, rows: str, cols: str) -> str:
        """The rows × cols virtual matrix (docs/ops.md, hash contract) as a flat float vector.

        ``recon`` is always given: the exporter passes the exact identity MLP for K = 1, since a
        function body cannot branch on whether an optional input is present.
        """
        k = self.attribute("num_hashes", AttributeProto.INT)
        seed = self.attribute("seed", AttributeProto.INT)
        signed = self.attribute("signed", AttributeProto.INT)
        zero, one = self.const(0), self.const(1)
        hashes = self.op("Reshape", self.op("Range", zero, k, one), self.const([-1, 1, 1]))
        i = self.op("Reshape", self.op("Range", zero, rows, one), self.const([1, -1, 1]))
        j = self.op("Reshape", self.op("Range", zero, cols, one), self.const([1, 1, -1]))
        h = self.xxh32_pair(i, j, self.add32(seed, hashes))  # (K, rows, cols)
        index = self.op("Mod", h, self.op("Shape", buckets))
        negative = self.op("Mul", self.shr(h, 31), signed)
        sign = self.op("Sub", self.const(1), self.op("Mul", self.const(2), negative))
        values = self.op("Mul", self.op("Gather", buckets, index),
                         self.op("Cast", sign, to=TensorProto.FLOAT))
        values = self.op("Reshape", values, self.op("Concat", self.op("Reshape", k, self.const([1])),
                                                     self.const([-1]), axis=0))  # (K, rows·cols)
        length = self.op("Squeeze", self.op("Shape", recon))
        hidden = self.op("Div", self.op("Sub", length, one), self.op("Add", k, self.const(2)))
        hk = self.op("Mul", hidden, k)
        w1 = self.op("Reshape", self.slice1d(recon, zero, hk),
                     self.op("Concat", self.op("Reshape", hidden, self.const([1])),
                             self.op("Reshape", k, self.const([1])), axis=0))
        b1_end = self.op("Add", hk, hidden)
        b1 = self.op("Unsqueeze", self.slice1d(recon, hk, b1_end), self.const([1]))
        w2_end = self.op("Add", b1_end, hidden)
        w2 = self.op("Unsqueeze", self.slice1d(recon, b1_end, w2_end), self.const([0]))
        b2 = self.slice1d(recon, w2_end, length)
        activations = self.op("Relu", self.op("Add", self.op("MatMul", w1, values), b1))
        return self.op("Add", self.op("Reshape", self.op("MatMul", w2, activations),
                                      self.const([-1])), b2)

    def linear(self, x: str, weight: str, bias: str) -> str:
        """x[..., in] · weight[out, in]ᵀ + bias."""
        return self.op("Add", self.op("MatMul", x, self.op("Transpose", weight, perm=[1, 0])), bias)

    def pad_last(self, x: str, size: str) -> str:
        """Zero-pad the last axis of x to ``size``."""
        width = self.op("Sub", size, self.op("Slice", self.op("Shape", x), self.const([-1]),
                                             self.const([2**62])))
        rank = self.op("Size", self.op("Shape", x))
        before = self.op("ConstantOfShape", self.op("Reshape", rank, self.const([1])),
                         value=numpy_helper.from_array(np.array([0], dtype=np.int64)))
        prefix = self.op("Slice", before, self.const([0]), self.const([-1]))
        pads = self.op("Concat", before, prefix, self.op("Reshape", width, self.const([1])), axis=0)
        return self.op("Pad", x, pads)

    def wrapped_difference(self, n: str) -> str:
        """The n×n matrix (a − c) mod n."""
        r = self.op("Range", self.const(0), n, self.const(1))
        difference = self.op("Sub", self.op("Unsqueeze", r, self.const([1])),
                             self.op("Unsqueeze", r, self.const([0])))
        return self.op("Mod", self.op("Add", difference, n), n)


def _function(name: str, body: Body, output: str) -> onnx.FunctionProto:
    """The FunctionProto of op ``name``: the spec's inputs; its required attributes, and the
    optional ones with their defaults (IR >= 9), so a node may leave them out."""
    op = OPS[name]
    body.nodes.append(helper.make_node("Identity", [output], ["Y"]))
    function = helper.make_function(
        DOMAIN, name, op.input_names, ["Y"], body.nodes,
        [helper.make_opsetid("", STANDARD_OPSET)], attributes=[a.name for a in op.attributes if a.required])
    function.attribute_proto.extend(helper.make_attribute(k, v) for k, v in op.defaults.items())
    return function


def hashed_weight_function() -> onnx.FunctionProto:
    """HashedWeight(buckets, recon) → W[shape]."""
    body = Body()
    shape = body.attribute("shape", AttributeProto.INTS)
    rows = body.op("Squeeze", body.op("Slice", shape, body.const([0]), body.const([1])))
    cols = body.op("ReduceProd", body.op("Slice", shape, body.const([1]), body.const([2**62])),
                   keepdims=0)
    flat = body.decode_hashed("buckets", "recon", rows, cols)
    return _function("HashedWeight", body, body.op("Reshape", flat, shape))


def hashed_matmul_function() -> onnx.FunctionProto:
    """HashedMatMul(X, buckets, recon, bias) → X · Vᵀ + bias."""
    body = Body()
    rows = body.attribute("out_features", AttributeProto.INT)
    cols = body.attribute("in_features", AttributeProto.INT)
    flat = body.decode_hashed("buckets", "recon", rows, cols)
    weight = body.op("Reshape", flat, body.op("Concat", body.op("Reshape", rows, body.const([1])),
                                              body.op("Reshape", cols, body.const([1])), axis=0))
    y = body.linear("X", weight, "bias")
    return _function("HashedMatMul", body, y)


def circulant_matmul_function() -> onnx.FunctionProto:
    """CirculantMatMul(X, blocks[p, q, b], bias): the blocks expanded by Gather, then MatMul."""
    body = Body()
    out_features = body.attribute("out_features", AttributeProto.INT)
    shape = body.op("Shape", "blocks")
    p, q, b = (body.op("Slice", shape, body.const([a]), body.const([a + 1])) for a in range(3))
    tiles = body.op("Gather", "blocks", body.wrapped_difference(body.op("Squeeze", b)), axis=2)
    full = body.op("Reshape", body.op("Transpose", tiles, perm=[0, 2, 1, 3]),
                   body.op("Concat", body.op("Mul", p, b), body.op("Mul", q, b), axis=0))
    x = body.pad_last("X", body.op("Mul", q, b))
    y = body.op("MatMul", x, body.op("Transpose", full, perm=[1, 0]))
    y = body.op("Slice", y, body.const([0]), body.op("Reshape", out_features, body.const([1])),
                body.const([-1]))
    return _function("CirculantMatMul", body, body.op("Add", y, "bias"))


def ldr_matmul_function() -> onnx.FunctionProto:
    """LDRMatMul(X, G[r, n], H[r, n], bias): W = Σᵢ Z₁(gᵢ)·Z₋₁(hᵢ) expanded by Gather, then MatMul."""
    body = Body()
    out_features = body.attribute("out_features", AttributeProto.INT)
    n = body.op("Slice", body.op("Shape", "G"), body.const([1]), body.const([2]))
    n_scalar = body.op("Squeeze", n)
    difference = body.wrapped_difference(n_scalar)
    r = body.op("Range", body.const(0), n_scalar, body.const(1))
    below = body.op("GreaterOrEqual", body.op("Unsqueeze", r, body.const([1])),
                    body.op("Unsqueeze", r, body.const([0])))
    skew_sign = body.op("Where", below, body.const(1.0, np.float32), body.const(-1.0, np.float32))
    circulant = body.op("Gather", "G", difference, axis=1)  # (r, n, n)
    skew = body.op("Mul", body.op("Gather", "H", difference, axis=1), skew_sign)
    full = body.op("ReduceSum", body.op("MatMul", circulant, skew), body.const([0]), keepdims=0)
    x = body.pad_last("X", n)
    y = body.op("MatMul", x, body.op("Transpose", full, perm=[1, 0]))
    y = body.op("Slice", y, body.const([0]), body.op("Reshape", out_features, body.const([1])),
                body.const([-1]))
    return _function("LDRMatMul", body, body.op("Add", y, "bias"))


FUNCTIONS = {
    "HashedWeight": hashed_weight_function,
    "HashedMatMul": hashed_matmul_function,
    "CirculantMatMul": circulant_matmul_function,
    "LDRMatMul": ldr_matmul_function,
}
