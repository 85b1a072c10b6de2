"""Two judges without an LLM, to read the LLM judge's score against: is the held-out test answerable?

The LLM judge (`judge`) can fail because the descriptions say little or because the judge reads them
badly. These references answer the same questions by word overlap alone:

- *seen mappings*: pick the option sharing the most words with the lines the describer was shown
  (the head's first `described` salient tokens and their targets). It asks whether what the
  describer saw predicts the held-out mappings at all: an upper reference for a description that
  only restates its input.
- *description words*: pick the option sharing the most words with the description itself, words
  common to many descriptions dropped (boilerplate says nothing about one head). It asks whether a
  description names anything concrete that the held-out lists contain. Its control reads, for each
  head, the description of another (the LLM judge's seeded derangement).

Ties are scored as a fair random pick among the tied options (credit 1/k when the real list is
among k tied), so a judge that finds no overlap scores chance exactly, with no position bias.
"""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

from mapslib.foundation.tokens import VISIBLE_SPACE
from mapslib.salient.judge import JudgeSetup, described_part, description_text, shuffled_sources

BOILERPLATE_SHARE = 0.2  # a word in more than this share of the descriptions (and in two or more)
# names no single head
REFERENCES = (
    "overlap with the seen mappings (no LLM)",
    "overlap with the description (no LLM)",
    "overlap with another head's description (no LLM, control)",
)


def _names(df: pd.DataFrame) -> pd.Series:
    """Head names "layer.head" from the number columns (a name read back from CSV may be a float)."""
    return df["layer"].astype(int).astype(str) + "." + df["head"].astype(int).astype(str)


def words(text: str) -> set[str]:
    """Lower-case letter/digit runs of two or more characters: what overlap is counted on."""
    return set(re.findall(r"[^\W_]{2,}", str(text).replace(VISIBLE_SPACE, " ").lower()))


def seen_words(salient: pd.DataFrame, setup: JudgeSetup) -> dict[str, set[str]]:
    """Per head name: the words of the sources and targets the describer was shown."""
    seen = described_part(salient, setup)
    text = seen["source"].astype(str) + " " + seen["target"].astype(str)
    return {name: set().union(*map(words, t)) for name, t in text.groupby(_names(seen))}


def description_words(descriptions: pd.DataFrame) -> dict[str, set[str]]:
    """Per described head: the words of its description, less those in many descriptions."""
    done = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
    per = {
        n: words(description_text(r))
        for n, (_, r) in zip(_names(done), done.iterrows(), strict=True)
    }
    share = Counter(w for ws in per.values() for w in ws)
    common = {w for w, n in share.items() if n > max(1, BOILERPLATE_SHARE * len(per))}
    return {name: ws - common for name, ws in per.items()}


def overlap_credit(options: list[str], answer: int, vocab: set[str]) -> float:
    """Expected correctness of picking, at random among ties, an option with the most words in vocab."""
    scores = [len(words(o) & vocab) for o in options]
    best = [i for i, s in enumerate(scores) if s == max(scores)]
    return 1.0 / len(best) if answer in best else 0.0


def overlap_scores(items: pd.DataFrame, vocab: dict[str, set[str]]) -> pd.DataFrame:
    """Per question of a head in `vocab`: the overlap judge's credit (0, 1 or 1/k for a k-way tie)."""
    names = _names(items)
    rows = [
        dict(name=n, item=r.item, credit=overlap_credit(r.options, r.answer, vocab[n]))
        for n, r in zip(names, items.itertuples(), strict=True)
        if n in vocab
    ]
    return pd.DataFrame(rows, columns=["name", "item", "credit"])


def reference_summary(
    items: pd.DataFrame, salient: pd.DataFrame, descriptions: pd.DataFrame, setup: JudgeSetup
) -> pd.DataFrame:
    """Accuracy of the overlap judges on the LLM judge's questions, beside chance."""
    told = description_words(descriptions)
    other = {n: told[m] for n, m in shuffled_sources(sorted(told), setup.seed).items()}
    vocabs = (seen_words(salient, setup), told, other)
    rows = []
    for label, vocab in zip(REFERENCES, vocabs, strict=True):
        s = overlap_scores(items, vocab)
        acc = round(float(s["credit"].mean()), 3) if len(s) else float("nan")
        rows.append(
            dict(
                group=label,
                heads=s["name"].nunique(),
                questions=len(s),
                accuracy=acc,
                chance=setup.chance,
            )
        )
    return pd.DataFrame(rows)
