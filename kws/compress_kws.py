"""``edgepack kws compress``: compress a trained DS-CNN with a recipe, fine-tune, export, measure.

For each recipe: swap the layers (``compression.compress``, initialised from the trained weights),
fine-tune with the training loop, half the loss distilled from the dense model (best validation
epoch kept), save the
checkpoint, export ONNX and TFLite with ``edgepack.exporter.export`` (what ``edgepack export`` uses),
and measure test accuracy in torch and in the exported files under ONNX Runtime and LiteRT, plus the
largest difference of their outputs from torch's. Results go to ``compress.json`` in the output.
A recipe of "sws" layers is retrained by soft weight-sharing instead and saved as codebook layers; one of
"hyper" layers is Hyper-Compression-encoded on calibration clips of the training split, not retrained (with
BatchNorm first folded into the convs where the recipe's settings say "fold_bn"; the checkpoint's builder then
gets ``fold_bn=True``, which rebuilds convs with biases and no BatchNorm).
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

from edgepack.kws.progress import progress_bar
from edgepack.kws.recipes import DESCRIPTIONS, FINETUNE, RECIPES
from edgepack.kws.train import (
    BATCH_SIZE,
    QUICK_RATES,
    KwsTrainError,
    accuracy,
    augmentation_of,
    features,
    load_data,
    read_state,
    train_epoch,
)

# Hashing at 1/8 keeps little of the trained weights (a decoded weight is 1/8 its own value and 7/8 the
# others in its bucket: the compressed DS-CNN starts at chance), so fine-tuning is retraining in the
# compressed space, with the dense model as teacher. Measured (DS-CNN-L, hashed-pw, default dataset):
# 4 epochs at 1e-3 → 2e-4 reached 93.6 % test accuracy, 12 epochs of these rates 96.3 % (dense 97.6 %).
FINETUNE_RATES = QUICK_RATES
FINETUNE_EPOCHS = 12  # recipes listed in kws.recipes.FINETUNE retrain with their own epochs and rates


def finetune_of(name: str, finetune_epochs: int | None = None, learning_rates=None) -> tuple[int, tuple, int]:
    """(epochs, learning rates, epochs averaged) of recipe ``name``'s retraining: the given ones, else the
    recipe's own (``kws.recipes.FINETUNE``), else FINETUNE_EPOCHS, FINETUNE_RATES and 0 (best epoch)."""
    own = FINETUNE.get(name, {})
    return (own.get("epochs", FINETUNE_EPOCHS) if finetune_epochs is None else finetune_epochs,
            tuple(own.get("learning_rates", FINETUNE_RATES) if learning_rates is None else learning_rates),
            own.get("average_last", 0))


def slug(name: str) -> str:
    """A folder name for a recipe name: "hashed+ldr-fc" → "hashed-ldr-fc"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def resolve_recipe(name_or_file) -> tuple[str, dict]:
    """(name, recipe dict) for a named recipe (``kws.recipes.RECIPES``) or a YAML / JSON recipe file."""
    from edgepack.compression import load_recipe

    if name_or_file in RECIPES:
        return name_or_file, RECIPES[name_or_file]
    path = Path(name_or_file)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise KwsTrainError(f"--recipe {name_or_file}: no such recipe file")
        try:
            return path.stem, load_recipe(path)
        except ValueError as error:
            raise KwsTrainError(f"--recipe {name_or_file}: {error}") from None
    raise KwsTrainError(f"unknown recipe {name_or_file!r}; valid: {', '.join(RECIPES)}, all, "
                        "or a .yaml / .json recipe file")


def _dense_source(source) -> tuple[Path, str, dict, str | None, dict]:
    """(checkpoint, builder, builder kwargs, the run's data folder or None, its augmentation settings)
    of a run folder or checkpoint; train.json is read with kws.train.read_state (corrupt: KwsTrainError)."""
    from safetensors import safe_open

    from edgepack.kws.evaluate import checkpoint_of

    path = checkpoint_of(source)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except Exception as error:
        raise KwsTrainError(f"{path}: not a .safetensors edgepack checkpoint, which compress reads "
                            f"({type(error).__name__}: {error})") from None
    if metadata.get("recipe") not in (None, "null"):
        raise KwsTrainError(f"{path}: already compressed (recipe {metadata['recipe']}); compress the dense "
                            "model of the training run")
    state = read_state(Path(source) if Path(source).is_dir() else path.parent) or {}
    config = state.get("config") or {}
    return (path, metadata.get("builder", ""), json.loads(metadata.get("builder_kwargs") or "{}"),
            config.get("data"), augmentation_of(config))


def compress_one(dense, builder: str, kwargs: dict, name: str, recipe: dict, data: dict, cache: dict, out: Path,
                 finetune_epochs: int, seed: int = 0, console=None, batch_size: int = BATCH_SIZE,
                 learning_rates=FINETUNE_RATES, export: bool = True, distill: bool = True,
                 augmentation: dict | None = None, average_last: int = 0, tau: float | None = None,
                 budget: float | None = None) -> dict:
    """Compress ``dense`` with ``recipe``, fine-tune (augmenting as the dense run did: ``augmentation``, the
    kws.augment.Augmenter settings), save and export it to ``out``; returns the result row. The fine-tuned
    model is the best validation epoch, or with ``average_last`` N the mean of the weights (and BatchNorm
    statistics) after each of the last N epochs. A recipe of "sws" layers is retrained by soft weight-sharing
    at ``tau`` instead (``_retrain_sws``); one of "hyper" layers is encoded within ``budget`` on calibration
    clips, not retrained (``_hyper``), after ``kws.models.fold_batchnorms`` when its settings say "fold_bn"
    (the saved builder kwargs then say it too)."""
    import torch

    from edgepack.compression import compress, compressed_size_bytes, save_checkpoint
    from edgepack.kws.augment import Augmenter
    from edgepack.kws.evaluate import load_predictor
    from edgepack.kws.models import fold_batchnorms
    from edgepack.kws.train import learning_rate

    start = time.monotonic()
    torch.manual_seed(seed)
    spec, hyper = recipe, any(spec.get("method") == "hyper" for spec in recipe.values())
    try:
        if hyper:  # "fold_bn": BatchNorm folded into the convs first, so the encoding covers its bytes too
            source = dense
            if hyper_settings(name).get("fold_bn"):
                source, kwargs = fold_batchnorms(dense), {**kwargs, "fold_bn": True}
            model, report, recipe, hyper_row = _hyper(source, name, recipe, data["train"], seed, budget)
            hyper_row["fold_bn"] = source is not dense
        else:
            model, report = compress(dense, recipe) if recipe else (copy.deepcopy(dense), [])
    except ValueError as error:
        raise KwsTrainError(f"recipe {name!r}: {error}") from None
    train_split, val, test = data["train"], data["validation"], data["test"]
    row = {"recipe": name, "description": DESCRIPTIONS.get(name, "recipe file"), "spec": spec,
           "layers": [{**vars(r), "ratio": r.ratio} for r in report], "dense_bytes": compressed_size_bytes(dense),
           "accuracy_dense": accuracy(dense, cache["test"], test.labels),
           "accuracy_compressed": accuracy(model, cache["test"], test.labels)}
    sws = any(spec.get("method") == "sws" for spec in recipe.values())
    tune_epochs, tune_rates, tune_batch = finetune_epochs, learning_rates, batch_size
    if hyper:  # no retraining; "bn_epochs" (default 0) would tune BatchNorm and biases alone, distilled
        row.update(hyper_row)
        tune_epochs, tune_rates = hyper_settings(name).get("bn_epochs", 0), FINETUNE_RATES
        finetune_epochs = row["bn_epochs"] = tune_epochs
    if sws:  # then only BatchNorm is trainable (codebook layers hold buffers): "bn_epochs" tune it, distilled
        recipe = _retrain_sws(model, row, data, cache, finetune_epochs, learning_rates, tau, seed, batch_size,
                              augmentation, console)
        tune_epochs, tune_rates = FINETUNE["sws"].get("bn_epochs", 0), FINETUNE_RATES
        tune_batch = FINETUNE["sws"].get("batch_size", batch_size)
        row["bn_epochs"] = tune_epochs
    if recipe and tune_epochs:
        augmenter = Augmenter(train_split.background, seed, **(augmentation or {}))
        optimizer = torch.optim.Adam(model.parameters(), lr=tune_rates[0])
        best, best_acc = copy.deepcopy(model.state_dict()), accuracy(model, cache["validation"], val.labels)
        total, averaged = None, 0
        with progress_bar(console) as progress:
            for epoch in range(tune_epochs):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(epoch, tune_epochs, tune_rates)
                train_epoch(model, optimizer, train_split.audio, train_split.labels, augmenter, epoch, seed + 1,
                            tune_batch, progress, f"{name}: fine-tune {epoch + 1}/{tune_epochs}",
                            teacher=dense if distill else None)
                if epoch >= tune_epochs - average_last:
                    state = {k: t.detach().double() for k, t in model.state_dict().items()}
                    total = state if total is None else {k: total[k] + state[k] for k in total}
                    averaged += 1
                val_acc = accuracy(model, cache["validation"], val.labels)
                if val_acc > best_acc:
                    best, best_acc = copy.deepcopy(model.state_dict()), val_acc
        if averaged:
            best = {k: (total[k] / averaged).to(t.dtype) for k, t in model.state_dict().items()}
        row["averaged_epochs"] = averaged
        model.load_state_dict(best)
    model.eval()
    row.update({"bytes": compressed_size_bytes(model), "finetune_epochs": finetune_epochs if recipe else 0,
                "learning_rates": list(learning_rates),
                "accuracy": accuracy(model, cache["test"], test.labels)})
    row["ratio"] = row["dense_bytes"] / row["bytes"]
    out.mkdir(parents=True, exist_ok=True)
    row["checkpoint"] = str(save_checkpoint(model, out / "model.safetensors", builder, kwargs, recipe=recipe or None))
    if export:
        from edgepack.exporter import export as export_model

        with torch.no_grad():
            reference = model(cache["test"]).numpy()
        example = torch.randn(1, 1, 49, 10)
        for fmt in ("onnx", "tflite"):
            path = export_model(model, example, out / f"model.{fmt}")
            predictor = load_predictor(path)
            logits = predictor(cache["test"].numpy())
            row[fmt] = {"path": str(path), "file_bytes": path.stat().st_size, "runtime": predictor.kind,
                        "accuracy": float((logits.argmax(1) == test.labels).mean()),
                        "max_abs_diff_vs_torch": float(abs(logits - reference).max())}
    row["seconds"] = round(time.monotonic() - start, 1)
    (out / "compress.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def hyper_settings(name: str) -> dict:
    """Recipe ``name``'s Hyper-Compression settings: ``FINETUNE["hyper"]`` updated by ``FINETUNE[name]``."""
    return {**FINETUNE["hyper"], **FINETUNE.get(name, {})}


def _hyper(dense, name: str, recipe: dict, train_split, seed: int, budget: float | None):
    """Hyper-Compression of the layers of a recipe of "hyper" layers (no retraining): ``hyper_compress`` on the
    MFCC features of ``calibration_clips`` seeded training clips (not augmented), each layer's output within
    ``budget`` (None: the spec's "budget", else ``hyper_settings(name)``'s). Returns (model, per-layer report,
    the recipe of the encoded layers to save, the row's hyper fields)."""
    import numpy as np

    from edgepack.compression import hyper_compress

    if any(spec.get("method") != "hyper" for spec in recipe.values()):
        raise KwsTrainError(f"recipe {name!r}: mixes \"hyper\" with other methods; a hyper recipe encodes "
                            "trained weights without retraining, so all its layers must be \"hyper\"")
    own = hyper_settings(name)
    clips = min(own["calibration_clips"], len(train_split.labels))
    chosen = np.sort(np.random.default_rng(seed).choice(len(train_split.labels), clips, replace=False))
    calibration = features(train_split.audio[chosen])
    options: dict[str, list[str]] = {}  # patterns grouped by their options: one hyper_compress call per group
    for pattern, spec in recipe.items():
        spec = {k: v for k, v in spec.items() if k != "method"}
        unknown = set(spec) - {"budget", "group", "points", "side", "rings"}
        if unknown:
            raise KwsTrainError(f"recipe {name!r}: layer {pattern!r}: unknown parameters {sorted(unknown)} for "
                                "'hyper'; valid: ['budget', 'group', 'points', 'rings', 'side']")
        options.setdefault(json.dumps(spec, sort_keys=True), []).append(pattern)
    model, report, used = dense, [], set()
    for key, patterns in options.items():
        spec = json.loads(key)
        spec["budget"] = budget if budget is not None else spec.get("budget", own["budget"])
        used.add(spec["budget"])
        model, part = hyper_compress(model, calibration=calibration, names=patterns, progress=False, **spec)
        report += part
    hyper_row = {"budget": used.pop() if len(used) == 1 else sorted(used), "calibration_clips": clips}
    return model, report, {r.name: r.recipe() for r in report if r.recipe() is not None}, hyper_row


class _AugmentedBatches:
    """The training split as sws.retrain's DataLoader: shuffled, augmented MFCC batches, new ones each pass,
    the order and augmentation seeded by (seed, pass) as ``kws.train.train_epoch``'s."""

    def __init__(self, split, augmenter, batch_size: int, seed: int) -> None:
        self.audio, self.dataset, self.augmenter = split.audio, split.labels, augmenter
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        import numpy as np
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = torch.randperm(len(self.dataset), generator=generator).numpy()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            yield features(self.augmenter(self.audio[batch], rng)), torch.as_tensor(self.dataset[batch])


def _retrain_sws(model, row: dict, data: dict, cache: dict, epochs: int, learning_rates, tau, seed: int,
                 batch_size: int, augmentation: dict | None, console) -> dict:
    """Soft weight-sharing: ``compression.sws.retrain`` on the augmented training split (one equal share of
    the epochs per learning rate, the prior carried over), then ``postprocess`` into codebook layers; fills
    ``row`` (τ, per-epoch history, non-zero %, Deep Compression's size) and returns the recipe to save."""
    import torch

    from edgepack.compression import postprocess, retrain, to_codebook
    from edgepack.compression.size_accounting import model_size
    from edgepack.kws.augment import Augmenter

    if not epochs:
        raise KwsTrainError("recipe sws: soft weight-sharing needs --finetune-epochs >= 1")
    own = FINETUNE["sws"]
    tau = own["tau"] if tau is None else tau
    batches = _AugmentedBatches(data["train"], Augmenter(data["train"].background, seed, **(augmentation or {})),
                                own.get("batch_size", batch_size), seed + 1)
    val = (cache["validation"], torch.as_tensor(data["validation"].labels))
    prior, history = None, []
    try:
        for i, rate in enumerate(learning_rates):
            share = epochs * (i + 1) // len(learning_rates) - epochs * i // len(learning_rates)
            if share:
                prior, part = retrain(model, batches, epochs=share, tau=tau, lr=rate, prior=prior, val_data=val,
                                      pi_zero=own.get("pi_zero", 0.999), prior_lrs=own.get("prior_lrs"),
                                      progress=console is not None, seed=seed)
                history += part
        report = postprocess(model, prior)
    except ValueError as error:
        raise KwsTrainError(f"recipe sws: {error}") from None
    sizes = model_size(model)
    to_codebook(model, [layer.name for layer in report])
    row.update(tau=tau, sws_history=history, codebook=[float(v) for v in report.codebook],
               nonzero_percent=sizes.nonzero_percent,
               deep_compression={"bytes": sizes.total_bits / 8, "dense_bytes": sizes.dense_bits / 8,
                                 "rate": sizes.rate})
    row["averaged_epochs"] = 0
    return {layer.name: {"method": "codebook"} for layer in report}


def compress_run(source, recipes, output, data_dir=None, finetune_epochs: int | None = None, seed: int = 0,
                 console=None, batch_size: int = BATCH_SIZE, learning_rates=None,
                 export: bool = True, distill: bool = True, threads: int = 1, tau: float | None = None,
                 budget: float | None = None) -> list[dict]:
    """Compress the dense model of a run folder or checkpoint with each recipe (names, files or "all").

    One recipe writes to ``output``; several write to ``output/<recipe>/`` and ``output/summary.json``.
    ``finetune_epochs`` / ``learning_rates``: the retraining's for every recipe (None: each recipe's,
    ``finetune_of``).
    ``threads``: torch threads meanwhile (1 by default, as ``kws train``); ``tau``: soft weight-sharing's τ
    (None: ``kws.recipes.FINETUNE["sws"]``); ``budget``: Hyper-Compression's per-layer error budget for "hyper"
    recipes (None: ``kws.recipes.FINETUNE["hyper"]``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _compress_run(source, recipes, output, data_dir, finetune_epochs, seed, console, batch_size,
                             learning_rates, export, distill, tau, budget)
    finally:
        torch.set_num_threads(previous)


def _compress_run(source, recipes, output, data_dir, finetune_epochs, seed, console, batch_size, learning_rates,
                  export, distill, tau=None, budget=None) -> list[dict]:
    """compress_run() with the thread count set."""
    from rich.console import Console

    from edgepack.kws.evaluate import load_torch

    console = console or Console()
    if finetune_epochs is not None and finetune_epochs < 0:
        raise KwsTrainError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    names = [n for r in recipes for n in (RECIPES if r == "all" else [r])]
    resolved = [resolve_recipe(r) for r in dict.fromkeys(names)]  # unknown names fail before any work
    checkpoint, builder, kwargs, run_data, augmentation = _dense_source(source)
    dense = load_torch(checkpoint)
    data_dir = data_dir or run_data
    if data_dir is None:
        raise KwsTrainError(f"{source}: no train.json next to it names the dataset; pass --data DIR")
    data = load_data(data_dir, seed=seed)
    cache = {split: features(data[split].audio) for split in ("validation", "test")}
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise KwsTrainError(f"-o {out}: exists and is not a folder")
    rows = []
    for name, recipe in resolved:
        folder = out if len(resolved) == 1 else out / slug(name)
        epochs, rates, average_last = finetune_of(name, finetune_epochs, learning_rates)
        rows.append(compress_one(dense, builder, kwargs, name, recipe, data, cache, folder, epochs, seed, console,
                                 batch_size, rates, export, distill, augmentation, average_last, tau, budget))
        row = rows[-1]
        console.print(f"{name}: {row['bytes']:,} bytes ({row['ratio']:.1f}x smaller), accuracy "
                      f"{row['accuracy_compressed']:.1%} → {row['accuracy']:.1%} fine-tuned "
                      f"(dense {row['accuracy_dense']:.1%})")
        if "deep_compression" in row:
            console.print(f"{name}: τ {row['tau']:g}, {row['nonzero_percent']:.1f} % of the weights non-zero, "
                          f"{len(row['codebook'])} shared values; Deep Compression's size "
                          f"{row['deep_compression']['bytes']:,.0f} bytes ({row['deep_compression']['rate']:.1f}x)")
    if len(resolved) > 1:
        (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_summary(rows, console)
    return rows


def print_summary(rows: list[dict], console) -> None:
    """The accuracy-vs-size table of the compressed variants."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"DS-CNN compression: test accuracy (dense {rows[0]['accuracy_dense']:.1%})",
                  box=box.SIMPLE, padding=(0, 1, 0, 0), pad_edge=False)
    for column in ("recipe", "bytes", "× fewer", "at init", "tuned", "Δ", "ONNX", "TFLite"):
        table.add_column(column, justify="left" if column == "recipe" else "right", no_wrap=True)
    for row in rows:
        exported = [f"{row[f]['accuracy']:.1%}" if f in row else "—" for f in ("onnx", "tflite")]
        table.add_row(row["recipe"], f"{row['bytes']:,}", f"{row['ratio']:.1f}", f"{row['accuracy_compressed']:.1%}",
                      f"{row['accuracy']:.1%}", f"{100 * (row['accuracy'] - row['accuracy_dense']):+.1f}",
                      *exported)
    console.print(table)


def _handler(args) -> int:
    compress_run(args.run, args.recipe, args.output, data_dir=args.data, finetune_epochs=args.finetune_epochs,
                 seed=args.seed, export=not args.no_export, distill=not args.no_distill, threads=args.threads,
                 tau=args.tau, budget=args.budget)
    return 0


def add_parser(subparsers) -> None:
    """``edgepack kws compress RUN --recipe NAME|FILE -o OUT [--finetune-epochs N]``."""
    parser = subparsers.add_parser("compress", help="compress a trained DS-CNN, fine-tune, export ONNX and TFLite")
    parser.add_argument("run", help="a training run folder (its best.safetensors) or a dense KWS checkpoint")
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME|FILE",
                        help=f"a named recipe ({', '.join(RECIPES)}), 'all', or a YAML/JSON recipe file; "
                             "repeat for several (each then in OUT/<name>/)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--data", help="dataset folder (default: the one the run was trained on)")
    parser.add_argument("--finetune-epochs", type=int,
                        help="fine-tuning epochs at learning rates "
                             f"{' → '.join(f'{r:g}' for r in FINETUNE_RATES)} (default {FINETUNE_EPOCHS}"
                             + "".join(f", {n}: {f['epochs']}" for n, f in FINETUNE.items() if "epochs" in f)
                             + "; 0: none)")
    parser.add_argument("--no-distill", action="store_true",
                        help="fine-tune on the labels only (default: half the loss is distilled from the dense model)")
    parser.add_argument("--tau", type=float,
                        help=f"soft weight-sharing's τ for the sws recipe (default {FINETUNE['sws']['tau']:g})")
    parser.add_argument("--budget", type=float,
                        help="Hyper-Compression's per-layer relative output error for the hyper recipes; default: "
                             + ", ".join(f"{n} {f['budget']:g}" for n, f in FINETUNE.items() if "budget" in f))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as kws train)")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX / TFLite export")
    parser.set_defaults(handler=_handler)
