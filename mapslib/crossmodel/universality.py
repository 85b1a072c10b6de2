"""The cross-model chapter's head-level tables: every model's relation map set beside the others'.

Each function takes the models' parts (`parts.model_parts`) and lines them up against each
other and against the paper's numbers (`reference`, quoted, never computed): the highest score per
relation, how the scores spread over heads, where relation heads sit in depth, the shares of heads
with several categories or a suppression, heads of one kv group sharing relations, and the random
baseline. The behaviour tables are in `universality_behaviour`, the paper's claims in `claims`.

Where a head sits in depth is its relative depth, (layer + 0.5) / n_layers (`DEPTH_RULE`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from mapslib.crossmodel.parts import DEFAULT_READING, ModelPart, readings_for
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map import summary
from mapslib.relation_map.baseline import baseline_table
from mapslib.relation_map.relations import REGISTRY, category_of, label_of
from mapslib.report.reference import (
    GPT2_XL_MAX_SCORES,
    PAPER_MODEL_PARAMS,
    PAPER_MULTI_CATEGORY_SHARE,
    PAPER_RANDOM_BASELINE,
)

DEPTH_RULE = (
    "relative depth = (layer + 0.5) / n_layers: the centre of the layer's share of the depth "
    "(layer 0 of 30 at 0.017, layer 29 at 0.983); the lower, middle and upper thirds are relative "
    "depth < 1/3, < 2/3 and the rest, so they split the layers evenly when n_layers is a multiple of 3"
)
THIRDS = ("lower", "middle", "upper")


def labelled(table: pd.DataFrame) -> pd.DataFrame:
    """A relation-indexed table indexed by (category, the paper's relation name) for display."""
    out = table.copy()
    rels = list(out.index)
    out.index = pd.MultiIndex.from_arrays(
        [[category_of(r) for r in rels], [label_of(r) for r in rels]],
        names=["category", "relation"],
    )
    return out


def registry_order(relations: Any) -> list[str]:
    """The distinct relations, shipped ones in registry order first, then the rest by name."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(dict.fromkeys(relations), key=lambda r: (order.get(r, len(order)), r))


# -- relation scores across models (the paper's universality figure) ---------------------------------
def score_table(
    parts: list[ModelPart], reading: str | dict[str, str] = DEFAULT_READING
) -> pd.DataFrame:
    """Every head's scores of every model in one long table, with each head's relative depth."""
    readings = readings_for(parts, reading)
    frames = []
    for p in parts:
        s = p.scores(readings[p.name]).copy()
        s.insert(0, "model", p.name)
        s["relative_depth"] = relative_depth(s["layer"], p.n_layers)
        s["reading"] = readings[p.name]
        frames.append(s)
    return pd.concat(frames, ignore_index=True)


def max_scores(
    parts: list[ModelPart],
    mode: str = "promote",
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """Per relation, the highest score any head of each model reaches (summary.relation_overview);
    where the paper quotes GPT-2 xl's maximum for the relation and mode, it sits in the last column.
    Relations a model does not score are empty."""
    readings = readings_for(parts, reading)
    cols = {}
    for p in parts:
        ov = summary.relation_overview(p.scores(readings[p.name]), tau)
        cols[p.name] = ov[ov["mode"] == mode].set_index("relation")["max_score"]
    table = pd.DataFrame(cols)
    table = table.reindex(registry_order(table.index))
    quoted = {r: v for (r, m), v in GPT2_XL_MAX_SCORES.items() if m == mode}
    if quoted:
        table["GPT-2 xl (paper, quoted)"] = [quoted.get(r, np.nan) for r in table.index]
    table.index.name = "relation"
    return table


def chance_levels(part: ModelPart, reading: str = DEFAULT_READING) -> pd.Series:
    """Per (relation, mode): the highest score of any random matrix (chapter 03), the score a head
    must beat to be above chance. 0 where the baseline was made with another reading or is absent."""
    random = part.table("baseline_random_scores.csv")
    if random is None or part.baseline_reading() != reading:
        return pd.Series(dtype=float, name="chance")
    return random.groupby(["relation", "mode"])["score"].max().rename("chance")


def score_spread(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """Per model, relation and mode: the highest score, heads at or above tau, heads above chance
    but below tau, and whether the relation is implemented (max >= tau) and graded (claims rule)."""
    readings = readings_for(parts, reading)
    rows = []
    for p in parts:
        chance = chance_levels(p, readings[p.name])
        for (rel, mode), g in p.scores(readings[p.name]).groupby(["relation", "mode"], sort=False):
            c = float(chance.get((rel, mode), 0.0))
            over = int((g["score"] >= tau).sum())
            between = int(((g["score"] > c) & (g["score"] < tau)).sum())
            rows.append(
                {
                    "model": p.name,
                    "relation": rel,
                    "mode": mode,
                    "max_score": float(g["score"].max()),
                    "heads_over_tau": over,
                    "chance": c,
                    "heads_above_chance_below_tau": between,
                    "implemented": over > 0,
                    "graded": over > 0 and between >= over,
                }
            )
    return pd.DataFrame(rows)


# -- where relation heads sit -----------------------------------------------------------------------
def relative_depth(layer: Any, n_layers: int) -> Any:
    """(layer + 0.5) / n_layers (DEPTH_RULE)."""
    return (np.asarray(layer, dtype=float) + 0.5) / n_layers


def depth_third(rel_depth: Any) -> np.ndarray:
    """0, 1, 2: the lower, middle or upper third of the depth."""
    return np.minimum((np.asarray(rel_depth, dtype=float) * 3).astype(int), 2)


def classified_heads(
    part: ModelPart, reading: str = DEFAULT_READING, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """summary.head_table of the part with each head's relative depth and third."""
    heads = summary.head_table(part.scores(reading), tau)
    heads["relative_depth"] = relative_depth(heads["layer"], part.n_layers)
    heads["third"] = [THIRDS[t] for t in depth_third(heads["relative_depth"])]
    return heads


def depth_table(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """Per model: classified heads in each third of the depth, the share in the upper two thirds
    against the share of all heads there, its one-sided binomial p, and the mean relative depth."""
    readings = readings_for(parts, reading)
    rows = []
    for p in parts:
        heads = classified_heads(p, readings[p.name], tau)
        all_thirds = depth_third(relative_depth(np.arange(p.n_layers), p.n_layers))
        chance = float((all_thirds >= 1).mean())
        n, upper = len(heads), int((heads["third"] != "lower").sum())
        rows.append(
            {
                "model": p.name,
                "layers": p.n_layers,
                "classified heads": n,
                **{f"{t} third": int((heads["third"] == t).sum()) for t in THIRDS},
                "share in upper two thirds": upper / n if n else np.nan,
                "share of all heads there": chance,
                "p (binomial, greater)": (
                    binomtest(upper, n, chance, alternative="greater").pvalue if n else np.nan
                ),
                "mean relative depth": float(heads["relative_depth"].mean()) if n else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def depth_by_category(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """Per model and category: heads implementing it and their mean relative depth."""
    readings = readings_for(parts, reading)
    rows = []
    for p in parts:
        imp = summary.implemented(p.scores(readings[p.name]), tau)
        heads = imp.drop_duplicates(["category", "layer", "head"])
        for cat, g in heads.groupby("category"):
            depth = relative_depth(g["layer"], p.n_layers)
            rows.append(
                {
                    "model": p.name,
                    "category": cat,
                    "heads": len(g),
                    "mean relative depth": depth.mean(),
                }
            )
    table = pd.DataFrame(rows, columns=["model", "category", "heads", "mean relative depth"])
    return table.pivot(index="category", columns="model", values=["heads", "mean relative depth"])


def depth_profile(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
    bins: int = 10,
) -> pd.DataFrame:
    """Share of each model's heads that are classified, per bin of relative depth (for the figure)."""
    readings = readings_for(parts, reading)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for p in parts:
        heads = classified_heads(p, readings[p.name], tau)
        layer_bin = np.digitize(relative_depth(np.arange(p.n_layers), p.n_layers), edges[1:-1])
        head_bin = np.digitize(heads["relative_depth"], edges[1:-1])
        for b in range(bins):
            total = int((layer_bin == b).sum()) * p.n_heads
            rows.append(
                {
                    "model": p.name,
                    "depth": (edges[b] + edges[b + 1]) / 2,
                    "heads": total,
                    "classified": int((head_bin == b).sum()),
                    "share classified": (head_bin == b).sum() / total if total else np.nan,
                }
            )
    return pd.DataFrame(rows)


# -- heads with several categories, heads that suppress ----------------------------------------------
def head_shares(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """summary.overview per model (the chapter 02 numbers), with the paper's quoted shares below.

    The paper quotes the multi-category share per model and only a range (20-36%) for the
    suppression share, so its rows leave that column empty."""
    readings = readings_for(parts, reading)
    rows = []
    for p in parts:
        ov = summary.overview(p.scores(readings[p.name]), p.heads, tau)
        rows.append(
            {
                "model": p.name,
                "source": f"this book ({readings[p.name]} reading)",
                "parameters": p.parameters,
                "heads": p.heads,
                "classified heads": ov["classified_heads"],
                "classified share": ov["classified_share"],
                "multi-category share": ov["multi_category_share"],
                "suppression share": ov["suppression_share"],
                "multi-relation share": ov["multi_relation_share"],
            }
        )
    for model, share in PAPER_MULTI_CATEGORY_SHARE.items():
        rows.append(
            {
                "model": model,
                "source": "paper (quoted)",
                "parameters": PAPER_MODEL_PARAMS.get(model, np.nan),
                "heads": PAPER_RANDOM_BASELINE.get(model, (None, None, np.nan))[2],
                "multi-category share": share,
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    return table.astype({"heads": "Int64", "classified heads": "Int64"})


# -- grouped heads ----------------------------------------------------------------------------------
def group_sharing_test(
    scores: pd.DataFrame,
    n_heads: int,
    n_kv_heads: int,
    tau: float = DEFAULTS.tau,
    permutations: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """summary.group_sharing's same-group count against random placement of the heads.

    For every (layer, relation, mode), its m implementing heads are placed at random among the
    layer's heads `permutations` times; the statistic is the number of ordered same-group pairs of
    implementing heads (summary.group_sharing's `shared` for `same kv group`). Returns the observed
    count and rate, the mean rate under random placement and p = (1 + #{random >= observed}) /
    (1 + permutations)."""
    same = summary.group_sharing(scores, n_heads, n_kv_heads, tau).set_index("pair")
    observed = int(same.loc["same kv group", "shared"])
    pairs = int(same.loc["same kv group", "pairs"])
    group = n_heads // n_kv_heads
    rng = np.random.default_rng(seed)
    null = np.zeros(permutations)
    for _key, g in summary.implemented(scores, tau).groupby(["layer", "relation", "mode"]):
        m = len(np.unique(g["head"].to_numpy(dtype=int)))
        if m >= 2:
            drawn = rng.random((permutations, n_heads)).argsort(axis=1)[:, :m] // group
            counts = (drawn[..., None] == np.arange(n_kv_heads)).sum(axis=1)
            null += (counts * (counts - 1)).sum(axis=1)
    return {
        "same_group_shared": observed,
        "same_group_pairs": pairs,
        "same_group_rate": observed / pairs if pairs else np.nan,
        "random_placement_rate": float(null.mean()) / pairs if pairs else np.nan,
        "p": float((1 + (null >= observed).sum()) / (1 + permutations)),
    }


def group_sharing_table(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
    permutations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """For every model whose heads share kv heads: how often a relation head's same-group and
    other-group neighbours implement the same relation and mode, against random placement."""
    readings = readings_for(parts, reading)
    rows = []
    for p in parts:
        if p.n_kv_heads is None or p.n_kv_heads == p.n_heads:
            continue
        scores = p.scores(readings[p.name])
        share = summary.group_sharing(scores, p.n_heads, p.n_kv_heads, tau).set_index("pair")
        testable = p.n_kv_heads > 1
        test = group_sharing_test(scores, p.n_heads, p.n_kv_heads, tau, permutations, seed)
        rows.append(
            {
                "model": p.name,
                "attention": p.attention,
                "kv groups x heads": f"{p.n_kv_heads} x {p.n_heads // p.n_kv_heads}",
                "same-group pairs": int(share.loc["same kv group", "pairs"]),
                "same-group shared": int(share.loc["same kv group", "shared"]),
                "same-group rate": share.loc["same kv group", "shared_rate"],
                "other-group pairs": int(share.loc["other group", "pairs"]),
                "other-group rate": share.loc["other group", "shared_rate"],
                "rate under random placement": test["random_placement_rate"]
                if testable
                else np.nan,
                "p (permutation)": test["p"] if testable else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


# -- random baseline --------------------------------------------------------------------------------
def random_baseline_table(parts: list[ModelPart], tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Per model: random matrices and real heads over tau (baseline_table's totals, real heads from
    the map made with the baseline's reading), the best random score; the paper's counts below."""
    rows = []
    for p in parts:
        random = p.table("baseline_random_scores.csv")
        if random is None:
            continue
        reading = p.baseline_reading()
        total = baseline_table(p.scores(reading), random, tau).loc["total"]
        rows.append(
            {
                "model": p.name,
                "source": f"this book ({reading} reading)",
                "random matrices": int(total["random_matrices"]),
                "random over tau": int(total["random_over_tau"]),
                "heads": int(total["heads"]),
                "real relation heads": int(total["real_over_tau"]),
                "best random score": float(random["score"].max()),
            }
        )
    for model, (rnd, real, n) in PAPER_RANDOM_BASELINE.items():
        rows.append(
            {
                "model": model,
                "source": "paper (quoted)",
                "random matrices": n,
                "random over tau": rnd,
                "heads": n,
                "real relation heads": real,
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    return table.astype({"real relation heads": "Int64"})
