"""The introduction's list of parts is generated from the parts (mapslib.book.intro)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapslib.book import build
from mapslib.book import intro as gen


def test_committed_intro_matches_the_generator() -> None:
    """book/intro.md's passage is what write_intro makes from the committed parts: a part, chapter
    or parameter added or removed without regenerating it fails here."""
    text = (build.BOOK / "intro.md").read_text(encoding="utf-8")
    assert gen.has_passage(text), "book/intro.md lost the markers of its generated passage"
    assert text == gen.intro_text(build.BOOK, build.chapters(), build.book_chapters()), (
        "book/intro.md is out of date; run: python -c 'from mapslib.book.build import write_toc; "
        "write_toc()' (or python -m mapslib book ...)"
    )


def test_committed_intro_names_every_part() -> None:
    passage = gen.parts_text(build.BOOK, build.chapters(), build.book_chapters())
    parts = sorted(p.parent.name for p in (build.BOOK / "models").glob("*/index.md"))
    assert parts, "the book has no parts"
    for slug in parts:
        assert f"[**{slug}**](models/{slug}/index.md)" in passage


@pytest.mark.parametrize(
    ("numbers", "span"),
    [
        ([1], "1"),
        ([1, 2, 3, 4, 7], "1-4 and 7"),
        ([1, 2, 3, 4, 5, 6, 7, 8, 10], "1-8 and 10"),
        ([5, 6, 8, 10], "5-6, 8 and 10"),
    ],
)
def test_chapter_span(numbers: list[int], span: str) -> None:
    assert gen.chapter_span([f"{n:02d}_x" for n in numbers]) == span


def executed(folder: Path, chapter: str, passed: dict, declared: str = "") -> None:
    """An executed chapter: its parameters cell and papermill's record of what it was given."""
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": [declared]}]
    meta = {"papermill": {"parameters": passed}}
    (folder / f"{chapter}.ipynb").write_text(json.dumps({"cells": cells, "metadata": meta}))


@pytest.fixture
def small_book(tmp_path: Path) -> Path:
    """A book with an introduction (text around the markers) and two parts without tables."""
    tmp_path = tmp_path / "book"
    for slug in ("smollm2-135m", "mine"):
        folder = tmp_path / "models" / slug
        folder.mkdir(parents=True)
        (folder / "index.md").write_text(f"# {slug}\n")
    layout = {"model": "m", "out_dir": "data", "device": "cpu"}
    for c in ("01_methods", "02_relation_map", "05_causal_ablation", "10_known_heads"):
        executed(tmp_path / "models" / "smollm2-135m", c, layout)
    executed(tmp_path / "models" / "mine", "01_methods", layout)
    executed(
        tmp_path / "models" / "mine",
        "05_causal_ablation",
        layout | {"max_prompts": 50, "seed": 1, "random": 7},  # `random`: not declared
        'max_prompts = 100  # prompts per task\nrandom_draws = 200\nseed = 0\n',
    )
    (tmp_path / "cross_model").mkdir()
    (tmp_path / "cross_model" / "09_universality.ipynb").write_text("{}")
    text = f"# Intro\n\nBefore.\n\n{gen.BEGIN}\nstale\n{gen.END}\n\n## The head atlas\n\nAfter.\n"
    (tmp_path / "intro.md").write_text(text)
    return tmp_path


EXPECTED = ["01_methods", "02_relation_map", "05_causal_ablation", "10_known_heads"]


def test_parts_say_what_they_hold(small_book: Path) -> None:
    passage = gen.parts_text(small_book, EXPECTED, ["09_universality"])
    default, mine = passage.split("\n- [**mine**]")  # the default model first
    assert "[**smollm2-135m**](models/smollm2-135m/index.md) (the default model)" in default
    assert "Every chapter (1-2, 5 and 10)." in default
    assert "Chapters 1 and 5; not yet executed: 2 and 10." in mine
    # extra parameters beside the chapter's own defaults; model, out_dir and device are not extras
    assert "Chapter 5 was executed with `max_prompts=50` (default 100), `seed=1` (default 0)." in mine
    assert "device" not in passage and "random=7" not in passage  # only declared ones
    assert "- **Across models**: chapter 9" in passage
    assert "Heads implementing" not in passage  # no relation map yet: nothing read from tables


def test_write_intro_rewrites_only_the_passage(small_book: Path) -> None:
    before = (small_book / "intro.md").read_text()
    assert gen.write_intro(small_book, EXPECTED, ["09_universality"]) == small_book / "intro.md"
    after = (small_book / "intro.md").read_text()
    assert "stale" not in after
    head, tail = before.split(gen.BEGIN)[0], before.split(gen.END)[1]
    assert after.startswith(head) and after.endswith(tail)  # an appended section stays
    assert after == gen.intro_text(small_book, EXPECTED, ["09_universality"])  # idempotent


def test_an_intro_without_markers_is_left_alone(tmp_path: Path) -> None:
    assert gen.write_intro(tmp_path, EXPECTED, []) is None  # no intro at all
    (tmp_path / "intro.md").write_text("# Intro\n")
    assert gen.write_intro(tmp_path, EXPECTED, []) is None
    assert (tmp_path / "intro.md").read_text() == "# Intro\n"


def test_write_toc_writes_the_intro_too(small_book: Path) -> None:
    """build.write_toc(root) regenerates root/book/intro.md's passage with `_toc.yml`."""
    build.write_toc(small_book.parent)
    assert "stale" not in (small_book / "intro.md").read_text()
    assert "[**mine**](models/mine/index.md)" in (small_book / "intro.md").read_text()
