"""ONNX→ONNX passes that run before the TFLite conversion: each rewrites the graph into a form the
converter lowers to fewer, cheaper TFLite ops, and returns a new model (its input is untouched).

``run_passes`` applies them in order: BatchNorm folding into the convolution before it, 1×1
convolutions of hashed weights as HashedMatMul over the channels (no decoded filter), then the
epilogues (per-channel Mul / Add / BatchNorm, Relu / Clip(0, 6)) folded into the ai.edgepack
compute op before them (``fuse_epilogues``; the ONNX export runs it too). The ONNX export also stores
int8-valued decoder inputs as INT8 initializers (``store_int8_decoder_inputs``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.runtime_kernels.onnx_cast import cast_target
from edgepack.runtime_kernels.op_spec import DOMAIN, INT8_STORED_INPUTS, OPS

from .fallbacks import FUNCTIONS, fallback_function

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


# the decoder input that int8 storage covers (docs/ops.md "int8 storage")


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def store_int8_decoder_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 storage of decoder weights (docs/ops.md "int8 storage"): where every reader of a HashedWeight /
    CodebookWeight output is a Cast(to=INT8), its buckets / codebook input, a float initializer holding integers
    in [-127, 127] read by such decoders only, becomes an INT8 initializer of the same name read through one
    Cast(to=FLOAT) (output ``<name>_float``). The values are unchanged; the file stores 1 byte per value.
    Others (another reader, a non-integer or out-of-range value, external data, a graph input) are left as
    they are."""
    model = _copy(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    blocked = {o.name for o in graph.output} | {i.name for i in graph.input}
    for node in graph.node:  # a value a subgraph (If / Loop body) reads stays as it is
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                blocked |= _names_read(sub)
    decoders: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        slot = INT8_STORED_INPUTS.get(node.op_type) if node.domain == DOMAIN else None
        at = OPS[node.op_type].input_names.index(slot) if slot else -1
        if slot is None or len(node.input) <= at or not node.output or node.output[0] in blocked:
            continue
        cast_readers = readers.get(node.output[0], [])
        if cast_readers and all(cast_target(r) == onnx.TensorProto.INT8 for r in cast_readers):
            decoders.setdefault(node.input[at], []).append((node, at))
    stored: dict[str, str] = {}  # initializer -> its Cast output
    taken = {n for node in graph.node for n in node.output} | set(initializers) | blocked
    node_names = {node.name for node in graph.node}
    for name, uses in decoders.items():
        t = initializers.get(name)
        if (t is None or name in blocked or t.data_type != onnx.TensorProto.FLOAT or len(readers[name]) != len(uses)
                or t.data_location == onnx.TensorProto.EXTERNAL):
            continue
        values = numpy_helper.to_array(t)
        if values.size == 0 or not np.all(np.isfinite(values)) or np.abs(values).max() > 127 \
                or not np.array_equal(values, np.round(values)):
            continue
        t.CopyFrom(numpy_helper.from_array(values.astype(np.int8), name))
        stored[name] = _unique(f"{name}_float", taken)
        for node, at in uses:
            node.input[at] = stored[name]
    if not stored:
        return model
    kept = [v for v in graph.value_info if v.name not in stored]  # a float type recorded for the initializer
    del graph.value_info[:]
    graph.value_info.extend(kept)
    sources = {out: name for name, out in stored.items()}
    nodes, cast = [], set()
    for node in graph.node:
        for name in node.input:
            source = sources.get(name)
            if source is not None and source not in cast:
                nodes.append(helper.make_node("Cast", [source], [stored[source]], to=onnx.TensorProto.FLOAT,
                                              name=_unique(f"{source}_to_float", node_names)))
                cast.add(source)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
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


EPILOGUE_OPS = ("HashedMatMul", "CirculantMatMul", "LDRMatMul", "SparseCodebookMatMul")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every initializer and Constant node output of ``graph``, as arrays."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _channels(value: np.ndarray | None, out: int, rank: int | None) -> np.ndarray | None:
    """``value`` as a float32 [out] vector when it broadcasts along the last axis only, without
    growing the rank of a rank-``rank`` tensor (a scalar, [out], [1, …, 1, out]); else None."""
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.ndim > 1 and (rank is None or value.ndim > rank):
        return None
    if value.size == 1:
        return np.full(out, value.reshape(()), np.float32)
    if value.size == out and value.shape[-1] == out:
        return value.reshape(out).astype(np.float32)
    return None


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    """The rank the exporter recorded for value ``name`` (value_info / outputs), or None."""
    for info in [*graph.value_info, *graph.output, *graph.input]:
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _step(node: onnx.NodeProto, y: str, constants: dict, out: int, rank: int | None, opset: int):
    """What ``node`` (the only reader of ``y``) does to y as an epilogue step: ("affine", scale,
    shift) for y·scale + shift, ("activation", 1 or 2), or None when it cannot be folded."""
    others = [n for n in node.input if n != y]
    if node.op_type in ("Add", "Mul", "Sub") and len(node.input) == 2 and len(others) == 1:
        c = _channels(constants.get(others[0]), out, rank)
        if c is None or (node.op_type == "Sub" and node.input[0] != y):
            return None
        ones, zeros = np.ones(out, np.float32), np.zeros(out, np.float32)
        return {"Add": ("affine", ones, c), "Sub": ("affine", ones, -c), "Mul": ("affine", c, zeros)}[node.op_type]
    if node.op_type == "BatchNormalization" and node.input[0] == y and rank == 2:
        params = [_channels(constants.get(n), out, 1) for n in node.input[1:5]]
        flags = {a.name: a.i for a in node.attribute if a.name in ("training_mode", "is_test")}
        if (any(p is None for p in params) or any(node.output[1:]) or flags.get("training_mode", 0)
                or (opset < 7 and not flags.get("is_test", 0))):
            return None
        gamma, beta, mean, var = params
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = (gamma / np.sqrt(var + epsilon)).astype(np.float32)
        return "affine", scale, (beta - mean * scale).astype(np.float32)
    if node.op_type == "Relu":
        return "activation", 1
    if node.op_type == "Clip":
        if opset < 11:
            bounds = [next((a.f for a in node.attribute if a.name == k), None) for k in ("min", "max")]
        else:
            bounds = [constants.get(n) if n else None for n in (list(node.input[1:]) + ["", ""])[:2]]
            if any(n and n not in constants for n in node.input[1:3]):
                return None
        lo, hi = (None if b is None else float(np.asarray(b).reshape(())) for b in bounds)
        if lo == 0.0 and hi == 6.0:
            return "activation", 2
        if lo == 0.0 and (hi is None or hi == np.inf):
            return "activation", 1
    return None


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of ``graph`` or of its subgraphs reads, and the graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= _names_read(sub)
    return names


def fuse_epilogues(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold what follows each ai.edgepack compute node into it (its ``scale`` and ``bias`` inputs and
    ``activation`` attribute, docs/ops.md): Mul / Add / Sub by a per-channel constant,
    BatchNormalization (inference, 2-D) and then Relu or Clip(0, 6), each only when its input has
    no other reader. Expand-mode HashedMatMul is left alone: it is decoded at load into MatMul + Add
    (runtime_kernels/decode_onnx.py, decode_tflite.py), where the runtime fuses the epilogue itself.
    When one node of an op gets a ``scale``, every node of that op gets one (ones), since the
    fallback function cannot test for an absent input; that op's fallback then reads it."""
    model = _copy(model)
    graph, opset = model.graph, _opset(model)
    constants, readers = _constants(graph), _readers(graph)
    consumers: dict[str, onnx.NodeProto] = {n: node for node in graph.node for n in node.input}
    removed: set[int] = set()
    added: list[onnx.TensorProto] = []
    dropped: set[str] = set()
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type not in EPILOGUE_OPS:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("activation", 0) or (node.op_type == "HashedMatMul" and attributes.get("mode", 0) == 0):
            continue
        names = OPS[node.op_type].input_names
        given = dict(zip(names, node.input))
        out = attributes["out_features"]
        if any(given.get(k) and given[k] not in constants for k in ("bias", "scale")):
            continue
        bias = constants[given["bias"]].astype(np.float32) if given.get("bias") else np.zeros(out, np.float32)
        scale = constants[given["scale"]].astype(np.float32) if given.get("scale") else None
        activation, affine, y, folded = 0, False, node.output[0], []
        rank = _rank(graph, y)  # every step folded keeps y's shape
        while activation == 0 and readers.get(y) == 1 and y in consumers:
            step = _step(consumers[y], y, constants, out, rank, opset)
            if step is None:
                break
            if step[0] == "affine":
                scale = step[1] if scale is None else scale * step[1]
                bias, affine = bias * step[1] + step[2], True
            else:
                activation = step[1]
            folded.append(consumers[y])
            y = consumers[y].output[0]
        if not folded:
            continue
        inputs = (list(node.input) + [""] * len(names))[:len(names)]
        label = node.name or node.output[0]
        for key, value in (("bias", bias), ("scale", scale)) if affine else ():
            if value is not None:
                added.append(numpy_helper.from_array(value.astype(np.float32), f"{label}_fused_{key}"))
                inputs[names.index(key)] = added[-1].name
        while inputs and not inputs[-1]:
            inputs.pop()
        dropped.update(n for n in node.input if n not in inputs)
        dropped.update(n for f in folded for n in f.input)
        del node.input[:]
        node.input.extend(inputs)
        kept = [a for a in node.attribute if a.name != "activation"]  # written even when 0:
        del node.attribute[:]  # onnx's ReferenceEvaluator ignores a function's attribute defaults
        node.attribute.extend([*kept, helper.make_attribute("activation", activation)])
        node.output[0] = y
        removed.update(id(n) for n in folded)
    if not removed:
        return model
    graph.initializer.extend(added)
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    read = _names_read(graph)
    unused = [t for t in graph.initializer if t.name in dropped and t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)
    _give_every_node_a_scale(model)
    return model


def _give_every_node_a_scale(model: onnx.ModelProto) -> None:
    """For each compute op of which some node has a ``scale``: a scale of ones for its other nodes
    and, where the model carries that op's fallback function, the variant that reads it."""
    graph = model.graph
    for name in EPILOGUE_OPS:
        nodes = [n for n in graph.node if n.domain == DOMAIN and n.op_type == name]
        at = OPS[name].input_names.index("scale")
        if not any(len(n.input) > at and n.input[at] for n in nodes):
            continue
        for node in nodes:
            if len(node.input) > at and node.input[at]:
                continue
            out = next(a.i for a in node.attribute if a.name == "out_features")
            ones = f"edgepack_ones_{out}"
            if not any(t.name == ones for t in graph.initializer):
                graph.initializer.append(numpy_helper.from_array(np.ones(out, np.float32), ones))
            node.input.extend([""] * (at - len(node.input)) + [ones])
        for i, function in enumerate(model.functions):
            if function.domain == DOMAIN and function.name == name:
                model.functions[i].CopyFrom(fallback_function(name, scaled=True))


def strip_export_trail(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the torch exporter's per-node debug trail (stack traces, FX nodes, module paths in
    ``metadata_props``): it is most of a small compressed model's file and no runtime reads it."""
    model = _copy(model)
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if not p.key.startswith(("pkg.torch.", "pkg.onnxscript.", "namespace"))]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


PASSES = (fold_batch_norms, fuse_hashed_pointwise_convs, fuse_epilogues)


def run_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every pass, in order (a new model; ``model`` is untouched)."""
    for apply in PASSES:
        model = apply(model)
    return model
