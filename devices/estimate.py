"""Analytic energy: operation counts × energy per operation and per byte moved. Always an estimate.

The table is Horowitz, "Computing's Energy Problem (and what we can do about it)", ISSCC 2014,
45 nm, 0.9 V. Memory costs per 32-bit word are as tabulated from it by Han et al., "Learning both
Weights and Connections for Efficient Neural Networks" (NeurIPS 2015) and "Deep Compression"
(ICLR 2016): 32-bit SRAM (8 KB cache) read 5 pJ, 32-bit DRAM read 640 pJ.

What we use: one fp32 MAC = fp32 mult + fp32 add = 3.7 + 0.9 = 4.6 pJ; one byte moved = a DRAM
access per 32-bit word / 4 = 160 pJ (``memory="sram"``: 1.25 pJ). Every byte an operator reads or
writes is counted once as memory traffic (no cache reuse): an upper bound on data movement.
The key hash of hashed layers: int32 mult 3.1 pJ, every other 32-bit integer op (add, xor, shift,
rotate, and) as an int32 add, 0.1 pJ (the table lists no logic ops); a bucket gather is a 32-bit
SRAM read, 5 pJ (the bucket table is assumed cached).

What a run really does comes from the op spec (runtime_kernels/op_spec.py ``work`` / ``load_work``):
storage-compressed weights (HashedWeight, expand-mode HashedMatMul) are decoded once, at load, so
each inference reads the dense weight; stream-mode HashedMatMul reads only its buckets but hashes
every weight on every run; circulant / LDR read their precomputed spectra. The one-time work at
load (decoding, spectra) is estimated separately (``EstimatedEnergy.load``), never per inference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, Work
from edgepack.runtime_kernels.op_spec import fft_macs as fft_macs


@dataclass(frozen=True)
class EnergyTable:
    """Energy per operation in picojoules, with where the numbers come from."""

    name: str
    citation: str
    picojoules: Mapping[str, float]

    def mac_pj(self, dtype: str = "fp32") -> float:
        """One multiply-accumulate: a multiply plus an add (int8: 8-bit mult, 32-bit accumulate)."""
        mult, add = {"fp32": ("fp32_mult", "fp32_add"), "fp16": ("fp16_mult", "fp16_add"),
                     "int8": ("int8_mult", "int32_add")}[dtype]
        return self.picojoules[mult] + self.picojoules[add]

    def byte_pj(self, memory: str = "dram") -> float:
        """Moving one byte: a 32-bit access of that memory divided by 4."""
        return self.picojoules[f"{memory}_32bit"] / 4


HOROWITZ_45NM = EnergyTable(
    name="horowitz-45nm",
    citation=("M. Horowitz, 'Computing's Energy Problem (and what we can do about it)', ISSCC 2014, "
              "45 nm 0.9 V; 32-bit SRAM/DRAM per-access figures as tabulated by Han et al., NeurIPS 2015"),
    picojoules={
        "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
        "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
        "register_32bit": 1.0, "sram_32bit": 5.0, "dram_32bit": 640.0,
    },
)


@dataclass
class EstimatedEnergy:
    """Energy of one inference from op counts; ``estimated`` is always True. ``load``: the one-time
    work when the model is loaded (decoding, FFT spectra), estimated the same way, not included."""

    macs: int
    bytes_moved: int
    compute_pj: float
    memory_pj: float
    table: str
    assumptions: str
    method: str = "estimate"
    int_mults: int = 0
    int_ops: int = 0
    gathers: int = 0
    load: EstimatedEnergy | None = None
    estimated: bool = field(default=True, init=False)

    @property
    def energy_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    @property
    def energy_mj_per_inference(self) -> float:
        return self.energy_pj * 1e-9


def estimate_energy(macs: int, bytes_moved: int, *, table: EnergyTable = HOROWITZ_45NM,
                    dtype: str = "fp32", memory: str = "dram", int_mults: int = 0, int_ops: int = 0,
                    gathers: int = 0) -> EstimatedEnergy:
    """Energy per inference = MACs × MAC energy + bytes × per-byte energy of ``memory`` + the hash
    work: integer multiplies, other integer ops (as an int32 add) and bucket gathers (32-bit SRAM)."""
    counts = {"macs": macs, "bytes_moved": bytes_moved, "int_mults": int_mults, "int_ops": int_ops,
              "gathers": gathers}
    if any(value < 0 for value in counts.values()):
        raise ValueError(f"every count must be >= 0, got {counts}")
    mac_pj, byte_pj = table.mac_pj(dtype), table.byte_pj(memory)
    mult_pj, op_pj, gather_pj = (table.picojoules[k] for k in ("int32_mult", "int32_add", "sram_32bit"))
    hash_pj = int_mults * mult_pj + int_ops * op_pj + gathers * gather_pj
    return EstimatedEnergy(
        macs=macs, bytes_moved=bytes_moved, compute_pj=macs * mac_pj + hash_pj, memory_pj=bytes_moved * byte_pj,
        table=table.name, int_mults=int_mults, int_ops=int_ops, gathers=gathers,
        assumptions=(f"estimate: {dtype} MAC {mac_pj:g} pJ, {memory} {byte_pj:g} pJ/byte, hash: int32 mult "
                     f"{mult_pj:g} pJ, other int op {op_pj:g} pJ (an int32 add), bucket gather {gather_pj:g} pJ "
                     f"(32-bit SRAM read) ({table.citation})"),
    )


def estimate_model(model: str | Path | onnx.ModelProto, *, table: EnergyTable = HOROWITZ_45NM,
                   dtype: str = "fp32", memory: str = "dram") -> EstimatedEnergy:
    """Estimated energy of one inference of an ONNX model, with the one-time load work in ``.load``."""
    inference, load = count_work(model)
    options = {"table": table, "dtype": dtype, "memory": memory}
    estimate = estimate_energy(**inference.as_counts(), **options)
    estimate.load = estimate_energy(**load.as_counts(), **options)
    estimate.assumptions += (f"; one-time work at load (decoding, FFT spectra) "
                             f"{estimate.load.energy_pj * 1e-9:.4g} mJ, not included")
    return estimate


# ---- counting ---------------------------------------------------------------------------------

Shape = tuple[int, ...]


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _matmul(node, shape) -> float:
    return math.prod(shape(node.output[0])) * shape(node.input[0])[-1]


def _gemm(node, shape) -> float:
    a = shape(node.input[0])
    k = a[0] if _attribute(node, "transA", 0) else a[-1]
    return math.prod(shape(node.output[0])) * k


def _conv(node, shape) -> float:
    return math.prod(shape(node.output[0])) * math.prod(shape(node.input[1])[1:])


def _conv_transpose(node, shape) -> float:
    return math.prod(shape(node.input[0])) * math.prod(shape(node.input[1])[1:])


def _attributes(node: onnx.NodeProto) -> dict:
    """An ai.edgepack node's attributes, the spec's defaults filled in."""
    return OPS[node.op_type].defaults | {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _by_spec_name(node: onnx.NodeProto, shape: Callable) -> Callable:
    """``shape`` for an ai.edgepack node's inputs by their spec names (KeyError: absent)."""
    slots = dict(zip(OPS[node.op_type].input_names, node.input))

    def by_name(name: str) -> Shape:
        if not slots.get(name):
            raise KeyError(name)
        return shape(slots[name])
    return by_name


MAC_COUNTERS: dict[str, Callable] = {
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose,
}


@dataclass(frozen=True)
class Counts:
    """Totals over a model: MACs, bytes moved, the key hash's integer multiplies and other ops, gathers."""

    macs: int = 0
    bytes_moved: int = 0
    int_mults: int = 0
    int_ops: int = 0
    gathers: int = 0

    def as_counts(self) -> dict[str, int]:
        return {"macs": self.macs, "bytes_moved": self.bytes_moved, "int_mults": self.int_mults,
                "int_ops": self.int_ops, "gathers": self.gathers}


def _counts(work: Work, activation_bytes: int) -> Counts:
    return Counts(round(work.macs), work.weight_bytes + activation_bytes, round(work.int_mults),
                  round(work.int_ops), round(work.gathers))


def _collect(graph: onnx.GraphProto) -> dict[str, tuple[Shape, int]]:
    """Every value with a known shape → (shape, element type); symbolic dimensions count as 1."""
    known = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            known[info.name] = (tuple(d.dim_value or 1 for d in tensor.shape.dim), tensor.elem_type)
    for init in graph.initializer:
        known[init.name] = (tuple(init.dims), init.data_type)
    return known


def _infer(model: onnx.ModelProto) -> dict[str, tuple[Shape, int]]:
    """onnx shape inference, plus our ops' outputs (the spec's output-shape rule), until nothing changes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for _ in range(len(model.graph.node) + 1):
        known = _collect(shape_inference.infer_shapes(model).graph)
        added = False
        for node in model.graph.node:
            if node.domain != DOMAIN or node.op_type not in OPS or node.output[0] in known:
                continue
            try:
                shape = OPS[node.op_type].output_shape(_attributes(node),
                                                       _by_spec_name(node, lambda name, k=known: k[name][0]))
            except KeyError:  # an input's shape is not known yet
                continue
            model.graph.value_info.append(
                helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, list(shape)))
            added = True
        if not added:
            return known
    return known


def count_work(model: str | Path | onnx.ModelProto) -> tuple[Counts, Counts]:
    """(one inference, loading once) of ``model``: MACs of MatMul/Gemm/Conv, bytes of every
    standard node's inputs and outputs with a known shape, and for ai.edgepack nodes the spec's
    ``work`` (per inference, in the node's mode) and ``load_work`` plus their activation, bias and
    output bytes. Symbolic dimensions (batch) count as 1, so do data-dependent ones (weights rebuilt
    at run time in "portable" exports: count "kernels" exports). Elementwise ops cost bytes, not
    MACs; subgraphs (If/Loop) are not counted. A fallback-function run (no edgepack library) is not
    what this counts: it rebuilds hashed weights on every run."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    known = _infer(model)
    inference, load, moved = Work(), Work(), 0
    for node in model.graph.node:
        shape = functools.partial(_shape_of, known, node)
        if node.domain == DOMAIN and node.op_type in OPS:
            op = OPS[node.op_type]
            attributes, by_name = _attributes(node), _by_spec_name(node, shape)
            inference += op.work(attributes, by_name)
            load += op.load_work(attributes, by_name)
            kinds = dict(zip(op.input_names, (i.kind for i in op.inputs)))
            names = [name for spec_name, name in zip(op.input_names, node.input) if kinds[spec_name] != "weight"]
            names += list(node.output) if op.kind == "compute" else []
        else:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            if key in MAC_COUNTERS:
                inference += Work(macs=MAC_COUNTERS[key](node, shape))
            names = [*node.input, *node.output]
        for name in names:
            if name and name in known:
                dims, elem_type = known[name]
                moved += math.prod(dims) * _itemsize(elem_type)
    return _counts(inference, moved), _counts(load, 0)


def count_macs_and_bytes(model: str | Path | onnx.ModelProto) -> tuple[int, int]:
    """(MACs, bytes moved) of one inference (count_work's first half)."""
    inference, _ = count_work(model)
    return inference.macs, inference.bytes_moved


def _shape_of(known: dict[str, tuple[Shape, int]], node: onnx.NodeProto, name: str) -> Shape:
    if name not in known:
        raise ValueError(f"cannot count MACs of node {node.name or node.op_type!r} ({node.op_type}): "
                         f"the shape of {name!r} is unknown after shape inference")
    return known[name][0]


def _itemsize(elem_type: int) -> int:
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize if elem_type else 0
    except (KeyError, ValueError, TypeError):
        return 0
