"""Streaming detection: RecognizeCommands on hand-made posteriors, the incremental front end against a
full recompute (and the float64 numpy reference), `edgepack kws listen` on a synthetic stream, the
stream-eval metrics on a hand-computed case, the native C runner against the Python detector, and
bad input (empty/truncated WAV, a model whose input does not fit)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepack.kws.detector import (  # noqa: E402
    Detection,
    RecognizeCommands,
    StreamError,
    StreamingDetector,
    detect_stream,
    load_runner,
    to_posteriors,
)
from edgepack.kws.frontend import mfcc_numpy  # noqa: E402
from edgepack.kws.labels import CLASSES  # noqa: E402
from edgepack.kws.stream_eval import build_stream, score, word_end  # noqa: E402
from edgepack.kws.wav import write_wav  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
YES, NO, UNKNOWN = CLASSES.index("yes"), CLASSES.index("no"), CLASSES.index("unknown")
BURSTS = (2, 6, 10)  # seconds where the synthetic stream has a loud second


def onehot(label: int, value: float = 1.0) -> np.ndarray:
    """Scores with ``value`` on ``label`` and the rest spread on silence."""
    p = np.zeros(len(CLASSES))
    p[label] = value
    p[0] += 1.0 - value
    return p


def run(rec: RecognizeCommands, scores, times) -> list[tuple[float, str]]:
    return [(d.time_s * 1000, d.label) for s, t in zip(scores, times) if (d := rec.process(s, t))]


# ---- RecognizeCommands --------------------------------------------------------------------------------

def test_threshold_and_suppression_on_a_steady_keyword():
    times = np.arange(0, 5000, 20)
    # first detection once the results span a quarter window (260 ms), then every time 1500 ms have passed
    assert run(RecognizeCommands(), [onehot(YES, 0.9)] * len(times), times) == \
        [(260, "yes"), (1780, "yes"), (3300, "yes"), (4820, "yes")]
    assert run(RecognizeCommands(), [onehot(YES, 0.79)] * len(times), times) == []
    assert run(RecognizeCommands(threshold=0.7), [onehot(YES, 0.79)] * len(times), times)[0] == (260, "yes")


def test_minimum_count():
    scores = [onehot(YES)] * 3
    assert run(RecognizeCommands(), scores[:2], [0, 300]) == []  # two results, though they span 300 ms
    assert run(RecognizeCommands(), scores, [0, 300, 600]) == [(600, "yes")]
    assert run(RecognizeCommands(minimum_count=4), scores, [0, 300, 600]) == []


def test_window_averaging():
    times = np.arange(0, 3000, 20)
    # every other result is 1.0 (above the threshold) but the window's average is about 0.75
    alternating = [onehot(YES, 1.0 if i % 2 == 0 else 0.5) for i in range(len(times))]
    assert run(RecognizeCommands(), alternating, times) == []
    assert run(RecognizeCommands(), [onehot(YES, 1.0 if i % 2 == 0 else 0.7) for i in range(len(times))], times)
    # "yes" until 480 ms, then "no": "no" averages above 0.8 once 41 of the 51 results in the window
    # are "no" (at 1300 ms); a different label fires within the suppression time of "yes"
    scores = [onehot(YES if t <= 480 else NO) for t in times]
    assert run(RecognizeCommands(), scores, times) == [(260, "yes"), (1300, "no"), (2820, "no")]
    # a 500 ms window forgets sooner: 26 results, "no" needs 21 of them (at 900 ms)
    assert run(RecognizeCommands(window_ms=500), scores, times)[1] == (900, "no")


def test_silence_and_unknown_are_never_reported():
    times = np.arange(0, 3000, 20)
    assert run(RecognizeCommands(), [onehot(UNKNOWN, 0.95)] * len(times), times) == []
    assert run(RecognizeCommands(), [onehot(0, 1.0)] * len(times), times) == []


def test_recognizer_rejects_bad_input():
    rec = RecognizeCommands()
    with pytest.raises(StreamError, match="12 labels"):
        rec.process(np.ones(5), 0)
    rec.process(onehot(YES), 100)
    with pytest.raises(StreamError, match="time order"):
        rec.process(onehot(YES), 50)
    with pytest.raises(StreamError, match="threshold"):
        RecognizeCommands(threshold=200)


def test_posteriors_keep_probabilities_and_softmax_logits():
    p = np.array([[0.1, 0.9] + [0.0] * 10])
    assert np.array_equal(to_posteriors(p), p)
    logits = np.array([[2.0, -1.0] + [0.5] * 10])
    e = np.exp(logits - logits.max())
    np.testing.assert_allclose(to_posteriors(logits), e / e.sum(), rtol=1e-12)


def test_dequantized_int8_softmax_stays_a_distribution():
    """An int8 softmax (scale 1/256, zero point -128) sums to 1 ± a few 1/256: still probabilities."""
    p = np.array([0.9] + [0.1 / 11] * 11)
    dequantized = (np.clip(np.round(p * 256) - 128, -128, 127) + 128) / 256
    assert abs(dequantized.sum() - 1) > 1e-3
    np.testing.assert_allclose(to_posteriors(dequantized[None])[0], dequantized / dequantized.sum(), rtol=1e-12)
    assert to_posteriors(dequantized[None])[0, 0] > 0.9
    far = np.full((1, 12), 0.5)  # in [0, 1] but sums to 6: logits
    np.testing.assert_allclose(to_posteriors(far), np.full((1, 12), 1 / 12), rtol=1e-12)


# ---- a toy model and a synthetic stream -----------------------------------------------------------------

class Energy(torch.nn.Module):
    """'yes' when the last half second's MFCC c0 is above ``threshold``, else silence (logits)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        z = (x[:, 0, 25:, 0].mean(dim=1, keepdim=True) - self.threshold) * 2.0
        rest = torch.full_like(z, -10.0)
        return torch.cat([-z, rest, z] + [rest] * 9, dim=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The Energy model (module and .onnx), a 13 s stream with loud seconds at BURSTS, as WAV and raw PCM."""
    out = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(1)
    quiet = mfcc_numpy(rng.standard_normal(16000) * 0.003)[:, 0].mean()
    loud = mfcc_numpy(rng.standard_normal(16000) * 0.3)[:, 0].mean()
    model = Energy(float(quiet + loud) / 2).eval()
    onnx_path = out / "energy.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 49, 10), onnx_path, dynamo=False, input_names=["x"])
    audio = (rng.standard_normal(16000 * 13) * 0.003).astype(np.float32)
    for s in BURSTS:
        audio[s * 16000:(s + 1) * 16000] = rng.standard_normal(16000) * 0.3
    write_wav(out / "stream.wav", audio)
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return {"module": model, "onnx": onnx_path, "wav": out / "stream.wav", "pcm": pcm, "dir": out,
            "audio": np.frombuffer(pcm, "<i2").astype(np.float32) / 32768}


def test_incremental_front_end_equals_full_recompute(toy):
    rng = np.random.default_rng(5)
    audio = (rng.standard_normal(16000 * 2 + 777) * 0.2).astype(np.float32)
    for hop_ms in (20, 60):
        det = StreamingDetector(toy["module"], hop_ms=hop_ms)
        for start in range(0, len(audio), 999):  # blocks that do not line up with hops
            det.feed(audio[start:start + 999])
            want = mfcc_numpy(det.ring.astype(np.float64))  # the float64 reference on the whole second
            np.testing.assert_allclose(det.features, want, atol=1e-4, rtol=1e-5)
        assert det.samples == len(audio) // det.hop * det.hop


def test_batched_stream_equals_hop_by_hop(toy):
    det = StreamingDetector(toy["module"], keep_posteriors=True)
    fed = [d for i in range(0, len(toy["audio"]), 4000) for d in det.feed(toy["audio"][i:i + 4000])]
    batched, times, posteriors = detect_stream(toy["module"], toy["audio"])
    np.testing.assert_allclose(posteriors, [p for _, p in det.posteriors], atol=1e-5)
    np.testing.assert_allclose(times * 1000, [t for t, _ in det.posteriors])
    assert [d.as_dict() for d in fed] == [d.as_dict() for d in batched] and len(fed) == len(BURSTS)


def test_listen_finds_each_loud_second(toy, capsys, monkeypatch):
    from edgepack.cli import main

    assert main(["kws", "listen", str(toy["onnx"]), str(toy["wav"])]) == 0
    from_file = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["label"] for d in from_file] == ["yes"] * len(BURSTS)
    for d, start in zip(from_file, BURSTS):
        assert start < d["time_s"] <= start + 2 and d["score"] > 0.8
    # the same detections from raw PCM on stdin, and from the torch module through the API
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(toy["pcm"])))
    assert main(["kws", "listen", "--threshold", "0.8", str(toy["onnx"]), "-"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == from_file
    api = detect_stream(toy["module"], toy["audio"])[0]
    assert [d.as_dict() for d in api] == from_file
    # a higher threshold than the averaged scores reach: nothing
    assert main(["kws", "listen", "--threshold", "0.999", str(toy["onnx"]), str(toy["wav"])]) == 0
    assert capsys.readouterr().out == ""


# ---- stream evaluation ------------------------------------------------------------------------------------

def test_metrics_on_a_hand_computed_case():
    truth = {"duration_s": 3603.0, "keywords": [
        {"label": "yes", "start_s": 10.0, "end_s": 11.0, "word_end_s": 10.6},
        {"label": "no", "start_s": 20.0, "end_s": 21.0, "word_end_s": 20.5},
        {"label": "up", "start_s": 30.0, "end_s": 31.0, "word_end_s": 30.7}]}
    detections = [Detection("yes", 11.2, 0.9),   # hit, 0.6 s after the word
                  Detection("yes", 11.5, 0.9),   # the same keyword again: a false alarm
                  Detection("no", 22.5, 0.9),    # 1.5 s after the clip: too late (a miss and a false alarm)
                  Detection("up", 31.9, 0.9),    # hit, 1.2 s after the word
                  Detection("left", 40.0, 0.9)]  # nothing there
    result = score(detections, truth, tolerance_s=1.0)
    assert (result["hits"], result["keywords"], result["false_alarms"]) == (2, 3, 3)
    assert result["hit_rate"] == pytest.approx(2 / 3)
    assert result["non_keyword_hours"] == pytest.approx(1.0)  # 3603 s minus three 1 s clips
    assert result["false_alarms_per_hour"] == pytest.approx(3.0)
    assert result["delay_s"]["median"] == pytest.approx(0.9)
    assert result["delay_s"]["p90"] == pytest.approx(0.6 + 0.9 * 0.6)
    assert [m["label"] for m in result["missed"]] == ["no"]
    assert score(detections, truth, tolerance_s=1.5)["hits"] == 3


class Split:
    """A KwsSplit stand-in: tone clips labelled yes/no and noise clips labelled unknown."""

    def __init__(self):
        t = np.arange(16000) / 16000
        env = ((t > 0.2) & (t < 0.6)).astype(np.float32)
        self.audio = np.stack([np.sin(2 * np.pi * f * t).astype(np.float32) * env * 0.5
                               for f in (300, 500, 700, 900)])
        self.labels = np.array([YES, NO, UNKNOWN, UNKNOWN])
        self.paths = ["yes/a.wav", "no/b.wav", "bed/c.wav", "cat/d.wav"]
        self.background = [np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1]


def test_stream_layout_is_deterministic_and_matches_its_truth():
    split = Split()
    a, b = build_stream(split, minutes=0.5, seed=3), build_stream(split, minutes=0.5, seed=3)
    assert np.array_equal(a.audio, b.audio) and a.keywords == b.keywords
    assert not np.array_equal(a.audio, build_stream(split, minutes=0.5, seed=4).audio)
    assert len(a.audio) == 30 * 16000 and a.keywords and a.unknown
    clips = sorted(a.keywords + a.unknown, key=lambda c: c["start_s"])
    assert all(x["end_s"] <= y["start_s"] for x, y in zip(clips, clips[1:]))  # no overlaps
    for clip in a.keywords:
        i = split.paths.index(clip["source"])
        assert clip["label"] == CLASSES[split.labels[i]]
        assert clip["word_end_s"] == pytest.approx(clip["start_s"] + 0.6, abs=2e-3)
        start = round(clip["start_s"] * 16000)
        segment = a.audio[start:start + 16000]
        # the clip is in the stream at its time: correlation with it dominates the background
        assert np.dot(segment, split.audio[i]) > 0.9 * np.dot(split.audio[i], split.audio[i])
    assert word_end(np.zeros(10)) == 10


# ---- the native C runner -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native():
    from edgepack.runtime_kernels import ort_library_path
    from edgepack.runtime_kernels.artifacts import onnxruntime_library_path

    runner = ROOT / "build" / "host" / "ort" / "edgepack_kws_stream"
    if not runner.is_file():  # pragma: no cover - depends on the build
        pytest.skip(f"{runner} not built (run `make kernels`)")
    return [str(runner), "--ort", str(onnxruntime_library_path()), "--lib", ort_library_path()]


def run_native(argv, stdin=None):
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60)
    return done.returncode, [json.loads(line) for line in done.stdout.decode().splitlines()]


def test_native_runner_agrees_with_python(toy, native):
    want = [d.as_dict() for d in detect_stream(toy["onnx"], toy["audio"])[0]]
    assert len(want) == len(BURSTS)
    for source, stdin in ((str(toy["wav"]), None), ("-", toy["pcm"])):
        rc, got = run_native(native + ["--model", str(toy["onnx"]), source], stdin)
        assert rc == 0
        assert [(d["label"], d["time_s"]) for d in got] == [(d["label"], d["time_s"]) for d in want]
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=2e-4)
    rc, got = run_native(native + ["--model", str(toy["onnx"]), "--bench", str(toy["wav"])])
    assert rc == 0 and got[0]["status"] == "ok" and got[0]["hops"] == len(toy["audio"]) // 320
    assert [d["label"] for d in got[0]["detections"]] == ["yes"] * len(BURSTS)
    assert got[0]["model_ms"]["max"] >= got[0]["model_ms"]["median"] >= 0
    rc, got = run_native(native + ["--model", str(toy["onnx"]), "--threshold", "0.999", str(toy["wav"])])
    assert (rc, got) == (0, [])


# ---- bad input ------------------------------------------------------------------------------------------

def wav_header(rate=16000, channels=1, bits=16, data_bytes=0) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


@pytest.fixture(scope="module")
def bad_files(toy):
    out = toy["dir"]
    files = {"empty": b"", "truncated": wav_header(data_bytes=32000) + b"\0" * 1000, "text": b"hello world\n",
             "stereo": wav_header(channels=2, data_bytes=64000) + b"\0" * 64000,
             "44k": wav_header(rate=44100, data_bytes=8820) + b"\0" * 8820}
    for name, data in files.items():
        (out / f"{name}.wav").write_bytes(data)
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 12)).eval()
    torch.onnx.export(wide, torch.zeros(1, 40), out / "wide.onnx", dynamo=False, input_names=["x"])
    return out


@pytest.mark.parametrize("name, message", [("empty", "empty file"), ("truncated", "truncated"),
                                           ("text", "not a WAV file")])
def test_listen_refuses_bad_wavs(toy, bad_files, capsys, name, message):
    from edgepack.cli import main

    assert main(["kws", "listen", str(toy["onnx"]), str(bad_files / f"{name}.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgepack kws: error:") and message in err and f"{name}.wav" in err


def test_wrong_model_input_is_named(bad_files):
    with pytest.raises(StreamError, match=r"\[1, 40\].*\[1, 1, 49, 10\].*\[1, 16000\]"):
        load_runner(bad_files / "wide.onnx")
    with pytest.raises(StreamError, match=r"neither MFCC features \[1, 1, 49, 10\] nor raw audio \[1, 16000\]"):
        load_runner(torch.nn.Linear(40, 12))
    for hop_ms in (30, 0, 1020, 1000):
        with pytest.raises(StreamError, match="multiple of the 20 ms MFCC stride from 20 to 980"):
            StreamingDetector(Energy(0.0), hop_ms=hop_ms)


def test_longest_hop_equals_the_batched_stream(toy):
    """980 ms (49 new frames, the whole window) is the longest hop; hop by hop equals the batched run."""
    det = StreamingDetector(toy["module"], hop_ms=980, keep_posteriors=True)
    det.feed(toy["audio"])
    want = detect_stream(toy["module"], toy["audio"], hop_ms=980)[2]
    assert len(det.posteriors) == len(want) == len(toy["audio"]) // (980 * 16)
    np.testing.assert_allclose([p for _, p in det.posteriors], want, atol=1e-5)


class Opens:
    """Unpickling this opens (creates) ``marker``: code a pickled checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_torch_files_are_never_unpickled(tmp_path):
    from edgepack.compression import save_checkpoint

    marker = tmp_path / "ran"
    torch.save({"model": Opens(marker)}, tmp_path / "evil.pt")
    with pytest.raises(StreamError, match=r"evil.pt: not an edgepack checkpoint.*pickled torch modules"):
        load_runner(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(StreamError, match="model.bin: a torch model must be an edgepack checkpoint"):
        load_runner(tmp_path / "model.bin", "torch")
    from edgepack.kws.models import build_model

    torch.manual_seed(0)
    model, builder, kwargs = build_model("ds-cnn-s")
    path = save_checkpoint(model.eval(), tmp_path / "ds-cnn.pt", builder, kwargs)
    x = np.random.default_rng(0).standard_normal((3, 1, 49, 10)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_runner(path).run(x), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, message", [("empty", "empty file"), ("truncated", "truncated: the header promises"),
                                           ("text", "not a WAV file"), ("stereo", "2 channel(s)"),
                                           ("44k", "44100 Hz")])
def test_native_runner_refuses_bad_input(toy, native, bad_files, name, message):
    rc, got = run_native(native + ["--model", str(toy["onnx"]), str(bad_files / f"{name}.wav")])
    assert rc == 2 and got[0]["status"] == "error" and message in got[0]["error"]
    assert str(bad_files / f"{name}.wav") in got[0]["error"]


def test_native_runner_names_the_expected_input(toy, native, bad_files):
    rc, got = run_native(native + ["--model", str(bad_files / "wide.onnx"), str(toy["wav"])])
    assert rc == 2 and "[1, 40]" in got[0]["error"] and "[1, 1, 49, 10]" in got[0]["error"]
    rc, got = run_native(native + ["--model", str(toy["onnx"]), "-"], b"\0\0\0")  # half a sample
    assert rc == 2 and "half a sample" in got[0]["error"]


def test_stream_eval_checks_its_settings_before_any_work(toy, tmp_path):
    from edgepack.kws.stream_eval import evaluate

    missing = tmp_path / "no-such-data"  # reading it would fail: the settings must be refused first
    for hop_ms in (0, 30, 1000):
        with pytest.raises(StreamError, match=f"hop_ms must be a multiple of the 20 ms.*got {hop_ms}"):
            evaluate(toy["onnx"], missing, hop_ms=hop_ms, progress=False)
    for model, output in ((toy["onnx"], None), (toy["module"], tmp_path)):
        with pytest.raises(StreamError, match="--native needs an .onnx model and an output folder"):
            evaluate(model, missing, output=output, progress=False, native=True)


def test_stream_eval_end_to_end(toy, tmp_path, capsys, monkeypatch):
    """A tiny Speech Commands tree: 'yes' clips are loud bursts (the toy model's 'yes'), unknown words
    are quiet; every keyword must be hit, nothing else detected, and the sweep agrees at 1000 ms / 0.8."""
    from edgepack.cli import main

    rng = np.random.default_rng(2)
    lines = []
    for word, level in (("yes", 0.3), ("bed", 0.004)):
        (tmp_path / "data" / word).mkdir(parents=True)
        for n in range(3):
            clip = rng.standard_normal(16000) * 0.002
            clip[400:15600] = rng.standard_normal(15200) * level
            write_wav(tmp_path / "data" / word / f"v{n}_nohash_0.wav", clip)
            lines.append(f"{word}/v{n}_nohash_0.wav")
    (tmp_path / "data" / "testing_list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    from edgepack.kws import stream_eval

    seen = []  # the audio the Python detector ran on

    def detect_spy(model, audio, *args, **kwargs):
        seen.append(np.array(audio))
        return detect_stream(model, audio, *args, **kwargs)
    monkeypatch.setattr(stream_eval, "detect_stream", detect_spy)
    assert main(["kws", "stream-eval", str(toy["onnx"]), "--data", str(tmp_path / "data"), "--minutes", "1",
                 "-o", str(out), "--native"]) == 0
    headline = json.loads(capsys.readouterr().out.splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    truth = json.loads((out / "truth.json").read_text())
    assert headline["keywords"] == len(truth["keywords"]) > 5 and truth["unknown"]
    assert headline["hit_rate"] == 1.0 and headline["false_alarms"] == 0
    assert 0 < headline["delay_s"]["median"] < 1.0  # within a second after the burst ends
    point = next(p for p in results["operating_points"] if (p["window_ms"], p["threshold"]) == (1000, 0.8))
    assert (point["hit_rate"], point["false_alarms_per_hour"]) == (1.0, 0.0)
    assert results["native"]["same_detections"] and results["native"]["hops"] == 60 * 50
    from edgepack.kws.wav import read_wav
    assert len(read_wav(out / "stream.wav")) == 60 * 16000
    assert len(seen) == 1 and np.array_equal(seen[0], read_wav(out / "stream.wav"))  # what native reads


def test_tflite_and_onnx_runners_match_torch(toy, tmp_path):
    """The same small model as torch, .onnx (ORT) and .tflite (LiteRT): the same posteriors on a stream."""
    pytest.importorskip("ai_edge_litert")
    from edgepack.exporter import convert_onnx_to_tflite

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(490, 12)).eval()
    torch.onnx.export(model, torch.zeros(1, 1, 49, 10), tmp_path / "linear.onnx", dynamo=False, input_names=["x"])
    convert_onnx_to_tflite(tmp_path / "linear.onnx", tmp_path / "linear.tflite")
    audio = toy["audio"][:16000 * 3]
    want = detect_stream(model, audio)[2]
    for path in ("linear.tflite", "linear.onnx"):
        runner = load_runner(tmp_path / path)
        assert (runner.kind, runner.shape) == ("features", (1, 1, 49, 10))
        np.testing.assert_allclose(detect_stream(runner, audio)[2], want, atol=1e-5)


def test_raw_audio_models(toy, native, tmp_path):
    """The toy model behind the front end (kws.frontend.AudioModel; its ONNX holds an ai.edgepack.MFCC
    node): fed the ring buffer instead of features, the same posteriors in Python and detections in C."""
    from edgepack.exporter.onnx_export import export_onnx
    from edgepack.kws.frontend import AudioModel

    model = AudioModel(toy["module"]).eval()
    export_onnx(model, torch.zeros(1, 16000), tmp_path / "audio.onnx")
    want = detect_stream(toy["module"], toy["audio"])
    for runner in (load_runner(model), load_runner(tmp_path / "audio.onnx")):
        assert (runner.kind, runner.shape) == ("audio", (1, 16000))
        got = detect_stream(runner, toy["audio"])
        np.testing.assert_allclose(got[2], want[2], atol=1e-5)
        assert [d.label for d in got[0]] == [d.label for d in want[0]] == ["yes"] * len(BURSTS)
    rc, got = run_native(native + ["--model", str(tmp_path / "audio.onnx"), str(toy["wav"])])
    assert rc == 0 and [(d["label"], d["time_s"]) for d in got] == [(d.label, d.time_s) for d in want[0]]


# ---- quantized and wrongly shaped models in kws eval ------------------------------------------------------

def int8_linear_tflite(path, weights: np.ndarray, in_scale: float = 0.05) -> Path:
    """A .tflite with int8 input [1, 1, 49, 10] (``in_scale``, zero point 0) -> DEQUANTIZE -> FULLY_CONNECTED
    (``weights`` [classes, 490]) -> SOFTMAX -> QUANTIZE -> int8 output (scale 1/256, zero point -128)."""
    import tflite

    from edgepack.exporter.tflite_writer import Options, TFLiteModelBuilder, _Tensor

    quant = {"in": (in_scale, 0), "out": (1 / 256, -128)}

    class Int8Builder(TFLiteModelBuilder):
        def int8(self, name, shape) -> int:
            self.tensors.append(_Tensor(name, tuple(shape), np.dtype(np.int8), None))
            return len(self.tensors) - 1

        def _tensor(self, b, t, buffer):
            if t.dtype != np.int8:
                return super()._tensor(b, t, buffer)
            scale, zero = quant[t.name]
            name, shape = b.CreateString(t.name), self._int_vector(b, list(t.shape))
            scales = b.CreateNumpyVector(np.array([scale], np.float32))
            zeros = b.CreateNumpyVector(np.array([zero], np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scales)
            tflite.QuantizationParametersAddZeroPoint(b, zeros)
            q = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            tflite.TensorAddType(b, tflite.TensorType.INT8)
            tflite.TensorAddBuffer(b, buffer)
            tflite.TensorAddName(b, name)
            tflite.TensorAddQuantization(b, q)
            return tflite.TensorEnd(b)

    m = Int8Builder()
    op = tflite.BuiltinOperator
    x, out = m.int8("in", (1, 1, 49, 10)), m.int8("out", (1, len(weights)))
    xf, w = m.tensor("x", (1, 1, 49, 10)), m.constant("w", weights.astype(np.float32))
    logits, probs = m.tensor("logits", (1, len(weights))), m.tensor("probs", (1, len(weights)))
    m.operator(op.DEQUANTIZE, [x], [xf])
    m.operator(op.FULLY_CONNECTED, [xf, w], [logits], Options("FullyConnectedOptions", {}))
    m.operator(op.SOFTMAX, [logits], [probs], Options("SoftmaxOptions", {"Beta": 1.0}))
    m.operator(op.QUANTIZE, [probs], [out])
    Path(path).write_bytes(m.serialize([x], [out]))
    return Path(path)


def test_eval_runs_an_int8_tflite_like_numpy(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgepack.kws.evaluate import load_predictor

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((12, 490)) * 0.05
    predictor = load_predictor(int8_linear_tflite(tmp_path / "int8.tflite", weights))
    feats = rng.standard_normal((5, 1, 49, 10)).astype(np.float32) * 2
    x = np.clip(np.round(feats / 0.05), -128, 127) * 0.05
    logits = x.reshape(5, -1) @ weights.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    want = (np.clip(np.round(probs * 256) - 128, -128, 127) + 128) / 256
    assert predictor.kind == "litert"
    np.testing.assert_allclose(predictor(feats), want, rtol=0, atol=1 / 256 + 1e-6)


def test_decode_at_load_takes_only_true_false_or_c(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgepack.errors import EdgepackError
    from edgepack.runtime_kernels import tflite_interpreter

    path = int8_linear_tflite(tmp_path / "int8.tflite", np.zeros((12, 490)))
    for value in ("C", "yes"):
        with pytest.raises(EdgepackError, match=rf"decode_at_load must be True, False or 'c'.*got '{value}'"):
            tflite_interpreter(path, decode_at_load=value)
    assert tflite_interpreter(path, decode_at_load="c").get_output_details()[0]["shape"].tolist() == [1, 12]


@pytest.mark.parametrize("classes", [10, 35])
def test_eval_refuses_a_model_without_12_classes(tmp_path, classes):
    from edgepack.kws.evaluate import load_predictor
    from edgepack.kws.train import KwsTrainError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(490, classes)).eval()
    torch.onnx.export(model, torch.zeros(1, 1, 49, 10), tmp_path / "wrong.onnx", dynamo=False, input_names=["x"])
    with pytest.raises(KwsTrainError, match=rf"wrong.onnx: the model outputs shape \[1, {classes}\]; .* 12 class "
                                            r"scores \(silence, unknown, yes"):
        load_predictor(tmp_path / "wrong.onnx")
