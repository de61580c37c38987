"""ONNX→ONNX passes that run before the TFLite conversion: each rewrites the graph into a form the
converter lowers to fewer, cheaper TFLite ops, and returns a new model (its input is untouched).

``run_passes`` applies them in order: BatchNorm folding into the convolution before it, then 1×1
convolutions of hashed weights as HashedMatMul over the channels (no decoded filter).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.runtime_kernels.op_spec import DOMAIN

from .fallbacks import FUNCTIONS

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (it decides BatchNormalization's attributes)."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return versions[0] if versions else onnx.defs.onnx_opset_version()


def _readers(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs and graph outputs read each value."""
    count: dict[str, int] = {}
    for name in [n for node in graph.node for n in node.input] + [o.name for o in graph.output]:
        count[name] = count.get(name, 0) + 1
    return count


def fold_batch_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold each BatchNormalization that directly follows a Conv with constant weights into it."""
    model = _copy(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {node.output[0]: node for node in graph.node if node.output}
    removed, opset = [], _opset(model)
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0]) != 1
                or conv.input[1] not in initializers
                or not all(name in initializers for name in node.input[1:5])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]) for n in node.input[1:5])
        flags = {a.name: a.i for a in node.attribute if a.name in ("training_mode", "is_test")}
        if (gamma.ndim != 1 or any(node.output[1:]) or flags.get("training_mode", 0)
                or (opset < 7 and not flags.get("is_test", 0))):  # left to convert_batch_norm
            continue
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        bias = (numpy_helper.to_array(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0], np.float32))
        folded_w = (weight * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        folded_b = ((bias - mean) * scale + beta).astype(np.float32)
        w_name, b_name = f"{conv.input[1]}_bn_folded", f"{conv.output[0]}_bn_folded_bias"
        graph.initializer.extend([numpy_helper.from_array(folded_w, w_name),
                                  numpy_helper.from_array(folded_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = node.output[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    return model


def _pointwise(conv: onnx.NodeProto, shape: list[int]) -> bool:
    """A plain 2-D 1×1 convolution: one group, stride and dilation 1, no padding, explicit pads."""
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    return (len(shape) == 4 and shape[2:] == [1, 1] and attributes.get("group", 1) == 1
            and auto_pad in (b"NOTSET", "NOTSET") and not any(attributes.get("pads", [0] * 4))
            and set(attributes.get("strides", [1, 1])) == {1} and set(attributes.get("dilations", [1, 1])) == {1})


def fuse_hashed_pointwise_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each 1×1 Conv(X, HashedWeight(buckets, recon), B) as Transpose(X) to NHWC →
    HashedMatMul over the channels (same hash keys: j = c_in) → Transpose back to NCHW, so no filter
    is decoded; the converter keeps the NHWC tensor and drops both transposes. A HashedWeight left
    without readers is removed. A Conv without bias gives a HashedMatMul without bias, which the
    kernels run but the fallback function (it always adds its bias) does not."""
    model = _copy(model)
    graph = model.graph
    hashed = {node.output[0]: node for node in graph.node
              if node.domain == DOMAIN and node.op_type == "HashedWeight" and node.output}
    nodes, fused = [], False
    for node in graph.node:
        producer = hashed.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        shape = next((list(a.ints) for a in producer.attribute if a.name == "shape"), []) if producer else []
        if producer is None or not _pointwise(node, shape):
            nodes.append(node)
            continue
        out = node.output[0]
        name = node.name or out
        given = {a.name: helper.get_attribute_value(a) for a in producer.attribute
                 if a.name in ("num_hashes", "seed", "signed")}
        bias = node.input[2] if len(node.input) > 2 else ""  # none: no zeros stored (the kernels need none)
        inputs = [f"{out}_nhwc_in", *(list(producer.input) + [""])[:2], bias]
        nodes += [
            helper.make_node("Transpose", [node.input[0]], [f"{out}_nhwc_in"], name=f"{name}_to_nhwc", perm=TO_NHWC),
            helper.make_node("HashedMatMul", inputs, [f"{out}_nhwc"], name=name, domain=DOMAIN,
                             in_features=shape[1], out_features=shape[0], mode=0, **given),
            helper.make_node("Transpose", [f"{out}_nhwc"], [out], name=f"{name}_to_nchw", perm=TO_NCHW),
        ]
        fused = True
    if not fused:
        return model
    readers = _readers(onnx.GraphProto(node=nodes, output=graph.output))
    del graph.node[:]
    graph.node.extend(n for n in nodes if not (n.op_type == "HashedWeight" and n.domain == DOMAIN
                                               and not readers.get(n.output[0])))
    if not any(f.domain == DOMAIN and f.name == "HashedMatMul" for f in model.functions):
        model.functions.append(FUNCTIONS["HashedMatMul"]())  # ORT without the kernels can still run it
    return model


PASSES = (fold_batch_norms, fuse_hashed_pointwise_convs)


def run_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every pass, in order (a new model; ``model`` is untouched)."""
    for apply in PASSES:
        model = apply(model)
    return model
