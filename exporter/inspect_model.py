"""``edgepack inspect``: the ops of an exported file (.onnx or .tflite), the attributes of its
ai.edgepack ops, and the bytes it stores vs a dense model."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import helper

from edgepack.runtime_kernels.op_spec import DOMAIN, OPS

from .external_data import model_size_bytes
from .model_files import ModelFileError, load_onnx, load_tflite
from .validate import check_onnx_model, check_tflite_model


@dataclass
class CompressedNode:
    """One ai.edgepack node: its attributes and the bytes it stores vs a dense weight."""

    name: str
    op_type: str
    attributes: dict
    stored_bytes: int
    dense_bytes: int


@dataclass
class ModelSummary:
    """What ``inspect_onnx`` / ``inspect_tflite`` report (``file_bytes``: with external data)."""

    path: str
    file_bytes: int
    op_counts: Counter = field(default_factory=Counter)
    nodes: list[CompressedNode] = field(default_factory=list)
    stored_bytes: int = 0
    dense_bytes: int = 0


def _initializer_bytes(tensor) -> int:
    """Bytes an initializer holds, from its dims and type (no decoding of its data)."""
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=object)) * itemsize


def _add_compressed_node(summary: ModelSummary, name: str, op_type: str, attributes: dict,
                         input_bytes: list[int]) -> None:
    """Count one ai.edgepack node; ``input_bytes`` are its inputs' stored bytes, in ONNX order."""
    op = OPS[op_type]
    named = dict(zip(op.input_names, input_bytes))
    stored = sum(named.get(n, 0) for n in op.weight_inputs)
    dense = op.dense_bytes(attributes)
    summary.dense_bytes += dense - stored
    summary.nodes.append(CompressedNode(name, op_type, attributes, stored, dense))


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
    summary = ModelSummary(str(path), path.stat().st_size)
    summary.stored_bytes = summary.dense_bytes = sum(sizes)
    prefix = f"{DOMAIN}."
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        custom = code.CustomCode().decode(errors="replace") if code.CustomCode() else None
        label = f"CUSTOM {custom}" if custom else names.get(code.BuiltinCode(), str(code.BuiltinCode()))
        summary.op_counts[label] += 1
        if custom and custom.startswith(prefix) and custom[len(prefix):] in OPS:
            options = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
            inputs = [sizes[t] if t >= 0 else 0 for t in op.InputsAsNumpy()]
            name = graph.Tensors(op.Outputs(0)).Name().decode(errors="replace")
            _add_compressed_node(summary, name, custom[len(prefix):], options, inputs)
    return summary


def inspect_onnx(path: str | Path) -> ModelSummary:
    """Summarise an ONNX file: op counts, ai.edgepack nodes, stored and dense-equivalent bytes; its
    size on disk counts its external-data files, whose contents are not read."""
    path = Path(path)
    model = load_onnx(path, external_data=False)
    check_onnx_model(model, str(path))
    sizes = {t.name: _initializer_bytes(t) for t in model.graph.initializer}
    summary = ModelSummary(str(path), model_size_bytes(path, model))
    summary.stored_bytes = summary.dense_bytes = sum(sizes.values())
    for node in model.graph.node:
        summary.op_counts[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        if node.domain != DOMAIN or node.op_type not in OPS:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _add_compressed_node(summary, node.name, node.op_type, attributes,
                             [sizes.get(name, 0) for name in node.input])
    return summary


def format_summary(summary: ModelSummary) -> str:
    """A plain-text report of ``summary``."""
    lines = [f"{summary.path}: {summary.file_bytes:,} bytes on disk",
             "ops: " + ", ".join(f"{op} ×{n}" for op, n in sorted(summary.op_counts.items()))]
    for node in summary.nodes:
        attributes = ", ".join(f"{k}={v}" for k, v in sorted(node.attributes.items()))
        lines.append(f"  {node.op_type} {node.name}: {attributes}; weights {node.stored_bytes:,} B "
                     f"stored vs {node.dense_bytes:,} B dense")
    ratio = summary.dense_bytes / max(summary.stored_bytes, 1)
    lines.append(f"weights: {summary.stored_bytes:,} B stored, {summary.dense_bytes:,} B as a dense "
                 f"model ({ratio:.1f}x smaller)")
    return "\n".join(lines)
