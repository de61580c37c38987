"""``edgepack kws ...``: the keyword-spotting sub-commands (data, train, eval, compress, listen, ...).

Each sub-command lives in its own module with an ``add_parser(subparsers)`` function that sets
``handler``; ``COMMANDS`` lists them in the order ``edgepack kws --help`` shows them.
"""

from __future__ import annotations

import argparse

COMMANDS: list = []  # add_parser functions, one per sub-command module


def add_kws_parser(commands) -> None:
    """Add ``kws`` and its sub-commands to the top-level sub-parsers ``commands``."""
    kws = commands.add_parser("kws", help="keyword spotting: data, train, eval, compress, listen")
    kws.set_defaults(handler=lambda args: _print_help(kws))
    subcommands = kws.add_subparsers(dest="kws_command", metavar="KWS_COMMAND")
    for add_parser in COMMANDS:
        add_parser(subcommands)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2

from edgepack.kws.generate import add_parser as _add_data  # noqa: E402  (edgepack kws data)

COMMANDS.append(_add_data)
from edgepack.kws import compress_kws, evaluate, train  # noqa: E402  (edgepack kws train / eval / compress)

COMMANDS.extend([train.add_parser, evaluate.add_parser, compress_kws.add_parser])
from edgepack.kws import listen, stream_eval  # noqa: E402  (edgepack kws listen / stream-eval)

COMMANDS.extend([listen.add_parser, stream_eval.add_parser])
from edgepack.kws import calibrate  # noqa: E402  (edgepack kws calibrate)

COMMANDS.append(calibrate.add_parser)
