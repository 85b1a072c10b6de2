"""Building the book: papermill runs every chapter for a model, jupyter-book renders the results.

Chapters are `notebooks/NN_name.py` (jupytext percent, the source) paired with `notebooks/NN_name.ipynb`.
For a model, each chapter is executed with papermill into `book/models/<model>/NN_name.ipynb`, with
that folder as its working directory, so the tables it writes land in `book/models/<model>/data/`.
`_toc.yml` is regenerated from the models present; jupyter-book (1.x) renders without executing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapslib.errors import BadArgument, MapsError
from mapslib.foundation.io import write_text
from mapslib.foundation.models import ALIASES, DEFAULT_MODEL, model_slug

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
logger = logging.getLogger(__name__)


def chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Chapter names (`01_methods`, ...) in order, from the jupytext sources."""
    return sorted(p.stem for p in notebooks.glob("[0-9][0-9]_*.py"))


def select_chapters(wanted: list[str] | None, available: list[str]) -> list[str]:
    """Resolve `01` or `01_methods` to chapter names, with an error listing what exists."""
    if not wanted:
        return available
    out = []
    for w in wanted:
        match = [c for c in available if c == w or c.split("_", 1)[0] == w]
        if not match:
            raise BadArgument(f"unknown chapter {w!r}; chapters: {', '.join(available)}")
        out.extend(match)
    return out


def sync_notebook(py: Path) -> Path:
    """Write the paired .ipynb from the jupytext source when the source is newer; return the .ipynb."""
    import jupytext

    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists() or py.stat().st_mtime > ipynb.stat().st_mtime:
        nb = jupytext.read(py)
        jupytext.write(nb, ipynb)
    return ipynb


def run_chapter(
    chapter: str, model: str, parameters: dict[str, Any], folder: Path | None = None
) -> Path:
    """Execute one chapter for `model` with papermill into `folder` (default: the model's book folder)."""
    import papermill

    src = sync_notebook(NOTEBOOKS / f"{chapter}.py")
    folder = folder or model_folder(model)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{chapter}.ipynb"
    params = {"model": model, "out_dir": "data", **parameters}
    papermill.execute_notebook(
        str(src),
        str(out),
        parameters=params,
        cwd=str(folder),
        kernel_name="python3",
        progress_bar=False,
    )
    return out


def model_folder(model: str, book: Path = BOOK) -> Path:
    """Where a model's executed chapters and their tables live."""
    return book / "models" / model_slug(model)


def clear_tables(model: str, book: Path = BOOK) -> None:
    """Remove a model's cached tables (its `data/` folder), so the next run computes every one once."""
    shutil.rmtree(model_folder(model, book) / "data", ignore_errors=True)


def run_book(
    model: str,
    chapters_wanted: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    fresh: bool = False,
    build: bool = True,
    log: Callable[[str], None] = logger.info,
) -> Path | None:
    """Execute the chapters for `model`, regenerate the model's index and `_toc.yml`, build the HTML.

    `fresh` removes the model's cached tables first, so each is computed once on the current code.
    A chapter that fails raises a MapsError naming the cell's error and the executed notebook.
    """
    selected = select_chapters(chapters_wanted, chapters())
    if fresh:
        clear_tables(model)
    for chapter in selected:
        t = time.perf_counter()
        log(f"running {chapter} for {model} ...")
        try:
            run_chapter(chapter, model, parameters or {})
        except Exception as e:  # papermill's error carries the failing cell; keep its last line
            if type(e).__name__ != "PapermillExecutionError":
                raise
            where = model_folder(model) / f"{chapter}.ipynb"
            raise MapsError(
                f"chapter {chapter} failed ({e.ename}: {e.evalue}); the executed notebook is {where}"
            ) from None
        log(f"  {chapter} done in {time.perf_counter() - t:.0f}s")
    write_model_index(model)
    write_toc()
    return build_html() if build else None


def write_model_index(model: str, book: Path = BOOK) -> Path:
    """The landing page of a model's part of the book."""
    slug = model_slug(model)
    described = ALIASES[model].description if model in ALIASES else model
    text = (
        f"# {slug}\n\n"
        f"Model: **{described}**.\n\n"
        "Every chapter below was executed with papermill for this model; the tables it wrote are in "
        "`data/` beside the notebooks, each with a JSON of the parameters, model revision and versions "
        "that made it.\n\n"
        "Regenerate this part with:\n\n"
        f"```bash\npython -m mapslib book --model {model}\n```\n"
    )
    return write_text(book / "models" / slug / "index.md", text)


def toc_text(root: Path = ROOT) -> str:
    """The table of contents: the introduction, then one part per model folder that has an index."""
    models = sorted(p.parent.name for p in (root / "book" / "models").glob("*/index.md"))
    default = model_slug(DEFAULT_MODEL)
    models.sort(key=lambda m: (m != default, m))
    lines = [
        "# Generated by mapslib.report.book.toc_text: edit that function, not this file.",
        "format: jb-book",
    ]
    lines += ["root: book/intro", "parts:"]
    lines += ["  - caption: The method", "    chapters:", "      - file: book/reproducing"]
    for m in models:
        folder = root / "book" / "models" / m
        lines += [
            f"  - caption: {m}",
            "    chapters:",
            f"      - file: book/models/{m}/index",
            "        sections:",
        ]
        lines += [
            f"          - file: book/models/{m}/{c}"
            for c in chapters()
            if (folder / f"{c}.ipynb").exists()
        ]
    return "\n".join(lines) + "\n"


def write_toc(root: Path = ROOT) -> Path:
    """Regenerate `_toc.yml` from the models and chapters present in `root/book/models`."""
    return write_text(root / "_toc.yml", toc_text(root))


def build_html(root: Path = ROOT) -> Path:
    """Render the book with jupyter-book (no execution: papermill already ran the chapters)."""
    exe = shutil.which("jupyter-book") or str(Path(sys.executable).parent / "jupyter-book")
    subprocess.run([exe, "build", str(root), "--warningiserror", "--keep-going"], check=True)
    return root / "_build" / "html" / "index.html"


def parse_parameters(pairs: list[str] | None) -> dict[str, Any]:
    """`name=value` pairs (values as JSON when they parse, else strings), like papermill's -p."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise BadArgument(f"parameters are NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out
