"""Deterministic evidence on hand-made salient mappings: facts, categories, templates, prompt lines."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.salient.evidence import (
    CATEGORIES,
    evidence_category,
    evidence_lines,
    head_evidence,
    head_lines,
    template_description,
    token_class,
)

Lines = list[tuple[str, list[str]]]

COPYING: Lines = [
    (" Paris", [" Paris", "Paris", " P", " city", " France"]),
    (" France", [" France", "France", " F", " French", " Europe"]),
    (" John", [" john", "John", " J", " Mary", " he"]),
    (" water", [" Water", " fire", " wet", " sea", " rain"]),
]
THE: Lines = [
    (" dog", [" the", " cat", " bark", " pet", " leash"]),
    (" run", [" the", " walk", " jog", " race", " fast"]),
    ("ing", [" the", "ed", "s", "er", "ly"]),
    (" Berlin", [" the", " Bonn", " Munich", " Hamburg", " Köln"]),
]
YEARS: Lines = [(f" {y}", [f" {y + i}" for i in range(1, 6)]) for y in range(1900, 2000, 10)]
CAPITALISE: Lines = [
    (" water", [" Fire", " Stone", " Tree", " River", " Cloud"]),
    (" apple", [" Orange", " Banana", " Pear", " Grape", " Lemon"]),
    (" house", [" Door", " Window", " Roof", " Wall", " Floor"]),
    (" table", [" Chair", " Desk", " Bench", " Stool", " Sofa"]),
]
RANDOM: Lines = [
    (" dog", ["ing", " Paris", "(", " 1998", " run"]),
    ("ly", [" Mary", " sea", "{", "ed", " 12"]),
    (" Berlin", [" blue", "tion", " Apple", ";", " x"]),
    ("42", [" green", "ous", " Tokyo", ")", " go"]),
    ("});", [" fast", "ness", " Rome", "=", " sky"]),
]
PLURALS: Lines = [
    (" cat", [" cats", " dog", " pet", " kitten", " fur"]),
    (" box", [" boxes", " crate", " lid", " bag", " case"]),
    (" city", [" cities", " town", " urban", " mayor", " street"]),
    (" tree", [" leaf", " trees", " wood", " oak", " root"]),
]


def table(heads: dict[tuple[int, int], Lines]) -> pd.DataFrame:
    """A salient_mappings table from (layer, head) -> lines of (source, targets), raw text."""
    rows = []
    for (layer, head), lines in heads.items():
        for s, (src, targets) in enumerate(lines, start=1):
            for r, tgt in enumerate(targets, start=1):
                rows.append(
                    dict(
                        layer=layer,
                        head=head,
                        name=f"{layer}.{head}",
                        salient_rank=s,
                        source_id=s,
                        source=src,
                        saliency=1.0,
                        rank=r,
                        target_id=100 * s + r,
                        target=tgt,
                        score=10.0 - r,
                    )
                )
    return pd.DataFrame(rows)


HEADS = {
    (0, 0): COPYING,
    (0, 1): THE,
    (1, 0): YEARS,
    (1, 1): CAPITALISE,
    (2, 0): RANDOM,
    (2, 1): PLURALS,
}


@pytest.fixture(scope="module")
def salient() -> pd.DataFrame:
    return table(HEADS)


@pytest.fixture(scope="module")
def evidence(salient: pd.DataFrame) -> pd.DataFrame:
    return head_evidence(salient).set_index("name")


def test_one_row_per_head_with_plain_columns(evidence: pd.DataFrame) -> None:
    assert list(evidence.index) == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert list(evidence["n_lines"]) == [4, 4, 10, 4, 5, 4]
    assert set(evidence["category"]) <= set(CATEGORIES)
    assert (evidence["top_relations"].map(len) == 0).all() and not evidence[
        "relations_scored"
    ].any()
    for col in ("copy_share", "inflection_share", "recurring_coverage", "source_number"):
        assert evidence[col].between(0, 1).all()


def test_copying_head(evidence: pd.DataFrame, salient: pd.DataFrame) -> None:
    row = evidence.loc["0.0"]
    assert row["copy_share"] == 1.0 and row["copy_any_share"] == 1.0
    assert evidence_category(row) == "copying" == row["category"]
    text = template_description(row, salient[salient["name"] == "0.0"])
    assert text.startswith("Copies the source token")
    assert "'␣Paris' -> '␣Paris'" in text and "'␣John' -> '␣john'" in text


def test_fixed_output_set(evidence: pd.DataFrame, salient: pd.DataFrame) -> None:
    row = evidence.loc["0.1"]
    assert row["recurring_targets"] == [[" the", 1.0]] and row["recurring_coverage"] == 1.0
    assert row["category"] == "fixed output set"
    text = template_description(row, salient[salient["name"] == "0.1"])
    assert text == "Promotes a fixed set of tokens ('␣the') whatever the source."


def test_years_are_numbers_on_both_sides(evidence: pd.DataFrame, salient: pd.DataFrame) -> None:
    row = evidence.loc["1.0"]
    assert row["source_class"] == row["target_class"] == "number"
    assert row["source_number"] == row["target_number"] == 1.0
    assert row["recurring_targets"] == [] and row["category"] == "token class"
    text = template_description(row, salient[salient["name"] == "1.0"])
    assert text.startswith("Maps numbers to other numbers: '␣1900' -> '␣1901'")


def test_lower_case_to_capitalised_is_a_class_shift(evidence: pd.DataFrame) -> None:
    row = evidence.loc["1.1"]
    assert (row["source_class"], row["source_class_share"]) == ("lower-case word", 1.0)
    assert (row["target_class"], row["target_class_share"]) == ("capitalised word", 1.0)
    assert row["copy_share"] == 0.0 and row["category"] == "token class"


def test_unrelated_tokens_have_no_pattern(evidence: pd.DataFrame, salient: pd.DataFrame) -> None:
    row = evidence.loc["2.0"]
    assert row["category"] == "no pattern" and row["recurring_targets"] == []
    assert row["source_class_share"] < 0.6 and row["target_class_share"] < 0.6
    rows = salient[salient["name"] == "2.0"]
    assert template_description(row, rows) == "No pattern found in the lines."


def test_plurals_are_morphology(evidence: pd.DataFrame, salient: pd.DataFrame) -> None:
    row = evidence.loc["2.1"]
    assert row["inflection_share"] == 0.75 and row["inflection_kind"] == "plural"
    assert row["category"] == "morphology"
    text = template_description(row, salient[salient["name"] == "2.1"])
    assert "'␣cat' -> '␣cats'" in text and "'␣tree'" not in text  # top target ' leaf' is no plural


def test_relations_over_tau_name_the_relation(salient: pd.DataFrame) -> None:
    scores = pd.DataFrame(
        [
            dict(layer=2, head=0, relation="country_to_capital", mode="promote", score=0.4),
            dict(layer=2, head=0, relation="word_to_synonym", mode="promote", score=0.2),
            dict(layer=2, head=0, relation="adj_antonym", mode="promote", score=0.1),
            dict(layer=2, head=0, relation="name_copying", mode="suppress", score=0.9),
        ]
    )
    ev = head_evidence(salient, scores, tau=0.15).set_index("name")
    row = ev.loc["2.0"]
    assert row["top_relations"] == [["country_to_capital", 0.4], ["word_to_synonym", 0.2]]
    assert row["category"] == "named relation" and ev.loc["0.1", "top_relations"] == []
    text = template_description(row, salient[salient["name"] == "2.0"])
    assert text.startswith("Implements the relation country_to_capital (score 0.40, tau 0.15)")
    assert "'␣dog' -> 'ing'" in text  # an unchecked relation: the first lines are quoted
    assert "Known relations this head scores over 0.15 on: country_to_capital (0.40)" in " ".join(
        evidence_lines(row)
    )
    assert (
        head_evidence(salient, scores, tau=0.5).set_index("name").loc["2.0", "top_relations"] == []
    )


def test_suppress_mode_reads_suppressing_the_source(salient: pd.DataFrame) -> None:
    row = head_evidence(salient, suppress=True).set_index("name").loc["0.0"]
    assert row["mode"] == "suppress" and row["category"] == "suppressing the source"
    text = template_description(row, head_lines(salient[salient["name"] == "0.0"]))
    assert text.startswith("Suppresses the source token itself: '␣Paris' -> '␣Paris'")


def test_evidence_lines_state_the_facts(evidence: pd.DataFrame) -> None:
    copying = evidence_lines(evidence.loc["0.0"])
    assert copying[0] == (
        "Top target equals the source (up to case and leading space) in 4 of 4 lines; "
        "the source is among the targets in 4."
    )
    the = " ".join(evidence_lines(evidence.loc["0.1"]))
    assert "Targets recurring in many lines: '␣the' (4 of 4); 4 of 4 lines have one." in the
    assert "known relation" not in the.lower()  # no relation table was given: nothing said
    years = evidence_lines(evidence.loc["1.0"])[-1]
    assert years == "Source tokens: mostly numbers (100%); targets: mostly numbers (100%)."
    assert "mixed, most often" in evidence_lines(evidence.loc["2.0"])[-1]
    assert "(mostly plural)" in " ".join(evidence_lines(evidence.loc["2.1"]))


@pytest.mark.parametrize(
    "raw, cls",
    [
        (" Paris", "capitalised word"),
        ("AC", "capitalised word"),
        (" water", "lower-case word"),
        ("ing", "sub-word piece"),
        (" 1998", "number"),
        ("3.14", "number"),
        (" café", "lower-case word"),
        ("能", "non-Latin"),
        (" ре", "non-Latin"),
        ("\\xe3", "non-Latin"),
        (" (", "punctuation/code"),
        ("\n", "punctuation/code"),
        ("x86", "punctuation/code"),
        ("", "punctuation/code"),
    ],
)
def test_token_class(raw: str, cls: str) -> None:
    assert token_class(raw) == cls
