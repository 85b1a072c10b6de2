"""Deterministic evidence on a head's salient mappings: facts, a category and a template sentence.

The LLM describer sees 30 lines `source -> t1, ..., t5`. This module computes, from the same lines and
no model, what can be counted: how often the top target is the source (copying) or a word form of it,
which targets recur across lines (a fixed output set), what kind of tokens the sources and targets are,
and (given `relation_scores.csv`) which shipped relations the head scores over tau on. From these facts
a fixed rule picks one of `CATEGORIES`, and `template_description` writes one sentence: the baseline an
LLM's description has to beat. `evidence_lines` states the facts in words for the LLM's prompt.

Thresholds (shares of the described lines, or of all their top-k targets for token classes):

* copying: the top target is the source up to case and leading space (`labeller.is_copy`) in >= 0.5;
  in suppress mode this is "suppressing the source";
* named relation: a shipped relation scores >= tau (0.15) in the table's mode;
* morphology: the top target is a regular plural, past tense or comparative of the source in >= 0.5;
* fixed output set: targets that each occur in >= 0.3 of the lines' top-k lists together reach >= 0.5
  of the lines;
* token class: the dominant source class and the dominant target class each hold >= 0.6 and either
  differ (lower-case words -> capitalised words) or are numbers or non-Latin text on both sides (the
  common word classes mapping to themselves say little);
* otherwise no pattern. The first rule that holds, in this order, gives the category.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mapslib.foundation.settings import DEFAULTS
from mapslib.foundation.tokens import shown
from mapslib.salient.labeller import (
    is_comparative,
    is_copy,
    is_first_letter,
    is_last_letter,
    is_past_tense,
    is_plural,
)

CATEGORIES = (
    "copying",
    "suppressing the source",
    "named relation",
    "morphology",
    "fixed output set",
    "token class",
    "no pattern",
)

# One gloss per category, for the LLM's prompt and for readers.
CATEGORY_GLOSSES = {
    "copying": "the top target is the source itself, up to case and leading space",
    "suppressing the source": "(suppression lists only) the head pushes down the source token itself",
    "named relation": "a known relation between source and target (country -> capital, "
    "word -> antonym, name -> pronoun, ...)",
    "morphology": "the target is a word form of the source (plural, past tense, comparative, ...)",
    "fixed output set": "the same few targets in most lines, whatever the source",
    "token class": "sources are one kind of token and targets another (lower-case -> capitalised), "
    "or both are numbers or non-Latin text",
    "no pattern": "no relation holds for most lines",
}

COPY_MIN = 0.5
INFLECTION_MIN = 0.5
RECURRING_MIN = 0.3  # a target recurs when it is in the top-k lists of this share of lines
FIXED_MIN = 0.5  # recurring targets make a fixed output set when they reach this share of lines
CLASS_MIN = 0.6

TOKEN_CLASSES = (
    "number",
    "capitalised word",
    "lower-case word",
    "sub-word piece",
    "punctuation/code",
    "non-Latin",
)
CLASS_PLURALS = {
    "number": "numbers",
    "capitalised word": "capitalised words",
    "lower-case word": "lower-case words",
    "sub-word piece": "sub-word pieces",
    "punctuation/code": "punctuation or code",
    "non-Latin": "non-Latin text",
}
SAME_CLASS_PATTERNS = (
    "number",
    "non-Latin",
)  # a class that maps to itself and still says something

INFLECTIONS = {"plural": is_plural, "past tense": is_past_tense, "comparative": is_comparative}

# Shipped relations a labeller rule can check on a line, to quote lines that show the relation.
RELATION_CHECKS = {
    "name_copying": is_copy,
    "general_copying_english_500": is_copy,
    "word_first_letter": is_first_letter,
    "word_last_letter": is_last_letter,
    "verb_past_tense": is_past_tense,
    "adj_comparative": is_comparative,
}

_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")
_BYTE = re.compile(r"\\x[0-9a-fA-F]{2}")  # token_raw's escape for a piece of a multi-byte character

Line = tuple[str, list[str]]  # a source token and its targets, strongest first (raw text)


def _slug(cls: str) -> str:
    """A token class as part of a column name: 'lower-case word' -> 'lowercase_word'."""
    return cls.replace("-", "").replace("/", "_").replace(" ", "_").lower()


def _is_latin(ch: str) -> bool:
    """Whether a letter belongs to the Latin script (accented letters included)."""
    return unicodedata.name(ch, "").startswith("LATIN")


def token_class(raw: str) -> str:
    """The kind of a raw token, one of TOKEN_CLASSES (word classes need every character a letter).

    A token with a letter outside Latin, or a raw byte of a multi-byte character, is non-Latin; a
    capitalised word may lack the leading space (' Paris', 'AC'); a lower-case word has it (' water');
    a lower-case alphabetic token without it is a sub-word piece ('ing'); the rest (punctuation, code,
    whitespace, mixed letters and digits) is punctuation/code.
    """
    text = raw.strip()
    if _BYTE.search(raw) or any(ch.isalpha() and not _is_latin(ch) for ch in text):
        return "non-Latin"
    if _NUMBER.fullmatch(text):
        return "number"
    if text.isalpha():
        if text[0].isupper():
            return "capitalised word"
        return "lower-case word" if raw[:1].isspace() else "sub-word piece"
    return "punctuation/code"


def head_lines(rows: pd.DataFrame) -> list[Line]:
    """One head's rows of a salient_mappings table as (source, targets) lines, most salient first."""
    rows = rows.sort_values(["salient_rank", "rank"])
    return [
        (str(g["source"].iloc[0]), [str(t) for t in g["target"]])
        for _, g in rows.groupby("salient_rank", sort=True)
    ]


def _class_shares(tokens: list[str]) -> dict[str, float]:
    """The share of tokens in each token class."""
    counts = Counter(token_class(t) for t in tokens)
    return {c: counts[c] / len(tokens) if tokens else 0.0 for c in TOKEN_CLASSES}


def _inflection(src: str, tgt: str) -> str:
    """The inflection that takes `src` to `tgt` ('plural', ...), or ''."""
    return next((name for name, rule in INFLECTIONS.items() if rule(src, tgt)), "")


def recurring_targets(
    lines: list[Line], min_share: float = RECURRING_MIN
) -> list[tuple[str, float]]:
    """Targets in the top-k lists of at least `min_share` of the lines, with that share, commonest first."""
    counts = Counter(t for _, targets in lines for t in set(targets))
    found = [
        (t, n / len(lines)) for t, n in counts.items() if lines and n / len(lines) >= min_share
    ]
    return sorted(found, key=lambda x: (-x[1], x[0]))


def head_relations(
    relation_scores: pd.DataFrame, layer: int, head: int, mode: str, tau: float
) -> list[tuple[str, float]]:
    """The relations one head scores >= tau on in `mode`, with their scores, strongest first."""
    rs = relation_scores
    sel = rs[(rs["layer"] == layer) & (rs["head"] == head) & (rs["mode"] == mode)]
    sel = sel[sel["score"] >= tau].sort_values(["score", "relation"], ascending=[False, True])
    return [
        (str(r), round(float(s), 3)) for r, s in zip(sel["relation"], sel["score"], strict=True)
    ]


def line_evidence(lines: list[Line]) -> dict[str, Any]:
    """The facts that the lines alone give: copy, inflection, recurring targets and token classes."""
    n = len(lines)
    tops = [(s, ts[0]) for s, ts in lines if ts]
    forms = Counter(f for f in (_inflection(s, t) for s, t in tops) if f)
    recurring = recurring_targets(lines)
    rec = {t for t, _ in recurring}
    facts: dict[str, Any] = {
        "n_lines": n,
        "copy_share": sum(is_copy(s, t) for s, t in tops) / n if n else 0.0,
        "copy_any_share": sum(any(is_copy(s, t) for t in ts) for s, ts in lines) / n if n else 0.0,
        "inflection_share": sum(forms.values()) / n if n else 0.0,
        "inflection_kind": forms.most_common(1)[0][0] if forms else "",
        "recurring_targets": [[t, round(share, 3)] for t, share in recurring],
        "recurring_coverage": sum(bool(rec & set(ts)) for _, ts in lines) / n if n else 0.0,
    }
    for side, tokens in (
        ("source", [s for s, _ in lines]),
        ("target", [t for _, ts in lines for t in ts]),
    ):
        shares = _class_shares(tokens)
        facts |= {f"{side}_{_slug(c)}": round(v, 3) for c, v in shares.items()}
        top = max(TOKEN_CLASSES, key=lambda c: shares[c])  # ties: the earlier class
        facts[f"{side}_class"] = top
        facts[f"{side}_class_share"] = round(shares[top], 3)
    return facts


def head_evidence(
    salient: pd.DataFrame,
    relation_scores: pd.DataFrame | None = None,
    tau: float = DEFAULTS.tau,
    *,
    suppress: bool = False,
) -> pd.DataFrame:
    """One row of facts per head of a salient_mappings table (all its rows: filter to the described
    salient ranks first), with the relations over tau when `relation_scores` is given."""
    mode = "suppress" if suppress else "promote"
    rows = []
    for (layer, head), g in salient.groupby(["layer", "head"], sort=True):
        relations = (
            head_relations(relation_scores, int(layer), int(head), mode, tau)
            if relation_scores is not None
            else []
        )
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "name": f"{layer}.{head}",
                "mode": mode,
                "tau": tau,
                "relations_scored": relation_scores is not None,
                "top_relations": [[r, s] for r, s in relations],
                **line_evidence(head_lines(g)),
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out["category"] = out.apply(evidence_category, axis=1)
    return out


def _is_class_pattern(row: Mapping[str, Any]) -> bool:
    """Both sides mostly one token class, and the classes differ or are a telling class kept."""
    src, tgt = row["source_class"], row["target_class"]
    strong = row["source_class_share"] >= CLASS_MIN and row["target_class_share"] >= CLASS_MIN
    return strong and (src != tgt or src in SAME_CLASS_PATTERNS)


def evidence_category(row: Mapping[str, Any]) -> str:
    """The category the facts support: the first rule in the module docstring that holds."""
    if row["copy_share"] >= COPY_MIN:
        return "suppressing the source" if row["mode"] == "suppress" else "copying"
    if len(row["top_relations"]):
        return "named relation"
    if row["inflection_share"] >= INFLECTION_MIN:
        return "morphology"
    if row["recurring_coverage"] >= FIXED_MIN:
        return "fixed output set"
    if _is_class_pattern(row):
        return "token class"
    return "no pattern"


def _q(raw: str) -> str:
    """A token quoted as the prompt shows it: ' Paris' -> '␣Paris'."""
    return f"'{shown(raw)}'"


def _pairs(pairs: list[tuple[str, str]], n: int = 3) -> str:
    """Up to n example mappings: '␣a' -> '␣b', '␣c' -> '␣d'."""
    return ", ".join(f"{_q(s)} -> {_q(t)}" for s, t in pairs[:n])


def _relation_pairs(lines: list[Line], relation: str) -> list[tuple[str, str]]:
    """Per line, the first target that a rule confirms is in `relation` (none for unchecked relations)."""
    check = RELATION_CHECKS.get(relation)
    if check is None:
        return []
    found = ((s, next((t for t in ts if check(s, t)), None)) for s, ts in lines)
    return [(s, t) for s, t in found if t is not None]


def template_description(row: Mapping[str, Any], lines: pd.DataFrame | list[Line]) -> str:
    """One sentence from the evidence alone, quoting example tokens from the head's lines: the
    no-LLM baseline. `lines`: the head's rows of the salient table (or `head_lines` of them)."""
    lines = head_lines(lines) if isinstance(lines, pd.DataFrame) else lines
    tops = [(s, ts[0]) for s, ts in lines if ts]
    category = evidence_category(row)
    verb = "Suppresses" if row["mode"] == "suppress" else "Promotes"
    if category in ("copying", "suppressing the source"):
        examples = _pairs([(s, t) for s, t in tops if is_copy(s, t)])
        if category == "copying":
            return f"Copies the source token (up to case and leading space): {examples}."
        return f"Suppresses the source token itself: {examples}."
    if category == "named relation":
        (name, score), *_ = row["top_relations"]
        does = "Suppresses" if row["mode"] == "suppress" else "Implements"
        head = f"{does} the relation {name} (score {score:.2f}, tau {row['tau']:.2f})"
        shows = _relation_pairs(lines, name)
        if shows:
            return f"{head}: {_pairs(shows)}."
        return f"{head}; its lines include {_pairs(tops, 2)}."
    if category == "morphology":
        kind = row["inflection_kind"]
        examples = _pairs([(s, t) for s, t in tops if _inflection(s, t) == kind])
        return f"Maps words to their {kind}: {examples}."
    if category == "fixed output set":
        tokens = ", ".join(_q(t) for t, _ in row["recurring_targets"][:3])
        return f"{verb} a fixed set of tokens ({tokens}) whatever the source."
    if category == "token class":
        src, tgt = row["source_class"], row["target_class"]
        fit = [(s, t) for s, t in tops if token_class(s) == src and token_class(t) == tgt]
        other = "other " if src == tgt else ""
        return f"Maps {CLASS_PLURALS[src]} to {other}{CLASS_PLURALS[tgt]}: {_pairs(fit)}."
    return "No pattern found in the lines."


def _count(share: float, n: int) -> int:
    """A share of n lines back as a count."""
    return round(share * n)


def _class_phrase(row: Mapping[str, Any], side: str) -> str:
    """'mostly capitalised words (70%)', or 'mixed, most often numbers (40%)'."""
    cls, share = row[f"{side}_class"], row[f"{side}_class_share"]
    lead = "mostly" if share >= 0.5 else "mixed, most often"
    return f"{lead} {CLASS_PLURALS[cls]} ({share:.0%})"


def evidence_lines(row: Mapping[str, Any]) -> list[str]:
    """The facts as short sentences for the LLM's prompt (tokens shown as in the lines)."""
    n = int(row["n_lines"])
    out = [
        f"Top target equals the source (up to case and leading space) in "
        f"{_count(row['copy_share'], n)} of {n} lines; the source is among the targets in "
        f"{_count(row['copy_any_share'], n)}.",
    ]
    forms = _count(row["inflection_share"], n)
    if forms:
        out.append(
            f"Top target is a word form of the source in {forms} of {n} lines "
            f"(mostly {row['inflection_kind']})."
        )
    if row["relations_scored"]:
        rels = ", ".join(f"{r} ({s:.2f})" for r, s in row["top_relations"])
        out.append(
            f"Known relations this head scores over {row['tau']:.2f} on: {rels}."
            if rels
            else f"No known relation scores over {row['tau']:.2f} for this head."
        )
    recurring = row["recurring_targets"]
    if len(recurring):
        listed = ", ".join(f"{_q(t)} ({_count(s, n)} of {n})" for t, s in recurring[:5])
        cover = _count(row["recurring_coverage"], n)
        out.append(f"Targets recurring in many lines: {listed}; {cover} of {n} lines have one.")
    else:
        out.append(f"No target recurs in {RECURRING_MIN:.0%} or more of the lines.")
    out.append(
        f"Source tokens: {_class_phrase(row, 'source')}; targets: {_class_phrase(row, 'target')}."
    )
    return out
