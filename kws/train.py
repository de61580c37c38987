"""``edgepack kws train``: the DS-CNN trained with the MLPerf Tiny KWS recipe, resumable.

Batch 100, Adam, learning rate 5e-4 → 1e-4 → 2e-5 at 1/3 and 2/3 of the epochs, MLPerf Tiny's
augmentation (``kws.augment.Augmenter``) on the audio, MFCC (``kws.frontend.mfcc``) per batch.
A run folder holds ``last.safetensors`` (written after every epoch, with ``optimizer.pt``),
``best.safetensors`` (best validation accuracy) and ``train.json`` (config, per-epoch log, test
accuracy); rerunning the same command continues after the last finished epoch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.kws.augment import MAX_FORMANT_WARP
from edgepack.kws.labels import CLASSES
from edgepack.kws.progress import progress_bar

BATCH_SIZE = 100
LEARNING_RATES = (5e-4, 1e-4, 2e-5)
EPOCHS_FULL = 36  # MLPerf Tiny (tuned for the 85 k clips of Speech Commands)
# `make demo` on the ~2 k training clips of the default generated dataset: 21 steps an epoch, so larger
# steps (MLPerf's rates reached 42 % test accuracy in 12 epochs there; these 91.4 % in 12 epochs and
# 95.4 % in 30, 45 s on this 2-core machine when idle).
QUICK_RATES = (3e-3, 1e-3, 2e-4)
TIME_SHIFT_MS = 100.0  # MLPerf Tiny's augmentation: shift each clip by up to ±100 ms
EPOCHS_QUICK = 30
STATE_FILE = "train.json"
MODELS = ("ds-cnn-s", "ds-cnn-l")  # kws.models.build_model's names


class KwsTrainError(EdgepackError, ValueError):
    """Bad input to KWS training, evaluation or compression: the message names the file and what is valid."""


@dataclass
class TrainConfig:
    """What a run was started with; a resumed run must match it (except ``epochs``, which may grow)."""

    data: str
    model: str = "ds-cnn-s"
    epochs: int = EPOCHS_FULL
    seed: int = 0
    batch_size: int = BATCH_SIZE
    learning_rates: list = field(default_factory=lambda: list(LEARNING_RATES))
    time_shift_ms: float = TIME_SHIFT_MS
    stream_negatives: float = 0.0
    frequency_scale: list | None = None  # (lo, hi) of kws.augment.scale_frequencies; None: off
    random_eq: float = 0.0  # share of clips through kws.augment.random_equalizer
    formant_warp: float = 0.0  # largest stretch of kws.augment.formant_warp_weights; 0: off


def augmentation_of(config: dict) -> dict:
    """The kws.augment.Augmenter settings a run's config (train.json) records; older runs: the shift alone."""
    scale = config.get("frequency_scale")
    return {"shift_ms": float(config.get("time_shift_ms", TIME_SHIFT_MS)),
            "frequency_scale": tuple(scale) if scale else None,
            "equalizer_probability": float(config.get("random_eq", 0.0)),
            "formant_warp": float(config.get("formant_warp", 0.0))}


def learning_rate(epoch: int, epochs: int, rates=LEARNING_RATES) -> float:
    """MLPerf Tiny's step schedule: rates[0] for the first third of the epochs, then rates[1], rates[2]."""
    return rates[min(len(rates) - 1, epoch * len(rates) // max(epochs, 1))]


def load_data(data_dir, splits=("train", "validation", "test"), seed: int = 0) -> dict:
    """The splits of the Speech Commands tree at ``data_dir`` (``kws.speech_commands.load_split``)."""
    from edgepack.kws.speech_commands import load_split

    path = Path(data_dir)
    if not path.is_dir():
        raise KwsTrainError(f"--data {data_dir}: not a folder; make a dataset with `edgepack kws data -o "
                            f"{data_dir}` or give a Speech Commands tree (<root>/<word>/*.wav)")
    return {split: load_split(path, split, seed=seed) for split in splits}


def features(audio, batch_size: int = 500, mel=None):
    """MFCC features [N, 1, 49, 10] of float32 audio [N, 16000] (numpy or torch), computed in batches;
    ``mel``: per-clip mel weights [N, bins, mel bins] (kws.augment.Augmenter.mel_weights) or None."""
    import numpy as np
    import torch

    from edgepack.kws.frontend import mfcc

    audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    with torch.no_grad():
        mel = None if mel is None else torch.as_tensor(mel)
        parts = [mfcc(audio[i:i + batch_size], mel=None if mel is None else mel[i:i + batch_size])
                 for i in range(0, len(audio), batch_size)]
    return torch.cat(parts).unsqueeze(1) if parts else torch.zeros(0, 1, 49, 10)


def predict(model, feats, batch_size: int = 500):
    """Class predictions (int64 numpy [N]) of a torch model on MFCC features [N, 1, 49, 10]."""
    import numpy as np
    import torch

    model.eval()
    with torch.no_grad():
        parts = [model(feats[i:i + batch_size]).argmax(1) for i in range(0, len(feats), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.int64)


def accuracy(model, feats, labels) -> float:
    """Top-1 accuracy of ``model`` on features and labels."""
    import numpy as np

    labels = np.asarray(labels)
    return float((predict(model, feats) == labels).mean()) if len(labels) else 0.0


def train_epoch(model, optimizer, audio, labels, augmenter, epoch: int, seed: int, batch_size: int = BATCH_SIZE,
                progress=None, description: str = "", teacher=None, temperature: float = 2.0,
                negatives=None) -> tuple[float, float]:
    """One pass over shuffled, augmented batches of numpy ``audio`` / ``labels``; returns (mean loss,
    train accuracy). The order and the augmentation depend only on (seed, epoch), so a resumed run
    repeats them. With a ``teacher`` model, half the loss is distillation (Hinton et al. 2015): the
    KL divergence from the teacher's softened outputs at ``temperature``, scaled by its square. ``negatives``
    (kws.augment.StreamNegatives) replaces some examples with stream-like unknowns before augmenting."""
    import numpy as np
    import torch

    model.train()
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rng = np.random.default_rng([seed, epoch])
    order = torch.randperm(len(labels), generator=generator).numpy()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    task = progress.add_task(description, total=len(batches)) if progress is not None else None
    total_loss, correct = 0.0, 0
    for batch in batches:
        clips, targets = audio[batch], labels[batch]
        if negatives is not None:
            clips, targets = negatives(clips, targets, rng)
        clips = augmenter(clips, rng) if augmenter is not None else clips
        x = features(clips, mel=augmenter.mel_weights(len(clips), rng) if augmenter is not None else None)
        y = torch.as_tensor(targets)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                soft = torch.log_softmax(teacher(x) / temperature, 1)
            kl = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, 1), soft, log_target=True,
                                            reduction="batchmean")
            loss = 0.5 * loss + 0.5 * temperature ** 2 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
        correct += int((logits.argmax(1) == y).sum())
        if progress is not None:
            progress.update(task, advance=1, description=f"{description} loss {loss.item():.3f}")
    if progress is not None:
        progress.remove_task(task)
    model.eval()
    return total_loss / max(len(labels), 1), correct / max(len(labels), 1)


def _save_atomic(model, path: Path, builder: str, kwargs: dict, recipe: dict | None = None) -> None:
    """save_checkpoint to a temporary name, then rename: an interrupted run never leaves half a file."""
    from edgepack.compression import save_checkpoint

    tmp = path.with_name(path.stem + ".tmp.safetensors")
    save_checkpoint(model, tmp, builder, kwargs, recipe=recipe)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_state(run_dir) -> dict | None:
    """The run's ``train.json`` or None when the folder holds no run yet."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise KwsTrainError(f"{path}: not valid JSON ({error}); remove the run folder to start over") from None


def train(data_dir, run_dir, model: str = "ds-cnn-s", epochs: int | None = None, quick: bool = False,
          seed: int = 0, console=None, batch_size: int = BATCH_SIZE, learning_rates=None,
          threads: int = 1, time_shift_ms: float | None = None, stream_negatives: float | None = None,
          frequency_scale: tuple[float, float] | None = None, random_eq: float | None = None,
          formant_warp: float | None = None) -> dict:
    """Train (or resume training) a DS-CNN in ``run_dir`` on the dataset at ``data_dir``; returns the state
    that ``train.json`` holds (config, per-epoch history, best epoch, test accuracy of the best model).
    ``batch_size`` and ``learning_rates`` default to MLPerf Tiny's (``quick``: QUICK_RATES);
    ``threads``: torch threads while training (1 by default: on a shared 2-core machine, 2 threads
    made a DS-CNN-S step ~9× slower, the threads waiting on each other); ``time_shift_ms``: the
    augmentation's largest shift (default MLPerf Tiny's 100 ms); ``stream_negatives``: the share of
    examples replaced by stream-like unknowns (kws.augment.StreamNegatives; default 0); ``frequency_scale``:
    (lo, hi) of a per-clip frequency scaling (kws.augment.scale_frequencies; default off); ``random_eq``: the
    share of clips through a random equalizer (kws.augment.random_equalizer; default 0); ``formant_warp``: the
    largest stretch of a per-clip formant warp in the front end (kws.augment.formant_warp_weights; default 0,
    off)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(data_dir, run_dir, model, epochs, quick, seed, console, batch_size,
                      learning_rates or (QUICK_RATES if quick else LEARNING_RATES), time_shift_ms, stream_negatives,
                      frequency_scale, random_eq, formant_warp)
    finally:
        torch.set_num_threads(previous)


def _train(data_dir, run_dir, model, epochs, quick, seed, console, batch_size, learning_rates, time_shift_ms,
           stream_negatives=None, frequency_scale=None, random_eq=None, formant_warp=None) -> dict:
    """train() with the thread count set."""
    import torch
    from rich.console import Console

    from edgepack.kws.models import build_model

    console = console or Console()
    if model not in MODELS:
        raise KwsTrainError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    if epochs is not None and epochs < 1:
        raise KwsTrainError(f"--epochs must be >= 1, got {epochs}")
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise KwsTrainError(f"-o {run}: exists and is not a folder")
    if time_shift_ms is not None and not 0 <= time_shift_ms <= 500:
        raise KwsTrainError(f"--time-shift-ms must be in [0, 500], got {time_shift_ms}")
    if stream_negatives is not None and not 0 <= stream_negatives <= 1:
        raise KwsTrainError(f"--stream-negatives must be in [0, 1], got {stream_negatives}")
    if frequency_scale is not None and not 0.5 <= frequency_scale[0] <= frequency_scale[1] <= 2.0:
        raise KwsTrainError(f"--frequency-scale must be LO,HI with 0.5 <= LO <= HI <= 2, got {frequency_scale}")
    if random_eq is not None and not 0 <= random_eq <= 1:
        raise KwsTrainError(f"--random-eq must be in [0, 1], got {random_eq}")
    if formant_warp is not None and not 0 <= formant_warp <= MAX_FORMANT_WARP:
        raise KwsTrainError(f"--formant-warp must be in [0, {MAX_FORMANT_WARP}], got {formant_warp}")
    config = TrainConfig(data=str(Path(data_dir).resolve()), model=model, seed=seed, batch_size=batch_size,
                         learning_rates=list(learning_rates), epochs=epochs or (EPOCHS_QUICK if quick else EPOCHS_FULL),
                         time_shift_ms=TIME_SHIFT_MS if time_shift_ms is None else time_shift_ms,
                         stream_negatives=stream_negatives or 0.0,
                         frequency_scale=None if frequency_scale is None else list(frequency_scale),
                         random_eq=random_eq or 0.0, formant_warp=formant_warp or 0.0)
    state = read_state(run)
    if state is not None:
        saved = state["config"]
        for key in ("model", "seed", "batch_size"):
            if saved[key] != getattr(config, key):
                raise KwsTrainError(f"{run}: holds a run with {key}={saved[key]!r}, not {getattr(config, key)!r}; "
                                    "use another -o folder (or remove this one) to start a new run")
        if saved["data"] != config.data:
            console.print(f"[yellow]note: {run} was trained on {saved['data']}; continuing on {config.data}")
        if epochs is None:
            config.epochs = saved["epochs"]
        config.learning_rates = saved["learning_rates"]
        config.time_shift_ms = saved.get("time_shift_ms", TIME_SHIFT_MS)
        config.stream_negatives = saved.get("stream_negatives", 0.0)
        config.frequency_scale = saved.get("frequency_scale")
        config.random_eq = saved.get("random_eq", 0.0)
        config.formant_warp = saved.get("formant_warp", 0.0)
    data = load_data(data_dir, seed=seed)
    torch.manual_seed(seed)
    net, builder, kwargs = build_model(model, classes=len(CLASSES))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rates[0])
    if state is not None and state.get("epochs_done") and (run / "last.safetensors").exists():
        from edgepack.compression import load_checkpoint

        if not (run / "optimizer.pt").is_file():
            raise KwsTrainError(f"{run}: cannot resume: last.safetensors is there but optimizer.pt (the optimizer "
                                "state saved with it) is missing; remove the run folder (or use a new one) to "
                                "start over")

        net.load_state_dict(load_checkpoint(run / "last.safetensors").state_dict())
        optimizer.load_state_dict(torch.load(run / "optimizer.pt", weights_only=True))
        done = state["epochs_done"]
    else:
        state = {"config": asdict(config), "builder": builder, "builder_kwargs": kwargs, "epochs_done": 0,
                 "history": [], "best": None}
        done = 0
    state["config"] = asdict(config)
    run.mkdir(parents=True, exist_ok=True)
    from edgepack.kws.augment import Augmenter, StreamNegatives

    train_split, val_split = data["train"], data["validation"]
    augmenter = Augmenter(train_split.background, seed, **augmentation_of(asdict(config)))
    negatives = StreamNegatives(train_split.audio, train_split.labels, config.stream_negatives) \
        if config.stream_negatives else None
    val_x = features(val_split.audio)  # cached for every epoch
    if done < config.epochs:
        console.print(f"training {model} on {len(train_split)} clips ({len(val_split)} validation), "
                      f"epochs {done + 1}–{config.epochs}" + (f" (resumed from {run})" if done else ""))
    with progress_bar(console) as progress:
        for epoch in range(done, config.epochs):
            lr = learning_rate(epoch, config.epochs, config.learning_rates)
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = time.monotonic()
            loss, train_acc = train_epoch(net, optimizer, train_split.audio, train_split.labels, augmenter, epoch,
                                          seed, config.batch_size, progress, f"epoch {epoch + 1}/{config.epochs}",
                                          negatives=negatives)
            val_acc = accuracy(net, val_x, val_split.labels)
            row = {"epoch": epoch + 1, "lr": lr, "loss": round(loss, 5), "train_accuracy": round(train_acc, 5),
                   "val_accuracy": round(val_acc, 5), "seconds": round(time.monotonic() - start, 2)}
            _save_atomic(net, run / "last.safetensors", builder, kwargs)
            torch.save(optimizer.state_dict(), run / "optimizer.tmp.pt")
            os.replace(run / "optimizer.tmp.pt", run / "optimizer.pt")
            if state["best"] is None or val_acc > state["best"]["val_accuracy"]:
                _save_atomic(net, run / "best.safetensors", builder, kwargs)
                state["best"] = {"epoch": epoch + 1, "val_accuracy": row["val_accuracy"]}
            state["history"].append(row)
            state["epochs_done"] = epoch + 1
            _write_json(run / STATE_FILE, state)
            console.print(f"epoch {epoch + 1}/{config.epochs}  lr {lr:.0e}  loss {loss:.3f}  "
                          f"train {train_acc:.1%}  val {val_acc:.1%}  ({row['seconds']:.0f} s)")
    from edgepack.compression import load_checkpoint

    best = load_checkpoint(run / "best.safetensors")
    test = data["test"]
    state["test_accuracy"] = round(accuracy(best, features(test.audio), test.labels), 5)
    state["test_clips"] = len(test)
    _write_json(run / STATE_FILE, state)
    console.print(f"best epoch {state['best']['epoch']}: validation {state['best']['val_accuracy']:.1%}, "
                  f"test {state['test_accuracy']:.1%} ({len(test)} clips) → {run / 'best.safetensors'}")
    return state


def _rates(text: str) -> tuple[float, ...]:
    """``--lr 3e-3,1e-3,2e-4`` → (0.003, 0.001, 0.0002); each rate positive."""
    import argparse

    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 3e-3,1e-3,2e-4") from None
    if not all(0 < r < 1 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: learning rates must be in (0, 1)")
    return rates


def _scale_range(text: str) -> tuple[float, float]:
    """``--frequency-scale 0.9,1.4`` → (0.9, 1.4); 0.5 <= LO <= HI <= 2."""
    import argparse

    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI, e.g. 0.9,1.4") from None
    if not 0.5 <= low <= high <= 2.0:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0.5 <= LO <= HI <= 2")
    return low, high


def _handler(args) -> int:
    try:
        train(args.data, args.output, model=args.model, epochs=args.epochs, quick=args.quick, seed=args.seed,
              threads=args.threads, learning_rates=args.lr, time_shift_ms=args.time_shift_ms,
              stream_negatives=args.stream_negatives, frequency_scale=args.frequency_scale,
              random_eq=args.random_eq, formant_warp=args.formant_warp)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to continue from the last finished epoch in {args.output}")
        return 130
    return 0


def add_parser(subparsers) -> None:
    """``edgepack kws train --data DIR -o RUN [--model ...] [--epochs N] [--quick] [--seed N]``."""
    parser = subparsers.add_parser("train", help="train a DS-CNN keyword spotter (MLPerf Tiny recipe, resumable)")
    parser.add_argument("--data", required=True, help="dataset folder in the Speech Commands layout "
                                                      "(edgepack kws data -o DIR makes one)")
    parser.add_argument("-o", "--output", required=True, metavar="RUN",
                        help="run folder: checkpoints and train.json; rerun to resume")
    parser.add_argument("--model", choices=MODELS, default="ds-cnn-s", help="DS-CNN-S (default) or DS-CNN-L")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {EPOCHS_FULL}, --quick {EPOCHS_QUICK}); "
                                                   "learning-rate steps at 1/3 and 2/3")
    parser.add_argument("--quick", action="store_true",
                        help=f"{EPOCHS_QUICK} epochs at learning rates {', '.join(f'{r:g}' for r in QUICK_RATES)} "
                             "(make demo; for datasets of a few thousand clips)")
    parser.add_argument("--lr", type=_rates, metavar="LR[,LR...]",
                        help="learning rates, one per equal share of the epochs (default "
                             f"{','.join(f'{r:g}' for r in LEARNING_RATES)})")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and augmentation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy machine)")
    parser.add_argument("--time-shift-ms", type=float, metavar="MS",
                        help=f"augmentation: shift each clip by up to ±MS (default {TIME_SHIFT_MS:g}, MLPerf Tiny's; "
                             "300 made a streaming detector find more keywords, see README)")
    parser.add_argument("--stream-negatives", type=float, metavar="P",
                        help="replace each training example with probability P by a stream-like unknown: under half "
                             "a keyword at the window's edge, or two unknown words back to back (default 0; see "
                             "README, \"Keyword spotting — streaming\")")
    parser.add_argument("--frequency-scale", type=_scale_range, metavar="LO,HI",
                        help="scale each clip's frequencies (pitch and formants, as a shorter or longer vocal "
                             "tract) by a factor drawn log-uniformly from [LO, HI], e.g. 0.9,1.4 for voices "
                             "higher than the training voices (default off; see README)")
    parser.add_argument("--random-eq", type=float, metavar="P",
                        help="pass each clip with probability P through a smooth random equalizer (-18..+6 dB at "
                             "8 points from 100 Hz to 8 kHz): voices whose formants are weaker or stronger than the "
                             "training voices' (default 0; see README)")
    parser.add_argument("--formant-warp", type=float, metavar="A",
                        help="move the front end's view of each clip's F1, F2, F3 by different factors, each drawn "
                             "log-uniformly from [1/(1+A), 1+A] (e.g. 0.25): voices whose formants sit apart "
                             f"differently from the training voices' (default 0, off; at most {MAX_FORMANT_WARP:g}; "
                             "see README)")
    parser.set_defaults(handler=_handler)
