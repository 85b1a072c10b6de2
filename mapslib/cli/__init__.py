"""Command line: `python -m mapslib <command> ...`.

Each command parses its arguments, calls one experiment's entry point in the library (the same one
the book's chapters call), and reports. The entry point writes a tidy table atomically with a JSON
of its parameters and protocol beside it (`FILE.csv` -> `FILE.csv.json`). Errors a user can fix are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from mapslib.cli import atlas, behaviour, book, heads, maps
from mapslib.cli.common import COMMANDS
from mapslib.errors import MapsError

# --- entry point ---------------------------------------------------------------------------------

PARSERS = [
    maps.relations_parser,
    book.book_parser,
    maps.salient_parser,
    behaviour.correlate_parser,
    behaviour.ablate_parser,
    behaviour.known_heads_parser,
    atlas.atlas_parser,
    heads.heads_parser,
]


class _Parser(argparse.ArgumentParser):
    """argparse with mapslib's error format: one `error:` line naming the fix, status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command."""
    parser = _Parser(prog="python -m mapslib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time (tests replace it)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """The library's progress and skip messages go to stderr as plain lines; stdout stays clean."""
    logger = logging.getLogger("mapslib")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn user errors into one clear line."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed command line (2)
        return int(e.code or 0)
    args.argv = argv
    _log_to_stderr()
    try:
        COMMANDS[args.command](args)
    except MapsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
