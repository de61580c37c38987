"""The ``edgepack`` command: one entry point, one sub-command per job."""

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from edgepack.demo import run_demo

    run_demo(quick=args.quick, seed=args.seed, save_dir=args.save)
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, "
                                         f"e.g. 1,1,49,10; got {text!r}")
    return shape


def _export(args: argparse.Namespace) -> int:
    import torch

    from edgepack.compression import load_checkpoint
    from edgepack.exporter import export

    model = load_checkpoint(args.model)
    examples = tuple(torch.randn(shape) for shape in args.example_shape)
    path = export(model, examples, args.output, mode=args.mode, stream=args.stream,
                  dynamic_batch=not args.static_batch)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, mode {args.mode})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from edgepack.exporter import format_summary, inspect_model

    print(format_summary(inspect_model(args.model)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edgepack.benchmarks.harness import BenchOptions, bench

    options = BenchOptions(runtime=args.runtime, threads=args.threads, warmup=args.warmup, runs=args.runs,
                           min_seconds=args.min_seconds, energy=args.energy, dataset=args.dataset,
                           output=args.output, resume=args.resume, benchmark_model=args.benchmark_model,
                           cpus=args.cpus)
    records = bench(args.models, args.device, options)
    failed = sum(r["status"] != "ok" for r in records)
    print(f"{len(records) - failed} measured, {failed} failed; results appended to {args.output}")
    return 1 if failed and failed == len(records) else 0


def _report(args: argparse.Namespace) -> int:
    from edgepack.benchmarks.report import write_report

    paths = write_report(args.results, args.output, baseline=args.baseline)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from edgepack.exporter import convert_onnx_to_tflite

    path = convert_onnx_to_tflite(args.model, args.output, batch_size=args.batch_size)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command that exists."""
    from edgepack import __version__

    parser = argparse.ArgumentParser(
        prog="edgepack", description="Compress PyTorch models and run them fast on-device.")
    parser.add_argument("--version", action="version", version=f"edgepack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train a digits MLP, compress it with every method, print the table")
    demo.add_argument("--quick", action="store_true", help="few epochs (for tests)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--save", metavar="DIR", help="also save each model as a checkpoint in DIR")
    demo.set_defaults(handler=_demo)

    export = commands.add_parser("export", help="export a checkpoint to ONNX or TFLite with ai.edgepack ops")
    export.add_argument("model", help="an edgepack checkpoint (.pt, see save_checkpoint)")
    export.add_argument("--example-shape", type=_shape, action="append", required=True,
                        metavar="N,C,...", help="shape of an example input (repeat per input)")
    export.add_argument("-o", "--output", required=True, help="output file (.onnx or .tflite)")
    export.add_argument("--mode", choices=["kernels", "portable"], default="kernels",
                        help="kernels: fused ai.edgepack compute ops (default); portable: "
                             "decoders + standard ops")
    export.add_argument("--stream", action="store_true",
                        help="HashedMatMul hashes on the fly (O(buckets) memory) instead of "
                             "decoding the weights once")
    export.add_argument("--static-batch", action="store_true",
                        help="fix the batch size to the example's (default: dynamic)")
    export.set_defaults(handler=_export)

    convert = commands.add_parser("convert", help="convert an ONNX model to TFLite (no TensorFlow)")
    convert.add_argument("model", help="an .onnx file (standard ops of the supported list, "
                                       "ai.edgepack ops become CUSTOM ops)")
    convert.add_argument("-o", "--output", required=True, help="output .tflite file")
    convert.add_argument("--batch-size", type=int, default=1,
                         help="value for a dynamic batch axis (TFLite shapes are static; default 1)")
    convert.set_defaults(handler=_convert)

    bench = commands.add_parser("bench", help="measure latency, memory, size, energy and accuracy on a device")
    bench.add_argument("models", nargs="+", help=".onnx / .tflite files")
    bench.add_argument("--device", default="local",
                       help="local (default), ssh://user@host[:port], adb://SERIAL or qemu-aarch64")
    bench.add_argument("--runtime", choices=["auto", "ort", "tflite", "native"], default="auto",
                       help="auto (default): ort for .onnx, tflite for .tflite; native: the C runner "
                            "(edgepack_ort_runner) instead of Python, for .onnx")
    bench.add_argument("--threads", "--num_threads", type=int, default=1, help="intra-op threads (default 1)")
    bench.add_argument("--warmup", "--warmup_runs", type=int, default=10, help="warm-up runs (default 10)")
    bench.add_argument("--runs", "--num_runs", type=int, default=100, help="minimum timed runs (default 100)")
    bench.add_argument("--min-seconds", type=float, default=5.0, help="minimum timed seconds (default 5)")
    bench.add_argument("--energy", metavar="SOURCE",
                       help="auto, rapl, hwmon, battery, csv:FILE or estimate (labelled estimated)")
    bench.add_argument("--dataset", help=".npz with x (inputs) and y (labels): adds accuracy")
    bench.add_argument("-o", "--output", default="results.jsonl", help="results file (appended)")
    bench.add_argument("--resume", action="store_true", help="skip what the results file already has")
    bench.add_argument("--benchmark-model", metavar="PATH",
                       help="TFLite's benchmark_model binary for devices without Python")
    bench.add_argument("--cpus", metavar="LIST",
                       help="pin the runner to these cores with taskset -c (e.g. 4-7, a phone's big cores)")
    bench.set_defaults(handler=_bench)

    report = commands.add_parser("report", help="Markdown + HTML report with plots from a results file")
    report.add_argument("results", help="a results .jsonl file")
    report.add_argument("-o", "--output", default="report", help="output folder (default report/)")
    report.add_argument("--baseline", help="model file (or name) to compare the others with")
    report.set_defaults(handler=_report)

    inspect = commands.add_parser("inspect", help="list a model file's ops, attributes and sizes")
    inspect.add_argument("model", help="an .onnx or .tflite file")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"edgepack {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
