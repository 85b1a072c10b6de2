"""Multi-token sources: which pairs are taken, and the single vs multi-token comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import WordTokenizer, static_table
from tiny_models import tiny_model

from mapslib.behaviour.multitoken import (
    MIN_MULTI_PAIRS,
    multi_token_counts,
    multi_token_experiment,
    multi_token_pairs,
    multi_token_relations,
)
from mapslib.foundation.adapters import HeadWeights
from mapslib.relation_map.relations import Relation, TokenizedRelation


def _relation(name: str, pairs: list[tuple[str, str]]) -> Relation:
    return Relation(name, tuple(pairs), "custom", name, False, "-", "-")


def _single(rel: Relation) -> TokenizedRelation:
    """The relation's pairs whose src and dst are both one word (one token for WordTokenizer)."""
    kept = tuple(p for p in rel.pairs if " " not in p[0] and " " not in p[1])
    return TokenizedRelation(
        rel, kept, tuple(int(s[1:]) for s, _ in kept), tuple(int(t[1:]) for _, t in kept)
    )


def test_multi_token_pairs_have_a_long_source_and_a_one_token_target():
    rel = _relation(
        "r", [("w1", "w2"), ("w3 w4", "w5"), ("w6 w7 w8", "w9"), ("w10 w11", "w12 w13")]
    )
    multi = multi_token_pairs(rel, WordTokenizer())
    assert multi.pairs == (("w3 w4", "w5"), ("w6 w7 w8", "w9"))
    assert multi.dst_ids == (5, 9) and multi.src_lengths == (2, 3)


def test_relations_need_enough_multi_token_pairs_and_a_static_score():
    many = [(f"w{i} w{i + 1}", "w3") for i in range(10, 10 + MIN_MULTI_PAIRS)]
    ok = _relation("ok", many + [("w5", "w6")])
    few = _relation("few", many[:5])
    unscored = _relation("unscored", many)
    single = [_single(ok), _single(few)]  # "unscored" has no single-token static score
    chosen = multi_token_relations([ok, few, unscored], WordTokenizer(), single)
    assert [m.name for m in chosen] == ["ok"]
    counts = multi_token_counts([ok, few, unscored], WordTokenizer(), single).set_index("relation")
    assert counts["used"].to_dict() == {"ok": True, "few": False, "unscored": False}
    assert counts.loc["ok", "multi_token_pairs"] == MIN_MULTI_PAIRS
    assert counts.loc["ok", "mean_src_tokens"] == 2.0


def test_multi_token_experiment_puts_both_correlations_side_by_side():
    model = tiny_model("llama")
    hw = HeadWeights(model)
    pairs = [(f"w{i}", f"w{(3 * i) % 100}") for i in range(10, 40)]
    pairs += [(f"w{i} w{i + 7}", f"w{(5 * i) % 100}") for i in range(10, 40)]
    rel = _relation("rel", pairs)
    single = [_single(rel)]
    multi = multi_token_relations([rel], WordTokenizer(), single)
    static = static_table({"rel": [(1, 0), (0, 2), (1, 3)]}, hw.n_layers, hw.n_heads)
    both = multi_token_experiment(hw, WordTokenizer(), multi, single, static)
    assert len(both) == 4  # promote / suppress x with / without context
    assert set(both["n_pairs_single"]) == {30} and set(both["n_pairs_multi"]) == {30}
    diff = both["r_multi"] - both["r_single"]
    assert (both["r_diff"] - diff).abs().max() < 1e-6
    zeros = both["r_diff"][both["r_diff"] == 0]
    assert not np.signbit(zeros).any()  # a table never shows -0.000
    assert (both[both["mode"] == "suppress"]["r_single"].isna()).all()  # constant static: undefined


@pytest.mark.slow
def test_smollm2_multi_token_relations():
    """With SmolLM2's tokenizer the rule keeps the paper's three relations plus work to location."""
    from mapslib.foundation.models import load_model
    from mapslib.relation_map.relations import load_relations, scorable

    lm = load_model("smollm2-135m", device="cpu")
    rels = load_relations()
    single = scorable(rels, lm.tokenizer, log=lambda _m: None)
    chosen = {m.name: len(m) for m in multi_token_relations(rels, lm.tokenizer, single)}
    assert chosen == {
        "country_to_official_language_wikidata": 31,
        "object_superclass": 24,
        "work_location": 29,
        "entity_to_pronoun": 35,
    }
    counts = multi_token_counts(rels, lm.tokenizer, single)
    assert (
        isinstance(counts, pd.DataFrame)
        and not counts.set_index("relation").loc["product_by_company", "used"]
    )
