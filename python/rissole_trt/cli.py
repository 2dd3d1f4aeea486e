"""The ``rissole-trt`` command line.

Subcommands live in :mod:`rissole_trt.commands`, one module per command, each defining
``register(subparsers)`` that adds its parser and sets ``func`` to a function taking the parsed
namespace and returning an exit code (or None for 0). Command modules import heavy dependencies
inside ``func`` so that ``rissole-trt --help`` stays fast and works without optional packages.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rissole_trt import __version__
from rissole_trt.errors import RissoleError

# Modules of rissole_trt.commands, in --help order; a command's owner adds its module here.
COMMANDS = [
    "info",
    "convert",
    "build_db",
    "build_engine",
    "generate",
    "generate_dataset",
    "bench",
    "train",
    "eval",
]

PROG = "rissole-trt"

# Errors that mean bad input, a missing optional piece or a failing file system: one line, exit code 2.
# Anything else is a bug in rissole_trt and keeps its traceback.
USER_ERRORS = (RissoleError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inference engine for RISSOLE block-wise retrieval-guided latent diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error instead of one line"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rissole_trt.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.func(args)
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
