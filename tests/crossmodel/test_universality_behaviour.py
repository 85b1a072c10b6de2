"""The cross-model chapter's behaviour tables: correlations, readings of E_in and causal effects on
synthetic parts, the paper's quoted numbers, and the committed tables of SmolLM2-135M and
Gemma-3-270M against what their own chapters 04 and 05 wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mapslib.behaviour.ablation import ablation_summary
from mapslib.crossmodel import universality_behaviour as ub
from mapslib.crossmodel.parts import ModelPart, model_parts, reading_correlations


def test_hurts_more_uses_p_with_enough_draws_else_the_margin() -> None:
    row = {"n_draws": 200, "p_random": 0.01, "minus_random": 0.6, "minus_random_std": 0.1}
    row["minus_relation"] = 0.55
    assert ub.hurts_more(pd.Series(row)) == (True, "p_random < 0.05 (200 draws)")
    five = row | {"n_draws": 5, "p_random": 1 / 6, "minus_relation": 0.3}
    assert ub.hurts_more(pd.Series(five))[0]  # 0.6 - 0.3 > 2 * 0.1
    assert not ub.hurts_more(pd.Series(five | {"minus_random_std": 0.2}))[0]


def test_relative_drop() -> None:
    drops = ub.relative_drop([0.8, 0.0, 0.5], [0.2, 0.1, 0.6])
    assert np.allclose(drops, [0.75, np.nan, -0.2], equal_nan=True)


def test_paper_numbers_under_the_rules() -> None:
    frame = ub.paper_correlation_frame()
    c = ub.correlation_rules(frame)
    assert (c["relations"], c["strong"]) == (19, 16)  # 0.67, 0.44, 0.45 are below 0.7
    assert c["strong, both defined"] == 16
    assert c["holds with context"] == 13  # first letter, compound and country to language drop
    drops = ub.paper_causal_drops()
    assert drops.loc["country_to_capital_wikidata", "relation heads"] == pytest.approx(1.0)
    assert drops.loc["general_copying_english_500", "random heads"] == pytest.approx(-0.14 / 0.65)
    k = ub.paper_causal_rules()
    assert (k["relation drop > random drop"], k["relations"]) == (10, 10)
    assert (k["task drop > control drop"], k["with controls"]) == (9, 9)


def test_correlation_counts(behaviour_book: Path) -> None:
    parts = model_parts(behaviour_book)
    c = ub.correlation_summary(parts).loc["tiny-135m"]
    assert (c["relations"], c["strong"], c["strong, both defined"]) == (4, 3, 3)
    assert c["holds with context"] == 2  # 0.8 -> 0.5 drops by more than 0.1
    assert c["implemented"] == 2  # max static >= tau: name copying, country to capital
    assert c["median r, implemented"] == pytest.approx(0.85)
    assert c["median r, not implemented"] == pytest.approx((0.75 + 0.2) / 2)
    assert "other-1.5b" not in ub.correlation_summary(parts).index  # no correlations.csv
    side = ub.correlation_side_by_side(parts)
    assert side.loc[("algorithmic", "Name copying"), ("tiny-135m", "r w/o context")] == 0.9
    assert (
        side.loc[("algorithmic", "Name copying"), ("Llama-3.1-8B (paper, quoted)", "r w/o context")]
        == 0.95
    )


def test_causal_tables_from_the_raw_ablation_table(behaviour_book: Path) -> None:
    parts = model_parts(behaviour_book)
    eff = ub.causal_effects(parts).set_index("relation")
    assert set(eff.index) == {"name_copying", "verb_past_tense"}
    nc = eff.loc["name_copying"]
    assert nc["n_draws"] == 5
    assert nc["minus_random"] == pytest.approx(0.76)
    assert nc["minus_random_5_std"] == pytest.approx(np.std([0.8, 0.7, 0.8, 0.7, 0.8]))
    assert nc["relative drop, relation heads"] == pytest.approx(1.0)
    assert nc["relative drop, random heads"] == pytest.approx(0.04 / 0.8)
    assert nc["relative drop, controls"] == pytest.approx((0.5 - 0.45) / 0.5)
    assert nc["relation heads hurt more"] and "2 std" in nc["test"]
    assert not eff.loc["verb_past_tense", "relation heads hurt more"]  # 0.4 vs 0.42 +- 0.08
    status = ub.causal_status(parts).loc["tiny-135m"]
    assert (status["run"], status["skipped: base accuracy < 0.1"]) == (2, 1)
    side = ub.causal_side_by_side(parts)
    assert side.loc["Name copying", ("tiny-135m", "TR - RND heads")] == pytest.approx(0.76)
    assert side.loc["Name copying", ("Pythia 12B (paper, quoted)", "TR base")] == 1.0


def test_random_control_table_is_the_effects_random_control(behaviour_book: Path) -> None:
    parts = model_parts(behaviour_book)
    table = ub.random_control_table(parts)
    eff = ub.causal_effects(parts).set_index(["model", "relation"])
    assert table.index.names == ["model", "relation"] and list(table.index) == list(eff.index)
    assert list(table.columns) == [
        "heads removed",
        "minus relation heads",
        "random, first 5: mean",
        "random, first 5: std (ddof 0)",
        "random, all: mean",
        "random, all: std (ddof 1)",
        "draws",
        "p (random as harmful)",
    ]
    assert table["heads removed"].tolist() == eff["n_heads"].tolist()
    assert np.allclose(table["random, all: mean"], eff["minus_random"])
    assert np.allclose(table["random, first 5: std (ddof 0)"], eff["minus_random_5_std"])


def test_causal_tables_show_what_an_older_summary_has(
    behaviour_book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_summary(df: pd.DataFrame) -> pd.DataFrame:  # before n_draws / p_random existed
        return ablation_summary(df).drop(
            columns=["n_draws", "p_random", "minus_random_5", "minus_random_5_std"]
        )

    monkeypatch.setattr(ub, "ablation_summary", old_summary)
    table = ub.random_control_table(model_parts(behaviour_book))
    assert table["draws"].isna().all() and table["random, all: mean"].notna().all()


def test_parts_without_behaviour_tables_are_left_out(small_book: Path) -> None:
    (part,) = model_parts(small_book)
    assert ub.causal_effects([part]).empty and ub.causal_side_by_side([part]).empty
    assert ub.random_control_table([part]).empty and ub.reading_table([part]).empty
    assert ub.correlation_side_by_side([part]).empty
    assert ub.correlation_frame(part) is None and ub.correlation_frame(part, "raw") is None


# -- the committed tables of the book ---------------------------------------------------------------
def test_real_behaviour_tables_match_the_per_model_chapters(real_parts: list[ModelPart]) -> None:
    for p in real_parts:
        # chapter 04's correlations.csv against the same r re-derived from its dynamic scores
        written = ub.correlation_frame(p, "paper")
        derived = reading_correlations(p)["paper"].drop(index="median")
        for setting in ("no_context", "context"):
            a = written[f"r_{setting}"].reindex(derived.index).to_numpy()
            assert np.allclose(a, derived[setting].to_numpy(), equal_nan=True)
        # chapter 05's summary (its sidecar) against the one re-derived from the raw table
        recorded = pd.DataFrame(p.sidecar("ablation.csv")["summary"]).set_index("relation")
        ours = ub.causal_summaries([p])[p.name].set_index("relation")
        for col in ("base", "minus_relation", "minus_random", "status"):
            pd.testing.assert_series_equal(
                ours[col], recorded[col].reindex(ours.index), check_dtype=False, check_names=False
            )
    reads = ub.reading_table(real_parts)
    assert set(reads.index) == {p.name for p in real_parts}
