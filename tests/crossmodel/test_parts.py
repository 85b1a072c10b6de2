"""Each model's part of the book read back: its shape, its maps and readings, its tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_book import SMALL, make_part, scores_frame, write

from mapslib.crossmodel import parts as bp


def test_nominal_parameters_from_names() -> None:
    assert bp.nominal_parameters("smollm2-135m") == 1.35e8
    assert bp.nominal_parameters("gemma3-270m") == 2.7e8
    assert bp.nominal_parameters("qwen2.5-coder-0.5b") == 5e8  # not the 2.5 of the family name
    assert bp.nominal_parameters("qwen2.5-coder-1.5b") == 1.5e9
    assert bp.nominal_parameters("my-model") is None
    assert bp.size_text(1.35e8) == "135M" and bp.size_text(1.5e9) == "1.5B"
    assert bp.size_text(None) == "?"


@pytest.mark.parametrize("where", ["sidecar", "notebook", "none"])
def test_model_info_sources(tmp_path: Path, where: str) -> None:
    folder = make_part(tmp_path, "tiny-135m", 4, 4, SMALL, n_kv=2, architecture=where)
    info = bp.model_info(folder)
    assert (info["n_layers"], info["n_heads"], info["parameters"]) == (4, 4, 1.35e8)
    assert info["n_kv_heads"] == (None if where == "none" else 2)
    assert info["shape_source"].startswith(
        {"sidecar": "sidecar", "notebook": "chapter 01", "none": "relation_scores"}[where]
    )


def test_model_parts_order_and_unknown_models(tmp_path: Path) -> None:
    make_part(tmp_path, "big-1.5b", 2, 2, {})
    make_part(tmp_path, "small-135m", 2, 2, {})
    assert [p.name for p in bp.model_parts(tmp_path)] == ["small-135m", "big-1.5b"]
    assert [p.name for p in bp.model_parts(tmp_path, "big-1.5b")] == ["big-1.5b"]
    with pytest.raises(Exception, match="small-135m"):
        bp.model_parts(tmp_path, ["nope"])


def test_attention_kinds(tmp_path: Path) -> None:
    make_part(tmp_path, "mqa-100m", 2, 4, {}, n_kv=1)
    make_part(tmp_path, "gqa-200m", 2, 4, {}, n_kv=2)
    make_part(tmp_path, "mha-300m", 2, 4, {}, n_kv=4)
    make_part(tmp_path, "any-400m", 2, 4, {}, architecture="none")
    kinds = {p.name: p.attention for p in bp.model_parts(tmp_path)}
    assert kinds == {
        "mqa-100m": "multi-query",
        "gqa-200m": "grouped-query",
        "mha-300m": "multi-head",
        "any-400m": "unknown",
    }


def test_tables_are_read_once_through_the_cache(small_book: Path) -> None:
    (part,) = bp.model_parts(small_book)
    assert part.table("ablation.csv") is None and part.sidecar("ablation.csv") is None
    assert part.table("relation_scores.csv") is part.table("relation_scores.csv")
    calls = []
    assert part.cached("x", lambda: calls.append(1) or 7) == 7
    assert part.cached("x", lambda: calls.append(1) or 8) == 7 and calls == [1]
    assert part.k_range() == (1, 10)


def test_baseline_reading_from_its_sidecar(small_book: Path) -> None:
    (part,) = bp.model_parts(small_book)
    assert part.baseline_reading() == "paper"  # no baseline: the default reading
    data = small_book / "models" / "tiny-135m" / "data"
    write(
        data / "baseline_random_scores.csv",
        scores_frame(1, 1, {}),
        {"params": {"embedding": "raw"}},
    )
    (part,) = bp.model_parts(small_book)
    assert part.baseline_reading() == "raw"
    assert bp.map_label("raw", "none") == "raw"
    assert bp.map_label("paper", "value") == "paper + bias value"


def test_readings_and_best_reading(small_book: Path) -> None:
    raw = scores_frame(4, 4, {(1, 1, "name_copying", "promote"): 0.4})
    make_part(small_book, "maps-200m", 4, 4, SMALL, n_kv=2, embedding_maps={"raw": raw})
    part = bp.model_parts(small_book, ["maps-200m"])[0]
    assert list(part.maps()) == ["paper", "raw"]
    assert part.scores("raw").loc[lambda d: d["score"] > 0, "layer"].tolist() == [1]
    assert bp.reading_correlations(part) is None and bp.median_r(part) is None
    assert bp.best_reading(part) == "paper"  # no dynamic scores: nothing can tell
    assert bp.readings_for([part], "best") == {"maps-200m": "paper"}
    assert bp.readings_for([part], "raw") == {"maps-200m": "raw"}
    assert bp.readings_for([part], {}) == {"maps-200m": "paper"}
    with pytest.raises(Exception, match="paper, raw"):
        part.scores("mlp0-residual")


def test_inventory_and_sources_show_what_exists(small_book: Path) -> None:
    (part,) = bp.model_parts(small_book)
    inv = bp.inventory([part])
    assert inv.loc["relation_scores.csv", "tiny-135m"]
    assert not inv.loc["ablation.csv", "tiny-135m"]
    assert bp.sources([part])["tiny-135m"]["tables"] == ["relation_scores.csv", "maps: paper"]
    row = bp.models_table([part]).loc["tiny-135m"]
    assert (row["k (copying / other)"], row["relations scored"], row["attention"]) == (
        "1 / 10",
        4,
        "grouped-query",
    )
    json.dumps(bp.sources([part]))  # goes into a sidecar


def test_real_model_shapes(real_parts: list[bp.ModelPart]) -> None:
    shapes = {p.name: (p.n_layers, p.n_heads, p.n_kv_heads, p.parameters) for p in real_parts}
    assert shapes == {"smollm2-135m": (30, 9, 3, 1.35e8), "gemma3-270m": (18, 4, 1, 2.7e8)}
