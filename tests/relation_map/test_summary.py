"""Head-level summaries on a hand-made score table whose answers are known."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.relation_map import summary
from mapslib.report.tables import known_scores


def _scores() -> pd.DataFrame:
    """2 layers x 4 heads (2 kv groups of 2); a few heads implement relations."""
    rows = []
    hits = {
        (1, 0, "name_copying", "promote"): 0.9,
        (1, 1, "name_copying", "promote"): 0.5,  # same kv group as head 0
        (1, 2, "name_copying", "promote"): 0.2,  # other group
        (1, 0, "country_to_capital_wikidata", "promote"): 0.4,
        (1, 3, "country_to_capital_wikidata", "suppress"): 0.3,
        (0, 1, "adj_antonym", "promote"): 0.1,  # below tau
    }
    for layer in range(2):
        for head in range(4):
            for rel in ("name_copying", "country_to_capital_wikidata", "adj_antonym"):
                for mode in ("promote", "suppress"):
                    k = 1 if rel == "name_copying" else 10
                    rows.append(
                        (layer, head, rel, mode, k, 50, hits.get((layer, head, rel, mode), 0.0))
                    )
    return pd.DataFrame(
        rows, columns=["layer", "head", "relation", "mode", "k", "n_pairs", "score"]
    )


def test_relation_overview() -> None:
    rh = summary.relation_overview(_scores()).set_index(["relation", "mode"])
    assert rh.loc[("name_copying", "promote"), "heads_over_tau"] == 3
    assert rh.loc[("name_copying", "promote"), "best_head"] == "1.0"
    assert rh.loc[("country_to_capital_wikidata", "suppress"), "heads_over_tau"] == 1
    assert rh.loc[("adj_antonym", "promote"), "heads_over_tau"] == 0
    assert rh.loc[("adj_antonym", "promote"), "max_score"] == pytest.approx(0.1)


def test_head_table_and_overview() -> None:
    heads = summary.head_table(_scores()).set_index("name")
    assert list(heads.index) == ["1.0", "1.1", "1.2", "1.3"]
    assert heads.loc["1.0", "n_categories"] == 2 and heads.loc["1.0", "n_relations"] == 2
    assert (
        heads.loc["1.3", "suppresses"] == "country_to_capital_wikidata"
        and heads.loc["1.3", "has_suppression"]
    )
    ov = summary.overview(_scores(), n_heads_total=8)
    assert ov["classified_heads"] == 4 and ov["classified_share"] == 0.5
    assert ov["multi_category_share"] == 0.25 and ov["suppression_share"] == 0.25


def test_category_counts_per_layer() -> None:
    counts = summary.category_counts(_scores())
    assert list(counts.index) == [0, 1]
    assert (
        counts.loc[1, "algorithmic"] == 3
        and counts.loc[1, "knowledge"] == 2
        and counts.loc[0].sum() == 0
    )


def test_group_sharing_counts_pairs() -> None:
    """name_copying promote: heads {0,1,2} of layer 1; groups {0,1} and {2,3}."""
    share = summary.group_sharing(_scores(), n_heads=4, n_kv_heads=2).set_index("pair")
    # ordered pairs (h, other) with h implementing: same group: 0->1, 1->0, 2->3 (+ singles for capital)
    # name_copying: same group pairs 3, shared 2; other group pairs 6, shared 2 (0->2, 1->2... 2->0, 2->1)
    # capital promote {0}: same 1 (0->1, not shared), other 2; capital suppress {3}: same 1, other 2
    assert share.loc["same kv group", "pairs"] == 5 and share.loc["same kv group", "shared"] == 2
    assert share.loc["other group", "pairs"] == 10 and share.loc["other group", "shared"] == 4
    groups = summary.group_members(_scores(), n_heads=4, n_kv_heads=2)
    assert groups.to_dict("records") == [
        {
            "layer": 1,
            "kv_group": 0,
            "relation": "name_copying",
            "mode": "promote",
            "heads": "1.0, 1.1",
        }
    ]


def test_score_grid_and_known_scores() -> None:
    grid = summary.score_grid(_scores(), "name_copying")
    assert grid.shape == (2, 4) and grid.loc[1, 0] == pytest.approx(0.9)
    known = known_scores(_scores(), "smollm2-135m")
    assert (
        list(known["head"]) == ["23.2", "23.3"] and known["computed"].isna().all()
    )  # not in this table


def test_strongest_head() -> None:
    assert summary.strongest_head(_scores()) == "1.0"
    assert summary.strongest_head(_scores(), "suppress") == "1.3"
    assert summary.strongest_head(_scores(), "promote", "country_to_capital_wikidata") == "1.0"
    assert summary.strongest_head(_scores(), "promote", "adj_antonym") == "0.1"


def test_compare_maps_counts_each_table() -> None:
    base = _scores()
    other = base.assign(score=base["score"] / 10)  # nothing over tau
    table = summary.compare_maps({"paper": base, "raw": other})
    assert table.loc[("name_copying", "promote"), ("paper", "heads")] == 3
    assert table.loc[("name_copying", "promote"), ("paper", "max")] == pytest.approx(0.9)
    assert table.loc[("name_copying", "promote"), ("raw", "max")] == pytest.approx(0.09)
    assert table.loc[("any", "either"), ("paper", "heads")] == 4  # heads 1.0, 1.1, 1.2, 1.3
    assert (table[("raw", "heads")] == 0).all()
