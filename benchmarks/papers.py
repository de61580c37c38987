"""``edgepack papers ...``: reproductions of the papers edgepack implements, their figures beside ours.

Each sub-command module has an ``add_parser(subparsers)`` that sets ``handler``; ``COMMANDS`` lists
them in the order ``edgepack papers --help`` shows them.
"""

from __future__ import annotations

from edgepack.benchmarks import papers_hyper, papers_sws

COMMANDS = [papers_sws.add_parser, papers_hyper.add_parser]


def add_papers_parser(commands) -> None:
    """Add ``papers`` and its sub-commands to the top-level sub-parsers ``commands``."""
    papers = commands.add_parser("papers", help="reproduce the papers' tables (sws: Soft Weight-Sharing on MNIST; "
                                                "hyper: Hyper-Compression vs PTQ and k-means)")
    papers.set_defaults(handler=lambda args: papers.print_help() or 2)
    subcommands = papers.add_subparsers(dest="papers_command", metavar="PAPERS_COMMAND")
    for add_parser in COMMANDS:
        add_parser(subcommands)
