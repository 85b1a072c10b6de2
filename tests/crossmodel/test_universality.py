"""The cross-model chapter's head-level tables: synthetic book folders checked exactly, and the
committed tables of SmolLM2-135M and Gemma-3-270M checked against what their own chapters compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from synthetic_book import make_part, scores_frame, write

from mapslib.crossmodel import universality as u
from mapslib.crossmodel.parts import ModelPart, model_parts
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map import summary
from mapslib.relation_map.baseline import baseline_table
from mapslib.report.reference import GPT2_XL_MAX_SCORES


def test_relative_depth_and_thirds_are_exact() -> None:
    assert np.allclose(u.relative_depth([0, 29], 30), [1 / 60, 59 / 60])
    thirds = u.depth_third(u.relative_depth(np.arange(30), 30))
    assert list(thirds) == [0] * 10 + [1] * 10 + [2] * 10
    four = u.depth_third(u.relative_depth(np.arange(4), 4))  # .125 .375 .625 .875
    assert list(four) == [0, 1, 1, 2]
    assert list(u.depth_third(u.relative_depth(np.arange(18), 18))) == [0] * 6 + [1] * 6 + [2] * 6


def test_registry_order_and_labels() -> None:
    rels = ["zzz_custom", "verb_past_tense", "name_copying", "name_copying"]
    assert u.registry_order(rels) == ["name_copying", "verb_past_tense", "zzz_custom"]
    table = u.labelled(pd.DataFrame({"x": [1, 2]}, index=rels[1:3]))
    assert list(table.index) == [
        ("linguistic", "Verb to past tense"),
        ("algorithmic", "Name copying"),
    ]


def test_depth_and_shares_on_a_small_part(small_book: Path) -> None:
    parts = model_parts(small_book)
    heads = u.classified_heads(parts[0])
    assert list(zip(heads["layer"], heads["head"], strict=True)) == [(2, 0), (2, 1), (3, 2)]
    row = u.depth_table(parts).loc["tiny-135m"]
    assert (row["lower third"], row["middle third"], row["upper third"]) == (0, 2, 1)
    assert row["share in upper two thirds"] == 1.0
    assert row["share of all heads there"] == 0.75  # layers 1, 2, 3 of 4
    assert row["p (binomial, greater)"] == pytest.approx(0.75**3)
    assert row["mean relative depth"] == pytest.approx((0.625 * 2 + 0.875) / 3)
    shares = u.head_shares(parts).loc["tiny-135m"]
    assert shares["classified heads"] == 3 and shares["heads"] == 16
    assert shares["multi-category share"] == pytest.approx(1 / 3)
    assert shares["suppression share"] == pytest.approx(1 / 3)
    assert shares["multi-relation share"] == pytest.approx(1 / 3)
    assert set(u.head_shares(parts)["source"]) == {"this book (paper reading)", "paper (quoted)"}
    profile = u.depth_profile(parts, bins=4)
    assert list(profile["classified"]) == [0, 0, 2, 1] and list(profile["heads"]) == [4] * 4


def test_max_scores_and_spread(small_book: Path) -> None:
    parts = model_parts(small_book)
    top = u.max_scores(parts, "promote")
    assert top.loc["name_copying", "tiny-135m"] == 0.8
    assert top.loc["verb_past_tense", "tiny-135m"] == 0.1
    assert (
        top.loc["name_copying", "GPT-2 xl (paper, quoted)"]
        == GPT2_XL_MAX_SCORES[("name_copying", "promote")]
    )
    spread = u.score_spread(parts).set_index(["relation", "mode"])
    nc = spread.loc[("name_copying", "promote")]
    # no baseline: chance is 0, so heads above chance below tau are the positive scores under tau
    assert (nc["heads_over_tau"], nc["heads_above_chance_below_tau"], nc["graded"]) == (2, 0, False)
    assert not spread.loc[("adj_antonym", "promote"), "implemented"]
    long = u.score_table(parts)
    assert len(long) == 4 * 4 * 4 * 2 and set(long["reading"]) == {"paper"}


def test_chance_from_the_random_baseline(small_book: Path) -> None:
    folder = small_book / "models" / "tiny-135m" / "data"
    random = scores_frame(4, 4, {(1, 1, "name_copying", "promote"): 0.05})
    write(folder / "baseline_random_scores.csv", random, {"params": {"embedding": "paper"}})
    (part,) = model_parts(small_book)
    assert u.chance_levels(part)[("name_copying", "promote")] == 0.05
    assert u.chance_levels(part, "raw").empty  # the baseline was made with another reading
    row = u.random_baseline_table([part]).loc["tiny-135m"]
    assert (row["random over tau"], row["real relation heads"], row["heads"]) == (0, 3, 16)


def test_group_sharing_test_counts_exactly(small_book: Path) -> None:
    (part,) = model_parts(small_book)
    scores = part.scores()
    test = u.group_sharing_test(scores, 4, 2, permutations=4000, seed=1)
    shared = summary.group_sharing(scores, 4, 2).set_index("pair").loc["same kv group"]
    # (2, 0) and (2, 1) share name_copying promote: 2 ordered same-group pairs of 2 + 1 + 1 + 1
    assert test["same_group_shared"] == shared["shared"] == 2
    assert test["same_group_pairs"] == shared["pairs"] == 2 * 1 + 1 + 1
    assert test["same_group_rate"] == 0.5
    # 2 of 4 heads at random share a group with probability 2 / 6: 2 / 3 pairs expected out of 4
    assert test["random_placement_rate"] == pytest.approx((2 / 3) / 4, abs=0.01)
    assert test["p"] == pytest.approx(1 / 3, abs=0.03)
    table = u.group_sharing_table([part], permutations=500)
    assert table.loc["tiny-135m", "same-group shared"] == 2


def test_multi_query_and_multi_head_models_are_not_grouped(tmp_path: Path) -> None:
    make_part(tmp_path, "mqa-100m", 2, 4, {(1, 0, "name_copying", "promote"): 0.5}, n_kv=1)
    make_part(tmp_path, "mha-200m", 2, 4, {}, n_kv=4)
    table = u.group_sharing_table(model_parts(tmp_path))
    assert list(table.index) == ["mqa-100m"]  # multi-head attention has no groups
    assert np.isnan(table.loc["mqa-100m", "p (permutation)"])  # one group: nothing to compare


# -- the committed tables of the book ---------------------------------------------------------------
def test_real_tables_match_the_per_model_chapters(real_parts: list[ModelPart]) -> None:
    for p in real_parts:
        scores = p.scores()
        ov = summary.relation_overview(scores, DEFAULTS.tau).set_index(["relation", "mode"])
        for mode in ("promote", "suppress"):
            top = u.max_scores(real_parts, mode)[p.name].dropna()
            expected = ov.xs(mode, level="mode")["max_score"]
            assert top.to_dict() == pytest.approx(expected.to_dict())
        shares = u.head_shares(real_parts).loc[p.name]
        overview = summary.overview(scores, p.heads, DEFAULTS.tau)
        assert shares["classified heads"] == overview["classified_heads"]
        assert shares["multi-category share"] == overview["multi_category_share"]
        assert shares["suppression share"] == overview["suppression_share"]
        # chapter 03's table
        total = baseline_table(scores, p.table("baseline_random_scores.csv"), DEFAULTS.tau).loc[
            "total"
        ]
        row = u.random_baseline_table(real_parts).loc[p.name]
        assert row["random over tau"] == total["random_over_tau"]
        assert row["real relation heads"] == total["real_over_tau"]


def test_real_group_sharing_and_depth(real_parts: list[ModelPart]) -> None:
    smol = real_parts[0]
    table = u.group_sharing_table(real_parts, permutations=500)
    ref = summary.group_sharing(smol.scores(), 9, 3, DEFAULTS.tau).set_index("pair")
    assert table.loc["smollm2-135m", "same-group shared"] == ref.loc["same kv group", "shared"]
    assert table.loc["smollm2-135m", "other-group rate"] == ref.loc["other group", "shared_rate"]
    depth = u.depth_table(real_parts).loc["smollm2-135m"]
    heads = summary.head_table(smol.scores(), DEFAULTS.tau)
    upper = int((heads["layer"] >= 10).sum())  # thirds of 30 layers: 0-9, 10-19, 20-29
    assert depth["share in upper two thirds"] == upper / len(heads)
    p = binomtest(upper, len(heads), 2 / 3, alternative="greater").pvalue
    assert depth["p (binomial, greater)"] == pytest.approx(p)
