"""Dynamic scores and correlations: checked against brute force on tiny random models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import WordTokenizer, attention_io, hand_z, prompt_of
from tiny_models import PATHS_FLOAT64, VOCAB, softmax_in_model_dtype, tiny_model

from mapslib.behaviour.correlation import (
    DYNAMIC_COLUMNS,
    SETTINGS,
    TEMPLATES,
    correlation_rows,
    correlations,
    correlations_by_map,
    dynamic_scores,
    last_position_states,
    parse_templates,
    pearson,
    src_prompt,
)
from mapslib.foundation.adapters import HeadWeights
from mapslib.relation_map.relations import Relation, TokenizedRelation
from mapslib.report.tables import correlation_beside_paper


def _brute_force(model, hw: HeadWeights, prompt: list[int], target: int) -> dict:
    """Rank of `target` in every head's y U at the last position, both settings, by hand."""
    ids = torch.tensor([prompt])
    xs, _, attentions, _ = attention_io(model, hw, ids)
    U = hw.unembedding()
    out = {}
    for layer in range(hw.n_layers):
        z = hand_z(hw, layer, xs[layer], attentions[layer])[0, :, -1]  # (head, d_head)
        v = torch.einsum("d,kde->ke", xs[layer][0, -1], hw.W_V(layer)) + hw.b_V(layer)
        for h in range(hw.n_heads):
            for setting, zh in (("context", z[h]), ("no_context", v[hw.kv_head(h)])):
                logits = zh @ hw.W_O(layer)[h] @ U
                t = logits[target]
                out[(layer, h, setting)] = (
                    int((logits > t).sum()),  # entries above: top-k iff < k
                    int((logits < t).sum()),
                )
    return out


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3"])
def test_dynamic_scores_equal_brute_force(name: str):
    """Every head's phi* (both settings, both modes) equals counting ranks in the full y U."""
    model = tiny_model(name)
    hw = HeadWeights(model)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for rel, k in (("a", 1), ("b", 5)):
        for template, prefix in ((0, [7, 8, 9]), (1, [11, 12])):
            for _ in range(6):
                src = torch.randint(
                    3, VOCAB, (int(torch.randint(1, 3, (1,), generator=gen)),), generator=gen
                )
                target = int(torch.randint(0, VOCAB, (1,), generator=gen))
                rows.append((rel, template, prompt_of(prefix + src.tolist()), target, k))
    rows = pd.DataFrame(rows, columns=["relation", "template", "prompt", "target", "k"])
    # make one head's targets its own top token, so some scores are 1
    ranks = []
    for r in rows.itertuples():
        ranks.append(_brute_force(model, hw, [int(w[1:]) for w in r.prompt.split()], r.target))
    dyn = dynamic_scores(hw, WordTokenizer(), rows, batch_rows=4)
    assert len(dyn) == hw.n_layers * hw.n_heads * 2 * 2 * 2 * 2
    for (layer, head, rel, template, setting, mode), score in dyn.set_index(
        ["layer", "head", "relation", "template", "setting", "mode"]
    )["score"].items():
        sel = (rows["relation"] == rel) & (rows["template"] == template)
        k = rows[sel]["k"].iloc[0]
        side = 0 if mode == "promote" else 1
        hits = [ranks[i][(layer, head, setting)][side] < k for i in np.flatnonzero(sel)]
        assert score == pytest.approx(np.mean(hits), abs=1e-6), (
            layer,
            head,
            rel,
            template,
            setting,
            mode,
        )


def test_dynamic_score_is_one_when_the_target_is_the_heads_top_token():
    """A constructed case: targets set to head 0.1's own top token with context give phi* = 1."""
    model = tiny_model("llama")
    hw = HeadWeights(model)
    prompts = [[5, 6, 7], [5, 6, 20], [5, 6, 33]]
    U = hw.unembedding()
    targets = []
    for p in prompts:
        xs, _, attentions, _ = attention_io(model, hw, torch.tensor([p]))
        z = hand_z(hw, 0, xs[0], attentions[0])[0, 1, -1]
        targets.append(int((z @ hw.W_O(0)[1] @ U).argmax()))
    rows = pd.DataFrame(
        {
            "relation": "r",
            "template": 0,
            "prompt": [prompt_of(p) for p in prompts],
            "target": targets,
            "k": 1,
        }
    )
    dyn = dynamic_scores(hw, WordTokenizer(), rows).set_index(["layer", "head", "setting", "mode"])
    assert dyn.loc[(0, 1, "context", "promote"), "score"] == 1.0
    assert dyn.loc[(0, 1, "context", "suppress"), "score"] == 0.0


def test_last_position_states_keep_prompt_order(model, hw: HeadWeights):
    """States from grouped, prefix-cached batches equal one full forward per prompt, in input order."""
    prompts = [[3, 4, 5, 6], [3, 4, 9], [3, 4, 5, 7], [8, 4, 9], [3, 4, 10]]
    groups = [0, 0, 0, 1, 0]
    with softmax_in_model_dtype():  # two forward paths: exact only with a float64 softmax
        x, z = last_position_states(hw, WordTokenizer(), [prompt_of(p) for p in prompts], groups, 2)
        full = [attention_io(model, hw, torch.tensor([p])) for p in prompts]
    assert x.shape == (hw.n_layers, len(prompts), hw.d_model)
    for i, _ in enumerate(prompts):
        xs, _, attentions, _ = full[i]
        for layer in range(hw.n_layers):
            torch.testing.assert_close(x[layer, i], xs[layer][0, -1], **PATHS_FLOAT64)
            hand = hand_z(hw, layer, xs[layer], attentions[layer])[0, :, -1]
            torch.testing.assert_close(z[layer, i], hand, **PATHS_FLOAT64)


def test_prompts_are_cut_after_the_source():
    """The src is the prompt's last word; the template's own space comes before it."""
    assert src_prompt(TEMPLATES[0], "France") == "This is a document about France"
    assert src_prompt(TEMPLATES[1], "France") == "No France"
    assert src_prompt(TEMPLATES[3], "big cat") == "When I think about big cat"
    assert parse_templates("all") == [0, 1, 2, 3] and parse_templates("2,0") == [0, 2]
    with pytest.raises(ValueError):
        parse_templates("4")


def test_correlation_rows_sample_pairs_once_for_all_templates():
    """max_pairs draws the same pairs for every template; k follows the relation."""
    rel = Relation("r", (("a", "b"),) * 10, "custom", "R", False, "-", "-")
    tok = TokenizedRelation(rel, rel.pairs, tuple(range(10)), tuple(range(100, 110)))
    rows = correlation_rows([tok], [0, 2], vocab_size=50_000, max_pairs=4, seed=3)
    assert len(rows) == 8 and set(rows["k"]) == {10}
    by_t = rows.groupby("template")["target"].apply(list)
    assert by_t[0] == by_t[2] and len(set(by_t[0])) == 4


def test_pearson_handles_constant_scores():
    """Constant inputs give NaN and a note, not an exception; otherwise numpy's r."""
    r, p, note = pearson(np.zeros(10), np.arange(10.0))
    assert np.isnan(r) and np.isnan(p) and "static" in note
    r, p, note = pearson(np.arange(10.0), np.ones(10))
    assert np.isnan(r) and "dynamic" in note
    x, y = np.arange(10.0), np.arange(10.0) ** 2
    r, p, note = pearson(x, y)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1]) and 0 < p < 1e-3 and note == ""
    x = np.random.default_rng(0).normal(size=300)
    y = x + np.random.default_rng(1).normal(size=300)  # r about 0.7, p about 1e-45
    r64, p64, _ = pearson(x, y)
    r32, p32, _ = pearson(x.astype(np.float32), y.astype(np.float32))  # must not underflow
    assert 1e-300 < p64 < 1e-38 and p32 == pytest.approx(p64, rel=1e-3)


_STATIC = [0, 0.1, 0.2, 0.5, 0.3, 0.0]
_DYNAMIC = {0: [0, 0.2, 0.1, 0.6, 0.2, 0.1], 1: [0.1, 0.1, 0.3, 0.4, 0.4, 0.0]}


def _static_frame(scores: list[float]) -> pd.DataFrame:
    """Static scores of six heads of layer 0 on one relation, the same in both modes."""
    return pd.DataFrame(
        [
            (0, h, "adj_antonym", m, 10, 30, s)
            for h, s in enumerate(scores)
            for m in ("promote", "suppress")
        ],
        columns=["layer", "head", "relation", "mode", "k", "n_pairs", "score"],
    )


def _dynamic_frame() -> pd.DataFrame:
    """Dynamic scores of the same heads: two templates; suppression constant (r undefined)."""
    return pd.DataFrame(
        [
            (0, h, "adj_antonym", t, s, m, 10, 30, _DYNAMIC[t][h] if m == "promote" else 0.5)
            for h in range(6)
            for t in (0, 1)
            for s in ("no_context", "context")
            for m in ("promote", "suppress")
        ],
        columns=DYNAMIC_COLUMNS,
    )


def _expected_r(static: list[float]) -> float:
    dyn = np.ravel(list(zip(_DYNAMIC[0], _DYNAMIC[1], strict=True)))
    return float(np.corrcoef(np.repeat(static, 2), dyn)[0, 1])


def test_correlations_repeat_the_static_score_per_template():
    """r is taken over heads x templates, the static score repeated for each template."""
    static, dynamic = _static_frame(_STATIC), _dynamic_frame()
    corr = correlations(static, dynamic)
    row = corr[(corr["mode"] == "promote") & (corr["setting"] == "context")].iloc[0]
    expected = _expected_r(_STATIC)
    assert row["r"] == pytest.approx(expected) and row["n_points"] == 12
    assert row["max_static"] == 0.5 and row["category"] == "linguistic"
    assert row["static_nonzero"] == 8 and row["dynamic_nonzero"] == 10
    sup = corr[corr["mode"] == "suppress"]
    assert sup["r"].isna().all() and (sup["note"] == "dynamic scores constant over heads").all()
    table = correlation_beside_paper(corr, "promote", "ours", "paper")
    assert table.index.tolist() == [("linguistic", "Word to antonym")]
    assert table[("paper", "r w/o context")].iloc[0] == 0.90
    assert table[("ours", "r w/ context")].iloc[0] == pytest.approx(expected)


def test_correlations_by_map_compares_static_maps_on_the_same_dynamic_scores():
    """One column pair per static map; the median row over relations."""
    reversed_static = _STATIC[::-1]
    maps = {"paper": _static_frame(_STATIC), "raw": _static_frame(reversed_static)}
    maps["flat"] = _static_frame([0.0] * 6)  # r undefined: the row stays, as NaN
    table = correlations_by_map(maps, _dynamic_frame())
    assert list(table.columns) == [(m, s) for m in ("paper", "raw", "flat") for s in SETTINGS]
    assert table[("flat", "context")].isna().all()
    assert table.loc["adj_antonym", ("paper", "context")] == pytest.approx(_expected_r(_STATIC))
    assert table.loc["adj_antonym", ("raw", "no_context")] == pytest.approx(
        _expected_r(reversed_static)
    )
    assert table.loc["median"].equals(table.loc["adj_antonym"])


def test_supported_reading_names_the_clear_winner_or_a_tie():
    """The highest median wins when it leads by more than CLEAR_MARGIN; otherwise no clear winner."""
    from mapslib.behaviour.correlation import supported_reading

    cols = pd.MultiIndex.from_product(
        [["paper", "raw"], ["no_context", "context"]], names=["map", "setting"]
    )
    table = pd.DataFrame([[0.8, 0.5, 0.6, 0.52]], index=["median"], columns=cols)
    assert "paper tracks behaviour best (by 0.200)" in supported_reading(table, "no_context")
    assert "no clear winner (raw leads paper by 0.020" in supported_reading(table, "context")
    one = table[["paper"]]
    assert supported_reading(one).endswith("(one map only)")
