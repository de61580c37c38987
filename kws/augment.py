"""Training-time augmentation for 1 s clips, as MLPerf Tiny's KWS recipe (TF speech_commands): a random
time shift of up to ±100 ms and, with probability 0.8, background noise at a volume up to 0.1;
optionally a target SNR range instead of the volume, a simple synthetic reverb, band-limiting, a
frequency scaling (pitch and formants together, as a shorter or longer vocal tract), a random
equalizer (formants weakened or stressed, as voices differ) and a formant warp (the front end's mel
triangles moved by a different factor at each formant's range, as F1 and F2 differ between speakers)."""

from __future__ import annotations

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.kws.labels import CLIP_SAMPLES, SAMPLE_RATE


class Augmenter:
    """Augment batches of clips [B, 16000] with shift, background noise and the optional effects."""

    def __init__(self, background, seed: int = 0, *, shift_ms: float = 100.0, background_probability: float = 0.8,
                 background_volume: float = 0.1, snr_db: tuple[float, float] | None = None,
                 reverb_probability: float = 0.0, band_limit_probability: float = 0.0,
                 frequency_scale: tuple[float, float] | None = None, equalizer_probability: float = 0.0,
                 formant_warp: float = 0.0):
        """``background``: noise recordings (float arrays, ≥ 1 s to be used); ``snr_db`` (lo, hi) mixes
        the noise at a random SNR against the clip's RMS instead of a random volume; ``frequency_scale``
        (lo, hi): every clip's frequencies scaled by a factor drawn log-uniformly from it;
        ``equalizer_probability``: the share of clips through ``random_equalizer``; ``formant_warp`` (0: off):
        the largest stretch of ``formant_warp_weights``, applied in the front end (``mel_weights``)."""
        self.background = [np.asarray(b, dtype=np.float32) for b in background if len(b) >= CLIP_SAMPLES]
        if not 0 <= background_probability <= 1 or not 0 <= reverb_probability <= 1 \
                or not 0 <= band_limit_probability <= 1 or not 0 <= equalizer_probability <= 1:
            raise EdgepackError("augmentation probabilities must be in [0, 1]")
        if snr_db is not None and snr_db[0] > snr_db[1]:
            raise EdgepackError(f"snr_db range {snr_db} must be (low, high) with low <= high")
        if frequency_scale is not None and not 0.5 <= frequency_scale[0] <= frequency_scale[1] <= 2.0:
            raise EdgepackError(f"frequency scale range {frequency_scale} must be (low, high) with "
                                "0.5 <= low <= high <= 2")
        if not 0 <= formant_warp <= MAX_FORMANT_WARP:
            raise EdgepackError(f"formant warp {formant_warp} must be in [0, {MAX_FORMANT_WARP}]")
        self.formant_warp = formant_warp
        self.shift = int(round(shift_ms * SAMPLE_RATE / 1000))
        self.background_probability = background_probability
        self.background_volume = background_volume
        self.snr_db = snr_db
        self.reverb_probability = reverb_probability
        self.band_limit_probability = band_limit_probability
        self.equalizer_probability = equalizer_probability
        self.log_scale = None if frequency_scale is None else np.log(frequency_scale)
        self.rng = np.random.default_rng(seed)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A new float32 batch: each clip shifted, maybe reverberated and band-limited, plus noise,
        clipped to [-1, 1]. ``rng`` defaults to the augmenter's own seeded generator."""
        rng = self.rng if rng is None else rng
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise EdgepackError(f"augmentation expects a batch [B, samples], got shape {audio.shape}")
        out = np.empty_like(audio)
        for i, clip in enumerate(audio):
            if self.log_scale is not None:
                clip = scale_frequencies(clip, float(np.exp(rng.uniform(*self.log_scale))))
            clip = time_shift(clip, int(rng.integers(-self.shift, self.shift + 1)) if self.shift else 0)
            if rng.random() < self.reverb_probability:
                clip = reverb(clip, rng)
            if rng.random() < self.band_limit_probability:
                clip = band_limit(clip, rng)
            if self.equalizer_probability and rng.random() < self.equalizer_probability:
                clip = random_equalizer(clip, rng)
            if self.background and rng.random() < self.background_probability:
                noise = self._noise(len(clip), rng)
                if self.snr_db is None:
                    clip = clip + noise * rng.uniform(0.0, self.background_volume)
                else:
                    clip = clip + noise * _snr_gain(clip, noise, rng.uniform(*self.snr_db))
            out[i] = np.clip(clip, -1.0, 1.0)
        return out

    def mel_weights(self, n: int, rng: np.random.Generator | None = None):
        """Mel weights [n, bins, mel bins] for the front end (``kws.frontend.mfcc(..., mel=)``), one random
        formant warp per clip; None when the warp is off."""
        if not self.formant_warp:
            return None
        rng = self.rng if rng is None else rng
        return np.stack([formant_warp_weights(rng, self.formant_warp) for _ in range(n)])

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        noise = self.background[int(rng.integers(len(self.background)))]
        start = int(rng.integers(len(noise) - n + 1)) if len(noise) >= n else 0
        return np.resize(noise[start:start + n], n)


def time_shift(clip: np.ndarray, shift: int) -> np.ndarray:
    """``clip`` moved ``shift`` samples later (earlier if negative), zero-padded, same length."""
    out = np.zeros_like(clip)
    if shift >= 0:
        out[shift:] = clip[:len(clip) - shift]
    else:
        out[:shift] = clip[-shift:]
    return out


def scale_frequencies(clip: np.ndarray, factor: float) -> np.ndarray:
    """``clip`` played ``factor`` times faster about its word's centre (every frequency × factor, the word
    factor times shorter), linearly interpolated, zero outside, same length. Aliasing from factor ≤ 1.5
    lands above 4 kHz, outside the MFCC's 20–4000 Hz bands."""
    start, end = word_bounds(clip)
    centre = (start + end) / 2
    positions = centre + (np.arange(len(clip)) - centre) * factor
    return np.interp(positions, np.arange(len(clip)), clip, left=0.0, right=0.0).astype(np.float32)


FORMANT_KNOTS_HZ = np.array([250.0, 700.0, 1300.0, 2200.0, 3500.0])  # about F0, F1, F2, F3 and F4
MAX_FORMANT_WARP = 0.5


def formant_warp_weights(rng: np.random.Generator, amount: float, config=None) -> np.ndarray:
    """The front end's mel weights [bins, mel bins] (float32) seen through a random formant warp: the
    frequency f is moved to f·s(f), s drawn log-uniformly from [1/(1+amount), 1+amount] at each of
    FORMANT_KNOTS_HZ and linear in between (constant outside), kept increasing. Unlike one frequency
    scale, F1 and F2 move by different factors, as they do between speakers (a generalised VTLP,
    Jaitly and Hinton 2013)."""
    from edgepack.kws.frontend import DEFAULT, mel_weight_matrix

    log_factors = rng.uniform(-np.log1p(amount), np.log1p(amount), len(FORMANT_KNOTS_HZ))

    def warp(hz):
        return np.maximum.accumulate(hz * np.exp(np.interp(hz, FORMANT_KNOTS_HZ, log_factors)))
    return mel_weight_matrix(config or DEFAULT, warp).astype(np.float32)


def reverb(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simple room: convolve with exponentially decaying noise (RT60 0.1–0.6 s), mixed 30–70 % wet,
    rescaled to the dry peak."""
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.1, 0.6)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    wet = fftconvolve(clip, ir / np.sqrt(np.sum(ir ** 2)))[:len(clip)]
    mix = rng.uniform(0.3, 0.7)
    out = (1 - mix) * clip + mix * wet
    peak = np.abs(out).max()
    return (out * (np.abs(clip).max() / peak) if peak > 0 else out).astype(np.float32)


EQ_BANDS_HZ = np.geomspace(100.0, 8000.0, 8)  # the equalizer's control points, ~0.9 octave apart
EQ_GAIN_DB = (-18.0, 6.0)


def random_equalizer(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clip`` through a smooth random equalizer: a gain drawn uniformly from EQ_GAIN_DB at each of
    EQ_BANDS_HZ, linear in log frequency between them (flat beyond), applied to the spectrum."""
    gains_db = rng.uniform(*EQ_GAIN_DB, len(EQ_BANDS_HZ))
    frequencies = np.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)
    curve = np.interp(np.log(np.maximum(frequencies, 1.0)), np.log(EQ_BANDS_HZ), gains_db)
    return np.fft.irfft(np.fft.rfft(clip) * 10 ** (curve / 20), len(clip)).astype(np.float32)


def band_limit(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A telephone-like band: a 4th-order Butterworth band-pass, low edge 100–400 Hz, high edge
    2.5–7 kHz."""
    from scipy.signal import butter, sosfilt

    low, high = rng.uniform(100, 400), rng.uniform(2500, 7000)
    sos = butter(4, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, clip).astype(np.float32)


def _snr_gain(clip: np.ndarray, noise: np.ndarray, snr_db: float) -> float:
    """The gain that puts ``noise`` ``snr_db`` below ``clip`` (RMS); 0 for a silent noise, and
    a volume of 0.1 for a silent clip."""
    noise_rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    clip_rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
    if noise_rms == 0:
        return 0.0
    if clip_rms == 0:
        return 0.1
    return clip_rms / noise_rms * 10 ** (-snr_db / 20)


def word_bounds(clip: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) sample within 20 dB of the clip's peak: where the spoken word is; (0, len) if silent."""
    level = np.abs(clip)
    loud = np.nonzero(level >= 0.1 * float(level.max()))[0] if len(level) and level.max() > 0 else []
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(clip))


def fragment(clip: np.ndarray, rng: np.random.Generator, fraction: tuple[float, float] = (0.15, 0.45)) -> np.ndarray:
    """Less than half of the clip's word, at an edge of the window as a stream shows a word arriving or
    leaving: its first part at the end of the window, or its last part at the start."""
    start, end = word_bounds(clip)
    keep = max(1, int((end - start) * rng.uniform(*fraction)))
    if rng.random() < 0.5:
        return time_shift(clip, len(clip) - keep - start)
    return time_shift(clip, -(end - keep))


def word_pair(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A window at a random offset over two clips back to back: the end of one word and the start of the next."""
    both = np.concatenate([first, second])
    offset = int(rng.integers(len(first) // 4, 3 * len(first) // 4 + 1))
    return both[offset:offset + len(first)].copy()


class StreamNegatives:
    """Stream-like "unknown" examples for training a streaming detector: with ``probability`` an example of
    the batch becomes a fragment (< half) of a random keyword clip at the window's edge or the junction of
    two random unknown clips (half each), labelled unknown. ``labels`` index kws.labels.CLASSES."""

    def __init__(self, audio: np.ndarray, labels: np.ndarray, probability: float = 0.2):
        from edgepack.kws.labels import CLASSES, KEYWORDS

        if not 0 <= probability <= 1:
            raise EdgepackError(f"the stream-negative probability must be in [0, 1], got {probability}")
        self.audio, self.probability = audio, probability
        self.unknown = CLASSES.index("unknown")
        labels = np.asarray(labels)
        self.keywords = np.nonzero(labels >= CLASSES.index(KEYWORDS[0]))[0]
        self.unknowns = np.nonzero(labels == self.unknown)[0]

    def __call__(self, clips: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple:
        """(clips, labels) with the chosen examples replaced (new arrays; the inputs are not changed)."""
        clips, labels = np.array(clips, np.float32), np.array(labels)
        for i in np.nonzero(rng.random(len(clips)) < self.probability)[0]:
            if len(self.unknowns) and (rng.random() < 0.5 or not len(self.keywords)):
                a, b = rng.choice(self.unknowns, 2)
                clips[i] = word_pair(self.audio[a], self.audio[b], rng)
            elif len(self.keywords):
                clips[i] = fragment(self.audio[int(rng.choice(self.keywords))], rng)
            else:
                continue
            labels[i] = self.unknown
        return clips, labels
