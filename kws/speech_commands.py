"""Load a split of a dataset in the Google Speech Commands layout (the real one, a user's own, or the
one ``edgepack kws data`` makes) as 12-class arrays, the way TensorFlow's speech_commands
input_data.py builds them: other words become "unknown", "silence" is cut from the background noise.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.kws.labels import CLASSES, CLIP_SAMPLES, KEYWORDS, SAMPLE_RATE
from edgepack.kws.wav import read_wav

SPLITS = ("train", "validation", "test")
BACKGROUND_DIR = "_background_noise_"
SILENCE_SPEAKER = "_silence_"
_MAX_WAVS_PER_CLASS = 2 ** 27 - 1  # TF's which_set constant


class DatasetError(EdgepackError):
    """A dataset folder that is missing, empty, or has no clips for the requested split."""


@dataclass
class KwsSplit:
    """One split as arrays: ``audio`` float32 [N, 16000], ``labels`` int64 [N] into ``CLASSES``,
    ``speakers`` (one per clip), ``background`` (the noise recordings), ``paths`` (source files;
    "" for silence clips)."""
    audio: np.ndarray
    labels: np.ndarray
    speakers: list[str]
    background: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def speaker_of(path) -> str:
    """The speaker id of a Speech Commands file name: the part before ``_nohash_``."""
    return re.sub(r"_nohash_.*$", "", Path(path).stem)


def which_set(path, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """TF's rule for a file with no list entry: a stable hash of the speaker picks the split."""
    digest = hashlib.sha1(speaker_of(path).encode()).hexdigest()
    percent = (int(digest, 16) % (_MAX_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_WAVS_PER_CLASS)
    if percent < validation_percentage:
        return "validation"
    if percent < validation_percentage + testing_percentage:
        return "test"
    return "train"


def list_split(root, split: str) -> list[tuple[str, str]]:
    """The (word, relative path) of every clip of ``split`` under ``root``, sorted: validation and
    test from validation_list.txt / testing_list.txt, train = the rest (TF's hash rule without lists)."""
    root = _check_root(root)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise DatasetError(f"{root}: no word folders; expected the Speech Commands layout "
                           "<root>/<word>/<speaker>_nohash_<n>.wav")
    lists = {name: root / f for name, f in (("validation", "validation_list.txt"), ("test", "testing_list.txt"))}
    have_lists = any(p.exists() for p in lists.values())
    listed = {name: _read_list(p) if p.exists() else set() for name, p in lists.items()}
    clips = []
    for word in words:
        for wav in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{wav.name}"
            if have_lists:
                where = next((name for name, s in listed.items() if rel in s), "train")
            else:
                where = which_set(rel)
            if where == split:
                clips.append((word, rel))
    return clips


def load_split(root, split: str, *, silence_fraction: float = 0.1, unknown_fraction: float = 0.1,
               seed: int = 0, max_per_class: int | None = None) -> KwsSplit:
    """Load ``split`` ("train" | "validation" | "test") of the Speech Commands tree at ``root``.

    Keywords keep their label; other words become "unknown", sampled to ``unknown_fraction`` of the
    keyword clips; ``silence_fraction`` as many "silence" clips are cut from the background at
    random gains in [0, 1] (zeros if there is no background). ``max_per_class`` caps each class.
    Clips are padded with zeros or cut to 1 s. Deterministic for a given ``seed``."""
    if not (0 <= silence_fraction <= 10 and 0 <= unknown_fraction <= 10):
        raise DatasetError("silence_fraction and unknown_fraction must be in [0, 10], "
                           f"got {silence_fraction} and {unknown_fraction}")
    if max_per_class is not None and max_per_class < 1:
        raise DatasetError(f"max_per_class must be a positive number of clips, got {max_per_class}")
    root = _check_root(root)
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 0])
    clips = list_split(root, split)
    known = [(CLASSES.index(w), rel) for w, rel in clips if w in KEYWORDS]
    others = [rel for w, rel in clips if w not in KEYWORDS]
    if not known:
        raise DatasetError(f"{root}: the {split} split has no clips of the keywords {', '.join(KEYWORDS)} "
                           f"({len(clips)} other clips); check validation_list.txt / testing_list.txt")
    if max_per_class is not None:
        known = _cap(known, max_per_class, rng)
    n_unknown = min(len(others), math.ceil(unknown_fraction * len(known)))
    if max_per_class is not None:
        n_unknown = min(n_unknown, max_per_class)
    unknown = [others[i] for i in sorted(rng.permutation(len(others))[:n_unknown])]
    items = sorted(known + [(CLASSES.index("unknown"), rel) for rel in unknown], key=lambda t: t[1])

    audio = np.zeros((len(items), CLIP_SAMPLES), dtype=np.float32)
    for i, (_, rel) in enumerate(items):
        clip = read_wav(root / rel, SAMPLE_RATE)[:CLIP_SAMPLES]
        audio[i, :len(clip)] = clip
    labels = [label for label, _ in items]
    speakers = [speaker_of(rel) for _, rel in items]
    paths = [rel for _, rel in items]

    background = load_background(root)
    n_silence = math.ceil(silence_fraction * len(known))
    if max_per_class is not None:
        n_silence = min(n_silence, max_per_class)
    silence = silence_clips(background, n_silence, rng)
    return KwsSplit(audio=np.concatenate([audio, silence]),
                    labels=np.array(labels + [CLASSES.index("silence")] * n_silence, dtype=np.int64),
                    speakers=speakers + [SILENCE_SPEAKER] * n_silence, background=background,
                    paths=paths + [""] * n_silence)


def load_background(root) -> list[np.ndarray]:
    """The recordings in ``<root>/_background_noise_/`` (sorted by name), float32 at 16 kHz."""
    folder = Path(root) / BACKGROUND_DIR
    return [read_wav(p, SAMPLE_RATE) for p in sorted(folder.glob("*.wav"))] if folder.is_dir() else []


def silence_clips(background: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` one-second clips cut at random offsets from random ``background`` recordings at random
    gains in [0, 1] (TF's silence); all zeros when there is no background long enough."""
    usable = [b for b in background if len(b) >= CLIP_SAMPLES]
    out = np.zeros((n, CLIP_SAMPLES), dtype=np.float32)
    if not usable:
        return out
    for i in range(n):
        noise = usable[rng.integers(len(usable))]
        start = rng.integers(len(noise) - CLIP_SAMPLES + 1)
        out[i] = noise[start:start + CLIP_SAMPLES] * rng.uniform(0.0, 1.0)
    return out


def _cap(items: list[tuple[int, str]], limit: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """At most ``limit`` items per label, a seeded random choice."""
    out = []
    for label in sorted({label for label, _ in items}):
        group = [t for t in items if t[0] == label]
        out += [group[i] for i in sorted(rng.permutation(len(group))[:limit])]
    return out


def _read_list(path: Path) -> set[str]:
    lines = (line.strip().replace("\\", "/") for line in path.read_text().splitlines())
    return {line.removeprefix("./") for line in lines if line}


def _check_root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist; make one with `edgepack kws data -o {root}` "
                           "or point to a Speech Commands tree")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected a Speech Commands tree <root>/<word>/*.wav")
    return root
