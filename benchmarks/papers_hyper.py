"""``edgepack papers hyper``: Hyper-Compression (Fan et al. 2024) against the retraining-free baselines.

Pretrain a model (or reuse the work folder's checkpoint), then compress it without retraining by
Hyper-Compression at several error budgets, per-channel 8- and 4-bit quantization and k-means
weight sharing (2..5 bits); measure each one's accuracy and its compression (dense bytes / stored
bytes, of the compressed layers and of the whole model); print the table with the paper's claims
beside, the answer to "is Hyper-Compression better, and where?", and write ``hyper-<model>.json``
and the accuracy-vs-compression plot ``hyper-<model>.png`` in the work folder.

Each family's setting is chosen on a held-out selection split (neither test nor calibration data)
and reported with its test accuracy, so the verdict does not pick on the split it reports.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgepack.benchmarks.papers_sws import PRETRAIN_EPOCHS, QUICK, PapersError, _pretrained

MODELS = ("lenet-300-100", "lenet-5", "digits-mlp", "kws-dscnn")
BUDGETS = (0.01, 0.02, 0.04, 0.08, 0.15, 0.25, 0.4)  # relative RMS error per layer (hyper_compress's budget)
QUICK_BUDGETS = (0.02, 0.08)
PTQ_BITS = (8, 4)
KMEANS_BITS = (5, 4, 3, 2)
DIGITS_EPOCHS = 30  # edgepack demo's dense training
CALIBRATION = 256  # model inputs from the training data on which hyper measures each layer's output error
SELECTION = 5000  # held-out inputs (not test, not calibration) on which each family's setting is chosen
LOSS_POINTS = (0.5, 1.0, 2.0)
# The paper's repository README (PAPERS.md): retraining-free results, metric before -> after.
PAPER = [
    {"model": "MobileNetV3 (CIFAR-10)", "ratio": 5.0, "metric": "accuracy %", "before": 74.41, "after": 73.93},
    {"model": "UNet (Carvana)", "ratio": 7.9, "metric": "Dice %", "before": 99.86, "after": 99.71},
    {"model": "LLaMA2-7B", "ratio": 2.6, "metric": "perplexity", "before": 5.19, "after": 5.48},
]


@dataclass
class Task:
    """A model to compress and its data: ``accuracy(model, x, y)`` in percent, scored on ``test`` and
    on ``selection`` (held out from test and calibration; where settings are chosen)."""

    model: nn.Module
    accuracy: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    test: tuple[torch.Tensor, torch.Tensor]
    selection: tuple[torch.Tensor, torch.Tensor]
    calibration: torch.Tensor
    description: str
    source: str  # where the dense model came from, for the table's heading
    cached: bool

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Accuracy (%) of ``model`` on the test and the selection split."""
        return {"test": self.accuracy(model, *self.test), "selection": self.accuracy(model, *self.selection)}


def _held_out(x: torch.Tensor, y: torch.Tensor, seed: int, selection: int = SELECTION):
    """A seeded split of (x, y) into calibration inputs (CALIBRATION) and a disjoint selection split."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    chosen = order[CALIBRATION:CALIBRATION + selection]
    return x[order[:CALIBRATION]], (x[chosen], y[chosen])


def _mnist_task(name: str, work: Path, quick: bool, seed: int, progress: bool) -> Task:
    """LeNet-300-100 / LeNet-5 on MNIST, pretrained (or reused from ``work``); selection from train."""
    from edgepack.benchmarks.lenet import error_rate
    from edgepack.benchmarks.mnist import load_mnist
    from edgepack.kws.progress import progress_bar

    train = load_mnist("train", limit=QUICK["train"] if quick else None, seed=seed)
    test = load_mnist("test", limit=QUICK["test"] if quick else None, seed=seed)
    epochs = QUICK["pretrain_epochs"] if quick else PRETRAIN_EPOCHS[name]
    with progress_bar(enabled=progress) as bar:
        model, cached = _pretrained(name, work, train, epochs, seed, "quick" if quick else "full", bar)
    calibration, selection = _held_out(train.images, train.labels, seed)
    data = (f"MNIST {len(train)}/{len(test)}, pretrained {epochs} epochs, selection: {len(selection[1])} "
            "training images")
    source = f"pretrained model {'reused from' if cached else 'trained now, saved in'} {work}"
    return Task(model, lambda m, x, y: 100.0 - error_rate(m, x, y), (test.images, test.labels), selection,
                calibration, data, source, cached)


def _digits_task(work: Path, seed: int) -> Task:
    """The demo's digits MLP, trained (or reused from ``work``); selection from its training split.
    Not papers_sws._pretrained: that one trains the LeNets on MNIST tensors."""
    from edgepack.compression import load_checkpoint, save_checkpoint
    from edgepack.demo import accuracy, digits_mlp, load_digits_split, train_classifier

    data = load_digits_split(seed)
    path = work / f"digits-mlp-pretrained-e{DIGITS_EPOCHS}-s{seed}.safetensors"
    cached = path.exists()
    if cached:
        model = load_checkpoint(path)
    else:
        torch.manual_seed(seed)
        model = train_classifier(digits_mlp(), data, DIGITS_EPOCHS, seed=seed)
        save_checkpoint(model, path, "edgepack.demo:digits_mlp")
    calibration, selection = _held_out(data.x_train, data.y_train, seed)
    description = (f"sklearn digits {len(data.x_train)}/{len(data.x_test)}, MLP 64-256-256-10, {DIGITS_EPOCHS} "
                   f"epochs, selection: {len(selection[1])} training digits")
    source = f"pretrained model {'reused from' if cached else 'trained now, saved in'} {work}"
    return Task(model, lambda m, x, y: 100.0 * accuracy(m, x, y), (data.x_test, data.y_test), selection,
                calibration, description, source, cached)


def _kws_task(checkpoint, data_dir, seed: int) -> Task:
    """A DS-CNN checkpoint on its Speech Commands folder; calibration and selection from validation."""
    from edgepack.kws.evaluate import checkpoint_of, load_torch
    from edgepack.kws.train import accuracy, features, load_data

    if checkpoint is None or data_dir is None:
        raise PapersError("--model kws-dscnn needs --checkpoint (a DS-CNN run folder or .safetensors, e.g. from "
                          "`edgepack kws train`) and --data (its Speech Commands folder)")
    path = checkpoint_of(checkpoint)
    model = load_torch(path)
    splits = load_data(data_dir, ("validation", "test"), seed=seed)
    validation = features(splits["validation"].audio), torch.as_tensor(splits["validation"].labels)
    calibration, selection = _held_out(*validation, seed, selection=len(validation[1]))
    test = features(splits["test"].audio), torch.as_tensor(splits["test"].labels)
    description = (f"KWS {Path(data_dir).name}: {len(test[1])} test clips, selection: {len(selection[1])} "
                   "validation clips")
    return Task(model, lambda m, x, y: 100.0 * accuracy(m, x, y.numpy()), test, selection, calibration,
                description, f"checkpoint {path}", False)


def _layer_bytes(dense: nn.Module, compressed: nn.Module) -> tuple[int, int]:
    """(dense, stored) bytes of the layers every method compresses (Linear / Conv2d with ≥ 10 weights),
    read from ``compressed`` (a layer left dense counts in full)."""
    from edgepack.compression.ptq_baselines import target_layers
    from edgepack.compression.recipe import tensor_bytes

    names = list(target_layers(dense))
    return (sum(tensor_bytes(dense.get_submodule(name))[1] for name in names),
            sum(tensor_bytes(compressed.get_submodule(name))[1] for name in names))


def _row(family: str, method: str, setting: str, tag: str, scores: dict, dense: dict,
         layer_bytes: tuple[int, int], model_bytes: tuple[int, int], seconds: float, **extra) -> dict:
    """One table row: test and selection accuracy, loss against dense on each, (dense, stored) bytes of the
    layers and the model; ``exact_ratio`` is the layers' ratio at exactly the method's bits (default: stored)."""
    ratio = layer_bytes[0] / max(layer_bytes[1], 1)
    return {"family": family, "method": method, "setting": setting, "tag": tag, "accuracy": scores["test"],
            "error": 100.0 - scores["test"], "loss_points": dense["test"] - scores["test"],
            "selection_accuracy": scores["selection"],
            "selection_loss_points": dense["selection"] - scores["selection"],
            "layers_dense_bytes": layer_bytes[0], "layers_stored_bytes": layer_bytes[1], "ratio": ratio,
            "exact_ratio": ratio, "model_dense_bytes": model_bytes[0], "model_stored_bytes": model_bytes[1],
            "model_ratio": model_bytes[0] / max(model_bytes[1], 1), "seconds": seconds, **extra}


def _listed(row) -> dict:
    """A report row (dataclass) as a JSON-ready dict, its shape a list."""
    return {**asdict(row), "shape": list(row.shape)}


def _hyper_rows(task: Task, dense: dict, budgets, calibrate: bool, progress: bool) -> list[dict]:
    """Hyper-Compression at each budget (calibrated on ``task.calibration`` unless told not to)."""
    from edgepack.compression.hyper import hyper_compress
    from edgepack.compression.recipe import compressed_size_bytes

    rows = []
    dense_bytes = compressed_size_bytes(task.model)
    for budget in budgets:
        started = time.perf_counter()
        model, report = hyper_compress(task.model, budget=budget,
                                       calibration=task.calibration if calibrate else None, progress=progress)
        seconds = time.perf_counter() - started
        rows.append(_row("hyper", f"hyper {budget:g}", f"budget {budget:g}{', calibrated' if calibrate else ''}",
                         f"{budget:g}", task.evaluate(model), dense, _layer_bytes(task.model, model),
                         (dense_bytes, compressed_size_bytes(model)), seconds,
                         budget=budget, calibrated=calibrate, layers=[_listed(row) for row in report]))
    return rows


def _baseline_rows(task: Task, dense: dict, seed: int) -> list[dict]:
    """Per-channel PTQ (8, 4 bits) and k-means (5..2 bits), data-free; ``exact_ratio`` at exact b bits."""
    from edgepack.compression.codebook import choose_bits
    from edgepack.compression.ptq_baselines import kmeans_compress, ptq_compress

    rows = []
    runs = [("ptq", f"PTQ {bits}-bit", "per-channel symmetric", f"{bits}b", lambda b=bits: ptq_compress(task.model, b))
            for bits in PTQ_BITS]
    runs += [("k-means", f"k-means {bits}-bit", f"k={2 ** bits}, {choose_bits(2 ** bits)}-bit indices", f"{bits}b",
              lambda b=bits: kmeans_compress(task.model, b, seed=seed)) for bits in KMEANS_BITS]
    for family, method, setting, tag, run in runs:
        started = time.perf_counter()
        model, report = run()
        seconds = time.perf_counter() - started
        packed = sum(row.packed_bytes for row in report)
        rows.append(_row(family, method, setting, tag, task.evaluate(model), dense,
                         (report.dense_bytes, report.stored_bytes),
                         (report.model_dense_bytes, report.model_stored_bytes), seconds,
                         storage=sorted({row.storage for row in report}),
                         packed_ratio=report.dense_bytes / max(packed, 1),
                         exact_ratio=report.dense_bytes / max(packed, 1),
                         layers=[_listed(row) for row in report]))
    return rows


def _best(rows: list[dict], family: str, loss: float, key: str) -> dict | None:
    """``family``'s setting of highest ``key`` ratio whose loss on the selection split is within ``loss``."""
    within = [r for r in rows if r["family"] == family and r["selection_loss_points"] <= loss + 1e-9]
    return max(within, key=lambda r: (r[key], r["selection_accuracy"])) if within else None


def verdict(rows: list[dict], losses=LOSS_POINTS, *, test_items: int, calibration: int) -> list[str]:
    """The answer from the numbers. Per accuracy loss allowed, each family's smallest setting within it
    on the selection split, reported with its test accuracy, and the winner as edgepack stores it and
    at exact bits; then the Pareto front (test) among the settings within max(losses) of dense."""
    dense = next(r for r in rows if r["family"] == "dense")
    p = dense["accuracy"] / 100.0
    lines = [f"settings chosen on the selection split, scored on test ({test_items} items: 1 item = "
             f"{100.0 / max(test_items, 1):.3g} pt, standard error of dense's accuracy "
             f"{100.0 * math.sqrt(p * (1 - p) / max(test_items, 1)):.2f} pt); " + (
             f"hyper calibrated on {calibration} inputs" if calibration else "hyper not calibrated")
             + ", baselines data-free"]
    families = [family for family in ("hyper", "ptq", "k-means") if any(r["family"] == family for r in rows)]
    for loss in losses:
        stored = {family: _best(rows, family, loss, "ratio") for family in families}
        exact = {family: _best(rows, family, loss, "exact_ratio") for family in families}
        parts = [f"{r['method']} {r['ratio']:.1f}x, test {r['accuracy']:.2f}% ({0.0 - r['loss_points']:+.2f})"
                 if r else f"{family} none" for family, r in stored.items()]
        chosen = [r for r in stored.values() if r]
        chosen_exact = [r for r in exact.values() if r]
        line = f"loss <= {loss:g} pt: " + "; ".join(parts)
        if chosen:
            won = max(chosen, key=lambda r: r["ratio"])
            won_exact = max(chosen_exact, key=lambda r: r["exact_ratio"])
            line += (f" -> best as edgepack stores it (codebook: 1/2/4/8-bit indices): {won['method']} "
                     f"{won['ratio']:.1f}x; at exact bits: {won_exact['method']} {won_exact['exact_ratio']:.1f}x")
        else:
            line += " -> best: none"
        lines.append(line)
    limit = max(losses)
    near = [r for r in rows if r["family"] != "dense" and r["loss_points"] <= limit + 1e-9]
    front = sorted((r for r in near if not any(
        o is not r and o["ratio"] >= r["ratio"] and o["accuracy"] >= r["accuracy"]
        and (o["ratio"] > r["ratio"] or o["accuracy"] > r["accuracy"]) for o in near)), key=lambda r: r["ratio"])
    lines.append(f"Pareto front within {limit:g} pt of dense (ratio as stored, test accuracy): " + (", ".join(
        f"{r['method']} {r['ratio']:.1f}x {r['accuracy']:.2f}%" for r in front) or "none"))
    if any(r["family"] == "hyper" for r in rows):
        hyper_on_front = [r for r in front if r["family"] == "hyper"]
        lines.append("Hyper-Compression is " + (
            "on that front at " + ", ".join(f"{r['ratio']:.1f}x" for r in hyper_on_front) if hyper_on_front
            else f"not on that front (within {limit:g} pt another method is smaller and at least as accurate, "
                 "or hyper is not within it)") + ".")
    return lines


def _plot(rows: list[dict], dense_accuracy: float, title: str, path: Path) -> str:
    """Accuracy against compression (dense / stored bytes of the compressed layers), one line per family;
    points below the axis are drawn on its floor as open triangles and counted in a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    low = max(min([r["accuracy"] for r in rows] + [dense_accuracy]) - 1, dense_accuracy - 25)
    floor = low + 0.04 * (dense_accuracy + 1 - low)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    styles = {"hyper": ("tab:red", "o"), "ptq": ("tab:blue", "s"), "k-means": ("tab:green", "^")}
    clipped = 0
    for family, (color, marker) in styles.items():
        points = sorted((r["ratio"], r["accuracy"], r["tag"]) for r in rows if r["family"] == family)
        if points:
            axis.plot([x for x, _, _ in points], [max(y, floor) for _, y, _ in points], marker=marker, color=color,
                      label=family)
            for x, y, tag in points:
                clipped += y < floor
                if y < floor:
                    axis.plot([x], [floor], marker="v", color=color, markerfacecolor="white", markersize=9)
                axis.annotate(f"{tag} ({y:.0f}%)" if y < floor else tag, (x, max(y, floor)),
                              textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    packed = sorted((r["packed_ratio"], max(r["accuracy"], floor)) for r in rows if r["family"] == "k-means")
    if packed:
        axis.plot([p[0] for p in packed], [p[1] for p in packed], marker="^", color="tab:green", linestyle=":",
                  markerfacecolor="none", label="k-means, exact b-bit indices\n(not an edgepack format)")
    axis.axhline(dense_accuracy, color="grey", linestyle="--", linewidth=1, label="dense")
    if clipped:
        axis.plot([], [], "v", color="black", markerfacecolor="white", label=f"{clipped} below the axis\n"
                  "(drawn on its floor, accuracy in brackets)")
    axis.set_xscale("log")
    ticks = FuncFormatter(lambda value, _: f"{value:g}x")
    axis.xaxis.set_major_formatter(ticks)
    axis.xaxis.set_minor_formatter(ticks)
    axis.set_xlabel("compression of the compressed layers (dense bytes / stored bytes)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(low, dense_accuracy + 1)
    axis.set_title(title, fontsize=9)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return str(path)


def run_hyper(name: str, work: str | Path, *, quick: bool = False, budgets=None, calibrate: bool = True,
              seed: int = 0, checkpoint=None, data=None, progress: bool = True) -> dict:
    """Compress ``name`` by every method without retraining, evaluate each; returns the JSON report."""
    if name not in MODELS:
        raise PapersError(f"--model {name!r} is not supported (valid: {', '.join(MODELS)})")
    if name != "kws-dscnn" and (checkpoint is not None or data is not None):
        raise PapersError(f"--checkpoint / --data are for --model kws-dscnn only; {name} is pretrained here "
                          "(and cached in the work folder)")
    budgets = tuple(budgets) if budgets is not None else (QUICK_BUDGETS if quick else BUDGETS)
    if not budgets or any(not (0 < b < 1) for b in budgets):
        raise PapersError(f"--budgets {','.join(map(str, budgets))}: give at least one budget, each a relative "
                          "RMS error in (0, 1)")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(seed)
    if name == "digits-mlp":
        task = _digits_task(work, seed)
    elif name == "kws-dscnn":
        task = _kws_task(checkpoint, data, seed)
    else:
        task = _mnist_task(name, work, quick, seed, progress)
    from edgepack.compression.ptq_baselines import target_layers
    from edgepack.compression.recipe import compressed_size_bytes, tensor_bytes

    dense = task.evaluate(task.model)
    dense_bytes = compressed_size_bytes(task.model)
    targets = target_layers(task.model).values()
    layers = sum(tensor_bytes(m)[1] for m in targets)
    rows = [_row("dense", "dense", "float32", "", dense, dense, (layers, layers), (dense_bytes, dense_bytes), 0.0)]
    rows += _hyper_rows(task, dense, budgets, calibrate, progress)
    rows += _baseline_rows(task, dense, seed)
    weights = sum(m.weight.numel() for m in targets)
    for row in rows:
        row["bits_per_weight"] = 8 * row["layers_stored_bytes"] / weights
    result = {"model": name, "quick": quick, "seed": seed, "data": task.description, "source": task.source,
              "pretrained_from_cache": task.cached, "dense_accuracy": dense["test"],
              "dense_selection_accuracy": dense["selection"], "test_items": len(task.test[1]),
              "selection_items": len(task.selection[1]), "dense_bytes": dense_bytes, "calibrated": calibrate,
              "calibration_samples": len(task.calibration) if calibrate else 0, "rows": rows, "paper": PAPER}
    result["verdict"] = verdict(rows, test_items=result["test_items"], calibration=result["calibration_samples"])
    result["wall_seconds"] = time.perf_counter() - started
    result["plot"] = _plot(rows, dense["test"], f"{name}: {task.description}", work / f"hyper-{name}.png")
    (work / f"hyper-{name}.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def format_result(result: dict) -> str:
    """Our table (every method, no retraining), the paper's claims beside, and the verdict."""
    header = (f"{'method':<15}{'setting':<26}{'accuracy %':>11}{'loss pt':>9}{'sel. loss':>10}{'layers B':>11}"
              f"{'bits/w':>7}{'ratio':>8}{'model B':>10}{'model':>8}")
    lines = [f"Hyper-Compression vs retraining-free baselines, {result['model']} ({result['data']}; "
             f"{result['source']}; {result['wall_seconds']:.0f} s)",
             header]
    for r in result["rows"]:
        lines.append(f"{r['method']:<15}{r['setting']:<26}{r['accuracy']:>11.2f}{r['loss_points']:>9.2f}"
                     f"{r['selection_loss_points']:>10.2f}{r['layers_stored_bytes']:>11}{r['bits_per_weight']:>7.2f}"
                     f"{r['ratio']:>7.1f}x{r['model_stored_bytes']:>10}{r['model_ratio']:>7.1f}x"
                     + ("  (bytes counted, dense simulation)" if "counted" in r.get("storage", []) else ""))
    kmeans = [r for r in result["rows"] if r["family"] == "k-means"]
    if kmeans:
        lines.append("k-means at exactly b bits per index (the codebook op packs 1/2/4/8): " + ", ".join(
            f"{r['tag']} {r['packed_ratio']:.1f}x" for r in kmeans))
    lines.append("accuracy / loss pt: test; sel. loss: loss on the selection split (where settings are chosen); "
                 "bits/w: stored bits of the compressed layers per weight (indices, tables, bias included)")
    lines += ["", "The paper (no retraining, its README):"]
    lines += [f"  {p['model']:<24}{p['ratio']:>5.1f}x  {p['metric']} {p['before']} -> {p['after']} "
              f"({p['after'] - p['before']:+.2f})" for p in result["paper"]]
    lines += ["", "Is Hyper-Compression better, and where? (ratio = dense / stored bytes of the compressed layers)"]
    lines += [f"  {line}" for line in result["verdict"]]
    lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)


def _budgets(text: str) -> tuple[float, ...]:
    """``--budgets`` as floats; an empty list is refused (it would silently drop Hyper-Compression)."""
    try:
        budgets = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise PapersError(f"--budgets {text!r}: give comma-separated relative errors, e.g. 0.02,0.05") from None
    if not budgets:
        raise PapersError(f"--budgets {text!r} names no budget: give comma-separated relative errors, e.g. 0.02,0.05")
    return budgets


def _handler(args) -> int:
    """Run ``edgepack papers hyper`` and print its table and verdict."""
    torch.set_num_threads(args.threads)
    result = run_hyper(args.model, args.work, quick=args.quick,
                       budgets=_budgets(args.budgets) if args.budgets is not None else None,
                       calibrate=args.calibrate, seed=args.seed, checkpoint=args.checkpoint, data=args.data)
    print(format_result(result))
    print(f"report: {Path(args.work) / f'hyper-{args.model}.json'}")
    return 0


def add_parser(subcommands) -> None:
    """``edgepack papers hyper``."""
    import argparse

    from edgepack.cli import positive_int

    parser = subcommands.add_parser("hyper", help="Hyper-Compression vs per-channel PTQ and k-means, no retraining")
    parser.add_argument("--model", choices=MODELS, default="lenet-300-100", help="default lenet-300-100")
    parser.add_argument("--quick", action="store_true",
                        help=f"MNIST models: a seeded subset ({QUICK['train']} train / {QUICK['test']} test); "
                             f"hyper budgets {','.join(map(str, QUICK_BUDGETS))}")
    parser.add_argument("--budgets", metavar="B,B,...",
                        help=f"hyper's per-layer relative RMS error budgets (default {','.join(map(str, BUDGETS))})")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                        help=f"measure hyper's error on each layer's output for {CALIBRATION} training inputs "
                             "(default on; off: on the weights)")
    parser.add_argument("--checkpoint", help="kws-dscnn: the DS-CNN run folder or checkpoint")
    parser.add_argument("--data", help="kws-dscnn: its Speech Commands data folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--work", metavar="DIR", default="edgepack-papers",
                        help="work folder: cached pretrained checkpoints, JSON report, plot (default edgepack-papers/)")
    parser.set_defaults(handler=_handler)

