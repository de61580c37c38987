"""Detector calibration: the vectorised sweep against RecognizeCommands run setting by setting, the choice
on hand-made posteriors where the right threshold is known (against a brute-force search), detector.json
round trip and refusals, and `kws calibrate` → detector.json → `kws listen` / `kws stream-eval` using it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepack.kws.calibrate import calibrate, choose, grid  # noqa: E402
from edgepack.kws.detector import (  # noqa: E402
    RecognizeCommands,
    StreamError,
    detect_stream,
    load_detector_settings,
    recognizer_for,
    sweep_detections,
    write_detector_settings,
)
from edgepack.kws.frontend import mfcc_numpy  # noqa: E402
from edgepack.kws.labels import CLASSES  # noqa: E402
from edgepack.kws.stream_eval import score  # noqa: E402
from edgepack.kws.wav import write_wav  # noqa: E402

YES, NO = CLASSES.index("yes"), CLASSES.index("no")
HOP_S = 0.02


def brute_force(times, posteriors, setting) -> list:
    """RecognizeCommands fed hop by hop: the reference the sweep must equal."""
    rec = RecognizeCommands(**setting)
    return [d for t, p in zip(times, posteriors) if (d := rec.process(p, t * 1000.0))]


def test_sweep_equals_recognize_commands_setting_by_setting():
    rng = np.random.default_rng(3)
    n = 900
    logits = rng.standard_normal((n, len(CLASSES))) * 1.5
    for start in range(30, n - 40, 110):  # keyword-like bursts of random labels and strengths
        logits[start:start + int(rng.integers(5, 40)), int(rng.integers(2, 12))] += rng.uniform(2, 8)
    posteriors = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    uniform = (np.arange(n) + 1) * HOP_S
    jittered = np.cumsum(rng.choice([0.02, 0.04, 0.1], n))  # runs at uneven intervals
    settings = grid(thresholds=(0.4, 0.6, 0.8), windows_ms=(250.0, 1000.0), minimum_counts=(3, 20),
                    suppressions_ms=(0.0, 1500.0))
    for times in (uniform, jittered):
        fast = sweep_detections(times, posteriors, settings)
        total = 0
        for setting, got in zip(settings, fast):
            want = brute_force(times, posteriors, setting)
            assert [(d.label, d.time_s) for d in got] == [(d.label, d.time_s) for d in want], setting
            np.testing.assert_allclose([d.score for d in got], [d.score for d in want], rtol=0, atol=1e-12)
            total += len(want)
        assert total > 50  # the case exercises detections, suppression and both label kinds


def keyword_stream(strong: int, weak: int, decoys: int):
    """Hand-made posteriors at 20 ms hops: every 4 s a 0.6 s plateau of 'yes' at 0.95 (strong keywords),
    'yes' at 0.83 (weak keywords), or 'no' at 0.87 over an unknown word (decoys: every detection there
    is a false alarm); silence elsewhere. Returns (times, posteriors, truth)."""
    kinds = ["strong"] * strong + ["weak"] * weak + ["decoy"] * decoys
    order = np.random.default_rng(0).permutation(len(kinds))
    seconds = 4.0 * (len(kinds) + 1)
    times = (np.arange(int(round(seconds / HOP_S))) + 1) * HOP_S
    posteriors = np.zeros((len(times), len(CLASSES)))
    posteriors[:, 0] = 1.0
    truth = {"duration_s": seconds, "keywords": [], "unknown": []}
    for slot, k in enumerate(order):
        start = 4.0 * (slot + 1)
        label, value = {"strong": (YES, 0.95), "weak": (YES, 0.83), "decoy": (NO, 0.87)}[kinds[k]]
        on = (times > start + 0.2) & (times <= start + 0.8)
        posteriors[on] = 0.0
        posteriors[on, label] = value
        posteriors[on, 0] = 1.0 - value
        entry = {"label": "yes", "start_s": start, "end_s": start + 1.0, "word_end_s": start + 0.8}
        (truth["unknown"] if kinds[k] == "decoy" else truth["keywords"]).append(entry)
    return times, posteriors, truth


def brute_force_best(times, posteriors, truth, settings, target):
    """The most hits at false alarms per hour <= target, searched with RecognizeCommands and score()."""
    best = None
    for setting in settings:
        result = score(brute_force(times, posteriors, setting), truth)
        if result["false_alarms_per_hour"] <= target and (best is None or result["hits"] > best[0]):
            best = (result["hits"], result["false_alarms"])
    return best


def test_calibration_picks_the_threshold_the_posteriors_call_for():
    from edgepack.kws.stream_eval import sweep

    times, posteriors, truth = keyword_stream(strong=6, weak=4, decoys=3)
    settings = grid(thresholds=(0.7, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.96), windows_ms=(500.0,),
                    minimum_counts=(3,), suppressions_ms=(1500.0,))
    points = sweep(times, posteriors, truth, settings)
    hours = points[0]["non_keyword_hours"]
    # no false alarm allowed: the threshold must sit between the decoys' 0.87 and the strong keywords' 0.95
    # averaged over the 500 ms window (weak keywords are lost below the decoys)
    strict = choose(points, target_fa_per_hour=0.0)
    assert 0.87 <= strict["threshold"] < 0.95 and (strict["hits"], strict["false_alarms"]) == (6, 0)
    assert (strict["hits"], strict["false_alarms"]) == brute_force_best(times, posteriors, truth, settings, 0.0)
    # the three decoys allowed: a threshold under the weak keywords' 0.83 finds all ten
    loose = choose(points, target_fa_per_hour=3 / hours)
    assert loose["threshold"] < 0.83 and (loose["hits"], loose["false_alarms"]) == (10, 3)
    assert (loose["hits"], loose["false_alarms"]) == brute_force_best(times, posteriors, truth, settings, 3 / hours)
    assert choose([p for p in points if p["false_alarms"]], target_fa_per_hour=0.0) is None


def test_settings_file_round_trip_and_refusals(tmp_path):
    rec = RecognizeCommands(threshold=0.86, window_ms=750.0, minimum_count=10, suppression_ms=2000.0)
    path = write_detector_settings(tmp_path / "detector.json", rec, {"hits": 5})
    assert load_detector_settings(path) == rec.settings()
    assert json.loads(path.read_text())["calibration"] == {"hits": 5}
    assert recognizer_for(tmp_path / "model.onnx").settings() == rec.settings()  # found beside the model
    assert recognizer_for(tmp_path / "model.onnx", threshold=0.5).threshold == 0.5  # a flag overrides it
    assert recognizer_for(tmp_path / "elsewhere" / "m.onnx").settings() == RecognizeCommands().settings()
    (tmp_path / "partial.json").write_text('{"threshold": 0.9}')
    assert load_detector_settings(tmp_path / "partial.json") == {**RecognizeCommands().settings(), "threshold": 0.9}
    for text, message in (('{"threshold": "high"}', "'threshold' must be a number"),
                          ('{"minimum_count": 2.5}', "'minimum_count' must be a whole number"),
                          ('{"threshold": 1.5}', "threshold must be within"),
                          ('{"window_ms": -1}', "window_ms must be > 0"),
                          ("[0.8]", "must be a JSON object"), ("{", "not valid JSON")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(StreamError, match=message) as caught:
            load_detector_settings(tmp_path / "bad.json")
        assert "bad.json" in str(caught.value)


class Energy(torch.nn.Module):
    """'yes' when the last half second's MFCC c0 is above ``level``, else silence (logits)."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def forward(self, x):
        z = (x[:, 0, 25:, 0].mean(dim=1, keepdim=True) - self.level) * 2.0
        rest = torch.full_like(z, -10.0)
        return torch.cat([-z, rest, z] + [rest] * 9, dim=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The Energy model as .onnx in its own folder, a 13 s WAV with loud seconds at 2, 6 and 10 s, and a tiny
    Speech Commands tree (loud 'yes' clips, quiet unknown words) with validation and test voices."""
    out = tmp_path_factory.mktemp("calibrate")
    rng = np.random.default_rng(1)
    quiet = mfcc_numpy(rng.standard_normal(16000) * 0.003)[:, 0].mean()
    loud = mfcc_numpy(rng.standard_normal(16000) * 0.3)[:, 0].mean()
    (out / "model").mkdir()
    torch.onnx.export(Energy(float(quiet + loud) / 2).eval(), torch.zeros(1, 1, 49, 10), out / "model" / "toy.onnx",
                      dynamo=False, input_names=["x"])
    audio = (rng.standard_normal(16000 * 13) * 0.003).astype(np.float32)
    for s in (2, 6, 10):
        audio[s * 16000:(s + 1) * 16000] = rng.standard_normal(16000) * 0.3
    write_wav(out / "stream.wav", audio)
    lists = {"validation": [], "testing": []}
    for word, level in (("yes", 0.3), ("bed", 0.004)):
        (out / "data" / word).mkdir(parents=True)
        for n in range(4):
            clip = rng.standard_normal(16000) * 0.002
            clip[400:15600] = rng.standard_normal(15200) * level
            write_wav(out / "data" / word / f"v{n}_nohash_0.wav", clip)
            lists["validation" if n < 2 else "testing"].append(f"{word}/v{n}_nohash_0.wav")
    for name, lines in lists.items():
        (out / "data" / f"{name}_list.txt").write_text("\n".join(lines) + "\n")
    return out


def listen(args, capsys):
    from edgepack.cli import main

    assert main(["kws", "listen", *map(str, args)]) == 0
    captured = capsys.readouterr()
    return [json.loads(line)["time_s"] for line in captured.out.splitlines()], captured.err


def test_listen_uses_the_detector_file_beside_the_model(toy, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(toy / "model", folder)
    model = folder / "toy.onnx"
    found, err = listen([model, toy / "stream.wav"], capsys)
    assert len(found) == 3 and "detector settings from" not in err
    write_detector_settings(folder / "detector.json", RecognizeCommands(threshold=0.999))
    found, err = listen([model, toy / "stream.wav"], capsys)  # nothing reaches 0.999
    assert found == [] and f"detector settings from {folder / 'detector.json'}" in err
    assert len(listen([model, toy / "stream.wav", "--threshold", "0.8"], capsys)[0]) == 3  # the flag wins
    write_detector_settings(tmp_path / "other.json", RecognizeCommands(threshold=0.8, suppression_ms=0.0))
    many, _ = listen([model, toy / "stream.wav", "--detector", tmp_path / "other.json"], capsys)
    assert len(many) > 3  # no suppression: each loud second fires on many hops
    from edgepack.kws.wav import read_wav

    audio = read_wav(toy / "stream.wav")
    assert detect_stream(model, audio)[0] == []  # the Python API picks up detector.json too
    assert len(detect_stream(model, audio, RecognizeCommands())[0]) == 3


def test_calibrate_writes_the_setting_stream_eval_then_uses(toy, tmp_path, capsys):
    from edgepack.cli import main

    folder = tmp_path / "m"
    shutil.copytree(toy / "model", folder)
    model = folder / "toy.onnx"
    settings = grid(thresholds=(0.6, 0.8, 0.95), windows_ms=(500.0, 1000.0), minimum_counts=(3,),
                    suppressions_ms=(1500.0,))
    result = calibrate(model, toy / "data", minutes=1.0, settings=settings, progress=False)
    chosen = result["chosen"]
    assert result["output"] == str(folder / "detector.json") and result["keywords"] > 5
    assert chosen["hit_rate"] == 1.0 and chosen["false_alarms"] == 0
    assert chosen == choose(result["points"], 1.0)
    assert load_detector_settings(folder / "detector.json") == \
        {k: chosen[k] for k in ("threshold", "window_ms", "minimum_count", "suppression_ms")}
    record = json.loads((folder / "detector.json").read_text())["calibration"]
    assert record["split"] == "validation" and record["hits"] == result["keywords"]
    # every point is the brute-force RecognizeCommands result on the same stream
    from edgepack.kws.speech_commands import load_split
    from edgepack.kws.stream_eval import build_stream

    stream = build_stream(load_split(toy / "data", "validation", unknown_fraction=10.0, silence_fraction=0.0,
                                     seed=1), 1.0, 1)
    _, times, posteriors = detect_stream(model, np.round(np.clip(stream.audio, -1, 1) * 32767) / 32768)
    for point in result["points"]:
        want = score(brute_force(times, posteriors, {k: point[k] for k in settings[0]}), stream.truth())
        assert (point["hits"], point["false_alarms"]) == (want["hits"], want["false_alarms"])
    out = tmp_path / "eval"
    from edgepack.runtime_kernels.artifacts import ROOT

    native = (ROOT / "build" / "host" / "ort" / "edgepack_kws_stream").is_file()  # `make kernels` builds it
    assert main(["kws", "stream-eval", str(model), "--data", str(toy / "data"), "--minutes", "0.5",
                 "-o", str(out)] + ["--native"] * native) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert {k: results["detector"][k] for k in settings[0]} == {k: chosen[k] for k in settings[0]}
    if native:  # the C runner got the calibrated settings: the same detections as Python's
        assert results["native"]["same_detections"] and results["hits"] == results["keywords"]


def test_calibrate_refuses_bad_settings_before_any_work(toy, tmp_path, capsys):
    from edgepack.cli import main

    missing = tmp_path / "no-such-data"  # reading it would fail: the settings must be refused first
    with pytest.raises(StreamError, match="--target-fa must be a number >= 0"):
        calibrate(toy / "model" / "toy.onnx", missing, target_fa_per_hour=-1)
    with pytest.raises(StreamError, match="threshold must be within"):
        calibrate(toy / "model" / "toy.onnx", missing, settings=[{"threshold": 2.0}])
    with pytest.raises(StreamError, match="--threads must be a whole number >= 1, got 0"):
        calibrate(toy / "model" / "toy.onnx", missing, threads=0)
    assert main(["kws", "calibrate", str(toy / "model" / "toy.onnx"), "--data", str(missing), "--hop-ms", "30"]) == 2
    assert "hop_ms must be a multiple of the 20 ms" in capsys.readouterr().err


# ---- stream-like negatives for training -----------------------------------------------------------------

def test_fragments_keep_under_half_the_word_at_an_edge():
    from edgepack.kws.augment import fragment, word_bounds, word_pair

    clip = np.zeros(16000, np.float32)
    clip[4000:10000] = np.sin(np.arange(6000) * 0.3) * 0.5 + 0.6  # the "word": 6000 loud samples
    assert word_bounds(clip) == (4000, 10000) and word_bounds(np.zeros(100)) == (0, 100)
    rng = np.random.default_rng(0)
    edges = set()
    for _ in range(40):
        out = fragment(clip, rng)
        nonzero = np.nonzero(out)[0]
        keep = len(nonzero)
        assert 0.15 * 6000 - 1 <= keep <= 0.45 * 6000
        if nonzero[0] == 0:  # the word's last part at the window's start
            np.testing.assert_array_equal(out[:keep], clip[10000 - keep:10000])
            edges.add("start")
        else:  # its first part at the window's end
            assert nonzero[-1] == 15999
            np.testing.assert_array_equal(out[-keep:], clip[4000:4000 + keep])
            edges.add("end")
    assert edges == {"start", "end"}
    first, second = np.full(16000, 1.0, np.float32), np.full(16000, 2.0, np.float32)
    pair = word_pair(first, second, rng)
    ones = int((pair == 1.0).sum())
    assert len(pair) == 16000 and 4000 <= ones <= 12000 and np.all(pair[ones:] == 2.0)


def test_stream_negatives_relabel_the_replaced_examples_only():
    from edgepack.kws.augment import StreamNegatives

    rng = np.random.default_rng(1)
    labels = np.array([YES] * 20 + [CLASSES.index("unknown")] * 5 + [0] * 5)
    audio = (rng.standard_normal((30, 16000)) * 0.1).astype(np.float32)
    audio[:, :3000] = 0.0
    maker = StreamNegatives(audio, labels, probability=0.5)
    clips, got = maker(audio[:20], labels[:20], np.random.default_rng(2))
    changed = np.any(clips != audio[:20], axis=1)
    assert 3 < changed.sum() < 17 and np.array_equal(labels[:20], [YES] * 20)  # the inputs are untouched
    assert np.all(got[changed] == CLASSES.index("unknown")) and np.all(got[~changed] == YES)
    again = maker(audio[:20], labels[:20], np.random.default_rng(2))
    assert np.array_equal(again[0], clips) and np.array_equal(again[1], got)  # deterministic for a generator
    none = StreamNegatives(audio, labels, probability=0.0)(audio[:20], labels[:20], np.random.default_rng(2))
    assert np.array_equal(none[0], audio[:20]) and np.array_equal(none[1], labels[:20])
    with pytest.raises(Exception, match=r"must be in \[0, 1\]"):
        StreamNegatives(audio, labels, probability=1.5)


def test_train_refuses_a_bad_negative_share_before_any_work(tmp_path):
    from edgepack.kws.train import KwsTrainError, train

    with pytest.raises(KwsTrainError, match=r"--stream-negatives must be in \[0, 1\], got 1.5"):
        train(tmp_path / "no-such-data", tmp_path / "run", stream_negatives=1.5)
    assert not (tmp_path / "run").exists()
