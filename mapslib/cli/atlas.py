"""`atlas`: the head atlas of a model's part of the book, a static site built from its tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mapslib.cli.common import command, log
from mapslib.foundation.models import DEFAULT_MODEL


def atlas_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "atlas",
        help="write the head atlas of a model's part of the book (a static site: a card per head)",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="a model with a part in the book (book/models/)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for index.html and its data files"
    )
    p.add_argument(
        "--book", default=None, metavar="DIR", help="the book's folder (default: this repo's book/)"
    )
    p.add_argument(
        "--chapters-url",
        default=None,
        metavar="URL",
        help="where the cards link to the chapter pages, ending in / (default: "
        "../../book/models/<model>/, right for an atlas at _build/html/atlas/<model>/)",
    )


@command("atlas")
def cmd_atlas(args: argparse.Namespace) -> None:
    """Read the part's tables (nothing is recomputed) and write the site into --out."""
    from mapslib.book.atlas import write_atlas

    t = time.perf_counter()
    book = None if args.book is None else Path(args.book)
    index = write_atlas(args.model, Path(args.out), book=book, chapters_url=args.chapters_url)
    log(f"atlas written in {time.perf_counter() - t:.1f}s: {index}")
