"""The held-out test that scores descriptions: does a description predict what a head does to new tokens?

The paper judged descriptions by a human study. This check is automatic and reproducible. For each
head, the describer sees its 30 most salient tokens (as in the paper); the next `held_out` salient
tokens are kept back. For each held-out token, a judge given *only* a description must pick the
head's real top mappings of that token among `options` lists: the real one and the top mappings of
the *same* token under other heads of the model, drawn at random. Because every option starts from
the same source token, the judge cannot answer from the token alone; only a description that says
what the head does to such tokens helps. Chance is 1 / `options`.

This module builds the questions; `likelihood` is the judge that answers them (by log-likelihood,
with its controls) and `overlap_judge` a word-overlap reference. A chat judge that answered all of a
head's questions as one letter list was removed: its answers were a permutation of the letters
whatever the description said (issue 28).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.heads import Head, all_heads
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.salient.mappings import mapping_table, top_mappings

HELD_COLUMNS = ["layer", "head", "item", "source_id", "source", "real"]
ITEM_COLUMNS = ["layer", "head", "item", "source", "options", "option_heads", "answer"]


@dataclass(frozen=True)
class JudgeSetup:
    """How the held-out test is built: tokens kept back, options per question, and the seed."""

    described: int = 30  # salient tokens the describer sees (the paper's 30)
    held_out: int = 5  # the next salient tokens, kept back for the judge
    options: int = 4  # lists per question: the real one and options - 1 from other heads
    seed: int = 0

    @property
    def chance(self) -> float:
        """Accuracy of a judge that guesses."""
        return 1.0 / self.options


def with_descriptions(salient: pd.DataFrame, descriptions: pd.DataFrame) -> pd.DataFrame:
    """The rows of the heads that have a description (pattern or "Unclear"): the ones to judge."""
    answered = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
    keys = set(zip(answered["layer"].astype(int), answered["head"].astype(int), strict=True))
    pairs = zip(salient["layer"].astype(int), salient["head"].astype(int), strict=True)
    return salient[[p in keys for p in pairs]]  # by (layer, head): a table read back may hold
    # names as numbers


def described_part(salient: pd.DataFrame, setup: JudgeSetup) -> pd.DataFrame:
    """The rows the describer sees: each head's first `described` salient tokens."""
    return salient[salient["salient_rank"] <= setup.described]


def held_out_sources(salient: pd.DataFrame, setup: JudgeSetup) -> pd.DataFrame:
    """One row per head and held-out token: its id, text and real top mappings (shown, joined)."""
    rows = []
    last = setup.described + setup.held_out
    for (layer, head), grp in salient.groupby(["layer", "head"], sort=True):
        keep = grp[(grp["salient_rank"] > setup.described) & (grp["salient_rank"] <= last)]
        if keep["salient_rank"].nunique() < setup.held_out:
            raise ValueError(
                f"head {layer}.{head} has {keep['salient_rank'].nunique()} salient tokens past the "
                f"first {setup.described}; compute the salient mappings with top_tokens={last}"
            )
        tab = mapping_table(keep, int(layer), int(head))
        ids = keep.drop_duplicates("salient_rank").sort_values("salient_rank")["source_id"]
        for item, (src, targets, sid) in enumerate(
            zip(tab["source"], tab["targets"], ids, strict=True)
        ):
            rows.append(
                dict(
                    layer=int(layer),
                    head=int(head),
                    item=item,
                    source_id=int(sid),
                    source=src,
                    real=targets,
                )
            )
    return pd.DataFrame(rows, columns=HELD_COLUMNS)  # columns kept when no head is described


def _distractor_heads(heads: list[Head], own: Head, n: int, rng: np.random.Generator) -> list[Head]:
    """`n` other heads of the model, in a seeded random order (more than needed: some may tie)."""
    others = [h for h in heads if h != own]
    order = rng.permutation(len(others))[: min(len(others), n)]
    return [others[i] for i in order]


def judge_items(
    hw: HeadWeights,
    tokenizer: Any,
    salient: pd.DataFrame,
    setup: JudgeSetup,
    settings: MapSettings = DEFAULTS,
) -> pd.DataFrame:
    """The questions: per head and held-out token, shuffled options and the index of the real one.

    A distractor is the same token's top mappings under another head of the model; heads whose list starts with
    the same top target as the real one are skipped, so no two options look alike at a glance. The
    real list's position is the question's running index modulo its option count (heads, then
    items, in order), so every position holds the answer equally often and a judge that favours a
    position scores chance exactly; the distractors' order is seeded random.
    """
    held = held_out_sources(salient, setup)
    pool = all_heads(hw)  # distractors come from every head, whichever heads are judged
    spare = 3 * (setup.options - 1)  # candidates per question, of which options - 1 are kept
    plan = {
        r.Index: _distractor_heads(
            pool,
            (r.layer, r.head),
            spare,
            np.random.default_rng([setup.seed, r.layer, r.head, r.item]),
        )
        for r in held.itertuples()
    }
    lists = _top_lists(hw, tokenizer, held, plan, settings)
    rows = []
    for index, r in enumerate(held.itertuples()):
        first = r.real.split(", ")[0]
        kept = [h for h in plan[r.Index] if lists[(h, r.source_id)].split(", ")[0] != first]
        kept = kept[: setup.options - 1]
        order = np.random.default_rng([setup.seed, r.layer, r.head, r.item, 1]).permutation(
            len(kept)
        )
        kept = [kept[i] for i in order]  # the distractors in a seeded random order
        answer = index % (len(kept) + 1)  # the real list's position cycles over the questions
        options = [lists[(h, r.source_id)] for h in kept]
        names = [f"{la}.{h}" for la, h in kept]
        options.insert(answer, r.real)
        names.insert(answer, f"{r.layer}.{r.head}")
        rows.append(
            dict(
                layer=r.layer,
                head=r.head,
                item=r.item,
                source=r.source,
                options=options,
                option_heads=names,
                answer=answer,
            )
        )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def _top_lists(
    hw: HeadWeights,
    tokenizer: Any,
    held: pd.DataFrame,
    plan: dict[Any, list[Head]],
    settings: MapSettings,
) -> dict[tuple[Head, int], str]:
    """Top-5 targets (shown, joined) of each asked token under each distractor head: one
    `top_mappings` call per head, for all the tokens it is asked about."""
    asked: dict[Head, set[int]] = {}
    for r in held.itertuples():
        for h in plan[r.Index]:
            asked.setdefault(h, set()).add(r.source_id)
    lists = {}
    for (layer, head), ids in asked.items():
        ids_sorted = sorted(ids)
        targets = top_mappings(hw, tokenizer, layer, head, ids_sorted, k=5, settings=settings)
        joined = targets["target"].tolist()  # ordered by source, then rank
        for i, sid in enumerate(ids_sorted):
            lists[((layer, head), sid)] = ", ".join(joined[5 * i : 5 * i + 5])
    return lists


def description_text(row: pd.Series) -> str:
    """What the judge reads of a description: its inputs and pattern sentences."""
    parts = [f"Inputs: {row['inputs']}" if row.get("inputs") else "", f"Pattern: {row['pattern']}"]
    return "\n".join(p for p in parts if p)


def shuffled_sources(names: list[str], seed: int) -> dict[str, str]:
    """A seeded derangement: each head gets another head's description (the control).

    Heads sit on a ring ordered by a seeded hash of their name and each takes the next head's
    description, so describing more heads later changes only the new heads' neighbours' controls
    (a permutation of the whole list would re-ask every cached control).
    """
    if len(names) < 2:
        return {}
    ring = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    return dict(zip(ring, ring[1:] + ring[:1], strict=True))


def per_head_accuracy(judged: pd.DataFrame) -> pd.DataFrame:
    """Per head and group of a judged table: questions answered and the share answered right."""
    ok = judged.dropna(subset=["correct"])
    ok = ok.assign(correct=ok["correct"].astype(bool))
    out = ok.groupby(["group", "layer", "head", "name"], sort=True)["correct"].agg(["size", "mean"])
    return out.rename(columns={"size": "questions", "mean": "accuracy"}).reset_index()
