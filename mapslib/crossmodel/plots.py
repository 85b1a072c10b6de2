"""Figures for the cross-model chapter: every model of the book side by side, the paper's quoted
numbers as open markers. Each function takes a table of `report.universality` or
`report.universality_behaviour` and returns its Figure."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mapslib.crossmodel.universality import registry_order
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.relations import label_of
from mapslib.report.reference import PAPER_SUPPRESSION_SHARE

MODEL_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3"]


def model_colors(models: list[str]) -> dict[str, str]:
    """One colour per model, in the order given (the chapter's order: smallest model first)."""
    return {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(models)}


def score_distributions(
    scores: pd.DataFrame,
    models: list[str],
    mode: str = "promote",
    relations: list[str] | None = None,
    tau: float = DEFAULTS.tau,
    ncols: int = 4,
    seed: int = 0,
) -> Figure:
    """The paper's relation-scores-across-models figure: per relation, every head's score in each
    model (jittered points), the highest one marked and written, tau dashed.

    `scores` is `universality.score_table`; relations a model does not score leave its column empty."""
    data = scores[scores["mode"] == mode]
    relations = relations or registry_order(data["relation"])
    colors = model_colors(models)
    rng = np.random.default_rng(seed)
    nrows = math.ceil(len(relations) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.9 * ncols, 2.6 * nrows), squeeze=False, sharey=True
    )
    for ax, rel in zip(axes.flat, relations, strict=False):
        d = data[data["relation"] == rel]
        for x, model in enumerate(models):
            s = d.loc[d["model"] == model, "score"].to_numpy()
            if not len(s):
                ax.text(x, 0.5, "not\nscored", ha="center", va="center", fontsize=7, color="grey")
                continue
            jitter = rng.uniform(-0.25, 0.25, len(s))
            ax.scatter(x + jitter, s, s=6, alpha=0.35, color=colors[model], linewidths=0)
            top = s.max()
            ax.plot([x - 0.32, x + 0.32], [top, top], color=colors[model], lw=2)
            ax.text(x, min(top + 0.04, 1.02), f"{top:.2f}", ha="center", fontsize=7)
        ax.axhline(tau, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylim(-0.03, 1.1)
        ax.set_title(label_of(rel), fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"relation score ({mode})")
    for ax in list(axes.flat)[len(relations) :]:
        ax.axis("off")
    fig.suptitle(
        f"Relation scores of every head, per model ({mode}); bar: the highest, dashed: τ = {tau}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def max_score_heatmap(table: pd.DataFrame, title: str) -> Figure:
    """Highest score per relation (rows) and model (columns), as `universality.max_scores` gives it."""
    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 3.5, 0.32 * len(table) + 1.6))
    values = table.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < 0.6 else "black",
            )
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(table)), [label_of(r) for r in table.index], fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.7, label="highest relation score")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def depth_profile(profile: pd.DataFrame, models: list[str]) -> Figure:
    """Share of each model's heads that are classified, per bin of relative depth."""
    colors = model_colors(models)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for model in models:
        d = profile[profile["model"] == model]
        ax.plot(
            d["depth"], d["share classified"], marker="o", ms=3, color=colors[model], label=model
        )
    for edge in (1 / 3, 2 / 3):
        ax.axvline(edge, color="grey", lw=0.7, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative depth, (layer + 0.5) / layers")
    ax.set_ylabel("share of heads classified")
    ax.set_title("Where relation heads sit: classified heads per tenth of the depth")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def shares_by_size(shares: pd.DataFrame) -> Figure:
    """Multi-category and suppression shares of classified heads against model size: this book's
    models filled and named, the paper's quoted values open; the paper's suppression range shaded."""
    ours = shares[~shares["source"].str.startswith("paper")]
    paper = shares[shares["source"].str.startswith("paper")]
    colors = model_colors(list(ours.index))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, col in zip(axes, ("multi-category share", "suppression share"), strict=True):
        p = paper.dropna(subset=[col, "parameters"])
        ax.scatter(
            p["parameters"],
            p[col],
            facecolors="none",
            edgecolors="black",
            s=40,
            label="paper (quoted)",
        )
        for name, row in p.iterrows():
            ax.annotate(
                name,
                (row["parameters"], row[col]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        for name, row in ours.dropna(subset=[col, "parameters"]).iterrows():
            label = f"{name} ({int(row['classified heads'])} classified)"
            ax.scatter(row["parameters"], row[col], color=colors[name], s=45, label=label)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"{col} of classified heads")
    lo, hi = PAPER_SUPPRESSION_SHARE
    axes[1].axhspan(lo, hi, color="grey", alpha=0.2, label=f"paper: {lo:.0%}-{hi:.0%}")
    axes[0].set_title("Heads with relations of several categories", fontsize=10)
    axes[1].set_title("Heads with at least one suppression", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    fig.tight_layout()
    return fig


def correlation_by_model(corr: pd.DataFrame, models: list[str], setting: str) -> Figure:
    """Pearson r per relation for every model (bars) in one setting, the paper's Llama-3.1-8B
    (quoted) as black ticks. `corr` is `universality_behaviour.correlation_side_by_side`."""
    measure = "r w/o context" if setting == "no_context" else "r w/ context"
    present = [m for m in models if (m, measure) in corr.columns]
    paper = [c for c in corr.columns.get_level_values(0).unique() if "paper" in c]
    colors = model_colors(models)
    x = np.arange(len(corr))
    width = 0.8 / max(1, len(present))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(corr) + 2), 3.6))
    for i, model in enumerate(present):
        ax.bar(
            x - 0.4 + (i + 0.5) * width,
            corr[(model, measure)],
            width,
            color=colors[model],
            label=model,
        )
    for name in paper:
        ax.scatter(x, corr[(name, measure)], marker="_", s=150, color="black", zorder=3, label=name)
    ax.set_xticks(x, corr.index.get_level_values("relation"), rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="grey", lw=0.7)
    ax.set_ylim(
        min(-0.1, float(np.nanmin(corr.xs(measure, axis=1, level=1).to_numpy())) - 0.05), 1.3
    )
    ax.set_ylabel("Pearson r (static vs dynamic)")
    ax.set_title(f"Static scores against head outputs, {setting.replace('_', ' ')} (promotion)")
    ax.legend(fontsize=8, frameon=False, ncol=len(present) + 1, loc="upper center")
    fig.tight_layout()
    return fig


def reading_bars(table: pd.DataFrame, setting: str = "no_context") -> Figure:
    """Median promotion r of each map (reading of E_in) per model, from `reading_table`."""
    maps = [
        m
        for m in table.columns.get_level_values("map").unique()
        if (m, setting) in table.columns and table[(m, setting)].dtype.kind == "f"
    ]
    maps = [m for m in maps if m not in ("paper's gap to it",)]
    x = np.arange(len(table))
    width = 0.8 / max(1, len(maps))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(table) + 2), 3.4))
    for i, m in enumerate(maps):
        ax.bar(x - 0.4 + (i + 0.5) * width, table[(m, setting)], width, label=m)
    ax.set_xticks(x, table.index)
    ax.axhline(0, color="grey", lw=0.7)
    ax.set_ylabel("median r over relations")
    ax.set_title(f"Which reading of E_in tracks the head outputs ({setting.replace('_', ' ')})")
    ax.legend(fontsize=8, frameon=False, title="map")
    fig.tight_layout()
    return fig


def causal_drops(
    effects: pd.DataFrame, models: list[str], paper: pd.DataFrame | None = None
) -> Figure:
    """Relative accuracy drop with the relation heads removed (y) against with as many random heads
    (x), one point per model and relation; above the diagonal the relation heads matter more.
    `paper` (relation, relative drops) adds the paper's quoted Pythia 12B values as open markers."""
    colors = model_colors(models)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for model in models:
        d = effects[effects["model"] == model] if len(effects) else effects
        if d.empty:
            continue
        ax.scatter(
            d["relative drop, random heads"],
            d["relative drop, relation heads"],
            s=40,
            color=colors[model],
            label=model,
        )
        for _, r in d.iterrows():
            ax.annotate(
                label_of(r["relation"]),
                (r["relative drop, random heads"], r["relative drop, relation heads"]),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
    if paper is not None and len(paper):
        ax.scatter(
            paper["random heads"],
            paper["relation heads"],
            facecolors="none",
            edgecolors="black",
            s=40,
            label="Pythia 12B (paper, quoted)",
        )
    ax.plot([-0.3, 1.05], [-0.3, 1.05], color="grey", lw=0.8, ls=":")
    ax.set_xlim(-0.3, 1.05)
    ax.set_ylim(-0.3, 1.05)
    ax.set_xlabel("relative drop, random heads removed (mean over draws)")
    ax.set_ylabel("relative drop, relation heads removed")
    ax.set_title("Causal effect: relation heads against random heads", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def readings_by_model(summary: pd.DataFrame, column: str = "median r, no context") -> Figure:
    """One bar per reading (norms · E_in) and model for `column` of readings.summary_table; the
    paper's reading (`ignore · paper`) is the first bar of each model."""
    wide = summary.pivot(index="model", columns="reading", values=column)
    wide = wide.reindex(
        index=list(dict.fromkeys(summary["model"])), columns=list(dict.fromkeys(summary["reading"]))
    )
    x = np.arange(len(wide))
    width = 0.8 / max(1, wide.shape[1])
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(wide) + 2), 3.6))
    for i, reading in enumerate(wide.columns):
        hatch = "//" if reading.startswith("fold") else None
        ax.bar(x - 0.4 + (i + 0.5) * width, wide[reading], width, label=reading, hatch=hatch)
    ax.set_xticks(x, wide.index)
    ax.axhline(0, color="grey", lw=0.7)
    ax.set_ylabel(column)
    ax.set_title(f"{column} under each reading (hatched: norm weights folded)")
    ax.legend(fontsize=7, frameon=False, ncol=2, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    fig.tight_layout()
    return fig
