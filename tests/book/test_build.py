"""The book's plumbing: chapters paired and in sync, the generated table of contents, parameters."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest
import yaml

from mapslib.book import build as book
from mapslib.errors import BadArgument


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


def test_book_level_chapters_are_paired_and_not_per_model() -> None:
    """09_universality and 11_norm_conventions run once for the whole book: not among the per-model
    chapters, paired, with the book-level parameters and no model parameter."""
    assert book.book_chapters() == ["09_universality", "11_norm_conventions"]
    assert not set(book.book_chapters()) & set(book.chapters())
    for name in book.book_chapters():
        py, ipynb = book.NOTEBOOKS / f"{name}.py", book.NOTEBOOKS / f"{name}.ipynb"
        assert ipynb.is_file(), f"{ipynb} missing: run jupytext --sync {py}"
        a, b = jupytext.read(py), jupytext.read(ipynb)
        assert [c.source for c in a.cells] == [c.source for c in b.cells]
        params = [c for c in a.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1
        for p in ("book_dir", "models", "out_dir"):
            assert f"{p} = " in params[0].source, f"{name}: parameter {p} missing"
        assert "model = " not in params[0].source


def test_split_chapters() -> None:
    per_model, book_level = book.split_chapters(None)
    assert per_model == book.chapters() and book_level == book.book_chapters()
    assert book.split_chapters(["02"]) == (["02_relation_map"], [])
    assert book.split_chapters(["09", "01"]) == (["01_methods"], ["09_universality"])
    with pytest.raises(BadArgument, match="09_universality"):
        book.split_chapters(["99"])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """run_book with papermill, tables, the index and the toc replaced by recorders."""
    seen: dict[str, list] = {"model": [], "cross": [], "index": [], "clear": []}
    monkeypatch.setattr(book, "run_chapter", lambda c, m, p: seen["model"].append(c))
    monkeypatch.setattr(book, "run_cross_model", lambda c, log: seen["cross"].append(c))
    monkeypatch.setattr(book, "write_model_index", lambda m: seen["index"].append(m))
    monkeypatch.setattr(book, "clear_tables", lambda m: seen["clear"].append(m))
    monkeypatch.setattr(book, "write_toc", lambda: None)
    return seen


def test_run_book_runs_the_cross_model_chapter_once_at_the_end(calls: dict[str, list]) -> None:
    book.run_book("m", build=False)
    assert calls["model"] == book.chapters() and calls["cross"] == [book.book_chapters()]
    assert calls["index"] == ["m"]


@pytest.mark.parametrize(
    ("wanted", "cross_model", "model_runs", "cross_runs"),
    [
        (
            ["02"],
            True,
            ["02_relation_map"],
            [["09_universality", "11_norm_conventions"]],
        ),  # refreshed
        (["02"], False, ["02_relation_map"], []),
        (None, False, None, []),
        (["09"], True, [], [["09_universality"]]),  # the cross-model chapter alone
        (["09"], False, [], [["09_universality"]]),  # named: runs whatever cross_model says
        (["11"], True, [], [["11_norm_conventions"]]),  # the readings chapter alone
    ],
)
def test_run_book_chapter_selection(
    calls: dict[str, list], wanted, cross_model: bool, model_runs, cross_runs
) -> None:
    book.run_book("m", wanted, fresh=True, build=False, cross_model=cross_model)
    assert calls["model"] == (book.chapters() if model_runs is None else model_runs)
    assert calls["cross"] == cross_runs
    ran_model = bool(calls["model"])
    assert calls["index"] == (["m"] if ran_model else [])
    assert calls["clear"] == (["m"] if ran_model else [])  # --fresh never clears for 09 alone


def test_run_cross_model_passes_the_book_only_when_it_is_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = []
    monkeypatch.setattr(book, "_execute", lambda c, folder, params: seen.append((folder, params)))
    book.run_cross_model(log=lambda _: None)
    book.run_cross_model(book=tmp_path, log=lambda _: None)
    n = len(book.book_chapters())  # each run executes every book-level chapter
    assert seen[:n] == [(book.BOOK / "cross_model", {"out_dir": "data"})] * n
    assert seen[n:] == [
        (tmp_path / "cross_model", {"out_dir": "data", "book_dir": str(tmp_path.resolve())})
    ] * n


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
    # the book-level chapter, once executed, is a part of its own after the models
    cross = tmp_path / "book" / "cross_model"
    cross.mkdir()
    (cross / "09_universality.ipynb").write_text("{}")
    toc = yaml.safe_load(book.write_toc(tmp_path).read_text())
    assert [p["caption"] for p in toc["parts"]] == [
        "The method",
        "smollm2-135m",
        "other",
        "Across models",
    ]
    assert toc["parts"][3]["chapters"] == [{"file": "book/cross_model/09_universality"}]


def test_committed_toc_matches_the_generator() -> None:
    """_toc.yml is generated: the committed file is what write_toc makes from the committed book."""
    assert (book.ROOT / "_toc.yml").read_text() == book.toc_text(), (
        "run: python -m mapslib book --no-build ..."
    )


def test_model_index_lists_the_chapters_not_yet_executed(tmp_path: Path) -> None:
    """A part with some chapters executed says which are still to come; a complete part does not."""
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    first, *rest = book.chapters()
    (folder / f"{first}.ipynb").write_text("{}")
    text = book.write_model_index("smollm2-135m", tmp_path).read_text()
    assert f"Not yet executed for this model: {', '.join(rest)}" in text
    for c in rest:
        (folder / f"{c}.ipynb").write_text("{}")
    assert "Not yet executed" not in book.write_model_index("smollm2-135m", tmp_path).read_text()


def test_static_chapters_declare_weights_only() -> None:
    """The chapters that read only weights say so; the CLI's --weights-only help names them."""
    assert book.static_chapters() == [
        "01_methods",
        "02_relation_map",
        "03_random_baseline",
        "07_salient_operations",
        "08_global_vs_specific",
    ]
    assert {"model", "suppressor", "weights_only"} <= book.declared_parameters(
        "07_salient_operations"
    )


def test_weights_only_is_refused_for_chapters_that_run_the_model(calls: dict[str, list]) -> None:
    """A behaviour chapter would load the whole model anyway: say so before running anything."""
    with pytest.raises(BadArgument, match="04_correlation.*--chapters 01 02 03 07 08"):
        book.run_book("m", ["02", "04"], {"weights_only": True}, build=False)
    assert calls["model"] == []
    book.run_book("m", ["02", "08"], {"weights_only": True}, build=False)
    assert calls["model"] == ["02_relation_map", "08_global_vs_specific"]


def test_model_index_states_the_reading_chapter_4_supports(tmp_path: Path) -> None:
    """From the committed tables of Gemma's part (chapter 4 prefers E + MLP_0 there); nothing
    before chapter 4 has run."""
    text = book.reading_text(book.BOOK / "models" / "gemma3-270m")
    assert "mlp0-residual tracks behaviour best" in text and "paper" in text
    assert book.reading_text(tmp_path) == ""


def test_regenerate_command_carries_the_chapters_extra_parameters(tmp_path: Path) -> None:
    """The index's command brings back what the chapters ran with: extra papermill parameters, not
    model, out_dir or device (flags of their own)."""

    def executed(name: str, parameters: dict) -> None:
        meta = {"metadata": {"papermill": {"parameters": parameters}}}
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(meta))

    executed("02_relation_map", {"model": "m", "out_dir": "data", "device": "cpu"})
    assert book.regenerate_command("m", tmp_path) == "python -m mapslib book --model m"
    executed("05_causal_ablation", {"model": "m", "random_draws": 100, "max_prompts": 50})
    executed("06_multi_token", {"model": "m", "label": "a b"})
    assert book.regenerate_command("m", tmp_path) == (
        "python -m mapslib book --model m -p 'label=\"a b\"' -p max_prompts=50 -p random_draws=100"
    )


def test_model_index_links_the_head_atlas(tmp_path: Path) -> None:
    """The part's index links its atlas where render_book writes it, relative to the index's page
    (_build/html/book/models/<model>/index.html -> _build/html/atlas/<model>/index.html)."""
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    text = book.write_model_index("smollm2-135m", tmp_path).read_text()
    assert '<a href="../../../atlas/smollm2-135m/index.html">' in text


def test_render_book_builds_the_html_then_an_atlas_per_part(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Nothing is executed: jupyter-book renders the executed notebooks, then each model part gets
    its atlas inside the built HTML."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "synthetic_book", Path(__file__).resolve().parents[1] / "crossmodel" / "synthetic_book.py"
    )
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    synthetic.make_part(tmp_path / "book", "tiny-135m", 2, 2, {})
    runs = []

    def jupyter_book(cmd: list[str], check: bool) -> None:
        runs.append(cmd)
        (tmp_path / "_build" / "html").mkdir(parents=True)
        (tmp_path / "_build" / "html" / "index.html").write_text("book")

    monkeypatch.setattr(book.subprocess, "run", jupyter_book)
    index = book.render_book(tmp_path, log=lambda _: None)
    assert index == tmp_path / "_build" / "html" / "index.html"
    assert [c[1:] for c in runs] == [["build", str(tmp_path), "--warningiserror", "--keep-going"]]
    site = tmp_path / "_build" / "html" / "atlas" / "tiny-135m"
    assert sorted(p.name for p in site.iterdir()) == [
        "atlas.css",
        "atlas.js",
        "data.js",
        "index.html",
    ]


def test_book_no_execute_skips_papermill_and_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`book --no-execute` (the publishing workflow's step) runs no chapter: jupyter-book's build
    command and the atlases only."""
    import papermill

    from mapslib.book import atlas
    from mapslib.cli import main

    def no_papermill(*args, **kwargs):
        raise AssertionError("papermill ran")

    seen: dict[str, list] = {"run": [], "atlases": []}
    monkeypatch.setattr(papermill, "execute_notebook", no_papermill)
    monkeypatch.setattr(book, "run_chapter", no_papermill)
    monkeypatch.setattr(book.subprocess, "run", lambda cmd, check: seen["run"].append(cmd))
    monkeypatch.setattr(
        atlas, "write_atlases", lambda b, html: seen["atlases"].append((b, html)) or []
    )
    assert main(["book", "--no-execute"]) == 0
    assert [c[1:3] for c in seen["run"]] == [["build", str(book.ROOT)]]
    assert Path(seen["run"][0][0]).name == "jupyter-book"
    assert seen["atlases"] == [(book.ROOT / "book", book.ROOT / "_build" / "html")]
    assert main(["book", "--no-execute", "--chapters", "02"]) == 2  # it runs nothing


def test_map_settings_given_one_by_one_reach_the_chapters_as_one_dict() -> None:
    params = book.with_map_settings({"device": "cpu", "embedding": "raw", "k": 5})
    assert params == {"device": "cpu", "map_settings": {"embedding": "raw", "k": 5}}
    assert book.with_map_settings({"device": "cpu"}) == {"device": "cpu"}
    with pytest.raises(BadArgument, match="unknown norms 'apply'; choose one of ignore, fold"):
        book.with_map_settings({"norms": "apply"})
