"""Decode at load for ONNX: a model whose storage-compressed weights are plain initializers.

``HashedWeight`` / ``CodebookWeight`` / ``HyperWeight`` nodes with constant inputs become initializers
(the Conv / Gemm / MatMul that reads them then sees a constant weight, so ONNX Runtime folds BatchNorm and
ReLU into it and prepacks it); expand-mode ``HashedMatMul`` nodes become ``MatMul`` (+ ``Add`` for the bias) with
the decoded weight transposed to [in, out]. Circulant / LDR nodes (compute compression) and
stream-mode HashedMatMul stay. The model is validated first with the kernels' rules and limits
(exporter/validate.py); the file on disk is not changed.

int8 storage: a decoder's weight input may be Cast(to=FLOAT) of a constant INT8 initializer (HashedWeight
'buckets', CodebookWeight 'codebook', values in [-127, 127]; the validator refuses a Cast into any other
ai.edgepack weight input); the one Cast(to=INT8) of the decoded weight becomes one INT8 initializer named as
the Cast's output (every decoded value must be an integer in [-128, 127]; a second Cast to INT8 of it, or a
Cast reading it that is not one input, one output and one 'to', is refused: InvalidNodeError), and the Cast
nodes, the decoder and the int8 source go when nothing else reads them, so a QDQ graph (int8 weight ->
DequantizeLinear -> Conv / Gemm) is left for ORT's int8 kernels.
"""

from __future__ import annotations

import mmap
import os
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .decode_at_load import DECODED_OPS, DecodeError, decode_node, first_non_int8, validation_limits
from .onnx_cast import cast_target, is_cast
from .op_spec import DOMAIN, INT8_STORED_INPUTS, OPS

__all__ = ["IN_MEMORY", "decoded_onnx"]

IN_MEMORY = "edgepack-decoded-in-memory"  # the location of a placeholder initializer: never a file


def _names_domain(source: str | os.PathLike | bytes) -> bool:
    """Whether the serialized model holds the ai.edgepack domain string at all (protobuf stores
    strings verbatim), found without parsing it: a dense model is not parsed twice."""
    if isinstance(source, bytes):
        return DOMAIN.encode() in source
    with open(source, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return False
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(DOMAIN.encode()) >= 0


def _peek(source: str | os.PathLike | bytes) -> onnx.ModelProto | None:
    """The model without its external data, or None if it has no ai.edgepack node or onnx cannot
    parse it (ORT then says why)."""
    try:
        if not _names_domain(source):
            return None
        if isinstance(source, bytes):
            return onnx.ModelProto.FromString(source)
        return onnx.load(os.fspath(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ours to report: the runtime refuses the file itself
        return None


class _CastOf(NamedTuple):
    """Cast(to=FLOAT) of a constant INT8 initializer (int8 storage): a constant float weight."""

    node: onnx.NodeProto
    source: str


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | _CastOf]:
    """Values fixed at load: initializers that are not graph inputs, Constant outputs, and the
    Cast to FLOAT of an INT8 initializer."""
    inputs = {value.name for value in graph.input}
    constants = {t.name: t for t in graph.initializer if t.name not in inputs}
    int8 = {name for name, t in constants.items() if t.data_type == onnx.TensorProto.INT8}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                constants[node.output[0]] = value
        elif cast_target(node) == onnx.TensorProto.FLOAT and node.input[0] in int8:
            constants[node.output[0]] = _CastOf(node, node.input[0])
    return constants


def _value(constants: dict, name: str) -> np.ndarray:
    constant = constants[name]
    if isinstance(constant, _CastOf):
        return numpy_helper.to_array(constants[constant.source]).astype(np.float32)
    return numpy_helper.to_array(constant)


def _int8_stored(graph: onnx.GraphProto) -> bool:
    """Whether an ai.edgepack weight input is a Cast's output (int8 storage, or a Cast the validator refuses):
    the model is then validated, decodable or not, as the C decode at load checks every such input."""
    casts = {node.output[0] for node in graph.node if is_cast(node) and node.output and node.output[0]}
    return any(name in casts for node in graph.node if node.domain == DOMAIN and node.op_type in OPS
               for slot, name in zip(OPS[node.op_type].input_names, node.input)
               if slot in OPS[node.op_type].weight_inputs)


def _int8_weight(decoder: onnx.NodeProto, cast: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """The decoded weight as int8 for Cast(to=INT8): every value must be an integer in [-128, 127]
    (the C decode at load refuses the same, in the same words)."""
    from edgepack.exporter.validate import InvalidNodeError, _g, cast_label

    flat = weight.ravel()
    i = first_non_int8(flat)
    if i is not None:
        raise InvalidNodeError(
            f"edgepack {decoder.op_type} node '{decoder.name or decoder.output[0]}': {cast_label(cast)} to INT8 of its "
            f"output: decoded value {_g(flat[i])} at index {i} is not an integer in [-128, 127]; an int8 weight "
            "decodes exactly only from int8 buckets / codebook values (HashedWeight with num_hashes = 1)")
    return flat.astype(np.int8).reshape(weight.shape)


def _attributes(node: onnx.NodeProto) -> dict:
    op = OPS[node.op_type]
    return op.defaults | {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in op.attribute_names}


def _has_scale(node: onnx.NodeProto) -> bool:
    slots = dict(zip(OPS[node.op_type].input_names, node.input))
    return bool(slots.get("scale"))


def _decodable(node: onnx.NodeProto, constants: dict) -> bool:
    """An expand-mode storage-compressed node whose weight inputs are all constants (one with a
    fused epilogue, ``activation`` or ``scale``, stays on the kernels, which apply it)."""
    if node.domain != DOMAIN or node.op_type not in DECODED_OPS:
        return False
    attributes = _attributes(node)
    if attributes.get("mode", 0) != 0 or attributes.get("activation", 0) != 0 or _has_scale(node):
        return False

    names = OPS[node.op_type].input_names
    weights = [(slot, name) for slot, name in zip(names, node.input)
               if name and slot in OPS[node.op_type].weight_inputs]
    return bool(weights) and all(name in constants and (not isinstance(constants[name], _CastOf)
                                                        or INT8_STORED_INPUTS.get(node.op_type) == slot)
                                 for slot, name in weights)


def _read_names(graph: onnx.GraphProto, into: set[str]) -> set[str]:
    """Every value name read by a node of ``graph`` or of its subgraphs, and its outputs."""
    into.update(value.name for value in graph.output)
    for node in graph.node:
        into.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _read_names(sub, into)
    return into


def _used_ops(graph: onnx.GraphProto, functions, into: set) -> set:
    into.update((node.domain, node.op_type) for node in graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _used_ops(sub, functions, into)
    for function in functions:
        into.update((node.domain, node.op_type) for node in function.node)
    return into


class _Names:
    """Fresh value names that collide with none of the model's."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        self.taken |= {name for node in graph.node for name in node.output}

    def __call__(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name


def _placeholder(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer whose data ORT takes from ``add_external_initializers`` (never from a file)."""
    tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                              data_location=onnx.TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value=IN_MEMORY)
    return tensor


def _folded_casts(graph: onnx.GraphProto, constants: dict) -> dict[str, tuple[int, onnx.NodeProto]]:
    """{decoded weight: (index, node) of the Cast to INT8 of it that decode at load folds}: one per decoded
    weight; a Cast reading
    one that is not one input, one output and one 'to', or a second Cast to INT8 of it, raises InvalidNodeError
    (the C decode at load refuses the same, in the same order and words)."""
    from edgepack.exporter.validate import InvalidNodeError, cast_counts, cast_label

    decoded: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if _decodable(node, constants) and OPS[node.op_type].kind == "decoder":
            decoded.setdefault(node.output[0], node)
    folds: dict[str, tuple[int, onnx.NodeProto]] = {}
    for index, cast in enumerate(graph.node):
        decoder = decoded.get(cast.input[0]) if is_cast(cast) and cast.input else None
        if decoder is None:
            continue
        where = f"edgepack {decoder.op_type} node '{decoder.name or decoder.output[0]}'"
        counts = cast_counts(cast)
        if counts:
            raise InvalidNodeError(f"{where}: {cast_label(cast)} reading its output has {counts}")
        if cast_target(cast) != onnx.TensorProto.INT8:
            continue
        first = folds.get(cast.input[0], (0, None))[1]
        if first is not None:
            raise InvalidNodeError(
                f"{where}: Cast nodes '{first.name or first.output[0]}' and '{cast.name or cast.output[0]}' both cast "
                "its output to INT8; decode at load folds one Cast to INT8 per decoded weight")
        folds[cast.input[0]] = (index, cast)
    return folds


def _rewrite(model: onnx.ModelProto, constants: dict, inline: bool) -> dict[str, np.ndarray]:
    """Replace every decodable node in ``model.graph`` (in place); the decoded weights are
    initializers (``inline``) or placeholders, returned as {name: array}."""
    graph, fresh = model.graph, _Names(model.graph)
    nodes, consumed, decoded = [], set(), {}
    casts = set()  # the Casts to FLOAT the decoded nodes read
    folds = _folded_casts(graph, constants)  # {decoded weight: its Cast to INT8}, folded wherever it stands
    folded = {index for index, _ in folds.values()}

    def initializer(name: str, array: np.ndarray) -> None:
        graph.initializer.append(numpy_helper.from_array(array, name) if inline else _placeholder(name, array))
        if not inline:
            decoded[name] = array

    for index, node in enumerate(graph.node):
        if index in folded:
            continue
        if not _decodable(node, constants):
            nodes.append(node)
            continue
        op = OPS[node.op_type]
        given = dict(zip(op.input_names, node.input))
        weights = {slot: _value(constants, given[slot]) if given.get(slot) else None for slot in op.weight_inputs}
        for slot in op.weight_inputs:
            constant = constants.get(given.get(slot))
            if isinstance(constant, _CastOf):
                casts.add(given[slot])
                consumed.add(constant.source)
        consumed.update(given[slot] for slot in op.weight_inputs if given.get(slot))
        weight = decode_node(node.op_type, _attributes(node), weights)
        out = node.output[0]
        if OPS[node.op_type].kind == "decoder":
            initializer(out, weight)
            if out in folds:
                cast = folds[out][1]
                initializer(cast.output[0], _int8_weight(node, cast, weight))
            continue
        label = node.name or out
        transposed = fresh(f"{label}_decoded_weight")
        initializer(transposed, np.ascontiguousarray(weight.T))
        bias = given.get("bias", "")
        product = fresh(f"{out}_matmul") if bias else out
        nodes.append(helper.make_node("MatMul", [given["X"], transposed], [product], name=fresh(f"{label}_matmul")))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [out], name=fresh(f"{label}_bias")))
    del graph.node[:]
    graph.node.extend(nodes)
    read = _read_names(graph, set())
    dead = [i for i, n in enumerate(graph.node) if n.op_type == "Cast" and n.output and n.output[0] in casts
            and n.output[0] not in read]  # the Casts to FLOAT only the decoded nodes read
    for i in reversed(dead):
        del graph.node[i]
    read = _read_names(graph, set()) if dead else read
    consumed |= {name for name in folds if name not in read}  # only a folded Cast(INT8) read it
    for name in consumed - read:
        decoded.pop(name, None)
    kept = [t for t in graph.initializer if t.name not in consumed or t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _drop_unused_functions(model)
    return decoded


def _drop_unused_functions(model: onnx.ModelProto) -> None:
    """Remove the fallback functions (and the ai.edgepack opset) nothing calls any more."""
    kept = list(model.functions)
    while True:  # a function may call another: drop until nothing changes
        used = _used_ops(model.graph, kept, set())
        still = [f for f in kept if (f.domain, f.name) in used]
        if len(still) == len(kept):
            break
        kept = still
    del model.functions[:]
    model.functions.extend(kept)
    if not any(domain == DOMAIN for domain, _ in _used_ops(model.graph, kept, set())):
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)


def decoded_onnx(source: str | os.PathLike | bytes, max_virtual_weights: int | None = None,
                 max_decoded_bytes: int | None = None, inline: bool = True,
                 ) -> tuple[bytes, dict[str, np.ndarray]] | None:
    """``source`` (a path, external data included, or model bytes) serialized with its
    storage-compressed weights decoded, or None when it has none to decode (run it as it is).

    With ``inline`` the weights are initializers of the bytes; without, the bytes hold
    placeholders and the weights come back as {name: array} for ORT's
    ``SessionOptions.add_external_initializers`` (no protobuf copy of them; keep them alive as
    long as the session).

    A node the kernels would refuse, or one above ``max_virtual_weights`` / ``max_decoded_bytes``
    (None: the environment's or the default), raises InvalidNodeError with the kernels' message.
    """
    model = _peek(source)
    if model is None or not (_int8_stored(model.graph)
                             or any(_decodable(node, _constants(model.graph)) for node in model.graph.node)):
        return None
    from edgepack.exporter.model_files import load_onnx
    from edgepack.exporter.validate import check_onnx_model

    where = "model bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        model = load_onnx(source)  # its external data too, below the model's folder only
    constants = _constants(model.graph)
    with validation_limits(max_virtual_weights, max_decoded_bytes):
        check_onnx_model(model, where, "ort")
    if not any(_decodable(node, constants) for node in model.graph.node):
        return None
    decoded = _rewrite(model, constants, inline)
    try:
        return model.SerializeToString(), decoded
    except ValueError as error:  # protobuf's 2 GiB limit
        raise DecodeError(f"{where}: the decoded model does not fit in one ONNX protobuf ({error}); "
                          "load it with decode_at_load=False to run the edgepack kernels instead") from None
