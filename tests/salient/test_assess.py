"""Pillar (b) glue: the judge's groups, the heads chosen, the verdict in words, the side-by-side table."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.salient.assess import (
    assessment_verdict,
    described_text,
    evidence_table,
    judge_contexts,
    judged_part,
    side_by_side,
    spread_heads,
    try_assessment,
)
from mapslib.salient.judge import JudgeSetup
from mapslib.salient.likelihood import EMPTY, EVIDENCE, GROUPS, OWN, POSITIVE, SHUFFLED


def salient_rows(heads: list[tuple[int, int]], tokens: int = 35) -> pd.DataFrame:
    """A salient_mappings table: head (1, h) copies its sources, the others map to ' the'."""
    rows = []
    for layer, head in heads:
        for rank in range(1, tokens + 1):
            src = f" w{layer}{head}{rank}"
            tgt = src if head == 0 else " the"
            for k in range(1, 3):
                rows.append((layer, head, f"{layer}.{head}", rank, rank, src, 1.0, k, 0, tgt, 1.0))
    cols = ["layer", "head", "name", "salient_rank", "source_id", "source", "saliency"]
    return pd.DataFrame(rows, columns=cols + ["rank", "target_id", "target", "score"])


HEADS = [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.fixture
def parts() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    salient_all = salient_rows(HEADS)
    seen = salient_all[salient_all["salient_rank"] <= 30]
    evidence = evidence_table(seen, None)
    desc = pd.DataFrame(
        {"layer": [1, 1, 2, 2], "head": [0, 1, 0, 1],
         "status": ["pattern", "pattern", "no pattern", "unavailable"],
         "category": ["copying", "fixed output set", "no pattern", ""],
         "pattern": ["Copies the source.", "Promotes ␣the.", "", ""], "inputs": ""}
    )  # fmt: skip
    return salient_all, evidence, desc


def test_every_group_gets_its_description(parts) -> None:
    salient_all, evidence, desc = parts
    ctx = judge_contexts(salient_all, JudgeSetup(), evidence, desc)
    assert set(ctx) == set(GROUPS)
    assert (
        set(ctx[POSITIVE]) == set(ctx[EVIDENCE]) == set(ctx[EMPTY]) == {"1.0", "1.1", "2.0", "2.1"}
    )
    assert ctx[POSITIVE]["1.0"].count("\n") == 29  # the 30 seen lines, not the held-out ones
    assert "w1031" not in ctx[POSITIVE]["1.0"]
    assert set(ctx[OWN]) == {"1.0", "1.1", "2.0"}  # unavailable answers are not judged
    assert ctx[OWN]["1.0"] == "copying: Copies the source." and ctx[OWN]["2.0"] == "no pattern"
    assert all(ctx[SHUFFLED][n] != ctx[OWN][n] for n in ctx[SHUFFLED])  # a derangement
    assert set(ctx[EMPTY].values()) == {""}
    assert evidence.set_index("name").loc["1.0", "category"] == "copying"
    assert "Copies the source" in ctx[EVIDENCE]["1.0"]


def test_without_llm_descriptions_only_the_llm_free_groups(parts) -> None:
    salient_all, evidence, _ = parts
    assert set(judge_contexts(salient_all, JudgeSetup(), evidence, None)) == {
        POSITIVE,
        EVIDENCE,
        EMPTY,
    }


def test_described_text_reads_both_prompts() -> None:
    assert (
        described_text(pd.Series({"category": "copying", "pattern": "Copies."}))
        == "copying: Copies."
    )
    old = pd.Series({"category": "", "pattern": "Copies.", "inputs": "Names."})
    assert described_text(old) == "Inputs: Names.\nPattern: Copies."


def test_spread_heads_covers_every_category_then_depth(parts) -> None:
    _, evidence, _ = parts
    picked = spread_heads(evidence, 3)
    assert len(picked) == len(set(picked)) == 3
    assert set(evidence.set_index("name").loc[picked, "category"]) == set(evidence["category"])
    assert set(spread_heads(evidence, 10)) == set(evidence["name"])  # all when n exceeds them


def test_judged_part_keeps_the_chosen_heads_only(parts) -> None:
    salient_all, evidence, _ = parts
    assert judged_part(salient_all, evidence, None) is salient_all
    two = judged_part(salient_all, evidence, 2)
    assert two["name"].nunique() == 2 and set(two["name"]) <= set(salient_all["name"])


def test_verdict_says_when_the_judge_fails_its_positive_control() -> None:
    def acc(rows):
        cols = ["group", "accuracy", "ci low", "ci high", "chance"]
        return pd.DataFrame(rows, columns=cols)

    good = acc([(POSITIVE, 0.83, 0.71, 0.92, 0.25), (OWN, 0.3, 0.2, 0.4, 0.25)])
    assert "The judge works" in assessment_verdict(good, 0.2, 0.9)
    with_template = pd.concat([good, acc([(EVIDENCE, 0.5, 0.4, 0.6, 0.25)])])
    assert "does not beat its own evidence template" in assessment_verdict(
        with_template, 0.01, 0.99
    )
    better = pd.concat([good, acc([(EVIDENCE, 0.2, 0.1, 0.3, 0.25)])])
    assert "carry more about the head" in assessment_verdict(better, 0.01, 0.01)
    bad = acc([(POSITIVE, 0.3, 0.2, 0.42, 0.25)])
    assert "FAILS its positive control" in assessment_verdict(bad, float("nan"), float("nan"))


def test_side_by_side_shows_scores_per_group(parts) -> None:
    salient_all, evidence, desc = parts
    judged = pd.DataFrame(
        {"name": ["1.0"] * 3, "group": [POSITIVE, OWN, EVIDENCE], "correct": [True, False, True]}
    )
    seen = salient_all[salient_all["salient_rank"] <= 30]
    table = side_by_side(seen, evidence, desc, judged, ["1.0"])
    row = table.loc["1.0"]
    assert row["LLM category"] == "copying" and row["evidence category"] == "copying"
    assert (row["seen-lines score"], row["LLM score"], row["template score"]) == (1.0, 0.0, 1.0)
    assert row["mappings"].count("\n") == 2  # the first 3 lines


def test_a_book_without_the_judge_says_so_instead_of_failing(parts, tmp_path, capsys) -> None:
    """No judged table for these questions and no judge model here: None and one line why."""
    salient_all, evidence, desc = parts
    items = pd.DataFrame(
        {"layer": [1], "head": [0], "item": [0], "source": [" w"], "options": [[" a", " b"]],
         "option_heads": [["1.0", "2.0"]], "answer": [0]}
    )  # fmt: skip
    ctx = judge_contexts(salient_all, JudgeSetup(), evidence, desc)
    missing = str(tmp_path / "absent.gguf")
    out = try_assessment(items, ctx, missing, tmp_path / "j.csv", JudgeSetup(), None)
    assert out is None and "The judge cannot run here" in capsys.readouterr().out


def test_no_llm_category_column_without_llm_answers() -> None:
    """A part nobody described gets the evidence's categories only (seen on the Qwen parts)."""
    from mapslib.salient.assess import judged_by_category

    judged = pd.DataFrame({"name": ["1.0", "1.1"], "group": ["g", "g"], "correct": [True, False]})
    evidence = pd.DataFrame({"name": ["1.0", "1.1"], "category": ["copying", "no pattern"]})
    blank = pd.DataFrame({"layer": [1, 1], "head": [0, 1], "category": ["", ""]})
    out = judged_by_category(judged, evidence, blank)
    assert "LLM category" not in out and out["evidence category"].tolist() == [
        "copying",
        "no pattern",
    ]
    named = judged_by_category(judged, evidence, blank.assign(category=["copying", "token class"]))
    assert named["LLM category"].tolist() == ["copying", "token class"]
