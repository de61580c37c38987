"""Streaming keyword detection: micro_speech's RecognizeCommands over a model run every 20 ms hop.

``StreamingDetector`` keeps the last second of audio in a ring buffer, computes only the newest
MFCC frame each hop (the 49×10 feature window shifts by one row), runs the model on the window and
feeds the posteriors to ``RecognizeCommands``, which averages them over a window, needs a minimum
count of results, a threshold and a suppression time before it reports a keyword.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

from .labels import CLASSES, CLIP_SAMPLES, SAMPLE_RATE

WINDOW_SAMPLES = 480  # 30 ms MFCC window
STRIDE_SAMPLES = 320  # 20 ms MFCC stride
NUM_FRAMES = 1 + (CLIP_SAMPLES - WINDOW_SAMPLES) // STRIDE_SAMPLES  # 49
NUM_MFCC = 10
FEATURE_SHAPE = (1, 1, NUM_FRAMES, NUM_MFCC)
RAW_SHAPE = (1, CLIP_SAMPLES)
IGNORED = ("silence", "unknown")


class StreamError(EdgepackError, ValueError):
    """Bad input to the streaming detector (a model whose input does not fit, bad settings)."""


@dataclass(frozen=True)
class Detection:
    """A keyword found in the stream: its label, the stream time (s) of the hop that fired, the averaged score."""

    label: str
    time_s: float
    score: float

    def as_dict(self) -> dict:
        """The JSON-lines record ``edgepack kws listen`` prints."""
        return {"time_s": round(float(self.time_s), 3), "label": self.label, "score": round(float(self.score), 4)}


class RecognizeCommands:
    """micro_speech's RecognizeCommands: averages posteriors over ``window_ms``, needs at least
    ``minimum_count`` results spanning a quarter of the window, reports the top label when its average
    is above ``threshold`` and it differs from the last one or ``suppression_ms`` have passed since.

    Labels in ``ignore`` (silence, unknown) are never reported and do not reset the suppression.
    """

    def __init__(self, labels: Sequence[str] = CLASSES, window_ms: float = 1000.0, threshold: float = 0.8,
                 suppression_ms: float = 1500.0, minimum_count: int = 3, ignore: Sequence[str] = IGNORED):
        if not (0.0 <= threshold <= 1.0):
            raise StreamError(f"threshold must be within [0, 1] (a posterior), got {threshold}")
        if window_ms <= 0 or suppression_ms < 0 or minimum_count < 1:
            raise StreamError(f"window_ms must be > 0, suppression_ms >= 0 and minimum_count >= 1; got "
                              f"{window_ms}, {suppression_ms}, {minimum_count}")
        self.labels = tuple(labels)
        self.window_ms, self.threshold = float(window_ms), float(threshold)
        self.suppression_ms, self.minimum_count = float(suppression_ms), int(minimum_count)
        self.ignore = frozenset(ignore)
        self.results: deque[tuple[float, np.ndarray]] = deque()
        self.previous_label: str | None = None
        self.previous_time_ms = -math.inf

    def process(self, scores: np.ndarray, time_ms: float) -> Detection | None:
        """Add the posteriors of the model run at ``time_ms`` (non-decreasing); a Detection or None."""
        scores = np.asarray(scores, np.float64).reshape(-1)
        if scores.size != len(self.labels):
            raise StreamError(f"the model gave {scores.size} scores; the detector has {len(self.labels)} labels "
                              f"({', '.join(self.labels)})")
        if self.results and time_ms < self.results[-1][0]:
            raise StreamError(f"results must come in time order: {time_ms} ms after {self.results[-1][0]} ms")
        self.results.append((float(time_ms), scores))
        while self.results[0][0] < time_ms - self.window_ms:
            self.results.popleft()
        if len(self.results) < self.minimum_count or time_ms - self.results[0][0] < self.window_ms / 4:
            return None
        average = np.mean([s for _, s in self.results], axis=0)
        top = int(np.argmax(average))
        label, score = self.labels[top], float(average[top])
        if label in self.ignore or score <= self.threshold:
            return None
        if label == self.previous_label and time_ms - self.previous_time_ms <= self.suppression_ms:
            return None
        self.previous_label, self.previous_time_ms = label, float(time_ms)
        return Detection(label, float(time_ms) / 1000.0, score)

    def settings(self) -> dict:
        """The four settings as ``detector.json`` stores them."""
        return {"threshold": self.threshold, "window_ms": self.window_ms, "minimum_count": self.minimum_count,
                "suppression_ms": self.suppression_ms}


# ---- detector settings beside a model (detector.json, written by `edgepack kws calibrate`) ----------------

DETECTOR_FILE = "detector.json"
DEFAULT_SETTINGS = {"threshold": 0.8, "window_ms": 1000.0, "minimum_count": 3, "suppression_ms": 1500.0}


def detector_file(model) -> Path | None:
    """The ``detector.json`` in the folder of the model file ``model``, or None (no file there, or not a path)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model).parent / DETECTOR_FILE
    return path if path.is_file() else None


def load_detector_settings(path) -> dict:
    """The detector settings of a ``detector.json``: threshold, window_ms, minimum_count, suppression_ms
    (each optional, defaults to micro_speech's) checked as RecognizeCommands checks them; StreamError
    naming the file and the field otherwise. Other keys (the calibration record) are ignored."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise StreamError(f"{path}: cannot read detector settings ({error.strerror or error})") from None
    except ValueError as error:
        raise StreamError(f"{path}: not valid JSON ({error}); rerun `edgepack kws calibrate` or remove it") from None
    if not isinstance(data, dict):
        raise StreamError(f"{path}: detector settings must be a JSON object with keys {', '.join(DEFAULT_SETTINGS)}")
    settings = dict(DEFAULT_SETTINGS)
    for key, default in DEFAULT_SETTINGS.items():
        if key not in data:
            continue
        value = data[key]
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (isinstance(default, int) and not whole):
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise StreamError(f"{path}: {key!r} must be {kind}, got {value!r}")
        settings[key] = type(default)(value)
    try:
        RecognizeCommands(**settings)
    except StreamError as error:
        raise StreamError(f"{path}: {error}") from None
    return settings


def write_detector_settings(path, recognizer: RecognizeCommands, calibration: dict | None = None) -> Path:
    """Write ``recognizer``'s settings (and the ``calibration`` record) as ``detector.json`` at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**recognizer.settings(), **({"calibration": calibration} if calibration else {})}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def recognizer_for(model=None, settings_file=None, **overrides) -> RecognizeCommands:
    """The RecognizeCommands a model gets: micro_speech's defaults, replaced by ``settings_file`` (or, when
    None, the ``detector.json`` beside the model file, if any), replaced by the ``overrides`` that are
    not None (threshold, window_ms, minimum_count, suppression_ms)."""
    path = settings_file if settings_file is not None else detector_file(model)
    settings = load_detector_settings(path) if path is not None else dict(DEFAULT_SETTINGS)
    unknown = set(overrides) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown detector settings {sorted(unknown)}")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return RecognizeCommands(**settings)


def sweep_detections(times_s, posteriors, settings: Sequence[dict], labels: Sequence[str] = CLASSES,
                     ignore: Sequence[str] = IGNORED) -> list[list[Detection]]:
    """The detections RecognizeCommands would make on (``times_s``, ``posteriors``) under each of the
    ``settings`` (dicts of RecognizeCommands' four settings), computed together: the window averages
    once per (window, minimum count) from cumulative sums, the suppression only over the hops above
    the threshold. Equal to running RecognizeCommands per setting (tests/kws/test_calibrate.py)."""
    times_ms = np.asarray(times_s, np.float64).reshape(-1) * 1000.0
    scores = np.asarray(posteriors, np.float64).reshape(len(times_ms), -1)
    if scores.shape[1] != len(labels):
        raise StreamError(f"the posteriors have {scores.shape[1]} classes; the detector has {len(labels)} labels")
    if np.any(np.diff(times_ms) < 0):
        raise StreamError("results must come in time order")
    sums = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0)])
    reportable = np.array([label not in ignore for label in labels])
    index = np.arange(len(times_ms))
    cache: dict = {}
    out = []
    for setting in settings:
        rec = RecognizeCommands(labels, **setting)
        key = (rec.window_ms, rec.minimum_count)
        if key not in cache:
            first = np.searchsorted(times_ms, times_ms - rec.window_ms, side="left")
            count = index - first + 1
            valid = (count >= rec.minimum_count) & (times_ms - times_ms[first] >= rec.window_ms / 4)
            average = (sums[index + 1] - sums[first]) / count[:, None]
            top = np.argmax(average, axis=1)
            cache[key] = (top, average[index, top], valid & reportable[top])
        top, best, usable = cache[key]
        previous_label, previous_time = -1, -math.inf
        found = []
        for i in np.nonzero(usable & (best > rec.threshold))[0]:
            t = times_ms[i]
            if top[i] == previous_label and t - previous_time <= rec.suppression_ms:
                continue
            previous_label, previous_time = top[i], t
            found.append(Detection(labels[top[i]], float(t) / 1000.0, float(best[i])))
        out.append(found)
    return out


def to_posteriors(outputs: np.ndarray) -> np.ndarray:
    """Rows of class probabilities: the outputs as they are when each row already is a distribution
    (the model ends in a softmax: all values in [0, 1], sum within 0.05 of 1, as a dequantized int8 softmax)
    divided by their sum, else their softmax (logits)."""
    x = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    sums = x.sum(axis=1, keepdims=True)
    probabilities = np.all((x >= 0) & (x <= 1), axis=1, keepdims=True) & (np.abs(sums - 1.0) <= 0.05)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.where(probabilities, x / np.where(probabilities, sums, 1.0), e / e.sum(axis=1, keepdims=True))


# ---- model runners: a batch of inputs in the model's own input shape -> outputs [B, classes] ----------

def _input_kind(name: str, shape: Sequence) -> tuple[str, tuple[int, ...]]:
    """("features" | "audio", the per-example shape) for a model input of ``shape`` (None/str/-1 dims
    are dynamic, taken as 1); StreamError naming both accepted shapes otherwise."""
    dims = tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape)
    count = int(np.prod(dims)) if dims else 0
    if len(dims) >= 2 and dims[-2:] == (NUM_FRAMES, NUM_MFCC) and count == NUM_FRAMES * NUM_MFCC:
        return "features", dims
    if len(dims) >= 1 and dims[-1] == CLIP_SAMPLES and count == CLIP_SAMPLES:
        return "audio", dims
    raise StreamError(f"model input {name!r} has shape {list(shape)}; the streaming detector feeds MFCC features "
                      f"{list(FEATURE_SHAPE)} (49 frames × 10 coefficients) or raw audio {list(RAW_SHAPE)} "
                      f"(1 s at {SAMPLE_RATE} Hz)")


class ModelRunner:
    """A model behind one call: ``run(batch)`` with ``batch`` [B, *shape] float32 -> outputs [B, classes].
    ``kind`` is "features" or "audio" (what the model's input wants), ``shape`` its per-example shape."""

    kind: str
    shape: tuple[int, ...]
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - each runner defines it
        raise NotImplementedError


class TorchRunner(ModelRunner):
    """A torch module (eval mode, no grad) on MFCC features [1,1,49,10] or raw audio [1,16000]: ``kind``
    "features" / "audio", or None to try features first, then audio (e.g. kws.frontend.AudioModel)."""

    def __init__(self, module, kind: str | None = None, name: str = "torch module"):
        import torch

        self.torch, self.module, self.name = torch, module.eval(), name
        errors = []
        for self.kind, self.shape in (("features", FEATURE_SHAPE), ("audio", RAW_SHAPE)):
            if kind not in (None, self.kind):
                continue
            try:
                with torch.no_grad():
                    out = module(torch.zeros(self.shape))
                break
            except (RuntimeError, ValueError, EdgepackError) as exc:
                errors.append(f"{self.kind} {list(self.shape)}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        else:
            raise StreamError(f"{name} takes neither MFCC features {list(FEATURE_SHAPE)} nor raw audio "
                              f"{list(RAW_SHAPE)} ({'; '.join(errors)})")
        if out.ndim != 2 or out.shape[0] != 1:
            raise StreamError(f"{name} gives output shape {list(out.shape)}; want [1, classes]")

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            return self.module(x.reshape(len(batch), *self.shape[1:])).numpy()


class OnnxRunner(ModelRunner):
    """An .onnx file in ONNX Runtime with edgepack's custom ops (runtime_kernels.onnx_session)."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        from edgepack.runtime_kernels import onnx_session

        self.name = str(path)
        self.session = onnx_session(path, threads=threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise StreamError(f"{path}: the model has {len(inputs)} inputs; the detector feeds exactly one")
        self.input_name = inputs[0].name
        self.kind, self.shape = _input_kind(f"{path}: {inputs[0].name}", inputs[0].shape)
        first = inputs[0].shape[0] if inputs[0].shape else 1
        self.batched = not (isinstance(first, int) and first > 0)  # a dynamic batch dimension

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, np.float32)
        if self.batched:
            return self.session.run(None, {self.input_name: x.reshape(len(x), *self.shape[1:])})[0]
        return np.concatenate([self.session.run(None, {self.input_name: row.reshape(self.shape)})[0].reshape(1, -1)
                               for row in x])


class TfliteRunner(ModelRunner):
    """A .tflite file in LiteRT / tflite-runtime with edgepack's delegate (runtime_kernels.tflite_interpreter);
    int8/uint8 inputs and outputs are (de)quantized with the tensors' scale and zero point."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        from edgepack.runtime_kernels.tflite_runtime import tflite_interpreter

        self.name = str(path)
        self.interp = tflite_interpreter(path, threads=threads)
        inputs = self.interp.get_input_details()
        if len(inputs) != 1:
            raise StreamError(f"{path}: the model has {len(inputs)} inputs; the detector feeds exactly one")
        self.input, self.output = inputs[0], self.interp.get_output_details()[0]
        self.kind, self.shape = _input_kind(f"{path}: {self.input['name']}", list(self.input["shape"]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for row in np.asarray(batch, np.float32):
            self.interp.set_tensor(self.input["index"], _quantize(row.reshape(self.input["shape"]), self.input))
            self.interp.invoke()
            rows.append(_dequantize(self.interp.get_tensor(self.output["index"]), self.output).reshape(1, -1))
        return np.concatenate(rows)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if x.dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    return (x.astype(np.float32) - zero) * scale


def load_runner(model, kind: str | None = None, threads: int = 1) -> ModelRunner:
    """A ModelRunner for ``model``: a runner, a torch module, or a path to .onnx / .tflite / an edgepack
    checkpoint (.safetensors as ``kws train`` writes, or a torch.save .pt/.pth of save_checkpoint); ``kind``
    (onnx, tflite, torch) overrides the suffix."""
    if isinstance(model, ModelRunner):
        return model
    if not isinstance(model, (str, os.PathLike)):
        return TorchRunner(model)
    path = Path(model)
    if not path.is_file():
        raise StreamError(f"model {path} does not exist (want an .onnx, .tflite, .safetensors or torch .pt file)")
    suffixes = {".onnx": "onnx", ".tflite": "tflite", ".pt": "torch", ".pth": "torch", ".safetensors": "torch"}
    kind = (kind or suffixes.get(path.suffix.lower(), "")).lower()
    if kind == "onnx":
        return OnnxRunner(path, threads)
    if kind == "tflite":
        return TfliteRunner(path, threads)
    if kind == "torch":
        return TorchRunner(_load_torch(path), name=str(path))
    raise StreamError(f"cannot tell what kind of model {path} is: use a .onnx, .tflite, .safetensors or .pt file, "
                      "or --model-kind onnx|tflite|torch")


def _load_torch(path: Path):
    """A torch module from the edgepack checkpoint ``path`` (.safetensors or a torch.save .pt/.pth, read
    with weights_only=True); StreamError for anything else: a pickled module could run code."""
    from edgepack.compression import load_checkpoint

    if path.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise StreamError(f"{path}: a torch model must be an edgepack checkpoint (.safetensors, or a .pt/.pth "
                          "written by edgepack's save_checkpoint); export other models to ONNX or TFLite")
    try:
        return load_checkpoint(path)
    except EdgepackError as error:
        raise StreamError(f"{path}: not an edgepack checkpoint ({error}); pickled torch modules are not loaded "
                          "(they can run code): save it with edgepack.compression.save_checkpoint or export it "
                          "to ONNX or TFLite") from None


# ---- the front end ---------------------------------------------------------------------------------

def default_frontend() -> Callable[[np.ndarray], np.ndarray]:
    """MFCC of audio [B, N] float32 -> [B, frames, 10] numpy, from kws.frontend (the torch definition)."""
    import torch

    from .frontend import mfcc

    def frontend(audio: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return mfcc(torch.from_numpy(np.ascontiguousarray(audio, np.float32))).numpy()
    return frontend


def stream_features(audio: np.ndarray, frontend: Callable | None = None, chunk_frames: int = 49) -> np.ndarray:
    """MFCC frames [F, 10] of a whole stream, frame k over samples [320k, 320k + 480): computed a second
    at a time (``chunk_frames`` frames per call) so the front end only ever sees 1 s clips."""
    frontend = frontend or default_frontend()
    audio = np.asarray(audio, np.float32).reshape(-1)
    total = 0 if len(audio) < WINDOW_SAMPLES else 1 + (len(audio) - WINDOW_SAMPLES) // STRIDE_SAMPLES
    out = np.zeros((total, NUM_MFCC), np.float32)
    span = max((chunk_frames - 1) * STRIDE_SAMPLES + WINDOW_SAMPLES, CLIP_SAMPLES)
    starts = list(range(0, total, chunk_frames))
    clips = np.zeros((len(starts), span), np.float32)
    for i, k in enumerate(starts):
        piece = audio[k * STRIDE_SAMPLES:k * STRIDE_SAMPLES + span]
        clips[i, :len(piece)] = piece
    for b in range(0, len(clips), 64):
        feats = np.asarray(frontend(clips[b:b + 64]))
        for i, k in enumerate(starts[b:b + 64]):
            n = min(chunk_frames, total - k)
            out[k:k + n] = feats[i, :n]
    return out


MAX_HOP_MS = NUM_FRAMES * STRIDE_SAMPLES * 1000 // SAMPLE_RATE  # 980: a hop renews at most the 49 frames


def _check_hop(hop_ms) -> int:
    """The hop in samples; StreamError unless ``hop_ms`` is a multiple of 20 ms that leaves the new
    samples inside whole MFCC frames of the one-second window (20 to 980 ms)."""
    if not (isinstance(hop_ms, (int, np.integer)) and 0 < hop_ms <= MAX_HOP_MS and hop_ms % 20 == 0):
        raise StreamError(f"hop_ms must be a multiple of the 20 ms MFCC stride from 20 to {MAX_HOP_MS}, got {hop_ms}")
    return int(hop_ms) * SAMPLE_RATE // 1000


class StreamingDetector:
    """Runs the front end every ``hop_ms`` and the model on the last second; ``feed`` returns detections.

    The stream starts with a second of silence in the ring buffer (as a device that just booted), so
    the first hop already runs the model. Each hop computes only the MFCC frame that became complete
    (the window's newest frame, samples [T-640, T-160) when T samples have arrived) and shifts the
    49×10 feature window, which equals the full recompute of the buffer. Without a ``recognizer``, the
    settings come from the detector.json beside a model file (``recognizer_for``), else micro_speech's.
    """

    def __init__(self, model_runner, hop_ms: int = 20, recognizer: RecognizeCommands | None = None,
                 frontend: Callable | None = None, model_kind: str | None = None, keep_posteriors: bool = False):
        self.hop = _check_hop(hop_ms)
        self.recognizer = recognizer or recognizer_for(model_runner)
        self.runner = load_runner(model_runner, model_kind)
        self.frontend = frontend or default_frontend()
        self.ring = np.zeros(CLIP_SAMPLES, np.float32)
        self.features = stream_features(self.ring, self.frontend)
        self.pending = np.zeros(0, np.float32)
        self.samples = 0  # samples received so far
        self.posteriors: list[tuple[float, np.ndarray]] = []  # (time ms, scores) per hop with keep_posteriors
        self.keep_posteriors = keep_posteriors

    def feed(self, audio: np.ndarray) -> list[Detection]:
        """Add float32 samples in [-1, 1]; runs one model call per complete hop; the new detections."""
        self.pending = np.concatenate([self.pending, np.asarray(audio, np.float32).reshape(-1)])
        found = []
        while len(self.pending) >= self.hop:
            hop, self.pending = self.pending[:self.hop], self.pending[self.hop:]
            self.samples += self.hop
            self.ring = np.concatenate([self.ring[self.hop:], hop])
            self._update_features(self.hop // STRIDE_SAMPLES)
            detection = self._step()
            if detection:
                found.append(detection)
        return found

    def _update_features(self, new_frames: int) -> None:
        """Shift the feature window by ``new_frames`` rows and compute those frames from the ring."""
        end = (NUM_FRAMES - 1) * STRIDE_SAMPLES + WINDOW_SAMPLES  # 15840: the newest frame's end in the ring
        start = end - WINDOW_SAMPLES - (new_frames - 1) * STRIDE_SAMPLES
        fresh = np.asarray(self.frontend(self.ring[None, start:end]))[0]
        self.features = np.concatenate([self.features[new_frames:], fresh[-new_frames:]])

    def _step(self) -> Detection | None:
        x = self.features if self.runner.kind == "features" else self.ring
        scores = to_posteriors(self.runner.run(x[None]))[0]
        time_ms = self.samples * 1000.0 / SAMPLE_RATE
        if self.keep_posteriors:
            self.posteriors.append((time_ms, scores))
        return self.recognizer.process(scores, time_ms)


def detect_stream(model, audio: np.ndarray, recognizer: RecognizeCommands | None = None, hop_ms: int = 20,
                  frontend: Callable | None = None, batch: int = 256, progress: Callable[[int], None] | None = None,
                  model_kind: str | None = None) -> tuple[list[Detection], np.ndarray, np.ndarray]:
    """The detections of ``StreamingDetector`` on a whole recording, computed in batches (one MFCC pass,
    the model on many windows per call): (detections, hop times in s, posteriors [hops, classes]); the
    recognizer defaults as StreamingDetector's.
    ``progress(n)`` is called with the hops done after each batch."""
    recognizer = recognizer or recognizer_for(model)
    runner = load_runner(model, model_kind)
    frontend = frontend or default_frontend()
    hop = _check_hop(hop_ms)
    audio = np.asarray(audio, np.float32).reshape(-1)
    hops = len(audio) // hop
    padded = np.concatenate([np.zeros(CLIP_SAMPLES, np.float32), audio[:hops * hop]])
    feats = stream_features(padded, frontend) if runner.kind == "features" else None
    step = hop // STRIDE_SAMPLES
    posteriors = np.zeros((hops, len(recognizer.labels)), np.float64)
    for b in range(0, hops, batch):
        idx = range(b, min(hops, b + batch))
        if feats is not None:
            x = np.stack([feats[(i + 1) * step:(i + 1) * step + NUM_FRAMES] for i in idx])
        else:
            x = np.stack([padded[(i + 1) * hop:(i + 1) * hop + CLIP_SAMPLES] for i in idx])
        posteriors[b:b + len(idx)] = to_posteriors(runner.run(x))
        if progress:
            progress(b + len(idx))
    times = (np.arange(hops) + 1) * hop / SAMPLE_RATE
    detections = [d for t, p in zip(times, posteriors) if (d := recognizer.process(p, t * 1000.0))]
    return detections, times, posteriors
