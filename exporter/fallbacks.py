"""Standard-op bodies for the ai.edgepack operators, as model-local ONNX FunctionProtos.

Every ``ai.edgepack`` node in an exported file carries one of these functions, so any ONNX
runtime (ORT without our library, ``onnx.reference.ReferenceEvaluator``) can run the file: the
hash is XXH32 written with int64 arithmetic (ORT 1.20 has no uint32 Mul), the circulant and LDR
structures are expanded with Range / Mod / Gather. The semantics are those of docs/ops.md.
Hashed matrices above FOLD_LIMIT are decoded by a Loop over row blocks, so that building an ORT
session stays within 3× the dense weight bytes (docs/ops.md, "Without the library").
"""

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION

STANDARD_OPSET = 18  # BitwiseAnd / BitwiseXor need 18
# Each op's inputs, in order, from the op spec.
OP_INPUTS = {name: op.input_names for name, op in OPS.items()}
__all__ = ["DOMAIN", "FOLD_LIMIT", "FUNCTIONS", "OPSET_VERSION", "OP_INPUTS", "STANDARD_OPSET"]
MASK32 = 0xFFFFFFFF
PRIME32_2, PRIME32_3, PRIME32_4, PRIME32_5 = 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1
# Hashed fallbacks: up to FOLD_LIMIT virtual weights × hashes ORT folds the decode at session
# build; above it a Loop decodes DECODE_CHUNK of them per iteration at every run.
FOLD_LIMIT = 1 << 16
DECODE_CHUNK = 1 << 16
KEY_SPACE = 1 << 32  # virtual weights × hashes; a larger hashed matrix fails at its first run


class Body:
    """A small builder for a function body: every call appends a node and returns its output."""

    def __init__(self, parent: "Body | None" = None, prefix: str = "") -> None:
        # A subgraph's names must not shadow the enclosing body's; it reads the root's constants.
        self.root = parent.root if parent else self
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: dict[tuple, str] = {}

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        output = f"_{self.prefix}{len(self.nodes)}"  # short: the file carries every name
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value, dtype=np.int64) -> str:
        """A constant tensor (a Python scalar becomes a 0-d tensor), made once per function."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.root.constants:
            self.root.constants[key] = self.root.op("Constant", value=numpy_helper.from_array(array))
        return self.root.constants[key]

    def attribute(self, name: str, kind: int) -> str:
        """The value of the function's attribute ``name`` as an int64 tensor."""
        field = "value_int" if kind == AttributeProto.INT else "value_ints"
        node = helper.make_node("Constant", [], [f"_{len(self.nodes)}_{name}"])
        node.attribute.append(helper.make_attribute_ref(field, kind, ref_attr_name=name))
        self.nodes.append(node)
        return node.output[0]

    # uint32 arithmetic on non-negative int64 tensors that hold values < 2**32, with no
    # intermediate reaching 2**63 (ORT 1.20 has no uint32/uint64 Add or Mul)
    def mul32(self, a: str, constant: int) -> str:
        if constant < 1 << 31:
            return self.op("BitwiseAnd", self.op("Mul", a, self.const(constant)), self.const(MASK32))
        # a·c = a·(c − 2³¹) + (a mod 2)·2³¹ (mod 2³²)
        low = self.op("Mul", a, self.const(constant - (1 << 31)))
        odd = self.op("Mul", self.op("BitwiseAnd", a, self.const(1)), self.const(1 << 31))
        return self.op("BitwiseAnd", self.op("Add", low, odd), self.const(MASK32))

    def add32(self, a: str, b: str) -> str:
        return self.op("BitwiseAnd", self.op("Add", a, b), self.const(MASK32))

    def shr(self, a: str, bits: int) -> str:
        return self.op("Div", a, self.const(1 << bits))

    def rotl32(self, a: str, bits: int) -> str:
        left = self.op("BitwiseAnd", self.op("Mul", a, self.const(1 << bits)), self.const(MASK32))
        return self.op("Add", left, self.shr(a, 32 - bits))

    def xorshift(self, a: str, bits: int) -> str:
        return self.op("BitwiseXor", a, self.shr(a, bits))

    def xxh32_head(self, i: str, seed: str) -> str:
        """XXH32 state of the 8-byte key u32le(i) ‖ u32le(j) after its first word (per row)."""
        h = self.add32(seed, self.const(PRIME32_5 + 8))
        h = self.add32(h, self.mul32(i, PRIME32_3))
        return self.mul32(self.rotl32(h, 17), PRIME32_4)

    def xxh32_tail(self, head: str, j_term: str) -> str:
        """XXH32 from the head and ``j_term`` = j·PRIME32_3 mod 2³² (the second word, per column)."""
        h = self.mul32(self.rotl32(self.add32(head, j_term), 17), PRIME32_4)
        h = self.mul32(self.xorshift(h, 15), PRIME32_2)
        h = self.mul32(self.xorshift(h, 13), PRIME32_3)
        return self.xorshift(h, 16)

    def slice1d(self, x: str, start: str, end: str) -> str:
        return self.op("Slice", x, self.op("Reshape", start, self.const([1])),
                       self.op("Reshape", end, self.const([1])))

    def vector(self, scalar: str) -> str:
        return self.op("Reshape", scalar, self.const([1]))

    def decode_hashed(self, buckets: str, recon: str, rows: str, cols: str, fold_limit: int) -> str:
        """The rows × cols virtual matrix (docs/ops.md, hash contract) as a flat float vector.

        Up to ``fold_limit`` virtual weights × hashes, ORT constant-folds the whole decode when it
        builds the session (the weight becomes a constant; folding keeps every intermediate
        until it ends, ~350 bytes per virtual weight). Larger matrices are decoded by a Loop
        over blocks of rows, ~DECODE_CHUNK hashes per iteration, which ORT does not fold:
        building the session needs O(buckets) memory, and the decode runs at every inference.
        ``recon`` is always given: the exporter passes the exact identity MLP for K = 1, since a
        function body cannot branch on whether an optional input is present.
        """
        k = self.attribute("num_hashes", AttributeProto.INT)
        seed = self.attribute("seed", AttributeProto.INT)
        signed = self.attribute("signed", AttributeProto.INT)
        zero, one = self.const(0), self.const(1)
        per_row = self.op("Max", one, self.op("Mul", cols, k))  # never a division by 0
        block = self.op("Max", one, self.op("Div", self.const(DECODE_CHUNK), per_row))
        trips = self.op("Div", self.op("Add", rows, self.op("Sub", block, one)), block)
        seeds = self.add32(seed, self.op("Reshape", self.op("Range", zero, k, one), self.const([-1, 1, 1])))
        # buckets ‖ sign·buckets: bit 31 of h picks the half, so the sign costs no float Mul
        sign = self.op("Cast", self.op("Sub", one, self.op("Mul", self.const(2), signed)), to=TensorProto.FLOAT)
        table = self.op("Concat", buckets, self.op("Mul", buckets, sign), axis=0)
        count = self.op("Shape", buckets)
        z_shape = self.op("Concat", self.vector(k), self.const([-1]), axis=0)
        length = self.op("Squeeze", self.op("Shape", recon))
        hidden = self.op("Div", self.op("Sub", length, one), self.op("Add", k, self.const(2)))
        hk = self.op("Mul", hidden, k)
        w1 = self.op("Reshape", self.slice1d(recon, zero, hk),
                     self.op("Concat", self.vector(hidden), self.vector(k), axis=0))
        b1_end = self.op("Add", hk, hidden)
        b1 = self.op("Unsqueeze", self.slice1d(recon, hk, b1_end), self.const([1]))
        w2_end = self.op("Add", b1_end, hidden)
        w2 = self.op("Unsqueeze", self.slice1d(recon, b1_end, w2_end), self.const([0]))
        b2 = self.slice1d(recon, w2_end, length)

        def values(body: "Body", start: str, end: str, width: str, step: str) -> str:
            """V[start:end:step, :width] (scalars), flat; the head (per row) and the j term (per
            column) are computed here too, so nothing of size rows or cols is folded on the Loop path."""
            i = body.op("Reshape", body.op("Range", start, end, step), self.const([1, -1, 1]))
            j = body.op("Reshape", body.op("Range", zero, width, one), self.const([1, 1, -1]))
            h = body.xxh32_tail(body.xxh32_head(i, seeds), body.mul32(j, PRIME32_3))  # (K, rows, width)
            index = body.op("Add", body.op("Mod", h, count), body.op("Mul", body.shr(h, 31), count))
            z = body.op("Reshape", body.op("Gather", table, index), z_shape)  # (K, rows·cols)
            activations = body.op("Relu", body.op("Add", body.op("MatMul", w1, z), b1))
            return body.op("Add", body.op("Reshape", body.op("MatMul", w2, activations),
                                          body.const([-1])), b2)

        double = [self.op("Cast", n, to=TensorProto.DOUBLE) for n in (rows, cols, k)]
        size = self.op("Mul", self.op("Mul", double[0], double[1]), double[2])  # no int64 overflow
        fold = self.op("LessOrEqual", size, self.const(fold_limit, np.float64))
        # From KEY_SPACE on, the Loop's row step is 0: its first Range fails (instead of decoding
        # for minutes until memory runs out; the keys are u32 anyway).
        row_step = self.op("Cast", self.op("Less", size, self.const(KEY_SPACE, np.float64)), to=TensorProto.INT64)
        # ORT folds the branch not taken too, so that one decodes a 0 × 0 matrix.
        folded = Body(self, "f")
        folded_graph = folded.graph("folded", [], values(folded, zero, self.op("Where", fold, rows, zero),
                                                         self.op("Where", fold, cols, zero), one))

        step = Body(self, "l")
        start = step.op("Mul", "_l_i", block)
        # cols tied to the iteration: ORT would fold the loop-invariant j term (~6 int64 × cols)
        width = step.op("Add", cols, step.op("Mul", "_l_i", zero))
        step_values = values(step, start, step.op("Add", start, block), width, row_step)
        step.nodes.append(helper.make_node("Identity", ["_l_cond"], ["_l_cond_out"]))
        step_graph = step.graph("decode_rows", [("_l_i", TensorProto.INT64), ("_l_cond", TensorProto.BOOL)],
                                step_values, extra_output="_l_cond_out")
        chunked = Body(self, "c")
        blocks = chunked.op("Loop", trips, chunked.const(True, np.bool_), body=step_graph)
        flat = chunked.slice1d(chunked.op("Reshape", blocks, chunked.const([-1])), zero,
                               self.op("Mul", rows, cols))
        chunked_graph = chunked.graph("chunked", [], flat)
        return self.op("If", fold, then_branch=folded_graph, else_branch=chunked_graph)

    def graph(self, name: str, inputs: list[tuple[str, int]], output: str,
              extra_output: str | None = None) -> onnx.GraphProto:
        """This body as a subgraph (If branch, Loop body) with one float output."""
        outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)]
        if extra_output:
            outputs.insert(0, helper.make_tensor_value_info(extra_output, TensorProto.BOOL, []))
        return helper.make_graph(self.nodes, name,
                                 [helper.make_tensor_value_info(n, t, []) for n, t in inputs], outputs)


    def epilogue(self, product: str, scaled: bool) -> str:
        """activation(product·scale + bias) (docs/ops.md): ``scaled`` reads the optional ``scale``
        input (a body cannot test whether it is present: the exporter attaches this variant when a
        node of the op has one, and gives every node of the op a scale then). The ``activation``
        attribute (0 none, 1 ReLU, 2 ReLU6) without branches: Clip(y, lo, hi), lo = 0 when
        activation ≥ 1 (else −inf), hi = 6 when it is 2 (else +inf)."""
        y = self.op("Add", self.op("Mul", product, "scale") if scaled else product, "bias")
        activation = self.attribute("activation", AttributeProto.INT)
        inf = self.const(np.inf, np.float32)
        lo = self.op("Where", self.op("Greater", activation, self.const(0)), self.const(0.0, np.float32),
                     self.op("Neg", inf))
        hi = self.op("Where", self.op("Equal", activation, self.const(2)), self.const(6.0, np.float32), inf)
        return self.op("Clip", y, lo, hi)

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


def _function(name: str, body: Body, output: str, scaled: bool = False) -> onnx.FunctionProto:
    """The FunctionProto of op ``name``: the spec's inputs (the ``folded`` ones only when ``scaled``:
    onnx's ReferenceEvaluator wants a node to give every input its function declares); its required
    attributes, and the optional ones with their defaults (IR >= 9), so a node may leave them out."""
    op = OPS[name]
    body.nodes.append(helper.make_node("Identity", [output], ["Y"]))
    function = helper.make_function(
        DOMAIN, name, [i.name for i in op.inputs if scaled or not i.folded], ["Y"], body.nodes,
        [helper.make_opsetid("", STANDARD_OPSET)], attributes=[a.name for a in op.attributes if a.required])
    function.attribute_proto.extend(helper.make_attribute(k, v) for k, v in op.defaults.items())
    return function


def hashed_weight_function(fold_limit: int = FOLD_LIMIT) -> onnx.FunctionProto:
    """HashedWeight(buckets, recon) → W[shape]."""
    body = Body()
    shape = body.attribute("shape", AttributeProto.INTS)
    rows = body.op("Squeeze", body.op("Slice", shape, body.const([0]), body.const([1])))
    cols = body.op("ReduceProd", body.op("Slice", shape, body.const([1]), body.const([2**62])),
                   keepdims=0)
    flat = body.decode_hashed("buckets", "recon", rows, cols, fold_limit)
    return _function("HashedWeight", body, body.op("Reshape", flat, shape))


def hashed_matmul_function(fold_limit: int = FOLD_LIMIT, scaled: bool = False) -> onnx.FunctionProto:
    """HashedMatMul(X, buckets, recon, bias[, scale]) → activation(X · Vᵀ [· scale] + bias)."""
    body = Body()
    rows = body.attribute("out_features", AttributeProto.INT)
    cols = body.attribute("in_features", AttributeProto.INT)
    flat = body.decode_hashed("buckets", "recon", rows, cols, fold_limit)
    weight = body.op("Reshape", flat, body.op("Concat", body.op("Reshape", rows, body.const([1])),
                                              body.op("Reshape", cols, body.const([1])), axis=0))
    product = body.op("MatMul", "X", body.op("Transpose", weight, perm=[1, 0]))
    return _function("HashedMatMul", body, body.epilogue(product, scaled), scaled)


def circulant_matmul_function(scaled: bool = False) -> onnx.FunctionProto:
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
    return _function("CirculantMatMul", body, body.epilogue(y, scaled), scaled)


def ldr_matmul_function(scaled: bool = False) -> onnx.FunctionProto:
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
    return _function("LDRMatMul", body, body.epilogue(y, scaled), scaled)


def _codebook_values(body: Body, n: str) -> str:
    """codebook[idx[k]] for k < n: entry k's ``bits`` bits read LSB first from byte k·bits/8 at bit
    (k·bits) % 8, in int64 (Div by 2^offset, Mod by 2^bits: exact, and no uint8 BitShift needed)."""
    bits = body.attribute("bits", AttributeProto.INT)
    powers = body.const([1 << p for p in range(9)])
    position = body.op("Mul", body.op("Range", body.const(0), n, body.const(1)), bits)
    byte = body.op("Cast", body.op("Gather", "indices", body.op("Div", position, body.const(8))),
                   to=TensorProto.INT64)
    shifted = body.op("Div", byte, body.op("Gather", powers, body.op("Mod", position, body.const(8))))
    index = body.op("Mod", shifted, body.op("Gather", powers, bits))
    return body.op("Gather", "codebook", index)


def _csr_decode(body: Body, rows: str, cols: str) -> str:
    """The flat rows·cols weight of the sparse form: each entry's row from row_ptr (a ScatterElements
    of row starts, then CumSum), its column from the running sum of col_gaps restarted per row,
    the values scattered into zeros (fillers write their 0.0)."""
    zero, one = body.const(0), body.const(1)
    n = body.op("Squeeze", body.op("Shape", "col_gaps"))
    values = _codebook_values(body, n)
    row_ptr = body.op("Cast", "row_ptr", to=TensorProto.INT64)
    starts = body.slice1d(row_ptr, one, rows)  # rows 1 .. rows−1 begin here
    marks = body.op("ScatterElements", body.op("ConstantOfShape", body.vector(body.op("Add", n, one)),
                                               value=numpy_helper.from_array(np.zeros(1, np.int64))),
                    starts, body.op("Expand", one, body.op("Shape", starts)), reduction="add")
    row = body.slice1d(body.op("CumSum", marks, zero), zero, n)
    running = body.op("CumSum", body.op("Cast", "col_gaps", to=TensorProto.INT64), zero)
    before = body.op("Concat", body.const([0]), running, axis=0)
    base = body.op("Gather", before, body.op("Gather", row_ptr, row))
    column = body.op("Sub", body.op("Sub", running, base), one)
    position = body.op("Add", body.op("Mul", row, cols), column)
    size = body.vector(body.op("Mul", rows, cols))
    zeros = body.op("ConstantOfShape", size, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    return body.op("ScatterElements", zeros, position, values)


def codebook_weight_function(sparse: bool = True) -> onnx.FunctionProto:
    """CodebookWeight(codebook, indices[, row_ptr, col_gaps]) → W[shape] (docs/ops.md). A body cannot
    test whether an input is present, so the dense form (``sparse=False``) is its own variant
    declaring only codebook and indices; the exporter attaches the one its nodes use."""
    body = Body()
    shape = body.attribute("shape", AttributeProto.INTS)
    if sparse:
        rows = body.op("Squeeze", body.op("Slice", shape, body.const([0]), body.const([1])))
        cols = body.op("ReduceProd", body.op("Slice", shape, body.const([1]), body.const([2**62])), keepdims=0)
        flat = _csr_decode(body, rows, cols)
    else:
        flat = _codebook_values(body, body.op("ReduceProd", shape, keepdims=0))
    function = _function("CodebookWeight", body, body.op("Reshape", flat, shape))
    if not sparse:
        del function.input[2:]
    return function


def sparse_codebook_matmul_function(scaled: bool = False) -> onnx.FunctionProto:
    """SparseCodebookMatMul(X, codebook, indices, row_ptr, col_gaps, bias[, scale]): the CSR weight
    decoded (as CodebookWeight's), then MatMul and the epilogue."""
    body = Body()
    rows = body.attribute("out_features", AttributeProto.INT)
    cols = body.attribute("in_features", AttributeProto.INT)
    weight = body.op("Reshape", _csr_decode(body, rows, cols),
                     body.op("Concat", body.vector(rows), body.vector(cols), axis=0))
    product = body.op("MatMul", "X", body.op("Transpose", weight, perm=[1, 0]))
    return _function("SparseCodebookMatMul", body, body.epilogue(product, scaled), scaled)


HYPER_CLAMP = 1 << 20  # above every t^e the decode uses (t^e ≤ t^k < 2^17), so clamping keeps them


def _hyper_powers(body: Body, base: str, count: int) -> str:
    """[base^1 .. base^count] in int64, each clamped to HYPER_CLAMP (so nothing overflows for any base)."""
    power, powers = base, []
    for _ in range(count):
        power = body.op("Min", power, body.const(HYPER_CLAMP))
        powers.append(power)
        power = body.op("Mul", power, base)
    return body.op("Concat", *(body.op("Unsqueeze", p, body.const([0])) for p in powers), axis=0)


def _hyper_indices(body: Body, g: str) -> str:
    """The g stored indices, ``bits`` (1..24) each, LSB first: the 4 bytes from byte m·bits/8 (the
    stream padded by 3 zero bytes) combined in int64, Div by 2^((m·bits) mod 8), Mod by 2^bits."""
    bits = body.attribute("bits", AttributeProto.INT)
    packed = body.op("Concat", body.op("Cast", "indices", to=TensorProto.INT64), body.const([0, 0, 0]), axis=0)
    position = body.op("Mul", body.op("Range", body.const(0), g, body.const(1)), bits)
    first = body.op("Unsqueeze", body.op("Div", position, body.const(8)), body.const([1]))
    four = body.op("Gather", packed, body.op("Add", first, body.const([0, 1, 2, 3])))  # [g, 4]
    word = body.op("ReduceSum", body.op("Mul", four, body.const([1, 1 << 8, 1 << 16, 1 << 24])),
                   body.const([1]), keepdims=0)
    shifted = body.op("Div", word, body.op("Gather", body.const([1 << p for p in range(8)]),
                                           body.op("Mod", position, body.const(8))))
    return body.op("Mod", shifted, body.op("Gather", body.const([1 << p for p in range(25)]), bits))


def _hyper_table(body: Body, n: str, k: str, rings: str) -> str:
    """The (R+1)·(n+1) × k table of decoded points (docs/ops.md, HyperWeight), in the contract's
    float32 operations: the trajectory points (entry 0 the center), then each ring's
    (p − c)·s_r + c, ring 0 taken as the points themselves (Where: bit-exact)."""
    one = body.const(1)
    f32 = TensorProto.FLOAT
    # t: the smallest t >= 1 with t^k >= n, as 1 + #{c in 1..n : c^k < n}
    candidates = body.op("Range", one, body.op("Add", n, one), one)
    column = body.op("Gather", _hyper_powers(body, candidates, 4), body.op("Sub", k, one))
    t = body.op("Add", one, body.op("ReduceSum", body.op("Cast", body.op("Less", column, n), to=TensorProto.INT64),
                                    body.const([0]), keepdims=0))
    exponents = body.op("Sub", k, body.op("Range", body.const(0), k, one))  # k − j for j = 0..k−1
    divisor = body.op("Cast", body.op("Gather", _hyper_powers(body, t, 4), body.op("Sub", exponents, one)), to=f32)
    step = body.op("Div", "side", divisor)
    corner = body.op("Sub", "center", body.op("Mul", "side", body.const(0.5, np.float32)))
    theta = body.op("Unsqueeze", body.op("Cast", body.op("Range", body.const(0), n, one), to=f32), body.const([1]))
    trajectory = body.op("Add", body.op("Mod", body.op("Mul", theta, step), "side", fmod=1), corner)
    points = body.op("Concat", body.op("Unsqueeze", "center", body.const([0])), trajectory, axis=0)  # [n+1, k]
    # [1, s_1 .. s_R]: Gemm reads the optional scales as its C (0·0 + s = s exactly; absent: R = 0, nothing)
    zeros = body.op("ConstantOfShape", body.op("Concat", body.const([1]), body.vector(rings), axis=0),
                    value=numpy_helper.from_array(np.zeros(1, np.float32)))
    scales = body.op("Gemm", body.const([[0.0]], np.float32), zeros, "scales")
    factor = body.op("Concat", body.const([1.0], np.float32), body.op("Reshape", scales, body.const([-1])), axis=0)
    count = body.op("Add", rings, one)
    ringed = body.op("Add", body.op("Mul", body.op("Unsqueeze", body.op("Sub", points, "center"), body.const([0])),
                                    body.op("Reshape", factor, body.const([-1, 1, 1]))), "center")
    ring = body.op("Reshape", body.op("Range", body.const(0), count, one), body.const([-1, 1, 1]))
    table = body.op("Where", body.op("Equal", ring, body.const(0)), body.op("Unsqueeze", points, body.const([0])),
                    ringed)
    return body.op("Reshape", table, body.op("Concat", body.const([-1]), body.vector(k), axis=0))


def hyper_weight_function() -> onnx.FunctionProto:
    """HyperWeight(indices, center, side, scales?) → W[shape] (docs/ops.md): the point table, one
    gather per stored index, the last group's padding dropped. A node always gives all four inputs
    (scales as "" when R = 0, as onnx's ReferenceEvaluator wants); Gemm takes the absent scales, and
    a zero-length one as absent too. It checks nothing: the validator refuses the contract's faults
    (side·points must be finite in float32, or θ·step overflows to inf and the points to NaN)."""
    body = Body()
    shape = body.attribute("shape", AttributeProto.INTS)
    n, k, rings = (body.attribute(name, AttributeProto.INT) for name in ("points", "group", "rings"))
    size = body.op("ReduceProd", shape, keepdims=0)
    groups = body.op("Div", body.op("Sub", body.op("Add", size, k), body.const(1)), k)
    weights = body.op("Gather", _hyper_table(body, n, k, rings), _hyper_indices(body, groups))  # [g, k]
    flat = body.slice1d(body.op("Reshape", weights, body.const([-1])), body.const(0), size)
    return _function("HyperWeight", body, body.op("Reshape", flat, shape))


def mfcc_function(scaled: bool = False) -> onnx.FunctionProto:
    """MFCC(audio[..., samples]) → Y[..., frames, coefficients] (docs/ops.md "Audio front end"), in
    float64: the samples padded by fft − window zeros, STFT with the Hann window zero-padded to fft,
    magnitude, the tf.signal mel and DCT matrices built from the attributes, log(mel + 1e-6)."""
    body = Body()
    f64 = TensorProto.DOUBLE
    rate, window, hop, fft, mels, coefficients, lower, upper = (
        body.attribute(name, AttributeProto.INT) for name in
        ("sample_rate", "window_length", "hop_length", "fft_length", "num_mel_bins", "num_coefficients",
         "lower_hz", "upper_hz"))

    def real(x: str) -> str:
        return body.op("Cast", x, to=f64)

    def hz_to_mel(hz: str) -> str:
        return body.op("Mul", body.const(1127.0, np.float64),
                       body.op("Log", body.op("Add", body.const(1.0, np.float64),
                                              body.op("Div", hz, body.const(700.0, np.float64)))))

    def arange(n: str) -> str:
        return real(body.op("Range", body.const(0), n, body.const(1)))

    shape = body.op("Shape", "audio")
    leading = body.op("Slice", shape, body.const([0]), body.const([-1]))
    rows = body.op("Reshape", "audio", body.op("Concat", body.const([-1]), body.op(
        "Slice", shape, body.const([-1]), body.const([2**62])), axis=0))
    extra = body.op("Reshape", body.op("Sub", fft, window), body.const([1]))
    padded = body.op("Pad", real(rows), body.op("Concat", body.const([0, 0, 0]), extra, axis=0))
    n = arange(window)
    hann = body.op("Sub", body.const(0.5, np.float64), body.op("Mul", body.const(0.5, np.float64), body.op(
        "Cos", body.op("Div", body.op("Mul", n, body.const(2 * np.pi, np.float64)), real(window)))))
    hann = body.op("Pad", hann, body.op("Concat", body.const([0]), extra, axis=0))
    stft = body.op("STFT", body.op("Unsqueeze", padded, body.const([2])), hop, hann, fft, onesided=1)
    magnitude = body.op("Sqrt", body.op("ReduceSum", body.op("Mul", stft, stft), body.const([-1]), keepdims=0))

    bins = body.op("Add", body.op("Div", fft, body.const(2)), body.const(1))
    k = arange(bins)
    hz = body.op("Mul", k, body.op("Div", body.op("Div", real(rate), body.const(2.0, np.float64)),
                                   real(body.op("Sub", bins, body.const(1)))))
    bin_mel = body.op("Unsqueeze", hz_to_mel(hz), body.const([1]))  # [bins, 1]
    low, high = hz_to_mel(real(lower)), hz_to_mel(real(upper))
    step = body.op("Div", body.op("Sub", high, low), real(body.op("Add", mels, body.const(1))))
    left = body.op("Add", low, body.op("Mul", arange(mels), step))  # [mels]
    center, right = body.op("Add", left, step), body.op("Add", left, body.op("Mul", step, body.const(2.0, np.float64)))
    rising = body.op("Div", body.op("Sub", bin_mel, left), body.op("Sub", center, left))
    falling = body.op("Div", body.op("Sub", right, bin_mel), body.op("Sub", right, center))
    weights = body.op("Max", body.const(0.0, np.float64), body.op("Min", rising, falling))
    not_dc = real(body.op("Greater", body.op("Unsqueeze", k, body.const([1])), body.const(0.0, np.float64)))
    mel_matrix = body.op("Mul", weights, not_dc)  # [bins, mels]

    m = body.op("Unsqueeze", arange(mels), body.const([1]))
    c = body.op("Unsqueeze", arange(coefficients), body.const([0]))
    angle = body.op("Div", body.op("Mul", body.op("Mul", c, body.const(np.pi, np.float64)), body.op(
        "Add", body.op("Mul", m, body.const(2.0, np.float64)), body.const(1.0, np.float64))),
        body.op("Mul", real(mels), body.const(2.0, np.float64)))
    scale = body.op("Sqrt", body.op("Div", body.const(2.0, np.float64), real(mels)))
    dct = body.op("Mul", body.op("Cos", angle), scale)
    log_mel = body.op("Log", body.op("Add", body.op("MatMul", magnitude, mel_matrix), body.const(1e-6, np.float64)))
    features = body.op("Cast", body.op("MatMul", log_mel, dct), to=TensorProto.FLOAT)  # [rows, frames, coefficients]
    tail = body.op("Slice", body.op("Shape", features), body.const([1]), body.const([3]))
    return _function("MFCC", body, body.op("Reshape", features, body.op("Concat", leading, tail, axis=0)))


FUNCTIONS = {
    "HashedWeight": hashed_weight_function,
    "HashedMatMul": hashed_matmul_function,
    "CirculantMatMul": circulant_matmul_function,
    "LDRMatMul": ldr_matmul_function,
    "MFCC": mfcc_function,
    "CodebookWeight": codebook_weight_function,
    "SparseCodebookMatMul": sparse_codebook_matmul_function,
    "HyperWeight": hyper_weight_function,
}


def fallback_function(name: str, fold_limit: int = FOLD_LIMIT, scaled: bool = False,
                      sparse: bool = True) -> onnx.FunctionProto:
    """The fallback FunctionProto of op ``name``; hashed decodes up to ``fold_limit`` virtual
    weights × hashes are folded by ORT at session build (dense speed, ~350 bytes per weight then).
    ``scaled``: the compute ops' variant that reads the ``scale`` input (every node must give one).
    ``sparse``: CodebookWeight's variant with row_ptr / col_gaps (else the dense form's)."""
    if name == "HashedWeight":
        return FUNCTIONS[name](fold_limit)
    if name == "CodebookWeight":
        return FUNCTIONS[name](sparse)
    if name == "HyperWeight":
        return FUNCTIONS[name]()
    if name == "HashedMatMul":
        return FUNCTIONS[name](fold_limit, scaled)
    return FUNCTIONS[name](scaled)
