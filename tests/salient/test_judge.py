"""Scoring descriptions: held-out questions built from the weights, the judge's answers, the scores."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_llm import KEY, FakeServer

from mapslib.llm.client import LLMConfig
from mapslib.salient.describe import Describer
from mapslib.salient.judge import (
    JudgeSetup,
    accuracy_by_layer,
    accuracy_summary,
    described_part,
    held_out_sources,
    judge_heads,
    judge_items,
    judge_messages,
    judge_verdict,
    parse_judgement,
    per_head_accuracy,
    question_text,
    run_judgement,
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


def test_judge_messages_put_the_shared_instructions_first(items: pd.DataFrame) -> None:
    grp = items[(items["layer"] == 23) & (items["head"] == 2)]
    a = judge_messages("Pattern: copies names.", grp)[1]["content"]
    b = judge_messages("Pattern: maps countries to capitals.", grp)[1]["content"]
    shared = a.index("Description of the head:")
    assert a[:shared] == b[:shared] and "A) " in a and "3 questions" in a


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"answers": ["A", "c", "B"]}', [0, 2, 1]),
        ('```json\n{"answers": ["B", "B", "A"]}\n```', [1, 1, 0]),
        ('{"answers": ["A", "B"]}', None),  # too few
        ('{"answers": ["A", "B", "D"]}', None),  # D is not an option of 3
        ("A, B, C", None),
        ("", None),
    ],
)
def test_parse_judgement(text: str, expected: list[int] | None) -> None:
    assert parse_judgement(text, n=3, m=3) == expected


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


def test_judge_against_a_scripted_server(items: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    """The picks are scored against the real option; a cached judgement is not asked again."""
    srv = FakeServer()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
    try:
        desc = pd.DataFrame(
            [
                dict(
                    name="5.3",
                    status="pattern",
                    pattern="Maps words to related words.",
                    inputs="Words.",
                ),
                dict(name="23.2", status="no pattern", pattern="Unclear", inputs=""),
            ]
        )
        truth = {
            (la, h): list(g.sort_values("item")["answer"])
            for (la, h), g in items.groupby(["layer", "head"])
        }
        letters = "ABC"
        # head 5.3 answered all right, 23.2 all wrong (28.2 has no description: not judged)
        right = [letters[a] for a in truth[(5, 3)]]
        wrong = [letters[(a + 1) % len(letters)] for a in truth[(23, 2)]]
        srv.script = [
            {"content": json.dumps({"answers": right})},
            {"content": json.dumps({"answers": wrong})},
        ]
        d = Describer(LLMConfig(model="judge"), cache=tmp_path, read_also=())
        judged = judge_heads(items, desc, d)
        wrong_opts = items.set_index(["layer", "head", "item"])["options"]
        acc = per_head_accuracy(judged).set_index("name")["accuracy"]
        # a wrong letter can only land on the real option if that head had fewer options
        n_opts = {(la, h): len(wrong_opts[(la, h, 0)]) for la, h in [(23, 2)]}
        assert acc["5.3"] == 1.0
        assert acc["23.2"] == 0.0 or n_opts[(23, 2)] < 3
        assert "28.2" not in acc.index and len(srv.requests) == 2
        again = judge_heads(items, desc, d)
        assert len(srv.requests) == 2  # answered from the cache
        pd.testing.assert_frame_equal(judged, again)
    finally:
        srv.close()


def test_accuracy_summary_and_by_layer() -> None:
    rows = [
        dict(layer=1, head=0, name="1.0", status="pattern", correct=c)
        for c in [True, True, True, False]
    ] + [
        dict(layer=2, head=0, name="2.0", status="no pattern", correct=c)
        for c in [True, False, False, False]
    ]
    own = pd.DataFrame(rows).assign(control=False)
    control = own.assign(
        correct=[False, True, False, False, False, False, True, False], control=True
    )
    judged = pd.concat([own, control], ignore_index=True)
    summary = accuracy_summary(judged, JudgeSetup(options=4)).set_index("group")
    assert summary.loc["described a pattern", "accuracy"] == 0.75
    assert summary.loc['"Unclear" (no pattern)', "accuracy"] == 0.25
    assert summary.loc["shuffled descriptions (control)", "accuracy"] == 0.25
    # P(X >= 3), X ~ Binomial(4, 1/4) = 4 * (1/4)^3 * 3/4 + (1/4)^4 = 13/256
    assert summary.loc["described a pattern", "p (binomial, > chance)"] == pytest.approx(13 / 256)
    by_layer = accuracy_by_layer(judged).set_index("layer")
    assert by_layer.loc[1, "accuracy"] == 0.75 and by_layer.loc[2, "heads"] == 1  # control left out
    groups = per_head_accuracy(judged).set_index(["group", "name"])["accuracy"]
    assert groups[("shuffled descriptions (control)", "1.0")] == 0.25
    verdict = judge_verdict(accuracy_summary(judged, JudgeSetup(options=4)))
    assert "1 heads answered 0.750 of 4" in verdict and "0.250 of 8" in verdict
    assert "do not predict" in verdict  # p = 13/256 > 0.05: four questions prove nothing


def test_a_model_with_no_description_yet(smollm2, salient: pd.DataFrame, tmp_path: Path) -> None:
    """A model nobody has described (every head "unavailable") gives empty tables with their columns,
    a plain sentence and an empty figure, not a KeyError deep in pandas (seen on Qwen's chapter 7)."""
    from mapslib.report.plots_salient import judge_scores

    desc = pd.DataFrame(
        [dict(name=f"{la}.{h}", layer=la, head=h, status="unavailable") for la, h in HEADS]
    )
    items = judge_items(smollm2.hw, smollm2.tokenizer, with_descriptions(salient, desc), SETUP)
    assert items.empty and "answer" in items.columns
    d = Describer(LLMConfig(model="judge"), cache=tmp_path, read_also=())
    d.replay = True  # never asks: nothing to ask about
    judged = run_judgement(items, desc, d, tmp_path / "j.csv", setup=SETUP)
    assert judged.empty and {"correct", "control"} <= set(judged.columns)
    summary = accuracy_summary(judged, SETUP)
    assert summary["questions"].sum() == 0
    assert judge_verdict(summary).startswith("Nothing to score yet")
    assert question_text(items).startswith("No question")
    assert accuracy_by_layer(judged).empty
    judge_scores(per_head_accuracy(judged), SETUP.chance, "m")


def test_question_text_marks_the_real_list(items: pd.DataFrame) -> None:
    text = question_text(items).splitlines()
    assert len(text) == 1 + len(items["options"].iloc[0])
    assert sum("(real)" in line for line in text) == 1
