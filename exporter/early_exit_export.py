"""On-device early exit: an ``EarlyExitNet`` as one ONNX model per segment plus a JSON manifest, and a
runner that runs the segments in order and stops at the first confident exit.

Segment i maps its input activation to (next activation, exit logits, exit confidence = max softmax
probability); the last one to the final logits.
``full.onnx`` is the whole backbone without heads (the baseline ``edgepack bench --early-exit`` times
against). With ``tflite=True`` each file is also converted to ``.tflite`` (batch 1, verified against ONNX
Runtime) and recorded in the manifest. The runner uses ONNX Runtime sessions or LiteRT interpreters; any
runtime that runs the segment files can follow the manifest the same way: run segment i, stop if its
confidence >= threshold, else feed the activation on.
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


class EarlyExitError(EdgepackError, ValueError):
    """An early-exit manifest or its segment files cannot be used; the message names the file and field."""


class _Segment(nn.Module):
    """One segment with its exit head: activation -> (next activation, exit logits, max softmax probability)."""

    def __init__(self, segment: nn.Module, head: nn.Module):
        super().__init__()
        self.segment, self.head = segment, head

    def forward(self, x: torch.Tensor):
        y = self.segment(x)
        logits = self.head(y)
        return y, logits, torch.softmax(logits, 1).amax(1)


def export_early_exit(model, example: torch.Tensor, folder: str | Path, mode: str = "kernels",
                      tflite: bool = False) -> Path:
    """Write ``segment{i}.onnx`` for each segment of ``model`` (an EarlyExitNet), ``full.onnx`` and
    ``manifest.json`` (threshold, files, input / output names and shapes) into ``folder``; returns the manifest.
    ``tflite``: also ``segment{i}.tflite`` and ``full.tflite`` (batch 1), each verified against ONNX Runtime."""
    from edgepack.compression.early_exit import EarlyExitNet
    from edgepack.compression.quantize import QuantConv2d, QuantLinear

    from .onnx_export import export_onnx

    if not isinstance(model, EarlyExitNet):
        raise EarlyExitError(f"export_early_exit: needs an EarlyExitNet (the early_exit stage's model), "
                             f"got {type(model).__name__}")
    if tflite and any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules()):
        raise EarlyExitError("export_early_exit: an int8 early-exit net (quantize after early_exit) cannot become "
                             "TFLite segments: a QDQ segment computes its exit confidence (Softmax, ReduceMax) in "
                             "float and the next segment reads the int8 activation without a QuantizeLinear, "
                             "which the fully int8 converter refuses; export it as ONNX only (tflite=False, "
                             "--format onnx) and run it with ONNX Runtime")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    x, segments = torch.cat([example[:1]] * 2), []  # batch 2: a batch of 1 would not export as dynamic
    with torch.no_grad():
        for i, segment in enumerate(model.segments):
            last = i == len(model.segments) - 1
            module = segment if last else _Segment(segment, model.heads[i]).eval()
            path = export_onnx(module, (x,), folder / f"segment{i}.onnx", mode=mode)
            outputs = module(x)
            names = _io_names(path)
            entry = {"file": path.name, "input": names[0][0], "input_shape": list(x.shape[1:])}
            if last:
                entry.update(logits=names[1][0])
            else:
                entry.update(activation=names[1][0], logits=names[1][1], confidence=names[1][2], exit=model.exits[i])
                x = outputs[0]
            segments.append(entry)
        full = export_onnx(model, (torch.cat([example[:1]] * 2),), folder / "full.onnx", mode=mode)
    manifest = {"format": FORMAT, "version": VERSION, "threshold": model.threshold, "segments": segments,
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
    threshold = manifest.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 2:
        raise EarlyExitError(f"{path}: field 'threshold' must be a number in [0, 2], got {threshold!r}")
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not segments:
        raise EarlyExitError(f"{path}: field 'segments' must be a non-empty list")
    for i, entry in enumerate(segments + [manifest.get("full")]):
        where = f"segments[{i}]" if i < len(segments) else "full"
        needed = ["file", "input", "logits"] + (["activation", "confidence"] if i < len(segments) - 1 else [])
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
    at the first confident exit, as a device runs it)."""

    def __init__(self, manifest: str | Path, threads: int = 1, use_kernels: bool = True,
                 runtime: str = "onnxruntime"):
        self.path = Path(manifest)
        self.manifest = read_manifest(self.path, runtime)
        self.runtime = runtime
        self.threshold = float(self.manifest["threshold"])
        self.segments = self.manifest["segments"]
        if runtime == "tflite" and threads != 1:
            raise EarlyExitError(f"the TFLite early-exit runner runs LiteRT with 1 thread; got threads={threads}")
        last = len(self.segments) - 1
        self.sessions = [self._session(entry, ["logits"] if i == last else ["activation", "logits", "confidence"],
                                       use_kernels, threads) for i, entry in enumerate(self.segments)]
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
        if count != len(outputs):  # the converter keeps the ONNX output order: activation, logits, confidence
            raise EarlyExitError(f"{path}: has {count} outputs, the manifest needs {len(outputs)} "
                                 f"({', '.join(outputs)})")
        return lambda x: run_tflite(interpreter, [x])

    def _run(self, i: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(next activation, logits, confidence) of segment ``i``; (None, logits, None) for the last."""
        if i == len(self.segments) - 1:
            return None, self.sessions[i](x)[0], None
        return tuple(self.sessions[i](x))

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
