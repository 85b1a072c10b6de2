"""The word-overlap judges: tie credit, boilerplate removal, what counts as seen, the control row."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.salient.judge import JudgeSetup
from mapslib.salient.overlap_judge import (
    REFERENCES,
    description_words,
    overlap_credit,
    overlap_scores,
    reference_summary,
    seen_words,
    words,
)


def test_words_read_shown_tokens_and_prose() -> None:
    assert words("␣Paris, ␣paris, London's x") == {"paris", "london"}  # 's' and 'x' are too short
    assert words("snake_case 42") == {"snake", "case", "42"}


@pytest.mark.parametrize(
    ("options", "answer", "credit"),
    [
        (["␣cat, ␣dog", "␣car, ␣bus", "␣red"], 0, 1.0),  # the real list alone has the most words
        (["␣cat, ␣dog", "␣car, ␣bus", "␣red"], 1, 0.0),  # a distractor has more
        (["␣sun", "␣moon", "␣star"], 2, 1 / 3),  # no overlap at all: a fair guess, exactly chance
        (["␣cat", "␣dog", "␣red"], 1, 0.5),  # two tied at one word each
    ],
)
def test_overlap_credit_is_a_fair_pick_among_ties(
    options: list[str], answer: int, credit: float
) -> None:
    vocab = {"cat", "dog", "dogs"} if credit != 0.5 else {"cat", "dog"}
    assert overlap_credit(options, answer, vocab) == pytest.approx(credit)


def _descriptions(patterns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        dict(
            layer=list(range(len(patterns))),
            head=0,
            name=[f"{i}.0" for i in range(len(patterns))],
            status="pattern",
            inputs="",
            pattern=patterns,
        )
    )


def test_boilerplate_words_are_dropped() -> None:
    desc = _descriptions([f"promotes synonyms of {w}" for w in ["capital", "colour", "verbs"]])
    desc = pd.concat([desc, _descriptions(["nothing"]).assign(layer=3, status="failed")])
    told = description_words(desc)
    assert told == {"0.0": {"capital"}, "1.0": {"colour"}, "2.0": {"verbs"}}  # failed: not judged


def _salient() -> pd.DataFrame:
    rows = [
        dict(layer=1, head=0, name="1.0", salient_rank=r, source=s, target=t)
        for r, s, t in [(1, " France", " Paris"), (2, " Japan", " Tokyo"), (3, " Peru", " Lima")]
    ]
    return pd.DataFrame(rows)


def test_seen_words_stop_at_the_described_tokens() -> None:
    seen = seen_words(_salient(), JudgeSetup(described=2))
    assert seen == {"1.0": {"france", "paris", "japan", "tokyo"}}  # rank 3 is held out


def test_reference_summary_scores_the_same_questions() -> None:
    items = pd.DataFrame(
        dict(
            layer=[1, 1, 2],
            head=0,
            item=[0, 1, 0],
            options=[["␣Paris, ␣Tokyo", "␣cat"], ["␣dog", "␣France"], ["␣blue", "␣red"]],
            answer=[0, 1, 0],
        )
    )
    desc = _descriptions(["", "maps countries to France", "colours like blue"])
    setup = JudgeSetup(described=2, options=2)
    scores = overlap_scores(items, seen_words(_salient(), setup))
    assert scores["credit"].tolist() == [1.0, 1.0]  # head 2.0 has no seen mappings: not scored
    summary = reference_summary(items, _salient(), desc, setup).set_index("group")
    assert list(summary.index) == list(REFERENCES)
    assert summary.loc[REFERENCES[0], "accuracy"] == 1.0
    # description words: 1.0 told "maps countries to france" -> item 0 ties (0.5), item 1 right;
    # 2.0 told "colours like blue" -> right. Head 0.0 has an empty description and no questions.
    expected = (0.5 + 1 + 1) / 3  # the summary rounds to 3 decimals: half a unit in the last place
    assert summary.loc[REFERENCES[1], "accuracy"] == pytest.approx(expected, abs=5e-4)
    assert summary.loc[REFERENCES[1], "questions"] == 3 and summary.loc[REFERENCES[0], "heads"] == 1
