"""``edgepack compress``: compress a checkpoint's layers without retraining (Hyper-Compression,
``compression.hyper``) and save a checkpoint that ``edgepack export`` and ``inspect`` then take; or, with
``--pipeline``, run a pipeline of stages (``compression.pipeline``) into a folder of per-stage checkpoints."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _positive_float(text: str) -> float:
    """An argparse type for ``--budget`` / ``--side``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_parser(commands) -> None:
    """Add ``compress`` to the top-level sub-parsers ``commands``."""
    from edgepack.compression.hyper import DEFAULT_BUDGET, MAX_AUTO_RINGS

    parser = commands.add_parser(
        "compress", help="compress a checkpoint without retraining (Hyper-Compression) into a new checkpoint")
    parser.add_argument("checkpoint", help="an edgepack checkpoint (.safetensors, see save_checkpoint)")
    parser.add_argument("--method", choices=["hyper"], default="hyper",
                        help="hyper (default): Hyper-Compression, groups of weights as indices along an "
                             "ergodic trajectory")
    parser.add_argument("--budget", type=_positive_float, default=DEFAULT_BUDGET,
                        help="per-layer relative RMS error allowed: of the weight, or with --calibration of "
                             f"the layer's output (default {DEFAULT_BUDGET}); each layer gets the fewest "
                             "bytes within it")
    parser.add_argument("--calibration", metavar="FILE.npy",
                        help="a batch of model inputs (float array, samples along the first axis): measure "
                             "each layer's error on its outputs")
    parser.add_argument("--points", type=int, metavar="N",
                        help="force the trajectory points n (1..65536) instead of searching")
    parser.add_argument("--side", type=_positive_float, metavar="L",
                        help="force the square's side L instead of searching")
    parser.add_argument("--rings", type=int, metavar="R",
                        help=f"force the rings R (0..15) instead of searching 0..{MAX_AUTO_RINGS}")
    parser.add_argument("--group", type=int, default=2, metavar="K",
                        help="weights per trajectory point (1..4, default 2 as the paper)")
    parser.add_argument("--layers", action="append", metavar="PATTERN",
                        help="compress only Linear/Conv2d layers whose names match this glob (repeatable; "
                             "default all with >= 10 weights)")
    parser.add_argument("--trust-builder", action="append", metavar="MODULE:FUNCTION",
                        help="allow the checkpoint's builder MODULE:FUNCTION to be imported although it is "
                             "not registered (repeatable; only for code you trust)")
    parser.add_argument("--pipeline", metavar="PIPELINE.yaml",
                        help="run this pipeline of stages (YAML/JSON: stages, optional data / seed / batch_size) "
                             "instead of --method: a checkpoint per stage, pipeline.jsonl and summary.md in -o")
    parser.add_argument("--data", metavar="SPEC",
                        help="with --pipeline: the data the stages train and are measured on: digits, mnist, "
                             "mnist[:N], kws:DIR or FILE.npz (x_train, y_train, x_val, y_val[, x_test, y_test]); "
                             "overrides the file's data")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", dest="restart", action="store_false", default=False,
                       help="with --pipeline (default): skip the stages whose checkpoints in -o match the file")
    again.add_argument("--restart", action="store_true",
                       help="with --pipeline: ignore what -o holds and run every stage")
    parser.add_argument("-o", "--output", required=True,
                        help="the compressed checkpoint (.safetensors); with --pipeline, a folder")
    parser.set_defaults(handler=_compress)


def _calibration(path: str | None):
    """The calibration inputs of a .npy file (float32), or None."""
    import numpy as np

    from edgepack.compression import HyperError
    from edgepack.exporter.model_files import load_npy

    if path is None:
        return None
    if not Path(path).is_file():
        raise HyperError(f"--calibration {path}: no such file (a .npy array of model inputs)")
    data = load_npy(path, f"--calibration {path}")
    if data.dtype.kind not in "fiu" or data.ndim < 1 or len(data) == 0:
        raise HyperError(f"--calibration {path}: expected a non-empty numeric array with samples along the "
                         f"first axis, got {data.dtype} {list(data.shape)}")
    return data.astype(np.float32)


def _run_pipeline(args: argparse.Namespace) -> int:
    """``--pipeline``: check the file, load the data and the checkpoint, run the stages into the folder -o."""
    from edgepack.compression import load_checkpoint
    from edgepack.compression import pipeline as pipelines
    from edgepack.compression.checkpoint import read_checkpoint_fields
    from edgepack.compression.stages import StageError
    from edgepack.pipeline_data import load_data_spec

    hyper_only = [flag for flag, value in (("--calibration", args.calibration), ("--points", args.points),
                                           ("--side", args.side), ("--rings", args.rings),
                                           ("--layers", args.layers)) if value is not None]
    if hyper_only:
        raise StageError(f"{', '.join(hyper_only)}: options of --method hyper; in a pipeline give them to its "
                         "hyper stage (- hyper: {budget: 0.05, layers: 'fc*'})")
    pipeline = pipelines.load_pipeline(args.pipeline)
    spec, base = (args.data, None) if args.data else (pipeline.data, pipeline.folder)
    if spec is None:
        raise StageError(f"{args.pipeline}: no data: give --data SPEC (digits, mnist[:N], kws:DIR, FILE.npz) or "
                         "data: in the file")
    trusted = args.trust_builder or ()
    model = load_checkpoint(args.checkpoint, trust_builder=trusted)
    fields = read_checkpoint_fields(args.checkpoint)
    data = load_data_spec(spec, seed=pipeline.seed, batch_size=pipeline.batch_size, base=base)
    pipelines.run_pipeline(model, data, pipeline.stages, args.output, fields.builder, fields.kwargs,
                           recipe=fields.recipe, transforms=fields.transforms, resume=not args.restart,
                           progress=sys.stdout.isatty(), trust_builder=trusted)
    return 0


def _compress(args: argparse.Namespace) -> int:
    from edgepack.compression import HyperError, hyper_compress, load_checkpoint, save_checkpoint
    from edgepack.compression.checkpoint import read_checkpoint_fields

    if args.pipeline:
        return _run_pipeline(args)
    if args.data or args.restart:
        raise HyperError(f"{'--data' if args.data else '--restart'} goes with --pipeline")
    model = load_checkpoint(args.checkpoint, trust_builder=args.trust_builder or ())
    builder, kwargs, recipe, transforms = read_checkpoint_fields(args.checkpoint)
    compressed, report = hyper_compress(model, budget=args.budget, calibration=_calibration(args.calibration),
                                        names=args.layers, group=args.group, points=args.points, side=args.side,
                                        rings=args.rings, progress=True)
    print(report)
    if not report.recipe:
        raise HyperError(f"{args.checkpoint}: nothing to compress: every matched layer has fewer than 10 weights "
                         f"or no encoding within budget {args.budget} is smaller than float32")
    if transforms:  # the layers now exist only after the stages' transforms: replay the recipe after them
        transforms = [*transforms, {"name": "recipe", "params": {"recipe": report.recipe}}]
    else:
        recipe = {**(recipe or {}), **report.recipe}
    path = save_checkpoint(compressed, args.output, builder, kwargs, recipe=recipe, transforms=transforms)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0
