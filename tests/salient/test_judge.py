"""Scoring descriptions: held-out questions built from the weights, the judge's answers, the scores."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.salient.judge import (
    JudgeSetup,
    described_part,
    held_out_sources,
    judge_items,
    per_head_accuracy,
    shuffled_sources,
    with_descriptions,
)
from mapslib.salient.mappings import mapping_strings, salient_mappings, top_mappings

HEADS = [(23, 2), (5, 3), (28, 2)]
SETUP = JudgeSetup(described=4, held_out=3, options=3)


@pytest.fixture(scope="module")
def salient(smollm2) -> pd.DataFrame:
    return salient_mappings(smollm2.hw, smollm2.tokenizer, HEADS, top_tokens=7, top_mappings=5)


@pytest.fixture(scope="module")
def items(smollm2, salient) -> pd.DataFrame:
    return judge_items(smollm2.hw, smollm2.tokenizer, salient, SETUP)


def test_the_describer_and_the_judge_see_disjoint_tokens(salient: pd.DataFrame) -> None:
    shown = described_part(salient, SETUP)
    held = held_out_sources(salient, SETUP)
    for layer, head in HEADS:
        seen = set(shown[(shown["layer"] == layer) & (shown["head"] == head)]["source_id"])
        kept = set(held[(held["layer"] == layer) & (held["head"] == head)]["source_id"])
        assert len(seen) == 4 and len(kept) == 3 and not seen & kept


def test_too_few_salient_tokens_names_the_fix(salient: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="top_tokens=9"):
        held_out_sources(salient, JudgeSetup(described=4, held_out=5))


def test_options_differ_at_a_glance(items: pd.DataFrame) -> None:
    """No distractor starts with the real option's top target, and no two options are equal."""
    assert len(items) == len(HEADS) * SETUP.held_out
    for r in items.itertuples():
        first = r.options[r.answer].split(", ")[0]
        others = [o.split(", ")[0] for i, o in enumerate(r.options) if i != r.answer]
        assert first not in others
        assert len(set(r.options)) == len(r.options) and 2 <= len(r.options) <= SETUP.options


def test_distractors_are_recomputed_exactly(
    smollm2, salient: pd.DataFrame, items: pd.DataFrame
) -> None:
    """Each option is the token's top-5 under the head it names: the judged head for the answer."""
    held = held_out_sources(salient, SETUP)
    merged = items.merge(held, on=["layer", "head", "item"], suffixes=("", "_held"))
    for r in merged.itertuples():
        assert r.options[r.answer] == r.real and r.option_heads[r.answer] == f"{r.layer}.{r.head}"
        for option, name in zip(r.options, r.option_heads, strict=True):
            la, h = map(int, name.split("."))
            df = top_mappings(smollm2.hw, smollm2.tokenizer, la, h, [r.source_id], 5)
            assert option == mapping_strings(df).iloc[0]
        assert len(set(r.option_heads)) == len(r.options)


def test_questions_are_seeded(smollm2, salient: pd.DataFrame, items: pd.DataFrame) -> None:
    again = judge_items(smollm2.hw, smollm2.tokenizer, salient, SETUP)
    pd.testing.assert_frame_equal(items, again)


def test_answer_positions_are_balanced(items: pd.DataFrame) -> None:
    """The real list sits at the question's running index modulo its options: no position wins."""
    for index, r in enumerate(items.itertuples()):
        assert r.answer == index % len(r.options)
    counts = items["answer"].value_counts()
    assert counts.max() - counts.min() <= 1 and set(counts.index) == set(range(SETUP.options))


def test_shuffled_descriptions_are_a_derangement() -> None:
    names = [f"{i}.0" for i in range(11)]
    shift = shuffled_sources(names, seed=0)
    assert sorted(shift) == sorted(names) and sorted(shift.values()) == sorted(names)
    assert all(k != v for k, v in shift.items())
    assert shift == shuffled_sources(names, seed=0) != shuffled_sources(names, seed=1)


def test_describing_one_more_head_changes_one_control() -> None:
    """A cached control stays valid when the set of described heads grows by one."""
    names = [f"{i}.0" for i in range(11)]
    before, after = shuffled_sources(names, seed=0), shuffled_sources(names + ["11.0"], seed=0)
    changed = {k for k in before if before[k] != after[k]}
    assert len(changed) == 1 and after[changed.pop()] == "11.0"


def test_per_head_accuracy_of_a_judged_table() -> None:
    """Per group and head: the questions asked and the share right (NaN answers left out)."""
    rows = [
        dict(group=g, layer=1, head=0, name="1.0", correct=c)
        for g, cs in [("own description", [True, True, True, False]), ("empty", [True, None])]
        for c in cs
    ]
    acc = per_head_accuracy(pd.DataFrame(rows)).set_index("group")
    assert acc.loc["own description", "accuracy"] == 0.75
    assert acc.loc["own description", "questions"] == 4 and acc.loc["empty", "questions"] == 1


def test_a_model_with_no_description_yet(smollm2, salient: pd.DataFrame) -> None:
    """A model nobody has described (every head "unavailable") gives no questions, with the
    columns kept, not a KeyError deep in pandas (seen on Qwen's chapter 7)."""
    desc = pd.DataFrame(
        [dict(name=f"{la}.{h}", layer=la, head=h, status="unavailable") for la, h in HEADS]
    )
    items = judge_items(smollm2.hw, smollm2.tokenizer, with_descriptions(salient, desc), SETUP)
    assert items.empty and "answer" in items.columns
