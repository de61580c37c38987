"""``edgepack papers sws``: Soft Weight-Sharing's Table 1 (Ullrich, Meeds, Welling 2017) on MNIST.

Pretrain a LeNet (or reuse the work folder's checkpoint), retrain it with the Gaussian-mixture prior,
post-process (merge components, quantize, prune), evaluate, count its size as Deep Compression does
(compression.size_accounting) and export it with codebook ops for the real bytes on disk; print the
paper's figures beside ours and write ``sws-<model>.json`` and the weight-distribution plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgepack.errors import EdgepackError

# Table 1 of the paper (PAPERS.md): error % before / after, non-zero %, compression rate.
PAPER = {
    "lenet-300-100": {"error_before": 1.89, "error_after": 1.94, "nonzero_percent": 4.3, "rate": 64.0},
    "lenet-5": {"error_before": 0.88, "error_after": 0.97, "nonzero_percent": 0.5, "rate": 162.0},
}
PRETRAIN_EPOCHS = {"lenet-300-100": 10, "lenet-5": 8}
PRETRAIN_SOLVERS = ("adam", "caffe")  # lenet.train_classifier / lenet.train_caffe_solver
RETRAIN_EPOCHS = 30  # as the authors' tutorial (at its slower prior rates); measured in README "Papers"
TAU = 0.05
BATCH_SIZE = 256
# --quick (CI): a subset, 126 retraining steps; a strong prior (tau 2) and the pretraining learning rate
# move the weights onto the mixture in so few steps (the paper's tau needs thousands).
QUICK = {"train": 8000, "test": 2000, "pretrain_epochs": 10, "epochs": 2, "tau": 2.0, "batch_size": 128,
         "lr": 1e-3}
KL_THRESHOLD = 1e-2
# Full runs (measured in README "Papers"): the mixture learns 10x faster than compression.sws's defaults (the
# tutorial's) over 30 epochs, then FINAL_EPOCHS epochs at FINAL_TAU with the mixture frozen settle the weights on
# its means before quantization. Precisions and mixing at 1e-2 left 13 % of LeNet-300-100's weights non-zero.
FULL_PRIOR_LRS = {"means": 1e-3, "log_precisions": 3e-2, "mixing": 3e-2}
FINAL_EPOCHS = 2
FINAL_TAU = 10.0
PRIOR_OPTIONS = ("components", "pi_zero", "pi_zero_prior", "init_std", "gamma_zero", "gamma_others")


class PapersError(EdgepackError):
    """Bad input to a ``papers`` run; the message names the option and what would be valid."""


def _pretrained(name: str, work: Path, train, epochs: int, seed: int, tag: str, progress, solver: str = "adam"):
    """The pretrained model from the work folder's checkpoint, or trained now and saved there: ``epochs``
    of Adam, or (``solver`` "caffe") Caffe's MNIST solver (lenet.CAFFE_SOLVER, which sets its own length)."""
    from edgepack.benchmarks.lenet import BUILDER_NAMES, MODELS, train_caffe_solver, train_classifier
    from edgepack.compression import load_checkpoint, save_checkpoint

    length = f"e{epochs}" if solver == "adam" else "caffe"
    path = work / f"{name}-pretrained-{tag}-{length}-s{seed}.safetensors"
    if path.exists():
        return load_checkpoint(path), True
    torch.manual_seed(seed)
    model = MODELS[name]()
    if solver == "caffe":
        train_caffe_solver(model, train.images, train.labels, seed=seed, progress=progress,
                           description=f"pretrain {name}, Caffe's solver")
    else:
        train_classifier(model, train.images, train.labels, epochs=epochs, seed=seed, progress=progress,
                         description=f"pretrain {name}")
    save_checkpoint(model, path, BUILDER_NAMES[name])
    return model, False


def _export_bytes(model, name: str, work: Path) -> tuple[int | None, str]:
    """Bytes of the model exported to ONNX with codebook ops (and where), or None and why not."""
    from edgepack.compression import to_codebook
    from edgepack.exporter import export

    path = work / f"sws-{name}.onnx"
    try:
        compressed = to_codebook(copy.deepcopy(model), "*")
        export(compressed, (torch.zeros(1, 1, 28, 28),), path)
    except Exception as error:  # the codebook export may be missing in this build; the run still reports
        return None, f"export failed ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    from edgepack.exporter.external_data import model_size_bytes

    return model_size_bytes(path), str(path)


def _plot(before, after, prior_before, prior_after, path: Path) -> str:
    """The paper's figure (weights and mixture before and after), or why it was not drawn."""
    try:
        from edgepack.compression.sws_plot import plot_weights
    except ImportError as error:
        return f"not drawn ({error})"
    plot_weights(before, after, prior_before, prior_after, path)
    return str(path)


def run_sws(name: str, work: str | Path, *, epochs: int | None = None, pretrain_epochs: int | None = None,
            quick: bool = False, tau: float | None = None, kl_threshold: float = KL_THRESHOLD, seed: int = 0,
            export: bool = True, progress: bool = True, final_epochs: int | None = None,
            final_tau: float | None = None, pretrain: str = "adam", **retrain_options) -> dict:
    """Run the whole reproduction for ``name`` (lenet-300-100 or lenet-5); returns the JSON report.

    ``retrain_options`` go to ``compression.sws.retrain`` (batch_size, lr, prior_lrs, ...), those
    named in ``PRIOR_OPTIONS`` to the prior's initialisation (``MixturePrior.from_model``). ``pretrain``:
    "adam" (``pretrain_epochs`` of Adam) or "caffe" (Caffe's MNIST solver, 10,000 SGD iterations).
    ``final_epochs`` more epochs at ``final_tau`` follow with the mixture frozen (τ annealed up, as
    the authors' tutorial suggests), so the weights settle on the means before quantization."""
    from edgepack.benchmarks.lenet import MODELS, error_rate
    from edgepack.benchmarks.mnist import load_mnist
    from edgepack.compression import compress
    from edgepack.compression.size_accounting import model_size
    from edgepack.compression.sws import MixturePrior, postprocess, retrain, sws_weights
    from edgepack.kws.progress import progress_bar

    if name not in MODELS:
        raise PapersError(f"--model {name!r} is not a model of the paper (valid: {', '.join(MODELS)})")
    if final_epochs is not None and not (isinstance(final_epochs, int) and final_epochs >= 0):
        raise PapersError(f"--final-epochs must be an integer >= 0, got {final_epochs!r}")
    if final_tau is not None and not (isinstance(final_tau, (int, float)) and 0 <= final_tau < float("inf")):
        raise PapersError(f"--final-tau must be a finite number >= 0, got {final_tau!r}")
    if pretrain not in PRETRAIN_SOLVERS:
        raise PapersError(f"--pretrain {pretrain!r} is not a pretraining (valid: {', '.join(PRETRAIN_SOLVERS)})")
    if pretrain == "caffe" and pretrain_epochs is not None:
        raise PapersError("--pretrain-epochs is for --pretrain adam; Caffe's solver runs a fixed 10,000 iterations")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tag = "quick" if quick else "full"
    epochs = epochs or (QUICK["epochs"] if quick else RETRAIN_EPOCHS)
    pretrain_epochs = pretrain_epochs or (QUICK["pretrain_epochs"] if quick else PRETRAIN_EPOCHS[name])
    tau = tau if tau is not None else (QUICK["tau"] if quick else TAU)
    defaults = ({"batch_size": QUICK["batch_size"], "lr": QUICK["lr"]} if quick
                else {"batch_size": BATCH_SIZE, "prior_lrs": FULL_PRIOR_LRS})
    given = {k: v for k, v in retrain_options.items() if v is not None}
    retrain_options = {**defaults, **given}
    if "prior_lrs" in given:
        retrain_options["prior_lrs"] = {**defaults.get("prior_lrs", {}), **given["prior_lrs"]}
    started = time.perf_counter()
    train = load_mnist("train", limit=QUICK["train"] if quick else None, seed=seed)
    test = load_mnist("test", limit=QUICK["test"] if quick else None, seed=seed)
    with progress_bar(enabled=progress) as bar:
        model, cached = _pretrained(name, work, train, pretrain_epochs, seed, tag, bar, pretrain)
    error_before = error_rate(model, test.images, test.labels)
    pretrain_done = time.perf_counter()

    model, _ = compress(model, {"*": {"method": "sws"}})
    prior_options = {key: retrain_options.pop(key) for key in PRIOR_OPTIONS if key in retrain_options}
    prior = MixturePrior.from_model(model, **prior_options)
    prior_before, weights_before = copy.deepcopy(prior), sws_weights(model).detach().clone()
    prior, history = retrain(model, (train.images, train.labels), epochs=epochs, tau=tau, prior=prior,
                             val_data=(test.images, test.labels), progress=progress, seed=seed,
                             **retrain_options)
    final_epochs = final_epochs if final_epochs is not None else (0 if quick else FINAL_EPOCHS)
    final_tau = final_tau if final_tau is not None else FINAL_TAU
    if final_epochs:
        frozen = {"means": 0.0, "log_precisions": 0.0, "mixing": 0.0}
        prior, settled = retrain(model, (train.images, train.labels), epochs=final_epochs, tau=final_tau,
                                 prior=prior, val_data=(test.images, test.labels), progress=progress,
                                 seed=seed + 1, **{**retrain_options, "prior_lrs": frozen})
        history += [{**record, "epoch": epochs + record["epoch"], "final": True} for record in settled]
    weights_retrained = sws_weights(model).detach().clone()
    report = postprocess(model, prior, kl_threshold)
    retrain_done = time.perf_counter()

    size = model_size(model)
    exported, export_note = _export_bytes(model, name, work) if export else (None, "not exported (--no-export)")
    plot = _plot(weights_before, weights_retrained, prior_before, prior, work / f"sws-{name}.png")
    result = {
        "model": name, "quick": quick, "seed": seed, "tau": tau, "kl_threshold": kl_threshold,
        "retrain_options": {**retrain_options, **prior_options}, "train_samples": len(train), "test_samples": len(test),
        "pretrain": pretrain, "pretrain_epochs": pretrain_epochs if pretrain == "adam" else None,
        "pretrained_from_cache": cached, "epochs": epochs,
        "final_epochs": final_epochs, "final_tau": final_tau,
        "error_before": error_before, "error_after": error_rate(model, test.images, test.labels),
        "nonzero_percent": size.nonzero_percent, "rate": size.rate,
        "compressed_bytes": size.total_bits / 8, "dense_bytes": size.dense_bits / 8,
        "codebook": [float(v) for v in report.codebook],
        "exported_bytes": exported, "exported": export_note, "plot": plot,
        "pretrain_seconds": pretrain_done - started, "retrain_seconds": retrain_done - pretrain_done,
        "wall_seconds": time.perf_counter() - started,
        "paper": PAPER[name], "size": size.to_dict(), "layers": [vars(row) for row in report], "history": history,
    }
    (work / f"sws-{name}.json").write_text(json.dumps(result, indent=1, default=float))
    result["size_table"] = size.table()
    return result


def format_result(result: dict) -> str:
    """The paper's Table 1 row beside ours (same definitions), then the per-layer size table."""
    paper = result["paper"]
    exported = result["exported_bytes"]
    rows = [("error before (%)", f"{paper['error_before']:.2f}", f"{result['error_before']:.2f}"),
            ("error after (%)", f"{paper['error_after']:.2f}", f"{result['error_after']:.2f}"),
            ("non-zero weights (%)", f"{paper['nonzero_percent']:.1f}", f"{result['nonzero_percent']:.2f}"),
            ("compression rate", f"{paper['rate']:.0f}x", f"{result['rate']:.1f}x"),
            ("size (Deep Compression, bytes)", "", f"{result['compressed_bytes']:.0f} of {result['dense_bytes']:.0f}"),
            ("exported ONNX file (bytes)", "", f"{exported}" if exported is not None else "n/a")]
    width = max(len(r[0]) for r in rows)
    final = (f" + {result['final_epochs']} at tau {result['final_tau']:g}, mixture frozen"
             if result.get("final_epochs") else "")
    data = "full MNIST" if not result["quick"] else f"MNIST subset {result['train_samples']}/{result['test_samples']}"
    pretrain = (f"{result['pretrain_epochs']} epochs" if result.get("pretrain", "adam") == "adam"
                else "Caffe's solver")
    lines = [f"Soft weight-sharing, {result['model']} ({data}; pretrain {pretrain}"
             f"{' (cached)' if result['pretrained_from_cache'] else ''}, retrain {result['epochs']} epochs, "
             f"tau {result['tau']}{final}, {result['wall_seconds']:.0f} s)",
             f"{'':<{width}}  {'paper':>10}  {'edgepack':>16}"]
    lines += [f"{label:<{width}}  {p:>10}  {o:>16}" for label, p, o in rows]
    lines += ["", result["size_table"], "", f"export: {result['exported']}", f"plot: {result['plot']}"]
    return "\n".join(lines)


def _handler(args) -> int:
    torch.set_num_threads(args.threads)
    prior_lrs = {key: value for key, value in (("means", args.lr_means), ("log_precisions", args.lr_log_precisions),
                                               ("mixing", args.lr_mixing)) if value is not None}
    result = run_sws(args.model, args.work, epochs=args.epochs, pretrain_epochs=args.pretrain_epochs,
                     quick=args.quick, tau=args.tau, kl_threshold=args.kl_threshold, seed=args.seed,
                     export=args.export, batch_size=args.batch_size, lr=args.lr, prior_lrs=prior_lrs or None,
                     pi_zero=args.pi_zero, init_std=args.init_std, gamma_zero=args.gamma_zero,
                     gamma_others=args.gamma_others, final_epochs=args.final_epochs, final_tau=args.final_tau,
                     pretrain=args.pretrain)
    print(format_result(result))
    print(f"report: {Path(args.work) / f'sws-{args.model}.json'}")
    return 0


def _pair(values) -> str:
    """``(5000.0, 2.0)`` as ``5000,2`` for the help text."""
    return ",".join(f"{v:g}" for v in values)


def _gamma(text: str) -> tuple[float, float]:
    """``ALPHA,BETA`` of a Gamma hyper-prior (argparse type): two numbers, α > 1, β > 0."""
    try:
        alpha, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ALPHA,BETA (two numbers), got {text!r}") from None
    if not (alpha > 1 and beta > 0):
        raise argparse.ArgumentTypeError(f"expected alpha > 1 and beta > 0, got {text!r}")
    return alpha, beta


def _count(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def add_parser(subcommands) -> None:
    """``edgepack papers sws``."""
    from edgepack.benchmarks.lenet import MODELS
    from edgepack.cli import positive_int
    from edgepack.compression.sws import GAMMA_OTHERS, GAMMA_ZERO, PI_ZERO, PRIOR_LRS

    parser = subcommands.add_parser("sws", help="Soft Weight-Sharing's Table 1 on MNIST (LeNet-300-100, LeNet-5)")
    parser.add_argument("--model", choices=list(MODELS), default="lenet-300-100", help="default lenet-300-100")
    parser.add_argument("--epochs", type=positive_int, help=f"retraining epochs (default {RETRAIN_EPOCHS}; "
                                                              f"--quick {QUICK['epochs']})")
    parser.add_argument("--pretrain-epochs", type=positive_int,
                        help="pretraining epochs when no cached checkpoint exists (default "
                             f"{PRETRAIN_EPOCHS['lenet-300-100']} / {PRETRAIN_EPOCHS['lenet-5']}; --quick "
                             f"{QUICK['pretrain_epochs']})")
    parser.add_argument("--pretrain", choices=PRETRAIN_SOLVERS, default="adam",
                        help="adam (default: --pretrain-epochs of Adam) or caffe (Caffe's MNIST solver, which "
                             "trained the paper's LeNet-5-Caffe: SGD, momentum 0.9, weight decay 5e-4, batch 64, "
                             "rate 0.01 on the inv policy, 10,000 iterations)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a seeded MNIST subset ({QUICK['train']} train / {QUICK['test']} test) and few "
                             "epochs (for CI)")
    parser.add_argument("--tau", type=float, help=f"weight of the prior, the paper's tau (default {TAU}; --quick "
                                                     f"{QUICK['tau']})")
    parser.add_argument("--batch-size", type=positive_int, help=f"retraining batch size (default {BATCH_SIZE}; "
                                                                  f"--quick {QUICK['batch_size']})")
    parser.add_argument("--lr", type=float, help="retraining learning rate of the weights (default 5e-4, the "
                                                 f"paper's; --quick {QUICK['lr']})")
    for key, what in (("means", "the mixture's means"), ("log_precisions", "its log-precisions"),
                      ("mixing", "its mixing logits")):
        parser.add_argument(f"--lr-{key.replace('_', '-')}", type=float,
                            help=f"learning rate of {what} (default {FULL_PRIOR_LRS[key]:g}; "
                                 f"--quick {PRIOR_LRS[key]:g})")
    parser.add_argument("--pi-zero", type=float,
                        help=f"the zero component's fixed mixing proportion (default {PI_ZERO})")
    parser.add_argument("--init-std", type=float, help="initial standard deviation of every component (default: "
                                                       "each at its Gamma hyper-prior's mode)")
    parser.add_argument("--gamma-zero", type=_gamma, metavar="ALPHA,BETA",
                        help=f"Gamma hyper-prior on the zero component's precision (default {_pair(GAMMA_ZERO)})")
    parser.add_argument("--gamma-others", type=_gamma, metavar="ALPHA,BETA",
                        help=f"Gamma hyper-prior on the other precisions (default {_pair(GAMMA_OTHERS)})")
    parser.add_argument("--final-epochs", type=_count, help="then this many epochs at --final-tau with the mixture "
                                                        f"frozen, to settle the weights on its means (default "
                                                        f"{FINAL_EPOCHS}; --quick 0)")
    parser.add_argument("--final-tau", type=float, help=f"tau of those final epochs (default {FINAL_TAU})")
    parser.add_argument("--kl-threshold", type=float, default=KL_THRESHOLD,
                        help=f"merge mixture components closer than this KL divergence (default {KL_THRESHOLD})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--work", metavar="DIR", default="edgepack-papers",
                        help="work folder: cached pretrained checkpoints, JSON report, plot, ONNX file "
                             "(default edgepack-papers/)")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export the result with codebook ops and report the file's bytes (default on)")
    parser.set_defaults(handler=_handler)
