"""Command line: ``depthcut VERB …``. Bad input → one line on stderr and exit code 2."""

from __future__ import annotations

import sys
import traceback

from depthcut.cli.commands import comma_list
from depthcut.cli.parser import build_parser
from depthcut.errors import DepthcutError

__all__ = ["build_parser", "comma_list", "main"]


def main(argv: list[str] | None = None) -> int:
    from depthcut.log import show_in_terminal
    from depthcut.verbosity import configure

    args = build_parser().parse_args(argv)
    configure(args.verbose)
    show_in_terminal()
    try:
        args.func(args)
    except DepthcutError as err:
        print(f"depthcut: error: {err}", file=sys.stderr)
        if args.verbose and err.__cause__ is not None:  # what went wrong underneath
            traceback.print_exception(err.__cause__, file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a job that keeps checkpoints says how to resume
        print(f"depthcut: {str(err) or 'interrupted; no partial output was kept'}", file=sys.stderr)
        return 130
    return 0
