"""The files an ONNX model keeps its tensors in (``model.onnx`` + ``model.onnx.data``).

``torch.onnx.export`` (dynamo) writes large weights to a side file by default; every command that
reads, sizes or ships a model counts those files with it. A location that points outside the
model's folder is refused, so a model file cannot make edgepack read or send other local files.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import onnx

from .model_files import ModelFileError


def _node_tensors(node: onnx.NodeProto) -> list[onnx.TensorProto]:
    """The tensors held in a node's attributes, subgraphs included."""
    tensors = []
    for attribute in node.attribute:
        if attribute.HasField("t"):
            tensors.append(attribute.t)
        tensors += attribute.tensors
        if attribute.HasField("sparse_tensor"):
            tensors += [attribute.sparse_tensor.values, attribute.sparse_tensor.indices]
        for sparse in attribute.sparse_tensors:
            tensors += [sparse.values, sparse.indices]
        graphs = [attribute.g] if attribute.HasField("g") else []
        for graph in [*graphs, *attribute.graphs]:
            tensors += _graph_tensors(graph)
    return tensors


def _graph_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """A graph's initializers and every tensor in its nodes' attributes."""
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    for node in graph.node:
        tensors += _node_tensors(node)
    return tensors


def model_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of a model: the main graph's, its subgraphs' and its functions'."""
    tensors = _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            tensors += _node_tensors(node)
    return tensors


def external_data_files(model: Path, proto: onnx.ModelProto | None = None) -> list[Path]:
    """The files the tensors of the .onnx ``model`` keep their data in, read without loading the data
    (``proto``: the model already parsed without it). ModelFileError for a location that is absolute,
    has '..' or does not exist; [] for other files or a model onnx cannot parse."""
    model = Path(model)
    if proto is None:
        if model.suffix != ".onnx":
            return []
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - a broken model: whoever loads it names the fault
            return []
    files: dict[str, Path] = {}
    for tensor in model_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        if location in files:
            continue
        parts = PurePosixPath(location).parts
        if not location or "\\" in location or "\0" in location or PurePosixPath(location).is_absolute() \
                or ".." in parts:
            raise ModelFileError(f"{model}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                                 "model's folder; external data must be a relative path below the .onnx file's "
                                 "folder (no '/' at the start, no '..')")
        path = model.parent / location
        if not path.is_file():
            raise ModelFileError(f"{model}: tensor {tensor.name!r} keeps its data in {location!r}, but {path} "
                                 "does not exist; copy it next to the model")
        files[location] = path
    return list(files.values())


def model_size_bytes(model: Path, proto: onnx.ModelProto | None = None) -> int:
    """The model file and every external-data file it references, in bytes."""
    model = Path(model)
    return model.stat().st_size + sum(path.stat().st_size for path in external_data_files(model, proto))
