"""What a Cast node is, read once for every tool that follows int8 storage (docs/ops.md "int8 storage"): the
validator, decode at load, the export pass and ``inspect``."""

from __future__ import annotations

import onnx


def is_cast(node: onnx.NodeProto) -> bool:
    """An ONNX Cast, well-formed or not."""
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx")


def cast_target(node: onnx.NodeProto) -> int | None:
    """A Cast's 'to' (an onnx.TensorProto data type) when it has one input, one named output and one int 'to'
    attribute, else None."""
    if not is_cast(node) or len(node.input) != 1 or len(node.output) != 1 or not node.output[0]:
        return None
    to = [a for a in node.attribute if a.name == "to"]
    return to[0].i if len(to) == 1 and to[0].type == onnx.AttributeProto.INT else None
