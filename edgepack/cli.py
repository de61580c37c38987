"""The ``edgepack`` command: one entry point, one sub-command per job."""

import argparse
import sys


# argparse types: a bad value is argparse's one-line error naming the flag (exit 2)
def _shape(text: str) -> tuple[int, ...]:
    """N,C,... (positive integers) for ``--example-shape`` and ``--input-shape``."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, "
                                         f"e.g. 1,1,49,10; got {text!r}")
    return shape


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=1,16000 (an ONNX input name and its static shape) for ``convert --input-shape``."""
    name, sep, shape = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZES, e.g. audio=1,16000; got {text!r}")
    return name, _shape(shape)


def positive_int(text: str) -> int:
    """An argparse type for a count such as ``--batch-size``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _bench_option(name: str):
    """An argparse type for the bench option ``name``: parsed and range-checked by the harness's rule."""
    def convert(text: str):
        from edgepack.benchmarks.harness import LIMITS, option_problem

        try:
            value = int(text) if LIMITS[name][1] else float(text)
        except ValueError:
            value = text
        problem = option_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    return convert


def _limit(flag: str):
    """An argparse type for a decode limit: the rule of its environment variable (runtime_kernels.limits)."""
    def convert(text: str) -> int:
        from edgepack.runtime_kernels.limits import parse_limit

        try:
            return parse_limit(flag, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


def _demo(args: argparse.Namespace) -> int:
    if args.digits:
        from edgepack.demo import run_demo

        run_demo(quick=args.quick, seed=args.seed, save_dir=args.save)
        return 0
    if args.save:
        from edgepack.errors import EdgepackError

        raise EdgepackError("--save goes with --digits; the keyword-spotting demo keeps everything in --work")
    from edgepack.kws.demo import run_kws_demo

    run_kws_demo(args.work, quick=args.quick, seed=args.seed)
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from edgepack.compression import load_checkpoint
    from edgepack.exporter import export

    model = load_checkpoint(args.model, trust_builder=args.trust_builder or ())
    examples = tuple(torch.randn(shape) for shape in args.example_shape)
    if args.early_exit or args.format:
        return _export_early_exit(args, model, examples)
    path = export(model, examples, args.output, mode=args.mode, stream=args.stream,
                  dynamic_batch=not args.static_batch, codebook_op=args.codebook_op,
                  **({"fallback_fold_limit": args.fallback_fold_limit} if args.fallback_fold_limit else {}))
    print(f"wrote {path} ({path.stat().st_size:,} bytes, mode {args.mode})")
    return 0


def _export_early_exit(args: argparse.Namespace, model, examples) -> int:
    """``export --early-exit``: an early-exit checkpoint as segment files + manifest.json in the folder -o."""
    import json

    from edgepack.compression.checkpoint import read_checkpoint_fields
    from edgepack.compression.early_exit import EarlyExitNet
    from edgepack.exporter.early_exit_export import EarlyExitError, export_early_exit

    if not args.early_exit:
        raise EarlyExitError("--format goes with --early-exit (a single model's format follows -o's extension)")
    if not isinstance(model, EarlyExitNet):
        transforms = [t["name"] for t in read_checkpoint_fields(args.model).transforms] or ["none"]
        raise EarlyExitError(f"{args.model}: --early-exit needs a checkpoint of the early_exit stage (transforms "
                             f"ending in early_exit, or quantize after it); this one has transforms "
                             f"{', '.join(transforms)} and builds a {type(model).__name__}: export it without "
                             "--early-exit")
    if len(examples) != 1:
        raise EarlyExitError(f"--early-exit takes one --example-shape (the model's single input), got {len(examples)}")
    if args.stream or args.static_batch or args.codebook_op != "decode" or args.fallback_fold_limit:
        raise EarlyExitError("--early-exit exports each segment with the default options; drop --stream, "
                             "--static-batch, --codebook-op and --fallback-fold-limit")
    path = export_early_exit(model, examples[0], args.output, mode=args.mode, tflite=args.format == "onnx,tflite")
    manifest = json.loads(path.read_text())
    files = [entry[key] for entry in manifest["segments"] + [manifest["full"]] for key in ("file", "tflite")
             if key in entry]
    print(f"wrote {path} and {', '.join(files)} (threshold {model.threshold:.4f}, mode {args.mode})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import os

    from edgepack.exporter import format_summary, inspect_model
    from edgepack.runtime_kernels import limits

    saved = {name: os.environ.get(name) for name in (limits.ENV_MAX_VIRTUAL_WEIGHTS,
                                                      limits.ENV_MAX_DECODED_BYTES)}
    try:  # the flags override the environment for this one run
        for value, name in ((args.max_virtual_weights, limits.ENV_MAX_VIRTUAL_WEIGHTS),
                            (args.max_decoded_bytes, limits.ENV_MAX_DECODED_BYTES)):
            if value is not None:
                os.environ[name] = str(value)
        print(format_summary(inspect_model(args.model)))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edgepack.benchmarks.harness import BenchOptions, bench

    if args.early_exit:
        from edgepack.benchmarks.early_exit import bench_command

        return bench_command(args)
    args.output = args.output or "results.jsonl"
    options = BenchOptions(runtime=args.runtime, threads=args.threads, warmup=args.warmup, runs=args.runs,
                           min_seconds=args.min_seconds, energy=args.energy, dataset=args.dataset,
                           output=args.output, resume=args.resume, benchmark_model=args.benchmark_model,
                           cpus=args.cpus, timeout=args.timeout, keep_workdir=args.keep_workdir,
                           known_hosts=args.known_hosts, decode_at_load=args.decode_at_load,
                           kws_stream=args.kws_stream)
    records = bench(args.models, args.device, options)
    failed = sum(r["status"] != "ok" for r in records)
    if records.unsaved:
        print(f"{len(records) - failed} measured, {failed} failed; {len(records.unsaved)} could not be written to "
              f"{args.output} (printed to stderr as JSON)")
        return 1
    print(f"{len(records) - failed} measured, {failed} failed; results appended to {args.output}")
    return 1 if failed and failed == len(records) else 0


def _report(args: argparse.Namespace) -> int:
    from edgepack.benchmarks.report import write_report

    paths = write_report(args.results, args.output, baseline=args.baseline)
    if paths.skipped:
        print(f"{args.results}: skipped {paths.skipped} unreadable line(s) or incomplete record(s)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from edgepack.exporter.tflite_export import convert_and_verify

    path, verification = convert_and_verify(
        args.model, args.output, batch_size=args.batch_size, input_shapes=dict(args.input_shape or []),
        verify=not args.no_verify, calibration_data=args.calibration_data, io_type=args.io_type)
    print(f"wrote {path} ({path.stat().st_size:,} bytes); "
          + (verification.summary() if verification else "not verified (--no-verify)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command that exists."""
    from edgepack import __version__

    parser = argparse.ArgumentParser(
        prog="edgepack", description="Compress PyTorch models and run them fast on-device.")
    parser.add_argument("--version", action="version", version=f"edgepack {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback (accepted anywhere)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="keyword spotting end to end: data, train, compress, export, bench, stream, report")
    demo.add_argument("--quick", action="store_true", help="tiny data, 2 epochs (for tests)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--work", metavar="DIR", default="edgepack-demo",
                      help="work folder: data, runs, exported models, report (default edgepack-demo/; "
                           "a rerun reuses what is there)")
    demo.add_argument("--digits", action="store_true",
                      help="instead: the small digits-MLP comparison of every method (seconds)")
    demo.add_argument("--save", metavar="DIR", help="with --digits: also save each model as a checkpoint in DIR")
    demo.set_defaults(handler=_demo)

    export = commands.add_parser("export", help="export a checkpoint to ONNX or TFLite with ai.edgepack ops")
    export.add_argument("model", help="an edgepack checkpoint (.safetensors, or a version-1 .pt; "
                                      "see save_checkpoint)")
    export.add_argument("--trust-builder", action="append", metavar="MODULE:FUNCTION",
                        help="allow the checkpoint's builder MODULE:FUNCTION to be imported "
                             "although it is not registered (repeatable; only for code you trust)")
    export.add_argument("--example-shape", type=_shape, action="append", required=True,
                        metavar="N,C,...", help="shape of an example input (repeat per input)")
    export.add_argument("-o", "--output", required=True, help="output file (.onnx or .tflite); a folder with "
                                                                "--early-exit")
    export.add_argument("--mode", choices=["kernels", "portable"], default="kernels",
                        help="kernels: fused ai.edgepack compute ops (default); portable: "
                             "decoders + standard ops")
    export.add_argument("--stream", action="store_true",
                        help="HashedMatMul hashes on the fly (O(buckets) memory) instead of "
                             "decoding the weights once")
    export.add_argument("--static-batch", action="store_true",
                        help="fix the batch size to the example's (default: dynamic)")
    export.add_argument("--codebook-op", choices=["decode", "sparse"], default="decode",
                        help="codebook Linear layers as CodebookWeight + Gemm, decoded once at load "
                             "(decode, default) or as SparseCodebookMatMul computed from the CSR form "
                             "(sparse); codebook convolutions always decode")
    export.add_argument("--fallback-fold-limit", type=positive_int, metavar="N",
                        help="in ONNX Runtime without edgepack's library, hashed layers up to N "
                             "virtual weights x hashes are decoded once at session build (dense "
                             "speed, ~350 bytes per weight while building); larger ones at every "
                             "run, with session build within 3x the dense bytes (default: "
                             "exporter.fallbacks.FOLD_LIMIT, docs/ops.md)")
    export.add_argument("--early-exit", action="store_true",
                        help="the checkpoint is an early-exit net (early_exit stage): write one model per segment, "
                             "full.onnx and manifest.json into the folder -o (for bench --early-exit)")
    export.add_argument("--format", choices=["onnx", "onnx,tflite"],
                        help="with --early-exit: ONNX files only (default), or also a verified batch-1 .tflite "
                             "per file (fully int8 for an int8 net: quantize after early_exit)")
    export.set_defaults(handler=_export)

    convert = commands.add_parser("convert", help="convert an ONNX model to TFLite (no TensorFlow)")
    convert.add_argument("model", help="an .onnx file (standard ops of the supported list, "
                                       "ai.edgepack ops become CUSTOM ops)")
    convert.add_argument("-o", "--output", required=True, help="output .tflite file")
    convert.add_argument("--batch-size", type=positive_int, default=1,
                         help="value for a dynamic batch axis (TFLite shapes are static; default 1)")
    convert.add_argument("--input-shape", type=_input_shape, action="append", metavar="NAME=1,16000",
                         help="static shape for an input with dynamic axes other than the batch (repeatable)")
    convert.add_argument("--no-verify", action="store_true",
                         help="skip running the result against ONNX Runtime on random inputs before writing it")
    convert.add_argument("--calibration-data", metavar="FILE.npz",
                         help="also verify on these samples: one array per input name (or x), samples "
                              "along the first axis")
    convert.add_argument("--io-type", choices=["float", "int8"], default="float",
                         help="for a QDQ-quantized model (converted fully int8): float inputs/outputs with "
                              "QUANTIZE / DEQUANTIZE ops (default), or the int8 tensors themselves")
    convert.set_defaults(handler=_convert)

    bench = commands.add_parser("bench", help="measure latency, memory, size, energy and accuracy on a device")
    bench.add_argument("models", nargs="+", help=".onnx / .tflite files")
    bench.add_argument("--device", default="local",
                       help="local (default), ssh://user@host[:port], adb://SERIAL or qemu-aarch64")
    bench.add_argument("--runtime", choices=["auto", "ort", "tflite", "native"], default="auto",
                       help="auto (default): ort for .onnx, tflite for .tflite; native: the C runner "
                            "(edgepack_ort_runner) instead of Python, for .onnx")
    bench.add_argument("--threads", "--num_threads", type=_bench_option("threads"), default=1,
                       help="intra-op threads, >= 1 (default 1)")
    bench.add_argument("--warmup", "--warmup_runs", type=_bench_option("warmup"), default=10,
                       help="warm-up runs, >= 0 (default 10)")
    bench.add_argument("--runs", "--num_runs", type=_bench_option("runs"), default=100,
                       help="minimum timed runs, >= 1 (default 100)")
    bench.add_argument("--min-seconds", type=_bench_option("min_seconds"), default=5.0,
                       help="minimum timed seconds, >= 0 (default 5)")
    bench.add_argument("--timeout", metavar="SECONDS", type=_bench_option("timeout"),
                       help="limit for each device command of a measurement (push, run); a model past it "
                            "is recorded as failed and the run goes on (default 600, or 20 x --min-seconds)")
    bench.add_argument("--keep-workdir", action="store_true",
                       help="keep the work directory on the device (its path is printed); default: removed")
    bench.add_argument("--known-hosts", metavar="FILE",
                       help="ssh devices: check the host key against this known_hosts file")
    bench.add_argument("--energy", metavar="SOURCE",
                       help="auto, rapl, hwmon, battery, csv:FILE or estimate (labelled estimated)")
    bench.add_argument("--dataset", help=".npz with x (inputs) and y (labels): adds accuracy")
    bench.add_argument("-o", "--output", help="results file (appended; default results.jsonl, with --early-exit "
                                              "only when given)")
    bench.add_argument("--resume", action="store_true", help="skip what the results file already has")
    bench.add_argument("--benchmark-model", metavar="PATH",
                       help="TFLite's benchmark_model binary for devices without Python")
    bench.add_argument("--cpus", metavar="LIST",
                       help="pin the runner to these cores with taskset -c (e.g. 4-7, a phone's big cores)")
    bench.add_argument("--kws-stream", metavar="STREAM.wav",
                       help="measure streaming keyword detection instead (.onnx): edgepack_kws_stream --bench on "
                            "this 16 kHz mono WAV; records per-hop latency (µs), real-time factor, peak RSS")
    bench.add_argument("--decode-at-load", action=argparse.BooleanOptionalAction, default=True,
                       help="decode compressed weights to dense constants when the model loads (default; "
                            "needs edgepack on the device or the native runner); --no-decode-at-load keeps "
                            "the fused kernels (less memory)")
    bench.add_argument("--early-exit", action="store_true",
                       help="the models are early-exit manifests (export_early_exit's manifest.json): average latency "
                            "per example and accuracy at the threshold against the full model, in this process "
                            "(ORT, or LiteRT with --runtime tflite; needs --dataset)")
    bench.set_defaults(handler=_bench)

    report = commands.add_parser("report", help="Markdown + HTML report with plots from a results file")
    report.add_argument("results", help="a results .jsonl file")
    report.add_argument("-o", "--output", default="report", help="output folder (default report/)")
    report.add_argument("--baseline", help="model file (or name) to compare the others with")
    report.set_defaults(handler=_report)

    inspect = commands.add_parser("inspect", help="list a model file's ops, attributes and sizes")
    inspect.add_argument("model", help="an .onnx or .tflite file")
    inspect.add_argument("--max-virtual-weights", metavar="N", type=_limit("--max-virtual-weights"),
                         help="refuse a node that decodes more than N weights (default "
                              "$EDGEPACK_MAX_VIRTUAL_WEIGHTS or 2^28)")
    inspect.add_argument("--max-decoded-bytes", metavar="N", type=_limit("--max-decoded-bytes"),
                         help="refuse a model whose nodes decode more than N bytes in all "
                              "(default $EDGEPACK_MAX_DECODED_BYTES or 1 GiB)")
    inspect.set_defaults(handler=_inspect)

    from edgepack.kws.cli import add_kws_parser
    add_kws_parser(commands)
    from edgepack.benchmarks.papers import add_papers_parser
    add_papers_parser(commands)
    from edgepack.compress_cli import add_parser as add_compress_parser
    add_compress_parser(commands)
    from edgepack.order_cli import add_parser as add_order_parser
    add_order_parser(commands)
    return parser


EXIT_ERROR = 2  # bad input, a failed job: one "edgepack <command>: error: ..." line
EXIT_INTERNAL = 70  # a bug in edgepack (EX_SOFTWARE): the same one line, traceback with --debug


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; errors become one line on stderr and exit 2 (70 for a bug).

    ``--debug`` anywhere on the command line re-raises instead, with the full traceback.
    """
    from edgepack.errors import EdgepackError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prefix = f"edgepack {args.command}: error:"
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except EdgepackError as error:
        if debug:
            raise
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        if debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prefix} {where}{_one_line(error.strerror or error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        if debug:
            raise
        print(f"{prefix} internal error ({type(error).__name__}: {_one_line(error)}); this is a "
              "bug in edgepack: rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
