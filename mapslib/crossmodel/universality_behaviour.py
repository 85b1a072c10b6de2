"""The cross-model chapter's behaviour tables: chapters 04 and 05 of every model side by side.

Static scores against head outputs (chapter 04's correlations, and which reading of E_in tracks
them best) and the causal effect of removing relation heads (chapter 05's ablations, summarised
again from each part's raw table), beside the paper's quoted Llama-3.1-8B and Pythia 12B numbers.
The thresholds below are those the claims (`claim_rules.CLAIM_RULES`) apply to these tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mapslib.behaviour.ablation import SUMMARY_COLUMNS, ablation_summary, random_draws_table
from mapslib.crossmodel.parts import (
    DEFAULT_READING,
    ModelPart,
    best_reading,
    reading_correlations,
    readings_for,
)
from mapslib.crossmodel.universality import registry_order
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.relations import category_of, label_of
from mapslib.report.reference import PAPER_CAUSAL_PYTHIA12B, PAPER_CORRELATION_LLAMA31_8B
from mapslib.report.tables import causal_beside_paper, correlation_beside_paper

ALPHA = 0.05  # significance level of the binomial, permutation and random-draw tests
STRONG_R = 0.7  # "strong" correlation (the paper's lowest strong value is 0.71)
CONTEXT_DROP = 0.1  # with context, r "remains" when it falls by at most this much
MIN_DRAWS_FOR_P = 20  # with fewer random draws, p = (1 + #) / (1 + draws) cannot fall below 0.05


# -- correlation with head outputs ------------------------------------------------------------------
def correlation_side_by_side(parts: list[ModelPart], mode: str = "promote") -> pd.DataFrame:
    """tables.correlation_beside_paper for every model (r without and with context, max static
    score), side by side; for promotion the paper's Llama-3.1-8B values (quoted) last."""
    cols: dict[tuple[str, str], pd.Series] = {}
    rels: list[str] = []
    for p in parts:
        corr = p.table("correlations.csv")
        if corr is None:
            continue
        t = correlation_beside_paper(corr, mode, p.name)
        for measure in ("r w/o context", "r w/ context", "max static score"):
            cols[(p.name, measure)] = t[(p.name, measure)].droplevel("category")
        rels += list(corr["relation"])
    if not cols:
        return pd.DataFrame()
    rels = registry_order(rels)
    if mode == "promote":
        paper = "Llama-3.1-8B (paper, quoted)"
        for i, measure in enumerate(("r w/o context", "r w/ context")):
            ref = [PAPER_CORRELATION_LLAMA31_8B.get(r, (np.nan, np.nan))[i] for r in rels]
            cols[(paper, measure)] = pd.Series(ref, index=[label_of(r) for r in rels])
    table = pd.DataFrame(cols).reindex([label_of(r) for r in rels])
    table.index = pd.MultiIndex.from_arrays(
        [[category_of(r) for r in rels], list(table.index)], names=["category", "relation"]
    )
    return table


def correlation_frame(part: ModelPart, reading: str = DEFAULT_READING) -> pd.DataFrame | None:
    """Per relation (promotion): r without and with context and the highest static score, for the
    map read as `reading`: chapter 04's correlations.csv for the paper's map, else re-derived from
    the dynamic scores (correlations_by_map). None when neither table is there."""
    corr = part.table("correlations.csv")
    if reading == DEFAULT_READING and corr is not None:
        c = corr[corr["mode"] == "promote"]
        r = c.pivot(index="relation", columns="setting", values="r")
        top = c.groupby("relation", sort=False)["max_static"].first()
    else:
        by_map = reading_correlations(part)
        if by_map is None or reading not in by_map.columns.get_level_values("map"):
            return None
        r = by_map[reading].drop(index="median")
        s = part.scores(reading)
        top = s[s["mode"] == "promote"].groupby("relation")["score"].max()
    rels = registry_order(r.index)
    return pd.DataFrame(
        {
            "r_no_context": r["no_context"].reindex(rels),
            "r_context": r["context"].reindex(rels),
            "max_static": top.reindex(rels),
        }
    )


def correlation_rules(frame: pd.DataFrame, tau: float = DEFAULTS.tau) -> dict[str, float]:
    """The correlation claims' counts on a `correlation_frame`: relations with r defined without
    context, those with r >= STRONG_R, those strong ones holding with context (r with context >=
    r without - CONTEXT_DROP), and the median r of relations some head implements and of the rest."""
    r0, r1 = frame["r_no_context"], frame["r_context"]
    defined = r0.notna()
    strong = defined & (r0 >= STRONG_R) & r1.notna()
    reached = frame["max_static"] >= tau
    return {
        "relations": int(defined.sum()),
        "strong": int((r0[defined] >= STRONG_R).sum()),
        "strong, both defined": int(strong.sum()),
        "holds with context": int((r1[strong] >= r0[strong] - CONTEXT_DROP).sum()),
        "median r w/o context": float(r0.median()),
        "median r w/ context": float(r1.median()),
        "implemented": int((reached & defined).sum()),
        "median r, implemented": float(r0[reached & defined].median()),
        "median r, not implemented": float(r0[~reached & defined].median()),
    }


def paper_correlation_frame() -> pd.DataFrame:
    """The paper's quoted Llama-3.1-8B correlations as a `correlation_frame` (no max score)."""
    return pd.DataFrame(
        {
            "r_no_context": {r: a for r, (a, _) in PAPER_CORRELATION_LLAMA31_8B.items()},
            "r_context": {r: b for r, (_, b) in PAPER_CORRELATION_LLAMA31_8B.items()},
            "max_static": dict.fromkeys(PAPER_CORRELATION_LLAMA31_8B, np.nan),
        }
    )


def correlation_summary(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """`correlation_rules` per model and for the paper's Llama-3.1-8B (from its quoted table), with
    the share of strong relations and the share of those holding with context."""
    readings = readings_for(parts, reading)
    rows = {}
    for p in parts:
        frame = correlation_frame(p, readings[p.name])
        if frame is not None:
            rows[p.name] = correlation_rules(frame, tau)
    paper = correlation_rules(paper_correlation_frame(), tau)
    rows["Llama-3.1-8B (paper, quoted)"] = {
        k: v for k, v in paper.items() if "implemented" not in k
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.insert(2, f"share r >= {STRONG_R}", table["strong"] / table["relations"])
    table.insert(
        5,
        f"share of strong holding with context (drop <= {CONTEXT_DROP})",
        table["holds with context"] / table["strong, both defined"],
    )
    return table


# -- the E_in reading that tracks behaviour ---------------------------------------------------------
def reading_table(parts: list[ModelPart]) -> pd.DataFrame:
    """Per model: the median promotion r of each map, without and with context, the map with the
    highest median in each setting, the paper map's gap to it without context, and the reading
    `best_reading` keeps."""
    rows = []
    for p in parts:
        by_map = reading_correlations(p)
        if by_map is None:
            continue
        med = by_map.loc["median"]
        row: dict[tuple[str, str], Any] = {k: v for k, v in med.items()}
        for setting in ("no_context", "context"):
            s = med.xs(setting, level="setting").dropna()
            row[("highest median", setting)] = s.idxmax() if len(s) else None
        s = med.xs("no_context", level="setting")
        row[("paper's gap to it", "no_context")] = s.max() - s.get(DEFAULT_READING, np.nan)
        row[("reading kept", "")] = best_reading(p)
        rows.append(pd.Series(row, name=p.name))
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["map", "setting"])
    table.index.name = "model"
    return table


# -- causal ablation --------------------------------------------------------------------------------
CAUSAL_COLUMNS = SUMMARY_COLUMNS  # ablation_summary's, for summaries written before some existed


def causal_summaries(parts: list[ModelPart]) -> dict[str, pd.DataFrame]:
    """ablation_summary of every part's raw ablation.csv (re-derived, not read from the sidecar),
    with the columns an older summary lacks left empty."""
    out = {}
    for p in parts:
        raw = p.table("ablation.csv")
        if raw is not None:
            out[p.name] = ablation_summary(raw).reindex(columns=CAUSAL_COLUMNS)
    return out


def causal_side_by_side(parts: list[ModelPart]) -> pd.DataFrame:
    """tables.causal_beside_paper for every model's relations that ran, side by side, with the
    random control's draws and p; the paper's Pythia 12B values (quoted) last."""
    blocks, rels = [], []
    for name, summ in causal_summaries(parts).items():
        ok = summ[summ["status"] == "ok"].reset_index(drop=True)
        t = causal_beside_paper(ok, name)
        t[(name, "random draws")] = ok["n_draws"].to_numpy()
        t[(name, "p random")] = ok["p_random"].to_numpy()
        blocks.append(t)
        rels += list(ok["relation"])
    if not blocks:
        return pd.DataFrame()
    rels = registry_order(rels + list(PAPER_CAUSAL_PYTHIA12B))
    table = pd.concat(blocks, axis=1).reindex([label_of(r) for r in rels])
    paper = "Pythia 12B (paper, quoted)"
    names = ["TR base", "TR - TR heads", "TR - RND heads", "CTR base", "CTR - TR heads"]
    for i, col in enumerate(names):
        vals = [PAPER_CAUSAL_PYTHIA12B.get(r, (None,) * 5)[i] for r in rels]
        table[(paper, col)] = [np.nan if v is None else v for v in vals]
    return table


def causal_status(parts: list[ModelPart]) -> pd.DataFrame:
    """Per model: relations with a task, and how many ran, were skipped or had no relation head."""
    rows = {}
    for name, summ in causal_summaries(parts).items():
        status = summ["status"].fillna("?")
        rows[name] = {
            "relations with a task": len(summ),
            "run": int((status == "ok").sum()),
            "skipped: base accuracy < 0.1": int(status.str.startswith("skipped").sum()),
            "no head with a positive score": int((status == "no head with a positive score").sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def relative_drop(base: Any, after: Any) -> Any:
    """(base - after) / base where base > 0, else NaN."""
    base = np.asarray(base, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, (base - np.asarray(after, dtype=float)) / base, np.nan)


def hurts_more(row: pd.Series) -> tuple[bool, str]:
    """Whether removing the relation heads hurt the task more than random heads (the `causal`
    claim's rule), and which test said so."""
    draws = row.get("n_draws")
    if pd.notna(draws) and int(draws) >= MIN_DRAWS_FOR_P and pd.notna(row.get("p_random")):
        return bool(row["p_random"] < ALPHA), f"p_random < {ALPHA} ({int(draws)} draws)"
    std = row.get("minus_random_std")
    std = 0.0 if pd.isna(std) else float(std)
    margin = row["minus_random"] - row["minus_relation"]  # drop with relation - drop with random
    n = "?" if pd.isna(draws) else int(draws)
    return bool(margin > 2 * std), f"drop exceeds random by > 2 std ({n} draws)"


def causal_effects(parts: list[ModelPart]) -> pd.DataFrame:
    """Per model and relation that ran: accuracies, relative drops (relation heads, random heads,
    controls), the random control from all draws and from the first 5 (the paper's way), and
    whether the relation heads hurt more (`hurts_more`)."""
    frames = []
    for name, summ in causal_summaries(parts).items():
        ok = summ[summ["status"] == "ok"].copy()
        if ok.empty:
            continue
        ok.insert(0, "model", name)
        ok["relative drop, relation heads"] = relative_drop(ok["base"], ok["minus_relation"])
        ok["relative drop, random heads"] = relative_drop(ok["base"], ok["minus_random"])
        ok["relative drop, controls"] = relative_drop(
            ok["control_base"], ok["control_minus_relation"]
        )
        tests = [hurts_more(r) for _, r in ok.iterrows()]
        ok["relation heads hurt more"] = [t[0] for t in tests]
        ok["test"] = [t[1] for t in tests]
        frames.append(ok)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def random_control_table(parts: list[ModelPart]) -> pd.DataFrame:
    """The causal experiment's random control per model and relation (ablation.random_draws_table
    with the heads removed): the relation heads' accuracy, the random draws' (all: mean, sample
    std; first 5: mean, population std), draws and p."""
    tables = {}
    for name, summ in causal_summaries(parts).items():
        ok = summ[summ["status"] == "ok"]
        if len(ok):
            table = random_draws_table(ok)
            table.insert(0, "heads removed", ok.set_index("relation")["n_heads"])
            tables[name] = table
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables, names=["model", "relation"])


def paper_causal_drops() -> pd.DataFrame:
    """Relative accuracy drops on the paper's quoted Pythia 12B table: relation heads, random heads
    and (where it has them) control tasks, per relation."""
    t = pd.DataFrame.from_dict(
        PAPER_CAUSAL_PYTHIA12B, orient="index", columns=["base", "tr", "rnd", "cbase", "ctr"]
    ).astype(float)
    out = pd.DataFrame(
        {
            "relation heads": relative_drop(t["base"], t["tr"]),
            "random heads": relative_drop(t["base"], t["rnd"]),
            "control tasks": relative_drop(t["cbase"], t["ctr"]),
        },
        index=t.index,
    )
    out.index.name = "relation"
    return out


def paper_causal_rules() -> dict[str, int]:
    """The causal claims' counts on the paper's quoted Pythia 12B table (no std is quoted, so a
    relation counts when its relative drop with relation heads exceeds the random heads')."""
    d = paper_causal_drops()
    ctrl = d.dropna(subset=["control tasks"])
    return {
        "relations": len(d),
        "relation drop > random drop": int((d["relation heads"] > d["random heads"]).sum()),
        "with controls": len(ctrl),
        "task drop > control drop": int((ctrl["relation heads"] > ctrl["control tasks"]).sum()),
    }
