"""Building the book: papermill runs every chapter for a model, jupyter-book renders the results.

Chapters are `notebooks/NN_name.py` (jupytext percent, the source) paired with `notebooks/NN_name.ipynb`.
For a model, each chapter is executed with papermill into `book/models/<model>/NN_name.ipynb`, with
that folder as its working directory, so the tables it writes land in `book/models/<model>/data/`.
The book-level chapters (BOOK_CHAPTERS, e.g. 09_universality) load no model: they are executed once
for the whole book, after the models' parts, into `book/cross_model/`, from the tables those parts
wrote. `_toc.yml` is regenerated from what is present; jupyter-book (1.x) renders without executing.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from mapslib.book.intro import write_intro
from mapslib.errors import BadArgument, MapsError
from mapslib.foundation.io import write_text
from mapslib.foundation.models import ALIASES, DEFAULT_MODEL, model_slug
from mapslib.foundation.settings import MapSettings

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
BOOK_CHAPTERS = ("09_universality", "11_norm_conventions")  # run once for the whole book, after the models' parts
CROSS_MODEL = "cross_model"  # their folder in the book, and their part's caption in the toc
CROSS_MODEL_CAPTION = "Across models"
logger = logging.getLogger(__name__)


def chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Per-model chapter names (`01_methods`, ...) in order, from the jupytext sources (the
    book-level chapters, BOOK_CHAPTERS, are not among them)."""
    return sorted(p.stem for p in notebooks.glob("[0-9][0-9]_*.py") if p.stem not in BOOK_CHAPTERS)


def book_chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Book-level chapter names in order: those of BOOK_CHAPTERS that have a jupytext source."""
    return sorted(p.stem for p in notebooks.glob("[0-9][0-9]_*.py") if p.stem in BOOK_CHAPTERS)


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


def declared_parameters(chapter: str, notebooks: Path = NOTEBOOKS) -> set[str]:
    """Names a chapter's parameters cell assigns (`name = ...` at the start of a line)."""
    import jupytext

    cells = jupytext.read(notebooks / f"{chapter}.py").cells
    source = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
    return set(re.findall(r"^([A-Za-z_]\w*) = ", source, re.M))


def static_chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Per-model chapters that can run from the weights alone (they declare `weights_only`)."""
    return [c for c in chapters(notebooks) if "weights_only" in declared_parameters(c, notebooks)]


def check_weights_only(selected: list[str], parameters: dict[str, Any]) -> None:
    """Refuse weights_only for chapters that run the model (behaviour needs the whole model), rather
    than let them load it whole after all."""
    if not parameters.get("weights_only"):
        return
    static = static_chapters()
    behaviour = [c for c in selected if c not in static]
    if behaviour:
        raise BadArgument(
            f"weights_only reads the weights alone, but {', '.join(behaviour)} run(s) the model; "
            f"select the static chapters (--chapters {' '.join(c[:2] for c in static)}) or drop "
            "--weights-only"
        )


def sync_notebook(py: Path) -> Path:
    """Write the paired .ipynb from the jupytext source when the source is newer; return the .ipynb."""
    import jupytext

    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists() or py.stat().st_mtime > ipynb.stat().st_mtime:
        nb = jupytext.read(py)
        jupytext.write(nb, ipynb)
    return ipynb


def _execute(chapter: str, folder: Path, params: dict[str, Any]) -> Path:
    """papermill one chapter into `folder` (its working directory); a failing cell raises a
    MapsError naming the cell's error and the executed notebook."""
    import papermill

    src = sync_notebook(NOTEBOOKS / f"{chapter}.py")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{chapter}.ipynb"
    try:
        papermill.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            cwd=str(folder),
            kernel_name="python3",
            progress_bar=False,
        )
    except Exception as e:  # papermill's error carries the failing cell; keep its last line
        if type(e).__name__ != "PapermillExecutionError":
            raise
        raise MapsError(
            f"chapter {chapter} failed ({e.ename}: {e.evalue}); the executed notebook is {out}"
        ) from None
    return out


def run_chapter(
    chapter: str, model: str, parameters: dict[str, Any], folder: Path | None = None
) -> Path:
    """Execute one chapter for `model` with papermill into `folder` (default: the model's book folder)."""
    params = {"model": model, "out_dir": "data", **parameters}
    return _execute(chapter, folder or model_folder(model), params)


def cross_model_folder(book: Path = BOOK) -> Path:
    """Where the book-level chapters and their tables live."""
    return book / CROSS_MODEL


def run_cross_model(
    chapters_wanted: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    book: Path = BOOK,
    log: Callable[[str], None] = logger.info,
) -> list[Path]:
    """Execute the book-level chapters (all, or those named) once, into `book/cross_model/`.

    They read the tables every model's part of `book` wrote (parameter `book_dir`, passed only for a
    book other than this repository's, so the executed notebooks do not record a local path)."""
    selected = select_chapters(chapters_wanted, book_chapters())
    params = {"out_dir": "data", **(parameters or {})}
    if book.resolve() != BOOK.resolve():
        params.setdefault("book_dir", str(book.resolve()))
    out = []
    for chapter in selected:
        t = time.perf_counter()
        log(f"running {chapter} for the whole book ...")
        out.append(_execute(chapter, cross_model_folder(book), params))
        log(f"  {chapter} done in {time.perf_counter() - t:.0f}s")
    return out


def split_chapters(wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """Resolve `wanted` (None: all) into (per-model chapters, book-level chapters)."""
    if not wanted:
        return chapters(), book_chapters()
    selected = select_chapters(wanted, chapters() + book_chapters())
    return (
        [c for c in selected if c not in BOOK_CHAPTERS],
        [c for c in selected if c in BOOK_CHAPTERS],
    )


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
    cross_model: bool = True,
    log: Callable[[str], None] = logger.info,
) -> Path | None:
    """Execute the chapters for `model`, then the book-level chapters, regenerate the model's index
    and `_toc.yml`, build the HTML.

    `chapters_wanted` may name per-model and book-level chapters (None: all of both). The book-level
    chapters (BOOK_CHAPTERS) are never run per model: they run once at the end, from every model's
    tables, whenever a per-model chapter ran (unless `cross_model` is False) or when named; naming
    only book-level chapters runs them alone. `parameters` go to the per-model chapters only.
    `fresh` removes the model's cached tables first, so each is computed once on the current code.
    A chapter that fails raises a MapsError naming the cell's error and the executed notebook.
    """
    parameters = with_map_settings(parameters or {})
    per_model, book_level = split_chapters(chapters_wanted)
    if not chapters_wanted and not cross_model:
        book_level = []
    elif chapters_wanted and cross_model and per_model and not book_level:
        book_level = book_chapters()
    check_weights_only(per_model, parameters or {})
    if fresh and per_model:
        clear_tables(model)
    for chapter in per_model:
        t = time.perf_counter()
        log(f"running {chapter} for {model} ...")
        run_chapter(chapter, model, parameters or {})
        log(f"  {chapter} done in {time.perf_counter() - t:.0f}s")
    if per_model:
        write_model_index(model)
    if book_level:
        run_cross_model(book_level, log=log)
    write_toc()
    return render_book(log=log) if build else None


def write_model_index(model: str, book: Path = BOOK) -> Path:
    """The landing page of a model's part of the book."""
    slug = model_slug(model)
    described = ALIASES[model].description if model in ALIASES else model
    missing = [c for c in chapters() if not (book / "models" / slug / f"{c}.ipynb").exists()]
    pending = (
        f"Not yet executed for this model: {', '.join(missing)}; they join this part when "
        f"`python -m mapslib book --model {model} --chapters {' '.join(c[:2] for c in missing)}` "
        "has run (tables already computed are reused).\n\n"
        if missing
        else ""
    )
    text = (
        f"# {slug}\n\n"
        f"Model: **{described}**.\n\n"
        f"{reading_text(book / 'models' / slug)}"
        "Every chapter below was executed with papermill for this model; the tables it wrote are in "
        "`data/` beside the notebooks, each with a JSON of the parameters, model revision and versions "
        "that made it.\n\n"
        f"{pending}"
        f"{atlas_text(model, slug)}"
        "Regenerate this part with:\n\n"
        f"```bash\n{regenerate_command(model, book / 'models' / slug)}\n```\n"
    )
    return write_text(book / "models" / slug / "index.md", text)


def atlas_text(model: str, slug: str) -> str:
    """The index's link to the part's head atlas, which render_book writes beside the chapters
    (`_build/html/atlas/<model>/`; this page is `_build/html/book/models/<model>/index.html`)."""
    return (
        f'**<a href="../../../atlas/{slug}/index.html">The head atlas</a>**: every head of this '
        "model on one page, with a card per head that gathers what the chapters below measured "
        f"(written with the HTML book; `python -m mapslib atlas --model {model} --out DIR` writes "
        "it anywhere).\n\n"
    )


def regenerate_command(model: str, folder: Path) -> str:
    """The `book` command that remakes a part, with the extra parameters its executed chapters
    record (papermill's metadata), so that the committed numbers come back."""
    import shlex

    extra: dict[str, Any] = {}
    for nb in sorted(folder.glob("*.ipynb")):
        params = json.loads(nb.read_text()).get("metadata", {}).get("papermill", {})
        extra |= {
            k: v
            for k, v in params.get("parameters", {}).items()
            if k not in ("model", "out_dir", "device")  # --model, the layout, --device
        }
    flags = "".join(f" -p {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in sorted(extra.items()))
    return f"python -m mapslib book --model {model}{flags}"


def reading_text(folder: Path) -> str:
    """The index's sentence on which reading of E_in chapter 4 supports for this model, from the
    tables that chapter wrote (empty before chapter 4 has run)."""
    from mapslib.behaviour.correlation import supported_reading
    from mapslib.crossmodel.parts import ModelPart, model_info, reading_correlations

    if not (folder / "data" / "dynamic_scores.csv").is_file():
        return ""
    part = ModelPart(data=folder / "data", **model_info(folder))
    table = reading_correlations(part)
    if table is None:
        return ""
    return (
        "**Reading of $E_\\text{in}$** (chapter 4; the correlation of static scores with the heads' "
        f"outputs during inference): {supported_reading(table)}. The chapters read the heads with "
        "the paper's $E_\\text{in}$ unless they say otherwise.\n\n"
    )


def toc_text(root: Path = ROOT) -> str:
    """The table of contents: the introduction, one part per model folder that has an index, then
    the book-level chapters executed into `book/cross_model/` as a part of their own."""
    models = sorted(p.parent.name for p in (root / "book" / "models").glob("*/index.md"))
    default = model_slug(DEFAULT_MODEL)
    models.sort(key=lambda m: (m != default, m))
    lines = [
        "# Generated by mapslib.book.build.toc_text: edit that function, not this file.",
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
    cross = root / "book" / CROSS_MODEL
    present = [c for c in book_chapters() if (cross / f"{c}.ipynb").exists()]
    if present:
        lines += [f"  - caption: {CROSS_MODEL_CAPTION}", "    chapters:"]
        lines += [f"      - file: book/{CROSS_MODEL}/{c}" for c in present]
    return "\n".join(lines) + "\n"


def write_toc(root: Path = ROOT) -> Path:
    """Regenerate `_toc.yml` from the models and chapters present in `root/book/models`."""
    write_intro(root / "book", chapters(), book_chapters())  # its list of parts, from the parts
    return write_text(root / "_toc.yml", toc_text(root))


def build_html(root: Path = ROOT) -> Path:
    """Render the book with jupyter-book (no execution: papermill already ran the chapters)."""
    exe = shutil.which("jupyter-book") or str(Path(sys.executable).parent / "jupyter-book")
    subprocess.run([exe, "build", str(root), "--warningiserror", "--keep-going"], check=True)
    return root / "_build" / "html" / "index.html"


def render_book(root: Path = ROOT, log: Callable[[str], None] = logger.info) -> Path:
    """The HTML book from the notebooks already executed into `root/book` (nothing is run): the
    jupyter-book build, then one head atlas per model part at `_build/html/atlas/<model>/`."""
    from mapslib.book.atlas import write_atlases

    index = build_html(root)
    for page in write_atlases(root / "book", index.parent):
        log(f"atlas: {page}")
    return index


def with_map_settings(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters with every map setting (`embedding=raw`, `k=5`, ...) gathered into the
    chapters' `map_settings` and checked now: a bad value fails before any chapter runs, and none is
    injected where no chapter reads it."""
    names = {f.name for f in fields(MapSettings)}
    chosen = dict(parameters.get("map_settings") or {})
    chosen |= {k: v for k, v in parameters.items() if k in names}
    MapSettings.from_parameters(**chosen)
    out = {k: v for k, v in parameters.items() if k not in names and k != "map_settings"}
    return out | ({"map_settings": chosen} if chosen else {})


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
