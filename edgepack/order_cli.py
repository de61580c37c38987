"""``edgepack order``: decide in which order compression stages should run (Order of Compression, Shen et al.
2024) by pairwise experiments on Ray, and write the report."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def add_parser(commands) -> None:
    """Add ``order`` to the top-level sub-parsers ``commands``."""
    from edgepack.cli import positive_int
    from edgepack.compression.order import LETTER_NAMES, LETTERS, MARGIN

    parser = commands.add_parser(
        "order", help="decide the order of compression stages by pairwise experiments on Ray, with a report")
    parser.add_argument("--model", required=True, metavar="CKPT", help="the trained model: an edgepack checkpoint")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="what the stages train and are measured on: digits, mnist, mnist[:N], kws:DIR or "
                             "FILE.npz (x_train, y_train, x_val, y_val[, x_test, y_test])")
    parser.add_argument("--stages", required=True, metavar="LETTERS",
                        help="the stages to order, e.g. D,P,Q,E: " + ", ".join(
                            f"{k} {LETTER_NAMES[k]} ({LETTERS[k][0]})" for k in LETTERS))
    parser.add_argument("--stages-file", metavar="FILE.yaml",
                        help="settings per letter, replacing the defaults: {P: {prune_channels: {ratio: 0.25}}, "
                             "X: {recipe: {recipe: {...}}}} (a new letter names any registered stage)")
    parser.add_argument("--budget", type=positive_int, default=1, metavar="EPOCHS",
                        help="training epochs every stage gets, in either order (default 1)")
    parser.add_argument("--seeds", type=positive_int, default=3, metavar="N",
                        help="seeds per order (default 3; with one, pairs are decided by the margin alone)")
    parser.add_argument("--triples", metavar="ACB,...",
                        help="insertion checks: for each A·C·B, does C between A and B flip their order?")
    parser.add_argument("--random-orders", type=int, default=3, metavar="K",
                        help="random orders of all stages to compare the recommended one with (default 3)")
    parser.add_argument("--margin", type=_fraction, default=MARGIN, metavar="M",
                        help=f"accuracy difference within which two orders tie (default {MARGIN}: "
                             f"{100 * MARGIN:g} points)")
    parser.add_argument("--address", metavar="ADDR",
                        help="a Ray cluster to run on (\"auto\" or HOST:PORT); default: a local Ray instance")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, metavar="C",
                        help="CPUs each run declares (torch threads; default 1)")
    parser.add_argument("--gpus-per-task", type=float, default=0.0, metavar="G", help="GPUs each run declares")
    parser.add_argument("--retries", type=int, default=2, metavar="R",
                        help="reruns of a task whose worker died or that raised, before it is recorded as failed")
    parser.add_argument("--local-cpus", type=positive_int, metavar="N",
                        help="CPUs of the local Ray instance (default: all of this machine's)")
    parser.add_argument("--batch-size", type=positive_int, default=100, metavar="B", help="training batch size")
    parser.add_argument("--trust-builder", action="append", metavar="MODULE:FUNCTION",
                        help="allow the checkpoint's builder to be imported although not registered (repeatable)")
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="do not export and time the compared models on this host")
    parser.add_argument("--restart", action="store_true",
                        help="forget the runs recorded in -o (default: resume, skipping them)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="the folder for runs.jsonl, the runs' checkpoints and report.md / report.html")
    parser.set_defaults(handler=_order)


def _stages_file(path: str | None) -> dict:
    """The letters' settings of ``--stages-file`` (YAML/JSON mapping), read as pipeline files are."""
    from edgepack.compression.pipeline import read_settings_file
    from edgepack.compression.stages import StageError

    if path is None:
        return {}
    content = read_settings_file(Path(path), "--stages-file")
    if not isinstance(content, dict) or not all(isinstance(k, str) and len(k) == 1 for k in content):
        raise StageError(f"--stages-file {path}: expected a mapping of letters to {{stage: {{params}}}}")
    return content


def _order(args: argparse.Namespace) -> int:
    from edgepack.compression import load_checkpoint
    from edgepack.compression.order import parse_triples, stage_specs
    from edgepack.compression.order_search import search_order
    from edgepack.compression.order_sweep import RUN_CHECKPOINTS, RUNS, SweepSettings
    from edgepack.compression.stages import StageError
    from edgepack.pipeline_data import load_data_spec

    for flag, value, low in (("--random-orders", args.random_orders, 0), ("--retries", args.retries, 0),
                             ("--cpus-per-task", args.cpus_per_task, 0.01), ("--gpus-per-task", args.gpus_per_task, 0)):
        if value < low:
            raise StageError(f"{flag} must be >= {low}, got {value}")
    specs = stage_specs(args.stages, _stages_file(args.stages_file), epochs=args.budget)
    triples = parse_triples(args.triples, list(specs))
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise StageError(f"-o {args.output}: is a file; the order search writes a folder")
    trusted = args.trust_builder or ()
    model = load_checkpoint(args.model, trust_builder=trusted)
    data = load_data_spec(args.data, batch_size=args.batch_size)
    if args.restart and out.is_dir():
        (out / RUNS).unlink(missing_ok=True)
        shutil.rmtree(out / RUN_CHECKPOINTS, ignore_errors=True)
    settings = SweepSettings(address=args.address, cpus=args.cpus_per_task, gpus=args.gpus_per_task,
                             retries=args.retries, local_cpus=args.local_cpus)
    search_order(model, Path(args.model).read_bytes(), data, specs, out, seeds=list(range(args.seeds)),
                 epochs=args.budget, triples=triples, random_count=args.random_orders, settings=settings,
                 margin=args.margin, trust_builder=trusted, labels=(args.model, args.data), latency=args.latency,
                 progress=sys.stdout.isatty())
    return 0
