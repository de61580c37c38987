"""What a measurement sends to a device, and how long each of its device commands may take.

An ONNX model may keep its tensors in other files (``model.onnx`` + ``model.onnx.data``, the
default of ``torch.onnx.export`` with dynamo): those travel with it, in the same layout, and count
in its size. A location that points outside the model's folder is refused, so a model file cannot
make the harness send other local files to a device.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError

if TYPE_CHECKING:
    from edgepack.devices import Device

DEFAULT_TIMEOUT_S = 600.0


class ModelFileError(EdgepackError, ValueError):
    """A model's external data is missing or points outside the model's folder."""


def command_timeout(options: Any) -> float:
    """Seconds each device command of a measurement may run: ``options.timeout`` when given, else
    600 s or 20 × ``min_seconds``, whichever is longer."""
    timeout = getattr(options, "timeout", None)
    return float(timeout) if timeout else max(DEFAULT_TIMEOUT_S, 20 * float(options.min_seconds))


def _node_tensors(node) -> list:
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


def _graph_tensors(graph) -> list:
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    for node in graph.node:
        tensors += _node_tensors(node)
    return tensors


def external_data_files(model: Path) -> list[Path]:
    """The files an .onnx model's tensors keep their data in, read without loading the data.
    ModelFileError for a location that is absolute, has '..' or does not exist; [] for other files
    or a model onnx cannot parse (the runner then reports that)."""
    if model.suffix != ".onnx":
        return []
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # a broken model: the runner's error names it
        return []
    tensors = _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            tensors += _node_tensors(node)
    files: dict[str, Path] = {}
    for tensor in tensors:
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


def model_size_bytes(model: Path) -> int:
    """The model file and every external-data file it references, in bytes."""
    return model.stat().st_size + sum(path.stat().st_size for path in external_data_files(model))


def push_model(device: Device, model: Path, timeout: float | None) -> str:
    """Push ``model`` (with its external data, in the same layout) to the device; its remote path."""
    data = external_data_files(model)
    if not data:
        return device.push(str(model), timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="edgepack-stage-") as stage:
        folder = Path(stage) / model.stem
        for source in [model, *data]:
            target = folder / source.relative_to(model.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy2(source, target)
        remote = device.push(str(folder), f"{model.stem}.model", timeout=timeout)
    return f"{remote}/{model.name}"
