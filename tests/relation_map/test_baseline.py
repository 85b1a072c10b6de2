"""Random W_VO baseline: layer statistics in factored form, seeded draws, scores against brute force."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny_models import tiny_model

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.baseline import (
    baseline_table,
    heads_over_tau,
    layer_ov_stats,
    layer_seed,
    layer_stats_table,
    max_random_scores,
    random_ov,
    random_scores,
)
from mapslib.relation_map.relations import Relation, TokenizedRelation
from mapslib.relation_map.scores import SCORE_COLUMNS


def relation(name: str, src: list[int], dst: list[int]) -> TokenizedRelation:
    """A tokenized relation built directly from ids (tiny models have no tokenizer)."""
    pairs = tuple((str(s), str(t)) for s, t in zip(src, dst, strict=True))
    rel = Relation(name, pairs, "algorithmic", name, False, "<test>", "0")
    return TokenizedRelation(rel, pairs, tuple(src), tuple(dst))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_layer_stats_match_explicit_w_vo(arch: str) -> None:
    hw = HeadWeights(tiny_model(arch))
    for layer in range(hw.n_layers):
        allw = torch.stack([hw.W_VO(layer, h) for h in range(hw.n_heads)])
        mean, std = layer_ov_stats(hw, layer)
        assert mean == pytest.approx(float(allw.mean()), rel=1e-9, abs=1e-12)
        assert std == pytest.approx(float(allw.std(unbiased=False)), rel=1e-9)
    table = layer_stats_table(hw)
    assert list(table.columns) == ["mean", "std"] and len(table) == hw.n_layers


def test_random_ov_is_seeded_with_the_requested_moments() -> None:
    a = random_ov(64, 0.5, 2.0, 3, torch.Generator().manual_seed(1))
    b = random_ov(64, 0.5, 2.0, 3, torch.Generator().manual_seed(1))
    assert a.shape == (3, 64, 64) and torch.equal(a, b)
    assert float(a.mean()) == pytest.approx(0.5, abs=0.05)
    assert float(a.std()) == pytest.approx(2.0, rel=0.03)
    assert layer_seed(0, 3) != layer_seed(1, 3) and layer_seed(0, 3) != layer_seed(0, 4)


def brute_random_scores(hw: HeadWeights, rel: TokenizedRelation, layer: int, n: int, k: int):
    """Promote/suppress scores of the same random matrices with the full rows of M."""
    mean, std = layer_ov_stats(hw, layer)
    gen = torch.Generator().manual_seed(layer_seed(0, layer))
    src, dst = torch.tensor(rel.src_ids), torch.tensor(rel.dst_ids)
    x = InputEmbeddings(hw, None).for_layer(layer)[src]
    out = []
    for _ in range(n):
        w = random_ov(hw.d_model, mean, std, 1, gen)[0].to(x.dtype)
        M = x @ w @ hw.unembedding()
        top = torch.topk(M, k, dim=1).indices
        bottom = torch.topk(-M, k, dim=1).indices
        out.append(
            (
                float((top == dst[:, None]).any(1).float().mean()),
                float((bottom == dst[:, None]).any(1).float().mean()),
            )
        )
    return out


def test_random_scores_match_brute_force() -> None:
    hw = HeadWeights(tiny_model("llama"))
    gen = torch.Generator().manual_seed(7)
    src = torch.randint(0, hw.vocab_size, (40,), generator=gen).tolist()
    dst = torch.randint(0, hw.vocab_size, (40,), generator=gen).tolist()
    rels = [relation("r1", src[:25], dst[:25]), relation("r2", src[25:], dst[25:])]
    df = random_scores(hw, rels, settings=MapSettings(k=5), sample_stride=4)
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == hw.n_layers * hw.n_heads * 2 * 2
    for layer in range(hw.n_layers):
        for r in rels:
            want = brute_random_scores(hw, r, layer, hw.n_heads, 5)
            for j, (promote, suppress) in enumerate(want):
                sel = df[(df["layer"] == layer) & (df["head"] == j) & (df["relation"] == r.name)]
                got = dict(zip(sel["mode"], sel["score"], strict=True))
                assert got["promote"] == pytest.approx(promote, abs=1e-6)
                assert got["suppress"] == pytest.approx(suppress, abs=1e-6)


def test_random_scores_do_not_depend_on_the_layer_subset() -> None:
    hw = HeadWeights(tiny_model("llama"))
    rels = [relation("r", list(range(30)), list(range(30, 60)))]
    both = random_scores(hw, rels, settings=MapSettings(k=10), heads_per_layer=2)
    one = random_scores(hw, rels, layers=[1], settings=MapSettings(k=10), heads_per_layer=2)
    pd.testing.assert_frame_equal(both[both["layer"] == 1].reset_index(drop=True), one)


def test_copying_relation_random_matrices_rarely_copy() -> None:
    """A diagonal relation is easy for a real copying head, near chance for random matrices."""
    hw = HeadWeights(tiny_model("llama"))
    ids = list(range(3, 63))
    df = random_scores(hw, [relation("copy", ids, ids)], settings=MapSettings(k=1))
    assert df["score"].max() < 0.5


def _frame(layer_head_scores: list[tuple[int, int, float]]) -> pd.DataFrame:
    rows = [
        {
            "layer": la,
            "head": h,
            "relation": "r",
            "mode": "promote",
            "k": 10,
            "n_pairs": 30,
            "score": s,
        }
        for la, h, s in layer_head_scores
    ]
    return pd.DataFrame(rows)


def test_heads_over_tau_and_table() -> None:
    real = _frame([(0, 0, 0.2), (0, 1, 0.1), (1, 0, 0.15), (1, 1, 0.9)])
    rand = _frame([(0, 0, 0.0), (0, 1, 0.16), (1, 0, 0.01), (1, 1, 0.0)])
    assert heads_over_tau(real).tolist() == [1, 2]
    table = baseline_table(real, rand)
    assert table.loc["total", "real_over_tau"] == 3
    assert table.loc["total", "random_over_tau"] == 1
    assert table.loc["total", "heads"] == 4
    assert max_random_scores(rand).loc["r", "max random promote"] == pytest.approx(0.16)
