"""The head atlas: its data holds the relation table's scores and right ranks, each chapter's table
where the part wrote one and "not measured" where it did not; the site's files; bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from mapslib.book import atlas
from mapslib.cli import main
from mapslib.errors import BadArgument
from mapslib.foundation.io import write_table

TESTS = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "synthetic_book", TESTS / "crossmodel" / "synthetic_book.py"
)
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)
SECTIONS = ("mappings", "label", "llm", "judge", "globality", "dynamic", "ablation", "ioi")


def salient_rows() -> pd.DataFrame:
    """Chapter 7's salient mappings of two heads, 3 salient tokens of 2 targets each."""
    mappings = {
        (2, 0): [(" Paris", [" Paris", " paris"]), ("cat", ["Cat", " cat"]), (" 7", [" 8", " 7"])],
        (3, 2): [("<b>", [" Paris", "x"]), ("a\n", ["b", "c"]), (" dog", [" dogs", " dog"])],
    }
    rows = []
    for (layer, head), sources in mappings.items():
        for s, (src, targets) in enumerate(sources, start=1):
            for r, tgt in enumerate(targets, start=1):
                rows.append(
                    dict(layer=layer, head=head, name=f"{layer}.{head}", salient_rank=s,
                         source_id=s, source=src, saliency=1.0 / s, rank=r, target_id=r,
                         target=tgt, score=1.0 / r)
                )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def small_part(tmp_path: Path) -> Path:
    """A 4 x 4 part with only its relation map (synthetic_book.SMALL)."""
    return synthetic.make_part(tmp_path, "tiny-135m", 4, 4, synthetic.SMALL, n_kv=2)


@pytest.fixture
def full_part(small_part: Path) -> Path:
    """small_part with the tables of chapters 4, 5, 7, 8 and 10."""
    data = small_part / "data"
    heads = [(la, h) for la in range(4) for h in range(4)]
    synthetic.write(data / "ablation.csv", synthetic.ablation_csv(), {})
    space = pd.DataFrame(
        [(la, h, 64, False, 10 + 4 * la + h, (4 * la + h) / 16, 0.01, 0.5, 0.02) for la, h in heads],
        columns=["layer", "head", "n_sources", "exact", "distinct", "size_sample",
                 "size_sample_se", "size", "size_se"],
    )  # fmt: skip
    synthetic.write(data / "output_space.csv", space, {})
    known = pd.DataFrame(
        [(la, h, 0.5 if (la, h) == (2, 0) else 0.0, 0.1, 4.0 if (la, h) == (2, 0) else 0.0,
          0.6, 0.1, "name mover" if (la, h) == (2, 0) else "-") for la, h in heads],
        columns=["layer", "head", "direct_effect", "direct_effect_sd", "robust_z", "attn_io",
                 "attn_s", "role"],
    )  # fmt: skip
    synthetic.write(data / "known_heads.csv", known, {})
    dynamic = pd.DataFrame(
        [(2, 0, "name_copying", t, s, "promote", 1, 40, v)
         for t in (0, 1) for s, v in (("no_context", 0.6 + 0.2 * t), ("context", 0.1))]
        + [(1, 1, "adj_antonym", 0, "context", "promote", 10, 40, 0.0)],
        columns=["layer", "head", "relation", "template", "setting", "mode", "k", "n_pairs", "score"],
    )  # fmt: skip
    synthetic.write(data / "dynamic_scores.csv", dynamic, {})
    salient = salient_rows()
    write_table(data / "salient_mappings.json.gz", salient, {})
    judged = pd.DataFrame(
        [(2, 0, "2.0", "own description", i, 0, 0, i < 3) for i in range(4)]
        + [(2, 0, "2.0", "shuffled description (control)", i, 0, 1, False) for i in range(4)],
        columns=["layer", "head", "name", "group", "item", "answer", "picked", "correct"],
    )  # fmt: skip
    synthetic.write(data / "judgements.csv", judged, {"setup": {"described": 2}})
    desc = pd.DataFrame(
        [(2, 0, "2.0", "pattern", "copies <names>", "names"), (3, 2, "3.2", "no pattern", "", "")],
        columns=["layer", "head", "name", "status", "pattern", "inputs"],
    )
    synthetic.write(data / "descriptions.csv", desc, {})
    return small_part


def head(data: dict, name: str) -> dict:
    return next(h for h in data["heads"] if h["name"] == name)


def test_scores_and_ranks_are_the_relation_table(small_part: Path) -> None:
    """Every score of every head is the table's; ranks count the heads scoring strictly higher."""
    data = atlas.atlas_data(small_part)
    table = pd.read_csv(small_part / "data" / "relation_scores.csv")
    names = [r["name"] for r in data["relations"]]
    assert sorted(names) == sorted(table["relation"].unique())
    assert len(data["heads"]) == 16 and data["tau"] == 0.15
    for row in table.itertuples():
        h = head(data, f"{row.layer}.{row.head}")
        i = names.index(row.relation)
        assert h[row.mode][i] == pytest.approx(row.score)
        same = table[(table["relation"] == row.relation) & (table["mode"] == row.mode)]
        rank = 1 + int((same["score"] > row.score).sum()) if row.score > 0 else None
        assert h[row.mode + "_rank"][i] == rank
    # name copying: 2.0 (0.8) first, 2.1 (0.3) second; the best relation over tau decides category
    i = names.index("name_copying")
    assert head(data, "2.0")["promote_rank"][i] == 1 and head(data, "2.1")["promote_rank"][i] == 2
    assert head(data, "2.0")["best"] == {
        "relation": "name_copying",
        "mode": "promote",
        "score": 0.8,
    }
    assert head(data, "2.0")["category"] == "algorithmic"
    assert head(data, "3.2")["category"] == "linguistic"  # a suppressor: adj_antonym 0.25
    assert (
        head(data, "0.3")["category"] == "none" and head(data, "0.3")["best"] is None
    )  # 0.1 < tau


def test_missing_tables_are_not_measured(small_part: Path) -> None:
    """A part with only chapter 2's map: every other section is None (the card says "not measured
    for this model"), never a value."""
    data = atlas.atlas_data(small_part)
    assert data["measured"] == {name: False for name in SECTIONS}
    for h in data["heads"]:
        assert all(h[name] is None for name in SECTIONS)
    assert "not measured for this model" in (atlas.ASSETS / "atlas.js").read_text()


def test_every_chapter_table_reaches_its_heads(full_part: Path) -> None:
    data = atlas.atlas_data(full_part, "../ch/")
    assert data["measured"] == {name: True for name in SECTIONS}
    h, other = head(data, "2.0"), head(data, "1.1")
    # chapter 7: the described tokens only (the judge's setup says 2), raw text kept
    assert h["mappings"] == [[" Paris", [" Paris", " paris"]], ["cat", ["Cat", " cat"]]]
    assert other["mappings"] == [] and head(data, "3.2")["mappings"][0] == ["<b>", [" Paris", "x"]]
    assert h["label"]["label"] == "copying" and h["label"]["share"] == 1.0
    assert h["llm"]["pattern"] == "copies <names>" and h["llm"]["source"] == "descriptions.csv"
    assert h["judge"] == {"accuracy": 0.75, "questions": 4}  # the control's questions left out
    # chapter 8: sizes as written, and the share of heads with a smaller one
    assert h["globality"]["size_sample"] == 0.5 and h["globality"]["above"] == pytest.approx(
        8 / 15, abs=1e-3
    )
    assert head(data, "0.0")["globality"]["kind"] == "specific"
    assert head(data, "3.3")["globality"]["kind"] == "global"
    # chapter 4: mean over templates, only relations where something is not 0
    assert h["dynamic"] == [
        {"relation": "name_copying", "mode": "promote", "static": 0.8, "no_context": 0.7,
         "context": 0.1, "r_no_context": None, "r_context": None}
    ]  # fmt: skip
    assert other["dynamic"] == []
    # chapter 5: name copying's relation heads are 2.0 then 2.1 (accuracy 0.8 -> 0.2 -> 0.0)
    (abl,) = h["ablation"]
    assert (abl["relation"], abl["position"], abl["n_heads"]) == ("name_copying", 1, 2)
    assert (abl["before"], abl["after"], abl["minus_relation"]) == (0.8, 0.2, 0.0)
    (abl,) = head(data, "2.1")["ablation"]
    assert (abl["position"], abl["before"], abl["after"]) == (2, 0.2, 0.0)
    assert head(data, "0.3")["ablation"][0]["relation"] == "verb_past_tense"
    assert other["ablation"] == []
    # chapter 10
    assert h["ioi"]["role"] == "name mover" and h["ioi"]["direct_effect"] == 0.5
    # links: only to the chapters the part executed (none here)
    assert data["chapters"] == {n: None for n in ("02", "04", "05", "07", "08", "10")}
    (full_part / "05_causal_ablation.ipynb").write_text("{}")
    assert (
        atlas.atlas_data(full_part, "../ch/")["chapters"]["05"] == "../ch/05_causal_ablation.html"
    )


def test_the_site_is_written(small_part: Path, tmp_path: Path) -> None:
    """index.html, atlas.js, atlas.css and data.js (window.ATLAS); nothing from the network."""
    out = tmp_path / "site"
    index = atlas.write_atlas("tiny-135m", out, book=small_part.parents[1])
    assert index == out / "index.html"
    assert sorted(p.name for p in out.iterdir()) == sorted(atlas.SITE_FILES)
    script = (out / "data.js").read_text()
    assert script.startswith("window.ATLAS = ") and script.rstrip().endswith(";")
    data = json.loads(script.removeprefix("window.ATLAS = ").rstrip().removesuffix(";"))
    assert data["model"] == "tiny-135m" and data["n_layers"] == 4
    assert data["chapters"]["02"] is None  # no executed chapter in the synthetic part
    page = index.read_text()
    assert '<script src="data.js"></script>' in page and "Head atlas: tiny-135m" in page
    assert "http" not in page + (out / "atlas.js").read_text() + (out / "atlas.css").read_text()


def test_a_model_without_a_part_is_a_bad_argument(small_part: Path, tmp_path: Path, capsys) -> None:
    book = small_part.parents[1]
    with pytest.raises(
        BadArgument, match=r"parts: tiny-135m; make one with `python -m mapslib book"
    ):
        atlas.write_atlas("nope", tmp_path / "x", book=book)
    code = main(["atlas", "--model", "nope", "--book", str(book), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "python -m mapslib book --model nope" in err
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_atlas(small_part: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    code = main(["atlas", "--model", "tiny-135m", "--book", str(small_part.parents[1]),
                 "--out", str(out), "--chapters-url", "../chapters/"])  # fmt: skip
    assert code == 0 and (out / "index.html").is_file() and (out / "data.js").is_file()
