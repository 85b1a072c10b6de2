"""The book's plumbing: chapters paired and in sync, the generated table of contents, parameters."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
import yaml

from mapslib.errors import BadArgument
from mapslib.report import book


def test_every_chapter_is_paired_and_in_sync() -> None:
    """Each notebooks/NN_name.py has its .ipynb, with the same cells (jupytext --sync keeps them so)."""
    names = book.chapters()
    assert names[:2] == ["01_methods", "02_relation_map"]
    for name in names:
        py, ipynb = book.NOTEBOOKS / f"{name}.py", book.NOTEBOOKS / f"{name}.ipynb"
        assert ipynb.is_file(), f"{ipynb} missing: run jupytext --sync {py}"
        a, b = jupytext.read(py), jupytext.read(ipynb)
        assert [c.source for c in a.cells] == [c.source for c in b.cells], (
            f"{name}: .py and .ipynb differ"
        )
        params = [c for c in a.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name} needs exactly one cell tagged 'parameters' for papermill"
        for p in ("model", "device", "out_dir"):
            assert f"{p} = " in params[0].source, f"{name}: parameter {p} missing"


def test_chapter_selection() -> None:
    available = ["01_methods", "02_relation_map"]
    assert book.select_chapters(["02"], available) == ["02_relation_map"]
    assert book.select_chapters(None, available) == available
    with pytest.raises(BadArgument, match="01_methods"):
        book.select_chapters(["09"], available)


def test_parameters_parse_like_papermill() -> None:
    assert book.parse_parameters(["layers=[1, 2]", "embedding=raw", "k=5", "x=null"]) == {
        "layers": [1, 2],
        "embedding": "raw",
        "k": 5,
        "x": None,
    }
    with pytest.raises(BadArgument):
        book.parse_parameters(["oops"])


def test_toc_lists_models_with_their_executed_chapters(tmp_path: Path) -> None:
    for model, chapters in {
        "smollm2-135m": ["01_methods", "02_relation_map"],
        "other": ["01_methods"],
    }.items():
        folder = tmp_path / "book" / "models" / model
        folder.mkdir(parents=True)
        (folder / "index.md").write_text("# x\n")
        for c in chapters:
            (folder / f"{c}.ipynb").write_text("{}")
    toc = yaml.safe_load(book.write_toc(tmp_path).read_text())
    assert toc["root"] == "book/intro"
    captions = [p["caption"] for p in toc["parts"]]
    assert captions == ["The method", "smollm2-135m", "other"]  # the default model first
    default = toc["parts"][1]["chapters"][0]
    assert default["file"] == "book/models/smollm2-135m/index"
    assert [s["file"] for s in default["sections"]] == [
        "book/models/smollm2-135m/01_methods",
        "book/models/smollm2-135m/02_relation_map",
    ]
    assert [s["file"] for s in toc["parts"][2]["chapters"][0]["sections"]] == [
        "book/models/other/01_methods"
    ]


def test_committed_toc_matches_the_generator() -> None:
    """_toc.yml is generated: the committed file is what write_toc makes from the committed book."""
    assert (book.ROOT / "_toc.yml").read_text() == book.toc_text(), (
        "run: python -m mapslib book --no-build ..."
    )
