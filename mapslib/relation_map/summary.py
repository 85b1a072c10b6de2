"""Head-level summaries of a relation-score table (columns `layer, head, relation, mode, ..., score`).

A head implements a relation (or its suppression) when its score is at least tau = 0.15; it belongs to
a category when it implements at least one of that category's relations, in either mode.
"""

from __future__ import annotations

import itertools

import pandas as pd

from mapslib.foundation.heads import head_name
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.relations import category_of


def score_grid(scores: pd.DataFrame, relation: str, mode: str = "promote") -> pd.DataFrame:
    """Scores of one relation and mode as a layers x heads table."""
    sel = scores[(scores["relation"] == relation) & (scores["mode"] == mode)]
    return sel.pivot(index="layer", columns="head", values="score")


def implemented(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Rows where a head implements a relation (score >= tau), with the relation's category."""
    out = scores[scores["score"] >= tau].copy()
    out["category"] = out["relation"].map(category_of)
    return out


def relation_overview(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Per relation and mode: heads over tau, the highest score, and the head that has it."""
    rows = []
    for (rel, mode), g in scores.groupby(["relation", "mode"], sort=False):
        best = g.loc[g["score"].idxmax()]
        rows.append(
            {
                "relation": rel,
                "category": category_of(rel),
                "mode": mode,
                "n_pairs": int(g["n_pairs"].iloc[0]),
                "k": int(g["k"].iloc[0]),
                "heads_over_tau": int((g["score"] >= tau).sum()),
                "max_score": float(best["score"]),
                "best_head": head_name(int(best["layer"]), int(best["head"])),
            }
        )
    return pd.DataFrame(rows).sort_values(["category", "relation", "mode"]).reset_index(drop=True)


def head_table(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Per head with at least one relation: the relations it promotes and suppresses, and its categories."""
    imp = implemented(scores, tau)
    rows = []
    for (layer, head), g in imp.groupby(["layer", "head"]):
        promote = sorted(g.loc[g["mode"] == "promote", "relation"])
        suppress = sorted(g.loc[g["mode"] == "suppress", "relation"])
        cats = sorted(set(g["category"]))
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "name": head_name(int(layer), int(head)),
                "promotes": ", ".join(promote),
                "suppresses": ", ".join(suppress),
                "n_relations": len(promote) + len(suppress),
                "categories": ", ".join(cats),
                "n_categories": len(cats),
                "has_suppression": bool(suppress),
            }
        )
    cols = [
        "layer",
        "head",
        "name",
        "promotes",
        "suppresses",
        "n_relations",
        "categories",
        "n_categories",
        "has_suppression",
    ]
    return pd.DataFrame(rows, columns=cols)


def category_counts(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Per category: heads that implement at least one of its relations (either mode), per layer."""
    imp = implemented(scores, tau)
    counts = imp.groupby(["category", "layer"])["head"].nunique().unstack("category", fill_value=0)
    all_layers = sorted(scores["layer"].unique())
    return counts.reindex(all_layers, fill_value=0)


def overview(
    scores: pd.DataFrame, n_heads_total: int, tau: float = DEFAULTS.tau
) -> dict[str, float]:
    """The paper's head-level numbers: classified heads, multi-category and suppression shares."""
    heads = head_table(scores, tau)
    n = len(heads)
    return {
        "heads": n_heads_total,
        "classified_heads": n,
        "classified_share": n / n_heads_total if n_heads_total else 0.0,
        "multi_category_share": float((heads["n_categories"] > 1).mean()) if n else 0.0,
        "suppression_share": float(heads["has_suppression"].mean()) if n else 0.0,
        "multi_relation_share": float((heads["n_relations"] > 1).mean()) if n else 0.0,
    }


def group_sharing(
    scores: pd.DataFrame, n_heads: int, n_kv_heads: int, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """How often a relation head's same-layer neighbours implement the same relation and mode.

    For every head implementing (relation, mode) and every other head of its layer, the pair counts as
    `same kv group` or `other group`; `shared` when both implement it. With grouped-query attention
    (the paper's Llama-3.1 observation) the same-group rate is expected to be higher.
    """
    group = n_heads // n_kv_heads
    imp = implemented(scores, tau)
    counts = {"same kv group": [0, 0], "other group": [0, 0]}
    for _key, g in imp.groupby(["layer", "relation", "mode"]):
        members = set(g["head"].astype(int))
        for h, other in itertools.product(members, range(n_heads)):
            if other == h:
                continue
            key = "same kv group" if h // group == other // group else "other group"
            counts[key][0] += 1
            counts[key][1] += other in members
    rows = [
        {"pair": k, "pairs": n, "shared": s, "shared_rate": s / n if n else float("nan")}
        for k, (n, s) in counts.items()
    ]
    return pd.DataFrame(rows)


def group_members(
    scores: pd.DataFrame, n_heads: int, n_kv_heads: int, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """kv groups in which two or more heads implement the same relation and mode."""
    group = n_heads // n_kv_heads
    imp = implemented(scores, tau)
    imp["group"] = imp["head"] // group
    rows = []
    for (layer, grp, rel, mode), g in imp.groupby(["layer", "group", "relation", "mode"]):
        if len(g) >= 2:
            heads = ", ".join(head_name(int(layer), int(h)) for h in sorted(g["head"]))
            rows.append(
                {
                    "layer": int(layer),
                    "kv_group": int(grp),
                    "relation": rel,
                    "mode": mode,
                    "heads": heads,
                }
            )
    return pd.DataFrame(rows, columns=["layer", "kv_group", "relation", "mode", "heads"])


def strongest_head(scores: pd.DataFrame, mode: str = "promote", relation: str | None = None) -> str:
    """The head with the highest score in `mode` (on `relation`, or on any relation), as LAYER.HEAD."""
    sel = scores[scores["mode"] == mode]
    sel = sel if relation is None else sel[sel["relation"] == relation]
    best = sel.sort_values(["score", "layer", "head"], ascending=[False, True, True]).iloc[0]
    return head_name(int(best["layer"]), int(best["head"]))


def compare_maps(maps: dict[str, pd.DataFrame], tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Score tables of the same heads side by side (e.g. one per embedding mode): per relation and mode,
    the heads at or above tau and the best score; the last row counts heads implementing anything."""
    parts = {}
    for label, scores in maps.items():
        by = scores.groupby(["relation", "mode"])["score"]
        table = pd.DataFrame({"heads": by.apply(lambda s: int((s >= tau).sum())), "max": by.max()})
        n_any = len(implemented(scores, tau)[["layer", "head"]].drop_duplicates())
        table.loc[("any", "either"), :] = [n_any, scores["score"].max()]
        parts[label] = table.astype({"heads": int})
    return pd.concat(parts, axis=1, names=["table", ""])
