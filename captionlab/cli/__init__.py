"""The `python -m captionlab` command line.

Each sub-command lives in its own module under `captionlab/cli/` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable taking the parsed
arguments and returning an exit code. Adding a command is one module and one line in
`COMMAND_MODULES`. Modules import heavy libraries inside their handlers, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "captionlab.cli.data",
    "captionlab.cli.params",
    "captionlab.cli.evaluate",
    "captionlab.cli.runs",
    "captionlab.cli.arena",
    "captionlab.cli.weights",
]


class UserError(Exception):
    """A problem with the user's input; printed as a one-line message, never a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captionlab", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
