"""The causal experiment: selection rules, batched cached accuracy against full forwards, SmolLM2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import WordTokenizer, static_table
from tiny_models import softmax_in_model_dtype, tiny_model

from mapslib.behaviour.ablation import (
    ABLATION_COLUMNS,
    TASK_PROMPTS,
    Task,
    TaskRunner,
    ablation_experiment,
    ablation_summary,
    build_task,
    choose_controls,
    curve_levels,
    effects,
    n_relation_heads,
    overlap,
    random_control,
    random_draws_table,
    random_heads,
    top_relation_heads,
)
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.hooks import ablate_last, keep_masks, removal_tensor
from mapslib.relation_map.relations import Relation, TokenizedRelation


def test_number_of_relation_heads_follows_the_protocol():
    """< 300 -> 30, < 500 -> 50, < 1000 -> 100, < 1500 -> 150, else 250."""
    cases = {
        270: 30,
        299: 30,
        300: 50,
        499: 50,
        500: 100,
        999: 100,
        1000: 150,
        1499: 150,
        1500: 250,
    }
    assert {n: n_relation_heads(n) for n in cases} == cases


def test_relation_heads_are_the_top_positive_promote_scores():
    """Ordered by score, ties by position; zero scores and suppression scores never count."""
    static = static_table({"r": [(1, 2), (0, 3), (0, 1)]}, 2, 4)
    static.loc[
        (static["layer"] == 1) & (static["head"] == 0) & (static["mode"] == "promote"), "score"
    ] = 0.8
    assert top_relation_heads(static, "r", 30) == [(1, 2), (0, 3), (1, 0), (0, 1)]
    assert top_relation_heads(static, "r", 2) == [(1, 2), (0, 3)]


def test_random_heads_avoid_the_relation_heads_and_are_seeded():
    """Draws are disjoint from the excluded heads, distinct, reproducible, and differ across draws."""
    exclude = [(0, 0), (1, 1), (2, 2)]
    a = random_heads(4, 5, exclude, 6, seed=0, draw=0, relation="r")
    assert len(set(a)) == 6 and not set(a) & set(exclude)
    assert a == random_heads(4, 5, exclude, 6, seed=0, draw=0, relation="r")
    assert a != random_heads(4, 5, exclude, 6, seed=0, draw=1, relation="r")
    assert a != random_heads(4, 5, exclude, 6, seed=1, draw=0, relation="r")


def test_controls_respect_overlap_and_base_accuracy_rules():
    """< 15% of the target's heads shared, base within 0.2, not skipped, at most 5, closest first."""
    t = [(0, h) for h in range(7)]
    heads = {
        "t": t,
        "one_shared": [(0, 0), (5, 5)],  # 1/7 = 14% < 15%
        "two_shared": [(0, 0), (0, 1)],  # 2/7 = 29%
        "far": [(9, 9)],  # base gap 0.3
        "edge": [(8, 8)],  # base gap exactly 0.2
        "skipped": [(7, 7)],
        **{f"c{i}": [(6, i)] for i in range(5)},
    }
    base = {
        "t": 0.6,
        "one_shared": 0.65,
        "two_shared": 0.6,
        "far": 0.9,
        "edge": 0.4,
        "skipped": 0.6,
    }
    base |= {f"c{i}": 0.6 + 0.01 * (i + 1) for i in range(5)}
    assert overlap(t, heads["one_shared"]) == pytest.approx(1 / 7)
    chosen = choose_controls("t", heads, base, skipped={"skipped"})
    assert chosen == ["c0", "c1", "c2", "c3", "c4"]
    chosen = choose_controls("t", heads, base, skipped={"skipped"}, max_controls=10)
    assert set(chosen) == {"one_shared", "edge"} | {f"c{i}" for i in range(5)}


def test_curve_levels_always_end_at_n():
    assert curve_levels(30, 5) == [5, 10, 15, 20, 25, 30]
    assert curve_levels(7, 5) == [5, 7]
    assert curve_levels(3, 5) == [3]
    assert curve_levels(0, 5) == []


def _self_consistent_relation(model, name: str, srcs: list[int]) -> TokenizedRelation:
    """A relation whose dst is the tiny model's own greedy answer to the task prompt: base accuracy 1."""
    words = [f"w{s}" for s in srcs]
    prompts = [TASK_PROMPTS[name].replace("<X>", w) for w in words]
    ids = torch.tensor(WordTokenizer()(prompts)["input_ids"])
    with torch.inference_mode():
        answers = model(ids).logits[:, -1].argmax(-1).tolist()
    rel = Relation(
        name,
        tuple((w, f"w{a}") for w, a in zip(words, answers, strict=True)),
        "x",
        name,
        False,
        "-",
        "-",
    )
    return TokenizedRelation(rel, rel.pairs, tuple(srcs), tuple(answers))


def test_cached_batched_accuracy_equals_full_forward():
    """TaskRunner (prefix cache, many sets per forward) gives the full-forward accuracy of every set."""
    model = tiny_model("llama")
    hw = HeadWeights(model)
    rel = _self_consistent_relation(model, "country_to_capital_wikidata", list(range(10, 30)))
    task = build_task(rel)
    sets = [[], [(1, 0)], [(1, 0), (1, 1)], [(0, 2), (1, 3)], [(0, h) for h in range(4)]]
    ids = torch.tensor(WordTokenizer()(task.prompts)["input_ids"])
    target = torch.tensor(task.targets)
    expected = []
    # Two forward paths: with a float64 softmax they agree to ~1e-15, and every prediction's top-2
    # gap is checked to be far larger, so an argmax cannot flip between them on any machine.
    with softmax_in_model_dtype(), torch.inference_mode():
        acc = TaskRunner(hw, WordTokenizer(), task, batch_rows=7).accuracy(sets)
        for removed in sets:
            mask = keep_masks(removal_tensor(hw, [removed] * len(task)))
            with ablate_last(hw, mask):
                logits = model(ids).logits[:, -1]
            top2 = logits.topk(2, dim=-1).values
            assert (top2[:, 0] - top2[:, 1]).min() > 1e-9
            expected.append(int((logits.argmax(-1) == target).sum()) / len(task))
    assert acc[0] == 1.0
    np.testing.assert_array_equal(acc, expected)  # counts of equal predictions over equal n
    assert min(expected) < 1.0  # some ablation changes an answer


def test_build_task_fills_the_prompt_and_samples():
    rel = Relation(
        "country_to_capital_wikidata",
        (("France", "Paris"), ("Peru", "Lima")),
        "k",
        "C",
        False,
        "-",
        "-",
    )
    task = build_task(TokenizedRelation(rel, rel.pairs, (1, 2), (3, 4)))
    assert task.prompts == ["The capital of France is", "The capital of Peru is"]
    assert (
        task.targets == [3, 4]
        and len(build_task(TokenizedRelation(rel, rel.pairs, (1, 2), (3, 4)), 1)) == 1
    )


def test_ablation_experiment_rows_and_summary():
    """Curves at every level for relation heads, at the step levels for random draws and controls."""
    model = tiny_model("llama")
    hw = HeadWeights(model)
    names = ["country_to_capital_wikidata", "name_copying", "adj_comparative"]
    rels = [
        _self_consistent_relation(model, n, list(range(10 + 7 * i, 22 + 7 * i)))
        for i, n in enumerate(names)
    ]
    top = {
        names[0]: [(1, 0), (1, 1), (0, 2)],
        names[1]: [(0, 0), (0, 1), (1, 3)],  # disjoint from capital's heads: a control
        names[2]: [(1, 0), (1, 1), (1, 2)],  # shares 2 of capital's 3 heads: not a control
    }
    df = ablation_experiment(
        hw, WordTokenizer(), rels, static_table(top, 2, 4), random_draws=3, step=2
    )
    capital = df[df["relation"] == names[0]]
    own = capital[capital["task"] == names[0]]
    assert own[own["heads"] == "none"]["accuracy"].tolist() == [1.0]
    assert own[own["heads"] == "relation"]["n_removed"].tolist() == [1, 2, 3]
    rnd = own[own["heads"] == "random"]
    assert sorted(rnd["draw"].unique()) == [0, 1, 2] and set(rnd["n_removed"]) == {2, 3}
    controls = capital[capital["task"] != names[0]]
    assert set(controls["task"]) == {names[1]} and set(controls["n_removed"]) == {2, 3}
    summ = ablation_summary(df).set_index("relation")
    assert summ.loc[names[0], "controls"] == names[1] and summ.loc[names[0], "status"] == "ok"
    last = own[(own["heads"] == "relation") & (own["n_removed"] == 3)]["accuracy"].iloc[0]
    assert summ.loc[names[0], "minus_relation"] == last
    assert summ.loc[names[0], "minus_random"] == pytest.approx(
        rnd[rnd["n_removed"] == 3]["accuracy"].mean()
    )


def test_only_the_curve_draws_get_every_level():
    """Draws below curve_draws are evaluated at every step level; the rest only with all n removed."""
    model = tiny_model("llama")
    hw = HeadWeights(model)
    rel = _self_consistent_relation(model, "country_to_capital_wikidata", list(range(10, 22)))
    top = {rel.name: [(1, 0), (1, 1), (0, 2)]}
    df = ablation_experiment(
        hw, WordTokenizer(), [rel], static_table(top, 2, 4), random_draws=7, curve_draws=2, step=2
    )
    rnd = df[df["heads"] == "random"]
    levels = rnd.groupby("draw")["n_removed"].apply(sorted).to_dict()
    assert levels == {0: [2, 3], 1: [2, 3], **{d: [3] for d in range(2, 7)}}
    summ = ablation_summary(df).iloc[0]
    assert summ["n_draws"] == 7


def test_random_control_by_hand():
    """Mean, sample std, p-value with the +1 correction, and the first five the paper's way."""
    acc = np.array([0.9, 0.5, 0.2, 0.7, 0.6, 0.1, 0.8])
    out = random_control(acc, minus_relation=0.2)
    assert out["minus_random"] == pytest.approx(3.8 / 7, abs=1e-15)  # a mean of 7 float64s
    sd = np.sqrt(sum((a - 3.8 / 7) ** 2 for a in acc) / 6)
    assert out["minus_random_std"] == pytest.approx(sd, rel=1e-12)  # ddof 1, two summation orders
    assert out["p_random"] == 3 / 8  # 0.2 and 0.1 are <= 0.2: (1 + 2) / (1 + 7), exact
    assert out["minus_random_5"] == pytest.approx(2.9 / 5, abs=1e-15)
    assert out["minus_random_5_std"] == pytest.approx(np.std(acc[:5]), rel=1e-12)  # ddof 0
    assert np.isnan(random_control(np.array([0.5]), 0.0)["minus_random_std"])  # one draw: no spread


def test_effects_pass_on_the_p_value():
    """A relation passes when fewer than 5% of random sets hurt as much; 5 draws can never pass."""
    rows = []
    for rel, rel_acc, draws in (("a", 0.0, 199), ("b", 0.0, 5), ("c", 0.6, 199)):
        rows.append((rel, rel, "none", -1, 0, 0.9, 10))
        rows.append((rel, rel, "relation", -1, 3, rel_acc, 10))
        rows += [(rel, rel, "random", d, 3, 0.5 + 0.001 * (d % 200), 10) for d in range(draws)]
    df = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    eff = effects(ablation_summary(df))
    assert eff["relation heads matter more"].to_dict() == {"a": True, "b": False, "c": False}
    assert eff.loc["a", "p (random as harmful)"] == 1 / 200
    assert eff.loc["b", "p (random as harmful)"] == 1 / 6
    table = random_draws_table(ablation_summary(df))
    assert table.loc["c", "draws"] == 199 and table.loc["b", "draws"] == 5


def test_summary_reports_skipped_relations():
    df = pd.DataFrame(
        [("r", "r", "none", -1, 0, 0.05, 10)],
        columns=["relation", "task", "heads", "draw", "n_removed", "accuracy", "n_prompts"],
    )
    s = ablation_summary(df)
    assert s["status"].iloc[0].startswith("skipped") and np.isnan(s["minus_relation"].iloc[0])


@pytest.mark.slow
def test_smollm2_capital_heads_matter_more_than_random_heads():
    """SmolLM2: removing the capital heads breaks the capital task; as many random heads do not."""
    from mapslib.foundation.models import load_model
    from mapslib.relation_map.relations import load_relations, scorable
    from mapslib.relation_map.scores import relation_scores

    lm = load_model("smollm2-135m", device="cpu")
    hw = HeadWeights(lm.model)
    rels = scorable(load_relations(["capital"]), lm.tokenizer)
    static = relation_scores(hw, rels)
    df = ablation_experiment(hw, lm.tokenizer, rels, static, random_draws=5)
    s = ablation_summary(df).iloc[0]
    assert s["base"] > 0.5
    assert s["minus_relation"] < 0.1
    assert s["minus_random"] > s["base"] - 0.2
    assert s["base"] - s["minus_relation"] > 3 * (s["base"] - s["minus_random"])
    assert isinstance(build_task(rels[0]), Task)
