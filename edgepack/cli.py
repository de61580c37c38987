"""The ``edgepack`` command: one entry point, one sub-command per job."""

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from edgepack.demo import run_demo

    run_demo(quick=args.quick, seed=args.seed)
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
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
