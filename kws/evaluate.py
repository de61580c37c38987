"""``edgepack kws eval``: accuracy, per-class accuracy and the confusion matrix of a KWS model.

The model may be a training run folder (its ``best.safetensors``), a checkpoint, or an exported
``.onnx`` / ``.tflite`` file run by the real ONNX Runtime / LiteRT with edgepack's ops, on the same
MFCC features, so the accuracy is that of the file that ships. Exported models that take raw audio
([N, 16000], ``kws.frontend.AudioModel``) get the clips instead of features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgepack.kws.labels import CLASSES, CLIP_SAMPLES
from edgepack.kws.train import KwsTrainError, features, load_data

FEATURE_SHAPE = (1, 49, 10)
SHORT = {"silence": "sil", "unknown": "unk", "right": "rght"}  # table headers that fit 80 columns


class Predictor:
    """Logits [N, classes] of one model file for MFCC features [N, 1, 49, 10] or audio [N, 16000]."""

    def __init__(self, path, run, takes_audio: bool, kind: str):
        self.path, self._run, self.takes_audio, self.kind = Path(path), run, takes_audio, kind

    def __call__(self, feats: np.ndarray, audio: np.ndarray | None = None) -> np.ndarray:
        return self._run(audio if self.takes_audio else feats)


def checkpoint_of(target) -> Path:
    """The checkpoint a target names: a run folder's best.safetensors (else last), or the file itself."""
    path = Path(target)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise KwsTrainError(f"{path}: a folder without best.safetensors or last.safetensors; give a run folder "
                            "of `edgepack kws train`, a checkpoint, or an exported .onnx / .tflite file")
    if not path.is_file():
        raise KwsTrainError(f"{path}: no such file or run folder")
    return path


def check_kws_model(model, path) -> None:
    """Refuse a torch model that does not map MFCC features [N, 1, 49, 10] to 12 class scores."""
    import torch

    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *FEATURE_SHAPE))
    except Exception as error:
        raise KwsTrainError(f"{path}: not a keyword-spotting model: it does not run on MFCC features "
                            f"[N, 1, 49, 10] ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if tuple(out.shape) != (2, len(CLASSES)):
        raise KwsTrainError(f"{path}: not a keyword-spotting model: on [2, 1, 49, 10] features it outputs "
                            f"{tuple(out.shape)}, expected (2, {len(CLASSES)}) (one score per class)")


def load_torch(path):
    """A checkpoint's model, checked to be a 12-class KWS model on MFCC features."""
    from edgepack.compression import load_checkpoint

    model = load_checkpoint(path)
    check_kws_model(model, path)
    return model


def _input_kind(shape, path) -> bool:
    """True for a raw-audio input [N, 16000], False for features [N, 1, 49, 10]; else a clear error."""
    rest = tuple(shape[1:])
    if rest == FEATURE_SHAPE:
        return False
    if rest == (CLIP_SAMPLES,):
        return True
    raise KwsTrainError(f"{path}: input shape {list(shape)} is not a KWS model's: expected [N, 1, 49, 10] MFCC "
                        f"features or [N, {CLIP_SAMPLES}] audio")


def _batched(run, batch: int | None):
    """Run ``run`` over chunks of ``batch`` rows (a static batch: the last chunk zero-padded)."""
    def call(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = batch or 256
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            n = len(chunk)
            if batch and n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
            outs.append(np.asarray(run(chunk))[:n])
        return np.concatenate(outs) if outs else np.zeros((0, len(CLASSES)), np.float32)
    return call


def load_predictor(target) -> Predictor:
    """A Predictor for a run folder, a checkpoint (.safetensors / .pt), or an .onnx / .tflite file."""
    path = checkpoint_of(target)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from edgepack.runtime_kernels import onnx_session

        session = onnx_session(path)
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        takes_audio = _input_kind(inp.shape, path)
        static = inp.shape[0] if isinstance(inp.shape[0], int) else None
        return Predictor(path, _batched(lambda x: session.run([out.name], {inp.name: x})[0], static),
                         takes_audio, "onnxruntime")
    if suffix == ".tflite":
        from edgepack.runtime_kernels import tflite_interpreter

        interpreter = tflite_interpreter(path)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        takes_audio = _input_kind(tuple(inp["shape"]), path)

        def invoke(x: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()
        return Predictor(path, _batched(invoke, int(inp["shape"][0])), takes_audio, "litert")
    import torch

    model = load_torch(path)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return Predictor(path, _batched(run, None), False, "torch")


def confusion_matrix(labels, predictions, classes: int = len(CLASSES)) -> np.ndarray:
    """[classes, classes] counts: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def metrics(labels, predictions) -> dict:
    """Accuracy, per-class accuracy (None for a class without clips) and the confusion matrix."""
    matrix = confusion_matrix(labels, predictions)
    totals = matrix.sum(1)
    return {"accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)), "clips": int(matrix.sum()),
            "per_class": {name: (float(matrix[i, i] / totals[i]) if totals[i] else None)
                          for i, name in enumerate(CLASSES)},
            "confusion": matrix.tolist(), "classes": list(CLASSES)}


def plot_confusion(matrix, path, title: str) -> Path:
    """The confusion matrix as a PNG (benchmarks.plots.plot_confusion_matrix, shared with the HTML report)."""
    from edgepack.benchmarks.plots import plot_confusion_matrix

    return Path(plot_confusion_matrix(np.asarray(matrix), list(CLASSES), path, title))


def evaluate_split(predictor: Predictor, split, feats=None) -> dict:
    """metrics() of ``predictor`` on a loaded split (features computed unless given)."""
    feats = features(split.audio) if feats is None else feats
    logits = predictor(feats.numpy(), split.audio)
    return metrics(split.labels, logits.argmax(1))


def print_metrics(result: dict, title: str, console=None) -> None:
    """Per-class accuracy and the confusion matrix as rich tables."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, box=box.SIMPLE, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("true", no_wrap=True)
    for name in CLASSES:
        table.add_column(SHORT.get(name, name), justify="right", no_wrap=True)
    table.add_column("acc.", justify="right", no_wrap=True)
    for i, name in enumerate(CLASSES):
        acc = result["per_class"][name]
        table.add_row(name, *[str(v) if v else "·" for v in result["confusion"][i]],
                      "—" if acc is None else f"{acc:.0%}")
    console.print(table)
    console.print(f"accuracy {result['accuracy']:.2%} on {result['clips']} clips (rows: true class, columns: "
                  "predicted)")


def evaluate(target, data_dir, split: str = "test", output=None, console=None) -> dict:
    """Evaluate ``target`` on ``split`` of ``data_dir``; print tables, write eval-<name>-<split>.json and .png."""
    from rich.console import Console

    console = console or Console()
    predictor = load_predictor(target)
    data = load_data(data_dir, (split,))
    result = evaluate_split(predictor, data[split])
    result.update({"model": str(predictor.path), "runtime": predictor.kind, "split": split,
                   "data": str(Path(data_dir).resolve())})
    generic = predictor.path.stem in ("best", "last", "model")  # named by the run / compress folder instead
    name = predictor.path.parent.name if generic else predictor.path.stem
    out = Path(output) if output else (Path(target) if Path(target).is_dir() else predictor.path.parent)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{name}-{predictor.path.suffix.lstrip('.')}-{split}"
    title = f"{name} ({predictor.kind}), {split} split"
    result["plot"] = str(plot_confusion(result["confusion"], out / f"{stem}.png", title))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print_metrics(result, title, console)
    console.print(f"wrote {out / f'{stem}.json'} and {result['plot']}")
    return result


def add_parser(subparsers) -> None:
    """``edgepack kws eval RUN_or_MODEL --data DIR [--split test] [-o DIR]``."""
    parser = subparsers.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a KWS model")
    parser.add_argument("model", help="a run folder (its best.safetensors), a checkpoint, or an exported "
                                      ".onnx / .tflite file (run by ONNX Runtime / LiteRT with edgepack's ops)")
    parser.add_argument("--data", required=True, help="dataset folder in the Speech Commands layout")
    parser.add_argument("--split", choices=("train", "validation", "test"), default="test")
    parser.add_argument("-o", "--output", help="folder for eval-*.json and the confusion-matrix PNG "
                                               "(default: the run folder, or the model file's folder)")
    parser.set_defaults(handler=_handler)


def _handler(args) -> int:
    evaluate(args.model, args.data, args.split, args.output)
    return 0
