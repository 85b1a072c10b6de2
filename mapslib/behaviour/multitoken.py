"""Do static scores, read from single tokens, predict heads on sources that span several tokens?

The paper built new datasets of multi-token sources for three relations (object to superclass, noun
to pronoun, country to language). Here the pairs come from the shipped datasets themselves: the
pairs the single-token filter drops because `" " + src` is several tokens while `" " + dst` is one.
Which relations have enough such pairs depends on the tokenizer, so the choice is a rule, not a
list: a relation is used when it has at least `MIN_MULTI_PAIRS` (20) such pairs *and* is scored
statically (>= 30 single-token pairs), since the comparison needs its single-token static scores.
For SmolLM2-135M this keeps the paper's three plus work to location; product by company has 385
multi-token pairs but only 15 single-token ones, so it has no static score under the protocol.

The experiment is chapter 04's with the template "This is a document about <X>" (the paper's):
the head's output at the last src token (with context, and without: its own value vector there),
scored with the relation's k against the single-token static scores; the single-token correlation
on the same template is computed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.behaviour.correlation import (
    TEMPLATES,
    correlation_rows,
    correlations,
    dynamic_scores,
    src_prompt,
)
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.foundation.tokens import token_texts
from mapslib.relation_map.relations import Relation, TokenizedRelation, scorable

MIN_MULTI_PAIRS = 20
TEMPLATE = 0  # "This is a document about <X>"


@dataclass(frozen=True)
class MultiTokenRelation:
    """A relation's pairs whose src is several tokens and whose dst is one token, for one tokenizer."""

    relation: Relation
    pairs: tuple[tuple[str, str], ...]
    dst_ids: tuple[int, ...]
    src_lengths: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.relation.name

    def __len__(self) -> int:
        return len(self.pairs)


def _encode(tokenizer: Any, words: list[str]) -> list[list[int]]:
    """Token ids of `" " + word` for each word, without special tokens (as the single-token filter)."""
    return tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]


def multi_token_pairs(relation: Relation, tokenizer: Any) -> MultiTokenRelation:
    """Pairs with `" " + src` of two or more tokens and `" " + dst` of exactly one."""
    src = _encode(tokenizer, [s for s, _ in relation.pairs])
    dst = _encode(tokenizer, [t for _, t in relation.pairs])
    kept = [
        (p, d[0], len(s))
        for p, s, d in zip(relation.pairs, src, dst, strict=True)
        if len(s) > 1 and len(d) == 1
    ]
    return MultiTokenRelation(
        relation,
        tuple(p for p, _, _ in kept),
        tuple(d for _, d, _ in kept),
        tuple(n for _, _, n in kept),
    )


def multi_token_counts(
    relations: list[Relation], tokenizer: Any, single: list[TokenizedRelation]
) -> pd.DataFrame:
    """Per relation: multi-token pairs, single-token pairs, and whether the experiment uses it."""
    scored = {r.name: len(r) for r in single}
    rows = []
    for r in relations:
        multi = multi_token_pairs(r, tokenizer)
        lengths = pd.Series(multi.src_lengths, dtype=float)
        rows.append(
            {
                "relation": r.name,
                "multi_token_pairs": len(multi),
                "mean_src_tokens": round(lengths.mean(), 2) if len(multi) else float("nan"),
                "single_token_pairs": scored.get(r.name, 0),
                "used": len(multi) >= MIN_MULTI_PAIRS and r.name in scored,
            }
        )
    return pd.DataFrame(rows)


def multi_token_relations(
    relations: list[Relation],
    tokenizer: Any,
    single: list[TokenizedRelation],
    min_pairs: int = MIN_MULTI_PAIRS,
) -> list[MultiTokenRelation]:
    """The relations with >= `min_pairs` multi-token pairs that also have single-token static scores."""
    scored = {r.name for r in single}
    multi = [multi_token_pairs(r, tokenizer) for r in relations if r.name in scored]
    return [m for m in multi if len(m) >= min_pairs]


def multi_token_experiment(
    hw: HeadWeights,
    tokenizer: Any,
    multi: list[MultiTokenRelation],
    single: list[TokenizedRelation],
    static: pd.DataFrame,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    batch_rows: int = 256,
    k: int | None = None,
) -> pd.DataFrame:
    """r (static vs dynamic) on multi-token sources beside r on single-token sources, same template;
    `k` is the static scores' (None: the protocol's rule).

    One row per relation, mode and setting: r and p for single and multi-token pairs, their numbers of
    pairs, and the difference multi - single.
    """
    names = {m.name for m in multi}
    single = [s for s in single if s.name in names]
    frames = {}
    for kind, rels in (("single", single), ("multi", multi)):
        rows = correlation_rows(rels, [TEMPLATE], hw.vocab_size, max_pairs, seed, k)
        dyn = dynamic_scores(hw, tokenizer, rows, batch_rows=batch_rows)
        corr = correlations(static, dyn)
        pairs = dyn.groupby("relation")["n_pairs"].first()
        frames[kind] = corr.assign(n_pairs=corr["relation"].map(pairs))
    key = ["relation", "category", "mode", "setting"]
    both = frames["single"][key + ["r", "p", "n_pairs"]].merge(
        frames["multi"][key + ["r", "p", "n_pairs", "max_static"]],
        on=key,
        suffixes=("_single", "_multi"),
    )
    both["r_diff"] = (both["r_multi"] - both["r_single"]).round(6) + 0.0  # no -0.0 in tables
    return both


def run_multi_token(
    lm: LoadedModel,
    relations: list[Relation],
    static: pd.DataFrame,
    out: str | Path | None,
    *,
    static_source: str = "computed with the default map settings",
    max_pairs: int | None = None,
    seed: int = 0,
    batch_rows: int = 256,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """`multi_token_experiment` on the relations the rule keeps, cached at `out` (.csv or folder);
    `static` was made with `settings`."""
    single = scorable(relations, lm.tokenizer, settings.min_pairs)
    multi = multi_token_relations(relations, lm.tokenizer, single)
    params = {"relations": [r.sha256 for r in relations], "static": static_source}
    params |= {"template": TEMPLATE, "min_multi_pairs": MIN_MULTI_PAIRS}
    params |= {"max_pairs": max_pairs, "seed": seed} | settings.changed(
        "embedding", "k", "min_pairs", "bias", "norms"
    )
    protocol = {
        "rule": f">= {MIN_MULTI_PAIRS} pairs with a multi-token src and a single-token dst, and "
        "a single-token static score",
        "template": TEMPLATES[TEMPLATE],
    }
    return run_cached(
        lm,
        out,
        "multi_token.csv",
        params,
        lambda: multi_token_experiment(
            lm.hw,
            lm.tokenizer,
            multi,
            single,
            static,
            max_pairs=max_pairs,
            seed=seed,
            batch_rows=batch_rows,
            k=settings.k,
        ),
        found={"multi_token_pairs": {m.name: len(m) for m in multi}},
        settings=settings,
        recompute=recompute,
        protocol=protocol,
        header=header,
    )


def example_prompt(multi: list[MultiTokenRelation], tokenizer: Any) -> list[str]:
    """Lines showing the first multi-token pair: its prompt, the target, and the prompt's tokens."""
    if not multi:
        return []
    src, dst = multi[0].pairs[0]
    prompt = src_prompt(TEMPLATES[TEMPLATE], src)
    tokens = " | ".join(token_texts(tokenizer, tokenizer(prompt)["input_ids"]))
    return [f"{prompt!r} -> {dst!r}", tokens]


def within_paper_criterion(both: pd.DataFrame, margin: float = 0.05) -> str:
    """The paper's criterion for promotion: multi-token r within `margin` of single-token r, or higher."""
    promote = both[both["mode"] == "promote"]
    close = int((promote["r_diff"] >= -margin).sum())
    return (
        f"{close} of {len(promote)} relation-setting combinations (promotion) have multi-token r "
        f"within {margin} of the single-token r or higher"
    )
