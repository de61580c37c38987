"""kws data: the Speech Commands loader on a hand-made tree, augmentation, and the generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.io import wavfile

from edgepack.kws.labels import CLASSES, CLIP_SAMPLES
from edgepack.kws.speech_commands import DatasetError, list_split, load_split

SPEAKERS = {"aaaa1111": "train", "bbbb2222": "validation", "cccc3333": "test"}
WORDS = {"yes": 3, "no": 3, "stop": 2, "cat": 4, "dog": 4}  # clips per speaker; cat/dog are unknown


def _clip(word: str, speaker: str, n: int, length: int = CLIP_SAMPLES) -> np.ndarray:
    """A clip whose first sample encodes (word, speaker, n) so a test can tell clips apart."""
    rng = np.random.default_rng(abs(hash((word, speaker, n))) % 2 ** 32)
    x = np.round(rng.uniform(-0.3, 0.3, length) * 32767).astype(np.int16)
    x[0] = 1000 * list(WORDS).index(word) + 100 * list(SPEAKERS).index(speaker) + n
    return x


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A Speech Commands tree: 3 speakers (one per split), keywords and other words, 2 noises."""
    root = tmp_path_factory.mktemp("sc")
    lists = {"validation": [], "test": []}
    for word, count in WORDS.items():
        (root / word).mkdir()
        for speaker, split in SPEAKERS.items():
            for n in range(count):
                length = {0: CLIP_SAMPLES, 1: CLIP_SAMPLES // 2}.get(n, CLIP_SAMPLES + 4000)
                wavfile.write(root / word / f"{speaker}_nohash_{n}.wav", 16000, _clip(word, speaker, n, length))
                if split in lists:
                    lists[split].append(f"{word}/{speaker}_nohash_{n}.wav")
    (root / "validation_list.txt").write_text("\n".join(lists["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    (root / "_background_noise_").mkdir()
    for i, seconds in enumerate((1.5, 2.0)):  # ramps: a value tells its position, so a cut can be located
        n = int(seconds * 16000)
        ramp = (np.arange(n) + 1) / n * 0.9 * (1 if i == 0 else -1)
        wavfile.write(root / "_background_noise_" / f"noise{i}.wav", 16000, ramp.astype(np.float32))
    return root


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_loader_labels_speakers_and_padding(tree, split):
    data = load_split(tree, split, unknown_fraction=0.25, silence_fraction=0.5, seed=3)
    speaker = next(s for s, sp in SPEAKERS.items() if sp == split)
    n_known = WORDS["yes"] + WORDS["no"] + WORDS["stop"]
    n_unknown, n_silence = math.ceil(0.25 * n_known), math.ceil(0.5 * n_known)
    assert data.audio.shape == (n_known + n_unknown + n_silence, CLIP_SAMPLES) and data.audio.dtype == np.float32
    assert data.labels.dtype == np.int64
    counts = np.bincount(data.labels, minlength=len(CLASSES))
    for word in ("yes", "no", "stop"):
        assert counts[CLASSES.index(word)] == WORDS[word]
    assert counts[CLASSES.index("unknown")] == n_unknown and counts[CLASSES.index("silence")] == n_silence
    assert counts.sum() == len(data)
    assert set(data.speakers) == {speaker, "_silence_"}
    assert len(data.background) == 2
    for row, label, path in zip(data.audio, data.labels, data.paths):
        if not path:
            continue
        word, name = path.split("/")
        n = int(name.split("_")[-1][:-4])
        assert CLASSES[label] == (word if word in ("yes", "no", "stop") else "unknown")
        _, written = wavfile.read(tree / path)
        expected = np.zeros(CLIP_SAMPLES)
        kept = written[:CLIP_SAMPLES] / 32768.0
        expected[:len(kept)] = kept
        np.testing.assert_allclose(row, expected, atol=1e-7)
        assert (n == 1) == (row[CLIP_SAMPLES // 2:] == 0).all()


def test_silence_is_cut_from_background_at_a_gain(tree):
    data = load_split(tree, "train", silence_fraction=1.0, seed=0)
    silence = data.audio[data.labels == 0]
    assert len(silence) == 8
    for clip in silence:
        noise = next(b for b in data.background if np.sign(b[0]) == np.sign(clip[0]) or clip[0] == 0)
        step = noise[1] - noise[0]
        gain = (float(clip[-1]) - float(clip[0])) / ((CLIP_SAMPLES - 1) * step)
        assert 0 <= gain <= 1
        if gain > 1e-3:
            start = int(round(clip[0] / gain / step)) - 1
            np.testing.assert_allclose(clip, gain * noise[start:start + CLIP_SAMPLES], atol=1e-5)
    assert np.ptp([np.abs(c).max() for c in silence]) > 0.05  # random gains, not one level


def test_loader_is_deterministic_and_capped(tree):
    a = load_split(tree, "train", seed=5, unknown_fraction=1.0, max_per_class=2)
    b = load_split(tree, "train", seed=5, unknown_fraction=1.0, max_per_class=2)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert np.bincount(a.labels).max() == 2
    c = load_split(tree, "train", seed=6, unknown_fraction=1.0)
    assert not np.array_equal(a.audio[-1], c.audio[-1])


def test_without_lists_each_speaker_lands_in_one_split(tree, tmp_path):
    for word in WORDS:
        (tmp_path / word).mkdir()
        for f in (tree / word).iterdir():
            (tmp_path / word / f.name).write_bytes(f.read_bytes())
    seen = {}
    for split in ("train", "validation", "test"):
        for _, rel in list_split(tmp_path, split):
            speaker = rel.split("/")[1].split("_nohash_")[0]
            assert seen.setdefault(speaker, split) == split
    assert len(seen) == 3


def test_loader_errors(tree, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "missing", "train")
    with pytest.raises(DatasetError, match="no word folders"):
        load_split(tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_split(tree, "dev")
    (tmp_path / "cat").mkdir()
    wavfile.write(tmp_path / "cat" / "x_nohash_0.wav", 16000, np.zeros(100, np.int16))
    with pytest.raises(DatasetError, match="the train split has no clips of the keywords"):
        load_split(tmp_path, "train")


def test_augment_shift_is_bounded():
    from edgepack.kws.augment import Augmenter

    clips = np.zeros((400, CLIP_SAMPLES), np.float32)
    clips[:, 8000] = 1.0
    out = Augmenter([], seed=1)(clips)
    moved = out.argmax(axis=1) - 8000
    assert np.abs(moved).max() <= 1600 and moved.min() < -1000 and moved.max() > 1000
    np.testing.assert_array_equal(out.max(axis=1), 1.0)  # shifted, not scaled


def test_augment_background_volume_and_probability():
    from edgepack.kws.augment import Augmenter

    noise = np.random.default_rng(0).uniform(-1, 1, 3 * CLIP_SAMPLES).astype(np.float32)
    out = Augmenter([noise], seed=2)(np.zeros((500, CLIP_SAMPLES), np.float32))
    peak = np.abs(out).max(axis=1)
    assert peak.max() <= 0.1 + 1e-6
    assert 0.7 < np.mean(peak > 0) < 0.9  # noise added with probability 0.8
    np.testing.assert_array_equal(Augmenter([noise], seed=2)(np.zeros((500, CLIP_SAMPLES), np.float32)), out)


def test_augment_snr_and_band_limit():
    from edgepack.kws.augment import Augmenter, band_limit

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(2 * CLIP_SAMPLES).astype(np.float32) * 0.1
    clean = (0.3 * np.sin(2 * np.pi * 500 * np.arange(CLIP_SAMPLES) / 16000)).astype(np.float32)
    aug = Augmenter([noise], seed=3, shift_ms=0, background_probability=1.0, snr_db=(10, 20))
    for noisy in aug(np.tile(clean, (20, 1))):
        snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
        assert 10 - 0.01 <= snr <= 20 + 0.01
    t = np.arange(CLIP_SAMPLES) / 16000
    for freq, passes in ((40, False), (1000, True), (7900, False)):
        tone = np.sin(2 * np.pi * freq * t).astype(np.float32)
        ratio = np.std(band_limit(tone, rng)[4000:]) / np.std(tone[4000:])
        assert (ratio > 0.8) if passes else (ratio < 0.3)


def _tree_hash(root) -> str:
    """SHA-256 over every file's relative path and bytes (the manifest's timing excluded)."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "edgepack_data.json":
            manifest = json.loads(data)
            manifest.pop("seconds")
            data = json.dumps(manifest, sort_keys=True).encode()
        digest.update(str(path.relative_to(root)).encode() + b"\0" + data)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The --quick dataset for seed 0."""
    from edgepack.kws.generate import generate

    out = tmp_path_factory.mktemp("quick") / "data"
    generate(out, size="quick", seed=0, progress=False)
    return out


def test_generate_is_deterministic_and_resumes_a_partial_run(quick, tmp_path):
    from edgepack.kws.generate import PARTIAL, generate

    other = tmp_path / "again"
    (other / "yes").mkdir(parents=True)
    (other / "yes" / "stray_nohash_0.wav").write_bytes(b"left by an interrupted run")
    (other / PARTIAL).write_text("")
    generate(other, size="quick", seed=0, progress=False)
    assert not (other / PARTIAL).exists() and not (other / "yes" / "stray_nohash_0.wav").exists()
    assert _tree_hash(other) == _tree_hash(quick)


def test_generated_splits_are_held_out_by_voice_with_every_class(quick):
    speakers = {}
    for split in ("train", "validation", "test"):
        data = load_split(quick, split)
        assert (np.bincount(data.labels, minlength=len(CLASSES)) > 0).all(), split
        assert set(data.speakers) - {"_silence_"} <= {r.split("/")[1].split("_nohash_")[0]
                                                       for _, r in list_split(quick, split)}
        speakers[split] = {rel.split("/")[1].split("_nohash_")[0] for _, rel in list_split(quick, split)}
        voices = {s.split("+")[0] for s in speakers[split]}
        assert len(voices) >= 3, f"{split}: only accents {voices}"
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    timbres = {split: {s.split("+")[1] for s in names} for split, names in speakers.items()}
    assert not timbres["train"] & (timbres["validation"] | timbres["test"])  # an espeak variant in one split
    assert not timbres["validation"] & timbres["test"]
    listed = (quick / "validation_list.txt").read_text().split() + (quick / "testing_list.txt").read_text().split()
    assert all(((quick / rel).exists() and rel.split("/")[1].split("_nohash_")[0] in
                speakers["validation"] | speakers["test"]) for rel in listed)


def test_background_babble_mixes_train_voices_only():
    from edgepack.kws.generate import plan

    jobs = plan(0, "small")  # (planning only) enough clips that every voice of each split is used
    train = {job.voice for job in jobs if job.split == "train"}
    babble = [job for job in jobs if job.kind == "babble"]
    assert len(babble) == 1 and babble[0].voices and set(babble[0].voices) <= train
    held_out = {job.voice.split("+")[1] for job in jobs if job.split in ("validation", "test")}
    assert not {voice.split("+")[1] for voice in babble[0].voices} & held_out


def test_generated_clips_are_one_second_16_bit_mono(quick):
    from edgepack.kws.generate import UNKNOWN_WORDS

    clips = sorted(quick.glob("*/*.wav"))
    words = {p.parent.name for p in clips} - {"_background_noise_"}
    assert set(CLASSES[2:]) <= words and words - set(CLASSES[2:]) <= set(UNKNOWN_WORDS)
    for path in clips:
        rate, data = wavfile.read(path)
        assert rate == 16000 and data.dtype == np.int16 and data.ndim == 1
        if path.parent.name == "_background_noise_":
            assert len(data) == 10 * 16000 and np.abs(data).max() > 0.3 * 32767
        else:
            assert len(data) == CLIP_SAMPLES and np.abs(data).max() >= 0.29 * 32767


def test_generate_cache_and_refusals(quick, tmp_path, capsys):
    from edgepack.cli import main
    from edgepack.kws.generate import MANIFEST, DataError, generate

    stamp = (quick / MANIFEST).stat().st_mtime_ns
    assert main(["kws", "data", "-o", str(quick), "--quick"]) == 0
    assert "up to date" in capsys.readouterr().out and (quick / MANIFEST).stat().st_mtime_ns == stamp
    assert main(["kws", "data", "-o", str(quick), "--quick", "--seed", "1"]) == 2
    assert "made with seed 0 and size 'quick'" in capsys.readouterr().err
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(DataError, match="not empty"):
        generate(tmp_path, size="quick")
    with pytest.raises(DataError, match="is a file"):
        generate(tmp_path / "mine.txt", size="quick")
    with pytest.raises(DataError, match="unknown size 'huge'"):
        generate(tmp_path / "new", size="huge")


def test_trim_and_long_words():
    from edgepack.kws.synth import MAX_WORD_SECONDS, speak, trim, word_clip

    x = np.zeros(16000, np.float32)
    x[4000:6000] = np.sin(np.arange(2000) * 0.3)
    y = trim(x)
    assert 2000 <= len(y) <= 2000 + 2 * 160 + 320 and np.abs(y).max() == np.abs(x).max()
    rng = np.random.default_rng(0)
    spoken = len(trim(speak("seventy seven", "en-us+m3", 140, 50))) / 16000
    assert 1.0 < spoken < 1.5  # too long as spoken: sped up to fit
    clip = word_clip("seventy seven", "en-us+m3", 140, 50, (), rng)
    assert len(clip) == CLIP_SAMPLES and 0.5 * 16000 < len(trim(clip, 0.1)) <= MAX_WORD_SECONDS * 16000 + 320
    assert word_clip("one two three four five six seven eight nine ten", "en-us+m3", 80, 50, (), rng) is None


def test_frequency_scaling_moves_a_tone_and_shortens_the_word_about_its_centre():
    """A 500 Hz tone burst scaled by 1.3: numpy's FFT peak moves to 650 Hz, the burst lasts 1/1.3 as long
    and keeps its centre; 0.8 the other way; the Augmenter draws factors only within its range."""
    from edgepack.kws.augment import Augmenter, scale_frequencies, word_bounds

    t = np.arange(CLIP_SAMPLES) / 16000
    clip = (np.sin(2 * np.pi * 500 * t) * ((t >= 0.3) & (t < 0.7))).astype(np.float32)
    frequencies = np.fft.rfftfreq(CLIP_SAMPLES, 1 / 16000)
    for factor in (1.3, 0.8):
        scaled = scale_frequencies(clip, factor)
        assert scaled.shape == clip.shape and scaled.dtype == np.float32
        assert frequencies[np.abs(np.fft.rfft(scaled)).argmax()] == pytest.approx(500 * factor, abs=2)
        start, end = word_bounds(scaled)
        assert (end - start) == pytest.approx(0.4 * 16000 / factor, rel=0.01)
        assert (start + end) / 2 == pytest.approx(0.5 * 16000, abs=2)
    peaks = []
    aug = Augmenter([], seed=4, shift_ms=0, frequency_scale=(0.9, 1.4))
    for scaled in aug(np.repeat(clip[None], 200, axis=0)):
        peaks.append(frequencies[np.abs(np.fft.rfft(scaled)).argmax()])
    assert 450 - 2 <= min(peaks) < 480 and 680 < max(peaks) <= 700 + 2
    with pytest.raises(Exception, match=r"0.5 <= low <= high <= 2"):
        Augmenter([], frequency_scale=(1.2, 1.1))


def test_train_refuses_bad_voice_augmentation_before_any_work(tmp_path, capsys):
    from edgepack.cli import main
    from edgepack.kws.train import KwsTrainError, train

    with pytest.raises(KwsTrainError, match=r"--frequency-scale must be LO,HI with 0.5 <= LO <= HI <= 2"):
        train(tmp_path / "no-such-data", tmp_path / "run", frequency_scale=(0.3, 1.0))
    with pytest.raises(KwsTrainError, match=r"--random-eq must be in \[0, 1\], got 2"):
        train(tmp_path / "no-such-data", tmp_path / "run", random_eq=2.0)
    with pytest.raises(KwsTrainError, match=r"--formant-warp must be in \[0, 0.5\], got 0.7"):
        train(tmp_path / "no-such-data", tmp_path / "run", formant_warp=0.7)
    for text in ("1.4,0.9", "fast", "0.9"):
        with pytest.raises(SystemExit) as stop:
            main(["kws", "train", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--frequency-scale", text])
        assert stop.value.code == 2 and "--frequency-scale" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_random_equalizer_applies_a_smooth_gain_curve_within_its_range():
    """Tones at 150, 1000 and 3000 Hz through the equalizer: each tone's amplitude (numpy's FFT) changes by the
    gain the drawn control points give at its frequency (linear in log frequency), within -18..+6 dB."""
    from edgepack.kws.augment import EQ_BANDS_HZ, EQ_GAIN_DB, Augmenter, random_equalizer

    t = np.arange(CLIP_SAMPLES) / 16000
    tones = (150, 1000, 3000)
    clip = sum(0.1 * np.sin(2 * np.pi * f * t) for f in tones).astype(np.float32)
    for seed in range(5):
        gains_db = np.random.default_rng(seed).uniform(*EQ_GAIN_DB, len(EQ_BANDS_HZ))
        out = random_equalizer(clip, np.random.default_rng(seed))
        spectrum_in, spectrum_out = np.abs(np.fft.rfft(clip)), np.abs(np.fft.rfft(out))
        for f in tones:
            want = np.interp(np.log(f), np.log(EQ_BANDS_HZ), gains_db)
            assert 20 * np.log10(spectrum_out[f] / spectrum_in[f]) == pytest.approx(want, abs=0.01)
            assert EQ_GAIN_DB[0] <= want <= EQ_GAIN_DB[1]
    with pytest.raises(Exception, match=r"probabilities must be in \[0, 1\]"):
        Augmenter([], equalizer_probability=1.5)


class _Fixed:
    """A stand-in generator whose uniform() returns the given log factors (one per formant knot)."""

    def __init__(self, log_factors):
        self.log_factors = np.asarray(log_factors, dtype=np.float64)

    def uniform(self, low, high, size):
        assert len(self.log_factors) == size and np.all((low <= self.log_factors) & (self.log_factors <= high))
        return self.log_factors


def _mel_position(tone_hz, weights=None):
    """Where a tone's energy lands among the 40 mel bands (the energy-weighted mean band index): one
    Hann-windowed frame, numpy's FFT, the weights."""
    from edgepack.kws.frontend import hann_window, mel_weight_matrix

    frame = np.sin(2 * np.pi * tone_hz * np.arange(480) / 16000) * hann_window(480)
    energy = np.abs(np.fft.rfft(frame, 512)) @ (mel_weight_matrix() if weights is None else weights)
    return float(energy @ np.arange(len(energy)) / energy.sum())


def test_formant_warp_moves_each_formant_range_by_its_own_factor():
    """Through the warped front end a tone at f shows where an unwarped tone at f·s(f) does: with the factor
    0.75 at 1300 Hz and 1 at the other knots, 1300 Hz moves to the band of 975 Hz, 700 Hz and 3500 Hz stay;
    a constant 1.2 moves 1000 Hz to 1200 Hz; the Augmenter draws one warp per clip (none when off), and the
    torch front end applies per-clip weights as numpy does."""
    import torch

    from edgepack.kws.augment import FORMANT_KNOTS_HZ, Augmenter, formant_warp_weights
    from edgepack.kws.frontend import DEFAULT, dct_matrix, hann_window, mel_weight_matrix, mfcc

    f2_down = formant_warp_weights(_Fixed(np.log([1, 1, 0.75, 1, 1])), 0.4)
    assert f2_down.shape == mel_weight_matrix().shape and f2_down.dtype == np.float32
    for tone, seen_as in ((1300, 975), (700, 700), (3500, 3500)):
        assert _mel_position(tone, f2_down) == pytest.approx(_mel_position(seen_as), abs=0.2)
    assert _mel_position(1300) - _mel_position(1300, f2_down) > 3
    wider = formant_warp_weights(_Fixed(np.full(len(FORMANT_KNOTS_HZ), np.log(1.2))), 0.25)
    assert _mel_position(1000, wider) == pytest.approx(_mel_position(1200), abs=0.2)
    assert _mel_position(1000, wider) - _mel_position(1000) > 2
    aug = Augmenter([], seed=5, formant_warp=0.25)
    weights = aug.mel_weights(3)
    assert weights.shape == (3, *mel_weight_matrix().shape) and not np.array_equal(weights[0], weights[1])
    assert Augmenter([], seed=5).mel_weights(3) is None
    audio = np.random.default_rng(6).standard_normal((3, CLIP_SAMPLES)).astype(np.float32) * 0.1
    spectrum = np.abs(np.fft.rfft(audio[:, np.arange(49)[:, None] * 320 + np.arange(480)] * hann_window(480), 512))
    want = np.log(np.einsum("nfb,nbm->nfm", spectrum, weights) + DEFAULT.log_offset) @ dct_matrix()
    np.testing.assert_allclose(mfcc(torch.as_tensor(audio), mel=torch.as_tensor(weights)).numpy(), want, atol=1e-4)
    with pytest.raises(Exception, match=r"formant warp 0.6 must be in \[0, 0.5\]"):
        Augmenter([], formant_warp=0.6)
