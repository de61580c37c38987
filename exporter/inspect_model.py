"""``edgepack inspect``: the ops of an exported file, their attributes, stored vs dense bytes."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fallbacks import DOMAIN, FUNCTIONS

# Which input of each ai.edgepack node holds its (compressed) weights, and its dense size.
WEIGHT_INPUTS = {
    "HashedWeight": ("buckets", "recon"),
    "HashedMatMul": ("buckets", "recon"),
    "CirculantMatMul": ("blocks",),
    "LDRMatMul": ("G", "H"),
}


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
    """What ``inspect_onnx`` reports."""

    path: str
    file_bytes: int
    op_counts: Counter = field(default_factory=Counter)
    nodes: list[CompressedNode] = field(default_factory=list)
    stored_bytes: int = 0
    dense_bytes: int = 0


def _dense_weight_bytes(op_type: str, attributes: dict) -> int:
    if op_type == "HashedWeight":
        return 4 * int(np.prod(attributes["shape"]))
    return 4 * attributes["in_features"] * attributes["out_features"]


def inspect_onnx(path: str | Path) -> ModelSummary:
    """Summarise an ONNX file: op counts, ai.edgepack nodes, stored and dense-equivalent bytes."""
    path = Path(path)
    try:
        model = onnx.load(path)
    except Exception as error:
        raise ValueError(f"{path}: not a readable ONNX file: {error}") from None
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    summary = ModelSummary(str(path), path.stat().st_size)
    summary.stored_bytes = summary.dense_bytes = sum(sizes.values())
    for node in model.graph.node:
        summary.op_counts[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        if node.domain != DOMAIN or node.op_type not in WEIGHT_INPUTS:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        named = dict(zip(FUNCTIONS[node.op_type]().input, node.input))
        stored = sum(sizes.get(named.get(n, ""), 0) for n in WEIGHT_INPUTS[node.op_type])
        dense = _dense_weight_bytes(node.op_type, attributes)
        summary.dense_bytes += dense - stored
        summary.nodes.append(CompressedNode(node.name, node.op_type, attributes, stored, dense))
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
