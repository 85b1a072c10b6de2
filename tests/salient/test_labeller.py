"""Rule-based detectors over salient mappings, head labels, and the cross-check with LLM answers."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.salient.labeller import (
    DETECTORS,
    compare_with_llm,
    example_heads,
    identified_share_by_layer,
    is_capitalisation,
    is_comparative,
    is_completion,
    is_copy,
    is_first_letter,
    is_last_letter,
    is_past_tense,
    is_plural,
    is_successor,
    label_counts_by_layer,
    label_heads,
    names_operation,
    source_hits,
)


@pytest.mark.parametrize(
    "rule, yes, no",
    [
        (
            is_copy,
            [(" John", "John"), (" John", " JOHN"), ("cat", " cat")],
            [(" John", " Mary"), ("", "")],
        ),
        (
            is_capitalisation,
            [("water", " Water"), (" big", "BIG")],
            [(" Water", " Water"), (" a", "A"), ("1a", "1A")],
        ),
        (
            is_first_letter,
            [(" word", "w"), (" Word", " w")],
            [(" w", "w"), (" word", "o"), (" 12", "1")],
        ),
        (is_last_letter, [(" word", "d"), (" cat", " T")], [(" word", "w"), (" x", "x")]),
        (is_successor, [(" 1999", " 2000"), ("7", "8")], [(" 7", " 9"), (" seven", " eight")]),
        (
            is_completion,
            [("inhib", " inhibition"), (" resil", "resilience")],
            [("in", "ink"), (" cat", " dog")],
        ),
        (
            is_plural,
            [(" cat", " cats"), (" box", " boxes"), (" city", " cities")],
            [(" city", " citys"), (" cat", " cat")],
        ),
        (
            is_past_tense,
            [(" walk", " walked"), (" hike", " hiked"), (" stop", " stopped"), (" try", " tried")],
            [(" walk", " walks")],
        ),
        (
            is_comparative,
            [(" big", " bigger"), (" edgy", " edgier"), (" nice", " nicer"), (" tall", " taller")],
            [(" big", " biggest")],
        ),
    ],
)
def test_detectors(rule, yes, no) -> None:
    for s, t in yes:
        assert rule(s, t), (s, t)
    for s, t in no:
        assert not rule(s, t), (s, t)


def test_source_hits_any_target() -> None:
    hits = source_hits(" water", [" sea", " Water", "w"])
    assert hits["capitalisation"] and hits["copying"] and hits["first letter"]
    assert not hits["plural"] and set(hits) == set(DETECTORS)


def salient_table(heads: dict[tuple[int, int], list[tuple[str, list[str]]]]) -> pd.DataFrame:
    rows = []
    for (layer, head), mappings in heads.items():
        for s, (src, targets) in enumerate(mappings):
            for r, tgt in enumerate(targets):
                rows.append(
                    dict(
                        layer=layer,
                        head=head,
                        name=f"{layer}.{head}",
                        salient_rank=s + 1,
                        source=src,
                        saliency=1.0,
                        rank=r + 1,
                        target=tgt,
                        score=0.0,
                    )
                )
    return pd.DataFrame(rows)


HEADS = {
    (0, 0): [(" John", [" John", "John"]), (" Mary", ["Mary", " x"]), (" cat", [" dog", " y"])],
    (0, 1): [(" water", [" Water", " x"]), (" big", [" Big", "q"]), (" sea", [" Sea", "z"])],
    (1, 0): [(" qq", [" zz", " ww"]), (" rr", [" tt", " uu"]), (" ss", [" vv", " yy"])],
    (1, 1): [(" 1999", [" 2000", " x"]), (" 41", [" 42", "y"]), (" 7", [" 7", " 9"])],
}


def test_label_heads() -> None:
    labels = label_heads(salient_table(HEADS))
    by = labels.set_index("name")
    assert by.loc["0.0", "label"] == "copying" and by.loc["0.0", "share"] == pytest.approx(2 / 3)
    # capitalisation targets are copies too; the more specific operation wins the tie
    assert by.loc["0.1", "label"] == "capitalisation"
    assert by.loc["0.1", "labels"] == "capitalisation, copying"
    assert by.loc["1.0", "label"] == "none" and by.loc["1.0", "labels"] == ""
    assert by.loc["1.1", "label"] == "numeric successor"
    counts = label_counts_by_layer(labels)
    assert counts.loc[1, "none"] == 1 and counts.loc[0, "copying"] == 1
    assert (
        label_heads(salient_table(HEADS), threshold=0.9).set_index("name").loc["0.0", "label"]
        == "none"
    )


def test_compare_with_llm() -> None:
    labels = label_heads(salient_table(HEADS))
    desc = pd.DataFrame(
        [
            dict(
                layer=0, head=0, status="pattern", pattern="Copies names, with or without a space."
            ),
            dict(layer=0, head=1, status="pattern", pattern="Maps nouns to related places."),
            dict(layer=1, head=0, status="no pattern", pattern="Unclear"),
            dict(layer=1, head=1, status="unavailable", pattern=""),
        ]
    )
    out = compare_with_llm(labels, desc).set_index("name")["agreement"]
    assert out["0.0"] == "agree: same operation"
    assert out["0.1"] == "both find a pattern, different ones"
    assert out["1.0"] == "agree: no pattern"
    assert out["1.1"] == "no LLM answer"
    desc.loc[2, "status"] = "pattern"
    desc.loc[0, "status"] = "no pattern"
    out = compare_with_llm(labels, desc).set_index("name")["agreement"]
    assert out["1.0"] == "only the LLM finds a pattern"
    assert out["0.0"] == "only the labeller finds a pattern"
    share = identified_share_by_layer(labels, desc)
    assert share.loc[0, "labeller"] == 1.0 and share.loc[1, "labeller"] == 0.5
    assert share.loc[0, "LLM"] == 0.5 and share.loc[1, "LLM"] == 1.0


def test_names_operation() -> None:
    assert names_operation("The head capitalises words", "capitalisation")
    assert names_operation("completes sub-words into full words", "sub-word completion")
    assert names_operation("maps a word to its first letter", "first letter")
    assert not names_operation("maps countries to capitals", "first letter")


def test_example_heads_and_labelled_layers() -> None:
    labels = label_heads(salient_table(HEADS))
    # best head of each label by share (1, 2/3, 2/3; ties by layer), then an unlabelled head
    assert example_heads(labels, 2) == ["0.1", "0.0"]
    assert example_heads(labels, 4) == ["0.1", "0.0", "1.1", "1.0"]
    assert list(label_counts_by_layer(labels, labelled_only=True).index) == [0, 1]
    none = labels.assign(label="none")
    assert list(label_counts_by_layer(none, labelled_only=True).index) == []
    assert len(example_heads(none, 3)) == 3
