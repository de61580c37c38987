"""Read model files safely: every .onnx / .tflite edgepack opens goes through ``load_onnx`` /
``load_tflite``, which turn any parse failure into a ``ModelFileError`` naming the file and
what was expected (a model file is data; a corrupt one must never reach a runtime's parser)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx

from edgepack.errors import EdgepackError


class ModelFileError(EdgepackError, ValueError):
    """A model file is missing, unreadable, corrupt or not the format its name says."""



def _check_path(path: Path, kind: str) -> None:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file (expected {kind})")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory (expected {kind})")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty (0 bytes; expected {kind})")


def load_onnx(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file, or raise ModelFileError saying why not. Its external-data files must lie
    below its folder; their contents are read only with ``external_data``."""
    from onnx.external_data_helper import load_external_data_for_model

    from .external_data import external_data_files

    path = Path(path)
    kind = "an ONNX model, .onnx"
    _check_path(path, kind)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ModelFileError(f"{path}: not a readable ONNX model ({why(error)}); expected "
                             f"{kind}") from None
    if not model.HasField("graph") or model.ir_version < 1 or not model.opset_import:
        raise ModelFileError(f"{path}: parses as protobuf but is not an ONNX model (no graph, "
                             f"IR version or opset import); expected {kind}")
    _check_graph(model, path)
    if external_data and external_data_files(path, model):
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as error:
            raise ModelFileError(f"{path}: cannot read its external data ({why(error)})") from None
    return model


def _check_graph(model: onnx.ModelProto, path: Path) -> None:
    """Every value a node or the graph output reads is defined before (ONNX's topological rule)."""
    graph = model.graph
    if not graph.output:
        raise ModelFileError(f"{path}: invalid ONNX model: the graph has no outputs")
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in defined:
                label = f"node {index} {node.name!r} ({node.op_type})" if node.name else \
                    f"node {index} ({node.op_type})"
                raise ModelFileError(f"{path}: invalid ONNX model: {label} reads {name!r}, which "
                                     "is not a graph input, an initializer or the output of an "
                                     "earlier node")
        defined.update(node.output)
    for output in graph.output:
        if output.name not in defined:
            raise ModelFileError(f"{path}: invalid ONNX model: graph output {output.name!r} is not "
                                 "produced by any node, input or initializer")


def load_tflite(path: str | Path):
    """Read a .tflite file and walk its flatbuffer tables; ModelFileError if any is out of bounds.

    Returns ``(data, model)``: the file's bytes and its ``tflite.Model``.
    """
    import tflite

    path = Path(path)
    kind = "a TFLite flatbuffer, .tflite"
    _check_path(path, kind)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier); expected {kind}")
    try:
        model = tflite.Model.GetRootAs(data, 0)
        limit = len(data) // 4  # every vector entry takes at least 4 bytes of the file
        counts = [model.SubgraphsLength(), model.BuffersLength(), model.OperatorCodesLength()]
        if max(counts) > limit or model.SubgraphsLength() < 1:
            raise ValueError(f"table counts {counts} do not fit in {len(data)} bytes")
        for b in range(model.BuffersLength()):
            buffer = model.Buffers(b)
            if buffer.DataLength() > len(data):
                raise ValueError(f"buffer {b} claims {buffer.DataLength()} bytes")
            if buffer.DataLength():
                buffer.DataAsNumpy()
        for c in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(c)
            code.BuiltinCode(), code.CustomCode()
        for s in range(model.SubgraphsLength()):
            graph = model.Subgraphs(s)
            if max(graph.TensorsLength(), graph.OperatorsLength()) > limit:
                raise ValueError(f"subgraph {s} claims more tables than fit in the file")
            for t in range(graph.TensorsLength()):
                tensor = graph.Tensors(t)
                if not 0 <= tensor.Buffer() < max(model.BuffersLength(), 1):
                    raise ValueError(f"tensor {t} uses buffer {tensor.Buffer()} of "
                                     f"{model.BuffersLength()}")
                tensor.Name(), tensor.ShapeAsNumpy() if tensor.ShapeLength() else None
            for o in range(graph.OperatorsLength()):
                op = graph.Operators(o)
                if not 0 <= op.OpcodeIndex() < model.OperatorCodesLength():
                    raise ValueError(f"operator {o} uses opcode {op.OpcodeIndex()} of "
                                     f"{model.OperatorCodesLength()}")
                for vector in (op.InputsAsNumpy() if op.InputsLength() else [],
                               op.OutputsAsNumpy() if op.OutputsLength() else []):
                    if any(not -1 <= int(i) < graph.TensorsLength() for i in vector):
                        raise ValueError(f"operator {o} names a tensor outside 0..{graph.TensorsLength() - 1}")
                if op.CustomOptionsLength():
                    op.CustomOptionsAsNumpy()
    except Exception as error:
        raise ModelFileError(f"{path}: corrupt TFLite flatbuffer ({why(error)}); expected "
                             f"{kind}") from None
    return data, model


def why(error: Exception) -> str:
    """The first line of an exception, with its type: short enough for a one-line error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


MAX_NPZ_BYTES = 1 << 30


def _check_npy_header(member, stored_bytes: int, what: str, name: str) -> None:
    """Read an .npy header and refuse object arrays and a declared size over the bytes actually stored, so
    nothing is allocated for data the file does not hold."""
    read_header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(member) == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(member)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if dtype.hasobject or declared > stored_bytes:
        raise ModelFileError(f"{what}: array {name!r} declares {shape} {dtype} ({declared:,} bytes) in "
                             f"{stored_bytes:,} stored bytes; expected plain numeric arrays (np.save / np.savez)")


def load_npz(path: str | Path, what: str, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an .npz data file, or ModelFileError naming ``what`` (e.g. ``--dataset x.npz``).
    No pickles; each member's .npy header must declare exactly the bytes the member holds, and all
    of them together at most ``max_bytes``, checked before anything is decompressed."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            total = sum(info.file_size for info in members)
            if not members or total > max_bytes:
                raise ModelFileError(f"{what}: {len(members)} arrays of {total:,} bytes; expected at least "
                                     f"one array and at most {max_bytes:,} bytes in all")
            for info in members:
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, what, info.filename[:-4])
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{what}: not a readable .npz file ({why(error)}); expected arrays saved "
                             "with np.savez") from None


def load_npy(path: str | Path, what: str, max_bytes: int = MAX_NPZ_BYTES) -> np.ndarray:
    """The array of an .npy file, or ModelFileError naming ``what``: no pickles, at most ``max_bytes``, and a
    header that declares no more than the file holds (checked before the data is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelFileError(f"{what}: {size:,} bytes; at most {max_bytes:,}")
        with path.open("rb") as file:
            _check_npy_header(file, size, what, path.stem)
        return np.load(path, allow_pickle=False)
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise ModelFileError(f"{what}: not a readable .npy file ({why(error)}); expected an array saved "
                             "with np.save") from None
