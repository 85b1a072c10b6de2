"""`book`: every chapter for a model with papermill, then the HTML book."""

from __future__ import annotations

import argparse

from mapslib.cli.common import command, log
from mapslib.errors import BadArgument
from mapslib.foundation.models import DEFAULT_MODEL

# --- book ----------------------------------------------------------------------------------------


def book_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "book", help="run every chapter for a model with papermill, then build the HTML book"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias, .gguf path, folder or hub id"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--chapters", nargs="+", default=None, help="e.g. 01 02 (default: all)")
    p.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="extra chapter parameter (JSON value)",
    )
    p.add_argument(
        "--no-build", action="store_true", help="run the chapters but do not build the HTML"
    )
    p.add_argument(
        "--no-execute",
        action="store_true",
        help="run nothing: build the HTML book (and a head atlas per part) from the notebooks "
        "already executed into book/, as the publishing workflow does",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="remove the model's cached tables (its data/ folder) first, so every table is recomputed",
    )
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="static chapters only (01 02 03 07 08): read the weights a layer at a time instead of "
        "building the model",
    )


@command("book")
def cmd_book(args: argparse.Namespace) -> None:
    """Execute the chapters into book/models/<model>/, regenerate _toc.yml, build _build/html."""
    from mapslib.book import build as book

    if args.no_execute:
        if args.no_build or args.fresh or args.chapters:
            raise BadArgument("--no-execute only renders: drop --no-build, --fresh and --chapters")
        log(f"book built: {book.render_book(log=log)}")
        return
    params = {"device": args.device} | book.parse_parameters(args.parameter)
    if args.weights_only:
        params["weights_only"] = True
    index = book.run_book(
        args.model, args.chapters, params, fresh=args.fresh, build=not args.no_build, log=log
    )
    if index is not None:
        log(f"book built: {index}")
