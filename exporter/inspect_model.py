"""``edgepack inspect``: the ops of an exported file (.onnx or .tflite), the attributes of its
ai.edgepack ops, the bytes it stores vs a dense model, and an estimate of the weight bytes it
holds in memory once loaded: with decode at load (the default of onnx_session /
tflite_interpreter) and with the fused kernels (``decode_at_load=False``)."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from onnx import TensorProto, helper

from edgepack.runtime_kernels.decode_at_load import DECODED_OPS
from edgepack.runtime_kernels.onnx_cast import cast_target
from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, _circulant_spectra, _ldr_spectra

from .external_data import model_size_bytes
from .model_files import ModelFileError, load_onnx, load_tflite
from .validate import check_onnx_model, check_tflite_model

MB = 1 << 20


@dataclass
class CompressedNode:
    """One ai.edgepack node: its attributes and the bytes it stores vs a dense weight."""

    name: str
    op_type: str
    attributes: dict
    stored_bytes: int
    dense_bytes: int
    plan_bytes: int = 0  # what the kernels build from the weights at load (decoded W, spectra)
    decoded_at_load: bool = False  # decode at load makes it a dense constant (dense_bytes resident)
    int8: bool = False  # int8 storage: a Cast to int8 reads its output, decoded at load into an int8 weight

    @property
    def resident_decoded(self) -> int:
        """Its weight bytes in memory once decoded at load: float32, or int8 (int8 storage)."""
        return self.dense_bytes // FLOAT_PER_INT8 if self.int8 else self.dense_bytes


@dataclass
class ModelSummary:
    """What ``inspect_onnx`` / ``inspect_tflite`` report (``file_bytes``: with external data)."""

    path: str
    file_bytes: int
    op_counts: Counter = field(default_factory=Counter)
    nodes: list[CompressedNode] = field(default_factory=list)
    stored_bytes: int = 0
    dense_bytes: int = 0

    @property
    def other_bytes(self) -> int:
        """Stored bytes outside the ai.edgepack weights (dense layers, biases, other constants)."""
        return self.stored_bytes - sum(node.stored_bytes for node in self.nodes)

    @property
    def memory_decoded(self) -> int:
        """Estimated weight bytes in memory with decode at load: decoded nodes as dense constants,
        the others as stored plus their kernels' plans."""
        return self.other_bytes + sum(node.resident_decoded if node.decoded_at_load else
                                      node.stored_bytes + node.plan_bytes for node in self.nodes)

    @property
    def memory_kernels(self) -> int:
        """Estimated weight bytes in memory on the fused kernels: stored weights plus every plan."""
        return self.other_bytes + sum(node.stored_bytes + node.plan_bytes for node in self.nodes)


FLOAT_PER_INT8 = 4  # an int8 weight (QDQ / int8 TFLite) is 4 bytes in the float model


def _initializer_bytes(tensor) -> int:
    """Bytes an initializer holds, from its dims and type (no decoding of its data)."""
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=object)) * itemsize


def plan_bytes(op_type: str, attributes: dict, shapes: dict[str, list[int]]) -> int:
    """Bytes the kernels allocate at load for one node's weights (kernels.c, ops.c): the decoded
    weight of the decoders and of expand-mode HashedMatMul (4 per virtual weight), nothing for
    stream mode, the circulant / LDR spectra (the op spec's counts), SparseCodebookMatMul's plan
    (codebook, row starts, an index byte and a gap byte per entry: ep_codebook_plan_bytes).
    ``shapes``: the weight inputs' shapes by spec name."""
    op = OPS[op_type]
    attributes = op.defaults | attributes
    if op.kind == "decoder" or (op_type == "HashedMatMul" and attributes["mode"] == 0):
        return op.dense_bytes(attributes)
    if op_type == "SparseCodebookMatMul" and shapes.get("codebook") and shapes.get("col_gaps"):
        return (4 * int(np.prod(shapes["codebook"])) + 4 * (attributes["out_features"] + 1)
                + 2 * int(np.prod(shapes["col_gaps"])))
    shape_of = lambda name: tuple(shapes[name])  # noqa: E731
    if op_type == "CirculantMatMul" and len(shapes.get("blocks", [])) == 3:
        return _circulant_spectra(shape_of)
    if op_type == "LDRMatMul" and len(shapes.get("G", [])) == 2:
        return _ldr_spectra(shape_of)
    return 0


class Slot(NamedTuple):
    """One input of a node: the bytes it stores, its shape, and whether it is present and constant."""

    stored: int
    shape: list[int]
    present: bool
    constant: bool


ABSENT = Slot(0, [], False, False)


def _decoded_at_load(op_type: str, attributes: dict, named: dict[str, Slot]) -> bool:
    """The rule of decode_onnx / decode_tflite: a HashedWeight or expand-mode HashedMatMul without
    a fused epilogue (activation, scale) whose present weight inputs are all constants."""
    op = OPS[op_type]
    full = op.defaults | attributes
    weights = [named.get(n, ABSENT) for n in op.weight_inputs if named.get(n, ABSENT).present]
    return (op_type in DECODED_OPS and full.get("mode", 0) == 0 and full.get("activation", 0) == 0
            and not named.get("scale", ABSENT).present and bool(weights) and all(w.constant for w in weights))


def _add_compressed_node(summary: ModelSummary, name: str, op_type: str, attributes: dict,
                         inputs: list[Slot], int8: bool = False) -> None:
    """Count one ai.edgepack node; ``inputs`` in ONNX order; ``int8``: its output is cast to int8."""
    op = OPS[op_type]
    named = dict(zip(op.input_names, inputs))
    stored = sum(named.get(n, ABSENT).stored for n in op.weight_inputs)
    dense = op.dense_bytes(attributes)
    summary.dense_bytes += dense - stored
    shapes = {n: named.get(n, ABSENT).shape for n in op.weight_inputs}
    summary.nodes.append(CompressedNode(name, op_type, attributes, stored, dense,
                                        plan_bytes(op_type, attributes, shapes),
                                        _decoded_at_load(op_type, attributes, named), int8))


def inspect_model(path: str | Path) -> ModelSummary:
    """Summarise an .onnx or .tflite file, refusing ai.edgepack nodes the kernels would refuse."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return inspect_tflite(path)
    if suffix == ".onnx":
        return inspect_onnx(path)
    raise ModelFileError(f"{path}: unsupported file type {suffix!r}; supported: .onnx, .tflite")


def inspect_tflite(path: str | Path) -> ModelSummary:
    """Summarise a .tflite file: op counts, ai.edgepack CUSTOM ops with their options, bytes."""
    import tflite
    from flatbuffers import flexbuffers

    path = Path(path)
    _, model = load_tflite(path)
    check_tflite_model(model, str(path))
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    sizes = [model.Buffers(graph.Tensors(i).Buffer()).DataLength() for i in range(graph.TensorsLength())]
    shapes = [graph.Tensors(i).ShapeAsNumpy().tolist() if graph.Tensors(i).ShapeLength() else []
              for i in range(graph.TensorsLength())]
    summary = ModelSummary(str(path), path.stat().st_size)
    summary.stored_bytes = summary.dense_bytes = sum(sizes)
    summary.dense_bytes += (FLOAT_PER_INT8 - 1) * sum(
        size for i, size in enumerate(sizes) if graph.Tensors(i).Type() == tflite.TensorType.INT8)
    prefix = f"{DOMAIN}."
    # int8 storage: CAST of a constant int8 tensor; the tensors a CAST to int8 reads, through the float32
    # TRANSPOSE / RESHAPE that lays a decoded weight out for its filter (decoder → [layout →] CAST(int8))
    int8_casts, cast_to_int8, layout_of = {}, set(), {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = None if code.CustomCode() else max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin in (tflite.BuiltinOperator.TRANSPOSE, tflite.BuiltinOperator.RESHAPE) and op.InputsLength() \
                and op.OutputsLength():
            layout_of[int(op.Outputs(0))] = int(op.Inputs(0))
        if builtin != tflite.BuiltinOperator.CAST or not op.InputsLength() or not op.OutputsLength():
            continue
        source, out = int(op.Inputs(0)), int(op.Outputs(0))
        if graph.Tensors(source).Type() == tflite.TensorType.INT8 and sizes[source]:
            int8_casts[out] = source
        if graph.Tensors(out).Type() == tflite.TensorType.INT8:
            cast_to_int8.add(source)
    for t in list(cast_to_int8):
        seen = {t}
        while t in layout_of and layout_of[t] not in seen and graph.Tensors(t).Type() == tflite.TensorType.FLOAT32:
            t = layout_of[t]
            seen.add(t)
            cast_to_int8.add(t)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        custom = code.CustomCode().decode(errors="replace") if code.CustomCode() else None
        label = f"CUSTOM {custom}" if custom else names.get(code.BuiltinCode(), str(code.BuiltinCode()))
        summary.op_counts[label] += 1
        if custom and custom.startswith(prefix) and custom[len(prefix):] in OPS:
            options = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
            inputs = [ABSENT if t < 0 else Slot(sizes[int8_casts[t]], shapes[t], True, True) if t in int8_casts
                      else Slot(sizes[t], shapes[t], True, sizes[t] > 0) for t in op.InputsAsNumpy()]
            name = graph.Tensors(op.Outputs(0)).Name().decode(errors="replace")
            _add_compressed_node(summary, name, custom[len(prefix):], options, inputs, op.Outputs(0) in cast_to_int8)
    return summary


def inspect_onnx(path: str | Path) -> ModelSummary:
    """Summarise an ONNX file: op counts, ai.edgepack nodes, stored and dense-equivalent bytes; its
    size on disk counts its external-data files, whose contents are not read."""
    path = Path(path)
    model = load_onnx(path, external_data=False)
    check_onnx_model(model, str(path))
    sizes = {t.name: _initializer_bytes(t) for t in model.graph.initializer}
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    graph_inputs = {value.name for value in model.graph.input}
    summary = ModelSummary(str(path), model_size_bytes(path, model))
    summary.stored_bytes = summary.dense_bytes = sum(sizes.values())
    dequantized = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    int8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.name not in graph_inputs}
    casts = [node for node in model.graph.node if node.op_type == "Cast" and node.domain in ("", "ai.onnx")
             and node.input and node.output]
    for node in casts:  # int8 storage: the Cast to float of an int8 initializer stores its int8 bytes
        if node.input[0] in int8 and cast_target(node) == TensorProto.FLOAT:
            sizes[node.output[0]], shapes[node.output[0]] = sizes[node.input[0]], shapes[node.input[0]]
    cast_to_int8 = {node.input[0] for node in casts if cast_target(node) == TensorProto.INT8}
    summary.dense_bytes += (FLOAT_PER_INT8 - 1) * sum(  # int8 weights, not their zero points
        sizes[t.name] for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.name in dequantized)
    for node in model.graph.node:
        summary.op_counts[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        if node.domain != DOMAIN or node.op_type not in OPS:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _add_compressed_node(summary, node.name, node.op_type, attributes,
                             [Slot(sizes.get(name, 0), shapes.get(name, []), True,
                                   name in sizes and name not in graph_inputs) if name else ABSENT
                              for name in node.input], node.output[0] in cast_to_int8)
    return summary


def _mb(size: int) -> str:
    from edgepack.benchmarks.results import significant

    return f"{significant(size / MB)} MB"


def format_summary(summary: ModelSummary) -> str:
    """A plain-text report of ``summary``: file size on disk and estimated memory, kept apart."""
    from edgepack.benchmarks.results import format_ratio

    external = summary.file_bytes != Path(summary.path).stat().st_size
    lines = [f"{summary.path}: {summary.file_bytes:,} bytes on disk ({_mb(summary.file_bytes)}"
             + (", external data included)" if external else ")"),
             "ops: " + ", ".join(f"{op} ×{n}" for op, n in sorted(summary.op_counts.items()))]
    for node in summary.nodes:
        attributes = ", ".join(f"{k}={v}" for k, v in sorted(node.attributes.items()))
        at_load = "decoded at load" if node.decoded_at_load else "stays on the kernels"
        stored = " (int8, decoded to an int8 weight)" if node.int8 else ""
        lines.append(f"  {node.op_type} {node.name}: {attributes}; weights {node.stored_bytes:,} B "
                     f"stored{stored} vs {node.dense_bytes:,} B dense; kernel plan {node.plan_bytes:,} B; {at_load}")
    ratio = summary.dense_bytes / max(summary.stored_bytes, 1)
    lines.append(f"weights: {summary.stored_bytes:,} B stored, {summary.dense_bytes:,} B as a dense "
                 f"model ({format_ratio(ratio)} smaller)")
    lines.append(f"memory once loaded (estimate: weights, decoded weights and kernel plans; not activations "
                 f"or runtime copies): {summary.memory_decoded:,} B ({_mb(summary.memory_decoded)}) with decode at "
                 f"load (default), {summary.memory_kernels:,} B ({_mb(summary.memory_kernels)}) with the fused "
                 "kernels (decode_at_load=False / --no-decode-at-load)")
    return "\n".join(lines)
