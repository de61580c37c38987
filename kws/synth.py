"""Speech and noise synthesis for the local keyword-spotting dataset: espeak-ng speaks a word in a
voice (accent + variant) at a speed and pitch, sox applies effects and converts to 16 kHz mono,
numpy trims the word and places it inside one second; noises are generated in numpy."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.kws.labels import CLIP_SAMPLES, SAMPLE_RATE

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "whisper", "Alex", "Andy", "Annie", "Denis", "Gene", "Hugo", "Jacky", "Lee", "Michael",
            "aunty", "belinda", "boris", "david", "ed", "edward", "grandma", "grandpa", "iven",
            "john", "linda", "max", "norbert", "paul", "quincy", "rob", "robert", "steph", "travis", "victor",
            "zac")
MAX_WORD_SECONDS = 0.9  # longer words are sped up with sox tempo; still longer ones are refused
MAX_TEMPO = 1.8  # the most a word is sped up to fit; a word that needs more is refused


class SynthError(EdgepackError):
    """espeak-ng or sox is missing or failed on a clip."""


def check_tools() -> None:
    """Refuse early, with the fix, when espeak-ng or sox is not installed."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SynthError(f"{' and '.join(missing)} not found; install the Debian packages espeak-ng and sox "
                         "(scripts/setup-system.sh does)")


def speak(text: str, voice: str, speed: int = 175, pitch: int = 50, effects: tuple[str, ...] = ()) -> np.ndarray:
    """``text`` spoken by espeak-ng, through the sox ``effects``, as float32 mono at 16 kHz."""
    espeak = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                            capture_output=True, check=False)
    if espeak.returncode != 0 or len(espeak.stdout) < 44:
        raise SynthError(f"espeak-ng failed on {text!r} with voice {voice}: "
                         f"{espeak.stderr.decode(errors='replace').strip() or 'no audio'}")
    sox = subprocess.run(["sox", "-V1", "-D", "-R", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1",
                          "-b", "16", "-e", "signed-integer", "-", *effects],
                         input=espeak.stdout, capture_output=True, check=False)
    if sox.returncode != 0:
        raise SynthError(f"sox failed on {text!r} ({voice}, effects {' '.join(effects)}): "
                         f"{sox.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(sox.stdout[:len(sox.stdout) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def trim(audio: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """``audio`` without the leading and trailing quiet 10 ms frames (peak under ``threshold`` of the
    loudest), keeping one frame of margin each side."""
    frame = SAMPLE_RATE // 100
    n = len(audio) // frame
    if n == 0 or not np.any(audio):
        return audio[:0]
    peaks = np.abs(audio[:n * frame]).reshape(n, frame).max(axis=1)
    loud = np.flatnonzero(peaks >= threshold * peaks.max())
    start, stop = max(loud[0] - 1, 0), min(loud[-1] + 2, n)
    return audio[start * frame:stop * frame]


def word_clip(text: str, voice: str, speed: int, pitch: int, effects: tuple[str, ...],
              rng: np.random.Generator) -> np.ndarray | None:
    """One second with ``text`` spoken at a random place, peak level and faint noise floor; a word
    longer than ``MAX_WORD_SECONDS`` is sped up with sox tempo (at most ``MAX_TEMPO`` times), and
    None is returned when it cannot fit."""
    word = trim(speak(text, voice, speed, pitch, effects))
    limit = int(MAX_WORD_SECONDS * SAMPLE_RATE)
    if len(word) > limit:
        tempo = len(word) / (limit * 0.95)
        if tempo > MAX_TEMPO:
            return None
        word = trim(speak(text, voice, speed, pitch, (*effects, "tempo", "-s", f"{tempo:.3f}")))
    if len(word) > limit or len(word) == 0:
        return None
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float64)
    start = int(rng.integers(0, CLIP_SAMPLES - len(word) + 1))
    clip[start:start + len(word)] = word / np.abs(word).max() * rng.uniform(0.3, 0.9)
    clip += colored_noise("pink", CLIP_SAMPLES, rng) * rng.uniform(0.0, 0.01)
    return np.clip(clip, -1, 1).astype(np.float32)


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white, pink (1/f) or brown (1/f²) noise with peak 1."""
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    else:
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        f[0] = f[1]
        spectrum /= np.sqrt(f) if kind == "pink" else f
        spectrum[f < 20] = 0  # no DC or sub-audio drift
        x = np.fft.irfft(spectrum, n)
    return x / np.abs(x).max()


def hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with decaying odd and even harmonics and a little noise, peak 1."""
    t = np.arange(n) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0])
    x = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
    x = x + 0.05 * rng.standard_normal(n)
    return x / np.abs(x).max()


def babble(n: int, streams: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A crowd: the speech ``streams`` overlaid at random offsets and levels (each looped to ``n``
    samples), peak 1."""
    x = np.zeros(n)
    for speech in streams:
        if len(speech) == 0:
            continue
        looped = np.resize(speech, n + len(speech))
        start = int(rng.integers(len(speech)))
        x += looped[start:start + n] / (np.abs(speech).max() or 1) * rng.uniform(0.5, 1.0)
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x
