"""``edgepack kws data``: make a 12-class keyword-spotting dataset locally, in the Google Speech Commands
layout, from espeak-ng voices (accent + variant) with sox effects and synthetic background noise.

Splits are held out by voice; everything is a function of (seed, size), and a manifest makes a
rerun with the same arguments a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.kws.labels import KEYWORDS, SAMPLE_RATE

VERSION = 2  # bump when the output for a (seed, size) changes (2: split by espeak variant, babble of train voices)
MANIFEST = "edgepack_data.json"
PARTIAL = "edgepack_data.partial"  # present while a generation is under way or was interrupted
BACKGROUND_DIR = "_background_noise_"
SPLIT_FRACTIONS = (("train", 0.7), ("validation", 0.15), ("test", 0.15))
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
SIZES = {  # clips per keyword, "unknown" clips per keyword clip, seconds of each background noise
    "quick": {"per_keyword": 30, "unknown_ratio": 1.5, "background_seconds": 10},
    "small": {"per_keyword": 250, "unknown_ratio": 1.5, "background_seconds": 30},
    "full": {"per_keyword": 1000, "unknown_ratio": 1.5, "background_seconds": 60},
}
# "unknown": Speech Commands' other words and a few more everyday ones, none a keyword.
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one",
                 "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "backward", "forward", "follow",
                 "learn", "visual", "hello", "water", "music", "light", "table", "green", "apple", "paper",
                 "morning", "window", "coffee", "seventy", "yellow", "number", "garden", "listen", "open",
                 "close", "start", "begin", "maybe", "thanks", "please", "always", "never")
NOISES = ("white", "pink", "brown", "hum", "babble")


class DataError(EdgepackError):
    """An output folder that holds something else, or a bad size/seed for ``edgepack kws data``."""


@dataclass(frozen=True)
class Job:
    """One file to make: a clip of ``text`` by ``voice`` (or a background noise of ``kind``)."""
    path: str  # relative to the output folder
    split: str
    kind: str  # "word" or one of NOISES
    text: str = ""
    voice: str = ""
    speed: int = 175
    pitch: int = 50
    effects: tuple[str, ...] = ()
    seed: int = 0
    seconds: float = 1.0
    voices: tuple[str, ...] = ()  # babble: the voices it may mix (the train split's)


def plan(seed: int, size: str) -> list[Job]:
    """Every file of the dataset for (seed, size), in a fixed order. A voice is an accent + an espeak
    variant (the timbre); each variant, with all its accents, is in one split only, and the
    background babble mixes train voices only: no test speaker is heard in training."""
    from edgepack.kws.synth import ACCENTS, VARIANTS

    if size not in SIZES:
        raise DataError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    spec = SIZES[size]
    rng = np.random.default_rng([seed, VERSION])
    variants = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    n_val = n_test = round(len(variants) * SPLIT_FRACTIONS[1][1])
    parts = {"validation": variants[:n_val], "test": variants[n_val:n_val + n_test],
             "train": variants[n_val + n_test:]}
    by_split = {split: [f"{accent}+{variant}" for variant in part for accent in ACCENTS]
                for split, part in parts.items()}
    n_unknown = round(spec["per_keyword"] * spec["unknown_ratio"])
    jobs: list[Job] = []
    for label, count in [(k, spec["per_keyword"]) for k in KEYWORDS] + [("unknown", n_unknown)]:
        for split, fraction in SPLIT_FRACTIONS:
            split_voices = by_split[split]
            first = int(rng.integers(len(split_voices)))
            for k in range(max(1, round(count * fraction))):
                voice = split_voices[(first + k) % len(split_voices)]
                text = label if label != "unknown" else UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]
                take = (first + k) // len(split_voices)  # (voice, take) is unique within a label
                jobs.append(Job(path=f"{text}/{voice}_nohash_{take}.wav", split=split, kind="word", text=text,
                                voice=voice,
                                speed=int(rng.integers(120, 221)), pitch=int(rng.integers(20, 81)),
                                effects=_effects(rng), seed=int(rng.integers(2 ** 62))))
    for kind in NOISES:
        jobs.append(Job(path=f"{BACKGROUND_DIR}/{kind}_noise.wav", split="background", kind=kind,
                        seed=int(rng.integers(2 ** 62)), seconds=spec["background_seconds"],
                        voices=tuple(by_split["train"]) if kind == "babble" else ()))
    return jobs


def _effects(rng: np.random.Generator) -> tuple[str, ...]:
    """Random sox effects for one clip: pitch shift, reverb, band-limiting, each sometimes."""
    effects: list[str] = []
    if rng.random() < 0.3:
        effects += ["pitch", str(int(rng.integers(-300, 301)))]
    if rng.random() < 0.25:
        effects += ["reverb", str(int(rng.integers(10, 61)))]
    if rng.random() < 0.2:
        effects += ["sinc", f"{int(rng.integers(100, 401))}-{int(rng.integers(3000, 6001))}"]
    return tuple(effects)


def render(job: Job, out: str) -> bool:
    """Make ``job``'s file under ``out``; False when espeak's word could not fit in one second."""
    from edgepack.kws import synth
    from edgepack.kws.wav import write_wav

    rng = np.random.default_rng(job.seed)
    if job.kind == "word":
        audio = synth.word_clip(job.text, job.voice, job.speed, job.pitch, job.effects, rng)
        if audio is None:
            return False
    else:
        n = int(job.seconds * SAMPLE_RATE)
        if job.kind == "hum":
            audio = synth.hum(n, rng)
        elif job.kind == "babble":
            streams = [synth.speak(" ".join(rng.choice(UNKNOWN_WORDS, 12)),
                                   job.voices[int(rng.integers(len(job.voices)))],
                                   int(rng.integers(140, 200)), int(rng.integers(20, 81))) for _ in range(6)]
            audio = synth.babble(n, streams, rng)
        else:
            audio = synth.colored_noise(job.kind, n, rng)
        audio = audio * 0.5
    path = Path(out) / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, audio)
    return True


def _render_batch(jobs: list[Job], out: str) -> list[bool]:
    return [render(job, out) for job in jobs]


def generate(out, *, seed: int = 0, size: str = "small", force: bool = False, workers: int = 2,
             progress: bool = True) -> dict:
    """Make the dataset for (seed, size) in ``out`` and return its manifest; a no-op when ``out``
    already holds it, and a ``DataError`` when it holds anything else (unless ``force``)."""
    from edgepack.kws.synth import check_tools

    out = Path(out)
    jobs = plan(seed, size)  # validates size
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; -o takes a folder (new or made by `edgepack kws data`)")
    wanted = {"generator": "edgepack kws data", "version": VERSION, "seed": seed, "size": size}
    existing = _read_manifest(out)
    if existing is not None and all(existing.get(k) == v for k, v in wanted.items()) \
            and all((out / rel).exists() for rel in existing.get("files", [])):
        return {**existing, "cached": True}
    if not force and not (out / PARTIAL).exists():
        if existing is not None:
            raise DataError(f"{out} holds a dataset made with seed {existing.get('seed')} and size "
                            f"{existing.get('size')!r} (version {existing.get('version')}); pass --force to "
                            "replace it, or choose another -o folder")
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{out} is not empty and holds no {MANIFEST}; choose an empty or new folder, "
                            "or pass --force to write the dataset there")
    check_tools()
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    _clear(out, jobs)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).write_text("an interrupted `edgepack kws data` run; rerun it to finish\n")
    started = time.monotonic()
    made = _run(jobs, out, workers, progress)
    kept = [job for job, ok in zip(jobs, made) if ok]
    for split, name in LIST_FILES.items():
        (out / name).write_text("".join(f"{job.path}\n" for job in sorted(kept, key=lambda j: j.path)
                                        if job.split == split))
    files = sorted(job.path for job in kept) + sorted(LIST_FILES.values())
    counts: dict[str, dict[str, int]] = {}
    for job in kept:
        if job.kind == "word":
            label = job.text if job.text in KEYWORDS else "unknown"
            counts.setdefault(job.split, {}).setdefault(label, 0)
            counts[job.split][label] += 1
    manifest = {**wanted, "clips": counts, "refused": len(jobs) - len(kept),
                "voices": {split: sorted({j.voice for j in kept if j.split == split and j.voice})
                           for split, _ in SPLIT_FRACTIONS},
                "background": sorted(j.path for j in kept if j.split == "background"),
                "sha256": dataset_hash(out, files), "files": files,
                "seconds": round(time.monotonic() - started, 1)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / PARTIAL).unlink()
    return manifest


def dataset_hash(out, files) -> str:
    """SHA-256 over the names and bytes of ``files`` (relative to ``out``), in order."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (Path(out) / rel).read_bytes())
    return digest.hexdigest()


def _run(jobs: list[Job], out: Path, workers: int, progress: bool) -> list[bool]:
    """Render ``jobs`` in a pool of ``workers`` processes, in batches, with a progress bar."""
    from edgepack.kws.progress import progress_bar

    batch = 16
    batches = [jobs[i:i + batch] for i in range(0, len(jobs), batch)]
    results: list[list[bool] | None] = [None] * len(batches)
    with progress_bar(enabled=progress) as bar, \
            ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint) as pool:
        task = bar.add_task("kws data: clips", total=len(jobs))
        pending = {pool.submit(_render_batch, b, str(out)): i for i, b in enumerate(batches)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    bar.advance(task, len(batches[i]))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [ok for r in results for ok in r]


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels the queue and waits for running batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({e}); delete it or pass --force") from e


def _clear(out: Path, jobs: list[Job]) -> None:
    """Remove what a dataset run writes (its word folders, background, lists, manifest), nothing else."""
    for folder in sorted({job.path.split("/")[0] for job in jobs} | set(KEYWORDS) | set(UNKNOWN_WORDS)):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
    for name in (MANIFEST, *LIST_FILES.values()):
        (out / name).unlink(missing_ok=True)


def add_parser(subparsers) -> None:
    """``edgepack kws data -o DIR [--quick] [--size small|full] [--seed N] [--force]``."""
    parser = subparsers.add_parser(
        "data", help="make a 12-class keyword dataset (Speech Commands layout) with espeak-ng and sox",
        description="Synthesize yes/no/up/down/left/right/on/off/stop/go, 'unknown' words and background "
                    "noise into DIR in the Google Speech Commands layout; splits are held out by voice.")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="quick (CI, ~30 clips per keyword), small (default, ~250) or full (~1000)")
    parser.add_argument("--quick", action="store_true", help="same as --size quick")
    parser.add_argument("--seed", type=int, default=0, help="everything made is a function of the seed (default 0)")
    parser.add_argument("--force", action="store_true", help="replace a dataset of another seed/size in DIR")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes (default 2)")
    parser.set_defaults(handler=_main)


def _main(args) -> int:
    size = "quick" if args.quick else args.size
    if args.quick and args.size not in ("small", "quick"):
        raise DataError(f"--quick and --size {args.size} disagree; pass one of them")
    manifest = generate(args.output, seed=args.seed, size=size, force=args.force, workers=args.workers)
    totals = {split: sum(c.values()) for split, c in manifest["clips"].items()}
    print(f"{args.output}: {'up to date' if manifest.get('cached') else 'wrote'} size {size}, seed {args.seed}: "
          + ", ".join(f"{split} {totals.get(split, 0)} clips ({len(manifest['voices'][split])} voices)"
                      for split, _ in SPLIT_FRACTIONS)
          + f", {len(manifest['background'])} background noises, {manifest['refused']} clips refused")
    return 0
