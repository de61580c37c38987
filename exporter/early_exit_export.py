"""On-device early exit: an ``EarlyExitNet`` as one ONNX model per segment plus a JSON manifest, and a
runner that runs the segments in order and stops at the first confident exit.

Segment i maps its input activation to (next activation, exit logits, exit confidence = max softmax
probability); the last one to the final logits.
``full.onnx`` is the whole backbone without heads (the baseline ``edgepack bench --early-exit`` times
against). With ``tflite=True`` each file is also converted to ``.tflite`` (batch 1, verified against ONNX
Runtime) and recorded in the manifest. The runner uses ONNX Runtime sessions or LiteRT interpreters; any
runtime that runs the segment files can follow the manifest the same way: run segment i, stop if its
confidence >= threshold, else feed the activation on.

An int8 net (``quantize`` after ``early_exit``) is exported as QDQ segments that a fully int8 converter
takes: segment i > 0 starts with QuantizeLinear → DequantizeLinear at the previous segment's output
quantization (exact on the int8 grid the activation already lies on), and an early segment outputs only
(next activation, exit logits), both int8 tensors dequantized. The manifest's ``confidence`` is then
``"logits"``: the runner computes the max softmax probability of the exit logits in float32 itself (as
torch's ``EarlyExitNet.predict`` does on the int8 model's logits), in ONNX Runtime and LiteRT alike. A float
net's manifest has ``confidence: "output"`` (the segment's third output); a manifest without the field is read
as ``"output"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepack.errors import EdgepackError

FORMAT = "edgepack.early_exit"
VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
RUNTIMES = ("onnxruntime", "tflite")
CONFIDENCES = ("output", "logits")  # the segment outputs its exit confidence / the runner computes it from the logits


class EarlyExitError(EdgepackError, ValueError):
    """An early-exit manifest or its segment files cannot be used; the message names the file and field."""


class _Segment(nn.Module):
    """One segment with its exit head: activation -> (next activation, exit logits, max softmax probability);
    ``confidence=False``: (next activation, exit logits); no head (the last segment): its output. ``input_qparams``
    (scale, zero point): a QuantizeLinear → DequantizeLinear on the input first (an int8 segment's input is the
    previous segment's int8 activation, which a fully int8 converter needs quantized at the model input)."""

    def __init__(self, segment: nn.Module, head: nn.Module | None, confidence: bool = True,
                 input_qparams: tuple[float, int] | None = None):
        super().__init__()
        self.segment, self.head, self.confidence, self.input_qparams = segment, head, confidence, input_qparams

    def forward(self, x: torch.Tensor):
        if self.input_qparams is not None:
            from .onnx_quant import qdq

            x = qdq(x, *self.input_qparams)
        y = self.segment(x)
        if self.head is None:
            return y
        logits = self.head(y)
        if not self.confidence:
            return y, logits
        return y, logits, torch.softmax(logits, 1).amax(1)


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` has int8 layers (the quantize stage's QuantLinear / QuantConv2d / int8-stored ones)."""
    from edgepack.compression.quantize import QuantConv2d, QuantLinear
    from edgepack.compression.quantize_compressed import INT8_STORED

    return any(isinstance(m, (QuantConv2d, QuantLinear, *INT8_STORED)) for m in model.modules())


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """The max softmax probability per row of ``logits`` [N, classes], in float32 (torch's softmax: exp of the
    logits minus their max, over the sum; the max term is 1): the confidence of ``confidence: "logits"``."""
    logits = np.asarray(logits, np.float32)
    return (np.float32(1) / np.exp(logits - logits.max(1, keepdims=True)).sum(1, dtype=np.float32)).astype(np.float32)


def output_qparams(path: Path, name: str) -> tuple[float, int] | None:
    """(scale, zero point) of graph output ``name`` of the ONNX file when a per-tensor int8 DequantizeLinear
    writes it (through Identity nodes), else None."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    node = producers.get(name)
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
        return None
    scale, zero_point = constants.get(node.input[1]), constants.get(node.input[2])
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype != np.int8:
        return None
    return float(scale.ravel()[0]), int(zero_point.ravel()[0])


def export_early_exit(model, example: torch.Tensor, folder: str | Path, mode: str = "kernels",
                      tflite: bool = False) -> Path:
    """Write ``segment{i}.onnx`` for each segment of ``model`` (an EarlyExitNet), ``full.onnx`` and
    ``manifest.json`` (threshold, files, input / output names and shapes) into ``folder``; returns the manifest.
    ``tflite``: also ``segment{i}.tflite`` and ``full.tflite`` (batch 1, float inputs and outputs), each verified
    against ONNX Runtime; an int8 net's become fully int8 models (QUANTIZE at the input, DEQUANTIZE at the outputs)."""
    from edgepack.compression.early_exit import EarlyExitNet

    from .onnx_export import export_onnx

    if not isinstance(model, EarlyExitNet):
        raise EarlyExitError(f"export_early_exit: needs an EarlyExitNet (the early_exit stage's model), "
                             f"got {type(model).__name__}")
    int8 = is_int8(model)
    if tflite and int8 and not all(is_int8(head) for head in model.heads):
        raise EarlyExitError("export_early_exit: this net has int8 layers but float exit heads (early_exit after "
                             "quantize), which a fully int8 TFLite segment cannot hold; run quantize after "
                             "early_exit so the heads are int8 too, or export ONNX only (tflite=False, --format onnx)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    x, segments = torch.cat([example[:1]] * 2), []  # batch 2: a batch of 1 would not export as dynamic
    qparams = None  # int8: the previous segment's output quantization
    with torch.no_grad():
        for i, segment in enumerate(model.segments):
            last = i == len(model.segments) - 1
            module = segment if last and qparams is None else \
                _Segment(segment, None if last else model.heads[i], not int8, qparams).eval()
            path = export_onnx(module, (x,), folder / f"segment{i}.onnx", mode=mode)
            outputs = module(x)
            names = _io_names(path)
            entry = {"file": path.name, "input": names[0][0], "input_shape": list(x.shape[1:])}
            if last:
                entry.update(logits=names[1][0])
            else:
                entry.update(activation=names[1][0], logits=names[1][1], exit=model.exits[i])
                if not int8:
                    entry.update(confidence=names[1][2])
                else:
                    qparams = output_qparams(path, names[1][0])
                    if qparams is None and tflite:
                        raise EarlyExitError(f"{path}: the activation output {names[1][0]!r} does not come from a "
                                             "per-tensor int8 DequantizeLinear, so the next fully int8 TFLite segment "
                                             "cannot start on its grid; export ONNX only (tflite=False, --format onnx)")
                x = outputs[0]
            segments.append(entry)
        full = export_onnx(model, (torch.cat([example[:1]] * 2),), folder / "full.onnx", mode=mode)
    manifest = {"format": FORMAT, "version": VERSION, "threshold": model.threshold,
                "confidence": "logits" if int8 else "output", "segments": segments,
                "full": {"file": full.name, "input": _io_names(full)[0][0], "logits": _io_names(full)[1][0]},
                "input_shape": list(example.shape[1:]), "classes": int(model(example[:1]).shape[1])}
    if tflite:
        manifest["tflite_custom_ops"] = _to_tflite(folder, segments + [manifest["full"]])
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def _to_tflite(folder: Path, entries: list[dict]) -> bool:
    """Convert each entry's ONNX file to a verified batch-1 .tflite next to it and record it as the entry's
    ``tflite`` field; whether any of them has ai.edgepack CUSTOM ops (the LiteRT runner then loads the delegate)."""
    import onnx

    from .tflite_export import convert_and_verify
    from .tflite_verify import has_edgepack_ops

    custom = False
    for entry in entries:
        source = folder / entry["file"]
        try:
            path, _ = convert_and_verify(source, source.with_suffix(".tflite"))
        except EdgepackError as error:
            raise EarlyExitError(f"{source}: cannot convert this early-exit file to TFLite: {error}") from error
        entry["tflite"] = path.name
        custom = custom or has_edgepack_ops(onnx.load(str(source), load_external_data=False))
    return custom


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def read_manifest(path: str | Path, runtime: str = "onnxruntime") -> dict:
    """The manifest at ``path``, checked: format, version, threshold and every segment's files and names (and
    its ``.tflite`` file for ``runtime="tflite"``)."""
    path = Path(path)
    if runtime not in RUNTIMES:
        raise EarlyExitError(f"early-exit runtime {runtime!r} is not valid; valid: {', '.join(RUNTIMES)}")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes; a manifest is at most {MAX_MANIFEST_BYTES:,}")
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EarlyExitError(f"{path}: cannot read the early-exit manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise EarlyExitError(f"{path}: not an early-exit manifest (format {FORMAT!r}, version {VERSION}); write "
                             "one with edgepack.exporter.early_exit_export.export_early_exit")
    confidence = manifest.setdefault("confidence", "output")
    if confidence not in CONFIDENCES:
        raise EarlyExitError(f"{path}: field 'confidence' must be one of {', '.join(map(repr, CONFIDENCES))}, got "
                             f"{confidence!r}")
    threshold = manifest.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 2:
        raise EarlyExitError(f"{path}: field 'threshold' must be a number in [0, 2], got {threshold!r}")
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not segments:
        raise EarlyExitError(f"{path}: field 'segments' must be a non-empty list")
    for i, entry in enumerate(segments + [manifest.get("full")]):
        where = f"segments[{i}]" if i < len(segments) else "full"
        early = ["activation"] + (["confidence"] if confidence == "output" else [])
        needed = ["file", "input", "logits"] + (early if i < len(segments) - 1 else [])
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) for k in needed):
            raise EarlyExitError(f"{path}: {where} needs the string fields {', '.join(needed)}")
        if runtime == "tflite" and not isinstance(entry.get("tflite"), str):
            raise EarlyExitError(f"{path}: {where} has no 'tflite' file; export with export_early_exit(..., "
                                 "tflite=True) or `edgepack export CKPT --early-exit --format onnx,tflite`")
        for field in ("file", "tflite") if runtime == "tflite" else ("file",):
            if not (path.parent / entry[field]).is_file():
                raise EarlyExitError(f"{path}: {where}: file {entry[field]!r} is missing next to the manifest")
    return manifest


class EarlyExitRunner:
    """The exported segments in ONNX Runtime sessions or LiteRT interpreters (``runtime="tflite"``: the .tflite
    files, batch 1, one thread): ``predict`` (class and exit per example) and ``run_one`` (one example, stopping
    at the first confident exit, as a device runs it). With the manifest's ``confidence: "logits"`` (an int8 net)
    the confidence is ``max_softmax`` of the exit logits, computed here for either runtime."""

    def __init__(self, manifest: str | Path, threads: int = 1, use_kernels: bool = True,
                 runtime: str = "onnxruntime"):
        self.path = Path(manifest)
        self.manifest = read_manifest(self.path, runtime)
        self.runtime = runtime
        self.threshold = float(self.manifest["threshold"])
        self.segments = self.manifest["segments"]
        self.from_logits = self.manifest["confidence"] == "logits"
        if runtime == "tflite" and threads != 1:
            raise EarlyExitError(f"the TFLite early-exit runner runs LiteRT with 1 thread; got threads={threads}")
        last = len(self.segments) - 1
        early = ["activation", "logits"] + ([] if self.from_logits else ["confidence"])
        self.sessions = [self._session(entry, ["logits"] if i == last else early, use_kernels, threads)
                         for i, entry in enumerate(self.segments)]
        self.full = self._session(self.manifest["full"], ["logits"], use_kernels, threads)

    def _session(self, entry: dict, outputs: list[str], use_kernels: bool, threads: int):
        """A function of the entry's input array returning its ``outputs`` (fields of the entry), in order."""
        if self.runtime == "onnxruntime":
            from edgepack.runtime_kernels.ort_session import onnx_session

            session = onnx_session(str(self.path.parent / entry["file"]), use_kernels=use_kernels, threads=threads)
            names = [entry[field] for field in outputs]
            return lambda x: session.run(names, {entry["input"]: x})
        from .tflite_verify import run_tflite, tflite_runner

        path = self.path.parent / entry["tflite"]
        try:
            interpreter = tflite_runner(path.read_bytes(), bool(self.manifest.get("tflite_custom_ops")))
        except EdgepackError as error:
            raise EarlyExitError(f"{path}: cannot load in LiteRT: {error}") from error
        count = len(interpreter.get_output_details())
        if count != len(outputs):  # the converter keeps the ONNX output order: activation, logits[, confidence]
            raise EarlyExitError(f"{path}: has {count} outputs, the manifest needs {len(outputs)} "
                                 f"({', '.join(outputs)})")
        return lambda x: run_tflite(interpreter, [x])

    def _run(self, i: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(next activation, logits, confidence) of segment ``i``; (None, logits, None) for the last."""
        if i == len(self.segments) - 1:
            return None, self.sessions[i](x)[0], None
        outputs = self.sessions[i](x)
        if self.from_logits:
            return outputs[0], outputs[1], max_softmax(outputs[1])
        return tuple(outputs)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class, exit index) per example of ``x``: each segment runs only on the examples still going (one
        at a time in LiteRT, whose files have batch 1)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.runtime == "tflite":
            pairs = np.array([self.run_one(x[n:n + 1]) for n in range(len(x))], dtype=np.int64).reshape(-1, 2)
            return pairs[:, 0], pairs[:, 1]
        classes = np.zeros(len(x), dtype=np.int64)
        chosen = np.full(len(x), len(self.segments) - 1, dtype=np.int64)
        going = np.arange(len(x))
        for i in range(len(self.segments)):
            if not len(going):
                break
            x, logits, confident = self._run(i, x)
            stop = np.ones(len(going), bool) if x is None else confident >= self.threshold
            classes[going[stop]] = logits[stop].argmax(1)
            chosen[going[stop]] = i
            going = going[~stop]
            x = x[~stop] if x is not None else x
        return classes, chosen

    def run_one(self, x: np.ndarray) -> tuple[int, int]:
        """(class, exit index) of one example [1, ...], running segments until an exit is confident."""
        for i in range(len(self.segments)):
            x, logits, confident = self._run(i, x)
            if x is None or confident[0] >= self.threshold:
                return int(logits[0].argmax()), i
        raise AssertionError("unreachable: the last segment always answers")

    def run_full(self, x: np.ndarray) -> int:
        """The class of one example [1, ...] from the whole model (no exits)."""
        return int(self.full(x)[0][0].argmax())
