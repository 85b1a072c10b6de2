"""The introduction's list of the book's parts, written from the parts themselves.

`book/intro.md` says what each part of the book holds: the model, which chapters were executed for
it and with which extra parameters (papermill's metadata in the executed notebooks), how many heads
implement a relation under each reading of E_in (the maps chapter 2 wrote) and which reading chapter
4 supports (its tables). That passage sits between BEGIN and END and is regenerated with `_toc.yml`
(`build.write_toc`), so it cannot fall behind the parts; the text around it is left as it is. An
introduction without the two markers is not touched.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mapslib.foundation.io import write_text
from mapslib.foundation.models import ALIASES, DEFAULT_MODEL, model_slug
from mapslib.foundation.settings import DEFAULTS

BEGIN = (
    "<!-- The parts below are written by mapslib.book.intro from book/models/*/ whenever _toc.yml "
    "is (python -m mapslib book): edit that module, not this passage. -->"
)
END = "<!-- End of the generated parts. -->"
LAYOUT = ("model", "out_dir", "device")  # papermill parameters every run passes: not extras


@dataclass(frozen=True)
class Part:
    """What the introduction says of one model's part of the book."""

    slug: str
    description: str
    executed: tuple[str, ...]  # per-model chapters executed for it (`01_methods`, ...)
    missing: tuple[str, ...]  # per-model chapters not yet executed for it
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # chapter -> extra parameters
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # chapter -> its defaults
    vocabulary: int | None = None  # tokens in the vocabulary (None when the part does not say)
    heads: int | None = None  # heads in all layers (None without a relation map)
    over_tau: dict[str, int] = field(default_factory=dict)  # reading -> heads implementing one
    reading: str | None = None  # chapter 4's sentence on the readings (None before it ran)
    best: str | None = None  # the reading that tracks behaviour best (None before chapter 4)


def chapter_number(chapter: str) -> int:
    """`05_causal_ablation` -> 5."""
    return int(chapter.split("_", 1)[0])


def chapter_span(chapters: Sequence[str]) -> str:
    """Chapter numbers with runs joined: `1-4, 6 and 10`."""
    numbers = sorted({chapter_number(c) for c in chapters})
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    items = [str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def extra_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters papermill passed to an executed chapter beyond the model, layout and device,
    among those the chapter declares (`book -p` passes every parameter to every chapter)."""
    meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    passed = meta.get("papermill", {}).get("parameters", {})
    declared = declared_defaults(notebook)
    return {k: v for k, v in sorted(passed.items()) if k not in LAYOUT and k in declared}


def declared_defaults(notebook: Path) -> dict[str, Any]:
    """The literal values a chapter's `parameters` cell assigns (`name = value`), from the executed
    notebook (papermill keeps that cell and adds its own after it)."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    source = next(
        (
            "".join(c.get("source", []))
            for c in cells
            if "parameters" in c.get("metadata", {}).get("tags", [])
        ),
        "",
    )
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return out


def model_description(folder: Path) -> str:
    """The model of a part: the alias's description, else its shape as the part's tables record it."""
    if folder.name in ALIASES:
        return ALIASES[folder.name].description
    if not (folder / "data" / "relation_scores.csv.json").is_file():
        return folder.name
    from mapslib.crossmodel.parts import model_info

    info = model_info(folder)
    kv = "" if info["n_kv_heads"] is None else f", {info['n_kv_heads']} kv heads"
    return f"{info['model_type']}: {info['n_layers']} layers x {info['n_heads']} heads{kv}"


def read_part(folder: Path, expected: Sequence[str]) -> Part:
    """A part from its folder: executed chapters, their extra parameters, and (once chapters 2 and
    4 have written their tables) the heads over tau per reading and chapter 4's verdict."""
    executed = tuple(c for c in expected if (folder / f"{c}.ipynb").is_file())
    extras = {c: e for c in executed if (e := extra_parameters(folder / f"{c}.ipynb"))}
    part = Part(
        slug=folder.name,
        description=model_description(folder),
        executed=executed,
        missing=tuple(c for c in expected if c not in executed),
        extras=extras,
        defaults={c: declared_defaults(folder / f"{c}.ipynb") for c in extras},
    )
    if not (folder / "data" / "relation_scores.csv.json").is_file():
        return part
    from mapslib.behaviour.correlation import supported_reading
    from mapslib.crossmodel.parts import ModelPart, best_reading, model_info, reading_correlations
    from mapslib.relation_map.summary import implemented

    info = model_info(folder)
    model = ModelPart(data=folder / "data", **info)
    over_tau = {
        reading: len(implemented(scores, DEFAULTS.tau)[["layer", "head"]].drop_duplicates())
        for reading, scores in model.maps().items()
    }
    table = reading_correlations(model)
    return replace(
        part,
        heads=model.heads,
        vocabulary=info["vocabulary"],
        over_tau=over_tau,
        reading=None if table is None else supported_reading(table),
        best=None if table is None else best_reading(model),
    )


def part_item(part: Part) -> str:
    """One bullet of the list: a part, what it holds and what its tables say."""
    default = " (the default model)" if part.slug == model_slug(DEFAULT_MODEL) else ""
    vocabulary = "" if part.vocabulary is None else f"; a vocabulary of {part.vocabulary:,} tokens"
    lines = [
        f"- [**{part.slug}**](models/{part.slug}/index.md){default}: {part.description}"
        f"{vocabulary}."
    ]
    if not part.executed:
        lines.append(f"  No chapter executed yet (to come: {chapter_span(part.missing)}).")
    elif part.missing:
        span, missing = chapter_span(part.executed), chapter_span(part.missing)
        lines.append(f"  Chapters {span}; not yet executed: {missing}.")
    else:
        lines.append(f"  Every chapter ({chapter_span(part.executed)}).")
    for chapter, extra in part.extras.items():
        declared = part.defaults.get(chapter, {})
        given = ", ".join(
            f"`{k}={json.dumps(v)}`"
            + (f" (default {json.dumps(declared[k])})" if k in declared else "")
            for k, v in extra.items()
        )
        lines.append(f"  Chapter {chapter_number(chapter)} was executed with {given}.")
    if part.over_tau:
        counts = ", ".join(f"{n} ({reading})" for reading, n in part.over_tau.items())
        lines.append(
            f"  Heads implementing a relation (score at least $\\tau$ = {DEFAULTS.tau}, promoted "
            f"or suppressed), by reading of $E_\\text{{in}}$: {counts} of {part.heads}."
        )
    if part.reading is not None:
        lines.append(f"  Chapter 4, static scores against the heads' outputs: {part.reading}.")
    return "\n".join(lines)


def best_readings_text(parts: Sequence[Part]) -> str:
    """One sentence: the reading each part's chapter 4 supports, grouped by reading."""
    from mapslib.behaviour.correlation import CLEAR_MARGIN

    by_reading: dict[str, list[str]] = {}
    for part in parts:
        if part.best is not None:
            by_reading.setdefault(part.best, []).append(part.slug)
    if not by_reading:
        return ""
    listed = "; ".join(f"{reading} for {', '.join(slugs)}" for reading, slugs in by_reading.items())
    return (
        "The chapters read heads with the paper's $E_\\text{in}$. The reading whose static scores "
        "track the heads' outputs best (chapter 4; the paper's unless another leads by more than "
        f"{CLEAR_MARGIN}): {listed}."
    )


def model_folders(book: Path) -> list[Path]:
    """The parts in the book's order (`_toc.yml`'s): the default model first, then by name."""
    default = model_slug(DEFAULT_MODEL)
    folders = [p.parent for p in (book / "models").glob("*/index.md")]
    return sorted(folders, key=lambda p: (p.name != default, p.name))


def parts_text(book: Path, expected: Sequence[str], book_level: Sequence[str]) -> str:
    """The generated passage, markers included: every model's part, then the book-level part."""
    parts = [read_part(folder, expected) for folder in model_folders(book)]
    body = [
        BEGIN,
        "",
        "The book has one part per model; each part's index page says how to regenerate it.",
        "",
        *[part_item(p) for p in parts],
    ]
    across = [c for c in book_level if (book / "cross_model" / f"{c}.ipynb").is_file()]
    if across:
        body.append(
            f"- **Across models**: chapter {chapter_span(across)}, from the tables the parts above "
            "wrote (no model is loaded)."
        )
    body.append("")
    readings = best_readings_text(parts)
    if readings:
        body += [readings, ""]
    body.append(END)
    return "\n".join(body)


def replace_passage(text: str, passage: str) -> str:
    """`text` with everything from BEGIN to END (both included) replaced by `passage`."""
    start, stop = text.index(BEGIN), text.index(END, text.index(BEGIN)) + len(END)
    return text[:start] + passage + text[stop:]


def has_passage(text: str) -> bool:
    """Whether the introduction asks for the generated passage (BEGIN, then END)."""
    return BEGIN in text and END in text[text.index(BEGIN) :]


def intro_text(book: Path, expected: Sequence[str], book_level: Sequence[str]) -> str | None:
    """The introduction as it should read: its passage regenerated (None: no intro, or no markers)."""
    intro = book / "intro.md"
    if not intro.is_file():
        return None
    text = intro.read_text(encoding="utf-8")
    if not has_passage(text):
        return None
    return replace_passage(text, parts_text(book, expected, book_level))


def write_intro(book: Path, expected: Sequence[str], book_level: Sequence[str]) -> Path | None:
    """Rewrite the introduction's list of parts from `book/models/*/` (and `book/cross_model/`);
    `expected` are the per-model chapters, `book_level` the book-level ones. None when the book has
    no introduction with the markers; the file is written only when its text changes."""
    text = intro_text(book, expected, book_level)
    intro = book / "intro.md"
    if text is None or text == intro.read_text(encoding="utf-8"):
        return None if text is None else intro
    return write_text(intro, text)
