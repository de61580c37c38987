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

from edgepack.kws.labels import CLASSES
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


def _batched(run, step: int = 256):
    """Run ``run`` over chunks of ``step`` rows (bounded memory on a whole split)."""
    def call(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [np.asarray(run(x[i:i + step])) for i in range(0, len(x), step)]
        return np.concatenate(outs) if outs else np.zeros((0, len(CLASSES)), np.float32)
    return call


def load_predictor(target) -> Predictor:
    """A Predictor for a run folder, a checkpoint (.safetensors / .pt), or an .onnx / .tflite file, built
    on detector.load_runner (int8 TFLite inputs/outputs (de)quantized); KwsTrainError unless it gives 12 scores."""
    from edgepack.kws.detector import FEATURE_SHAPE as DETECTOR_FEATURES
    from edgepack.kws.detector import RAW_SHAPE, OnnxRunner, TfliteRunner, TorchRunner, load_runner

    path = checkpoint_of(target)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        runner = load_runner(path)
    else:
        runner = TorchRunner(load_torch(path), kind="features", name=str(path))
    kinds = {OnnxRunner: "onnxruntime", TfliteRunner: "litert", TorchRunner: "torch"}
    probe = np.zeros((1, *(DETECTOR_FEATURES if runner.kind == "features" else RAW_SHAPE)[1:]), np.float32)
    shape = np.asarray(runner.run(probe)).shape
    if shape[-1] != len(CLASSES):
        raise KwsTrainError(f"{path}: the model outputs shape {list(shape)}; a keyword-spotting model gives "
                            f"{len(CLASSES)} class scores ({', '.join(CLASSES)})")
    return Predictor(path, _batched(runner.run), runner.kind == "audio", kinds[type(runner)])


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
