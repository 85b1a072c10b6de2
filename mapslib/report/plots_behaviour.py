"""Figures for the behaviour chapters: static vs dynamic scores, ablation curves, multi-token r."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mapslib.relation_map.relations import label_of
from mapslib.report.reference import PAPER_CORRELATION_LLAMA31_8B

SETTING_LABELS = {"no_context": "without context", "context": "with context"}


def correlation_scatter(
    static: pd.DataFrame,
    dynamic: pd.DataFrame,
    corr: pd.DataFrame,
    relations: list[str],
    model: str,
    mode: str = "promote",
) -> Figure:
    """Static score (x) against dynamic score (y), one point per head and template; r in each title."""
    key = ["layer", "head", "relation", "mode"]
    merged = dynamic[dynamic["mode"] == mode].merge(
        static[key + ["score"]].rename(columns={"score": "static"}), on=key
    )
    fig, axes = plt.subplots(
        len(relations), 2, figsize=(7.5, 3.0 * len(relations)), squeeze=False, sharex="row"
    )
    for row, rel in zip(axes, relations, strict=True):
        for ax, setting in zip(row, ("no_context", "context"), strict=True):
            d = merged[(merged["relation"] == rel) & (merged["setting"] == setting)]
            ax.scatter(d["static"], d["score"], s=8, alpha=0.4, color="#4C72B0")
            lim = max(d["static"].max(), d["score"].max(), 0.05) * 1.05
            ax.plot([0, lim], [0, lim], color="grey", lw=0.7, ls=":")
            c = corr[(corr["relation"] == rel) & (corr["mode"] == mode)]
            r = c[c["setting"] == setting]["r"]
            r_text = f"r = {r.iloc[0]:.2f}" if len(r) and np.isfinite(r.iloc[0]) else "r undefined"
            ax.set_title(f"{label_of(rel)}, {SETTING_LABELS[setting]}\n{r_text}", fontsize=9)
            ax.set_xlabel(f"static score ({mode})")
            ax.set_ylabel("dynamic score")
    fig.suptitle(f"{model}: static vs dynamic relation scores (heads x templates)", fontsize=11)
    fig.tight_layout()
    return fig


def correlation_bars(corr: pd.DataFrame, model: str, paper: str | None = None) -> Figure:
    """Pearson r per relation without and with context (promotion); the paper's values as markers."""
    c = corr[corr["mode"] == "promote"]
    rels = list(dict.fromkeys(c["relation"]))
    x, width = np.arange(len(rels)), 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rels) + 2), 3.6))
    for i, (setting, color) in enumerate((("no_context", "#4C72B0"), ("context", "#DD8452"))):
        r = c[c["setting"] == setting].set_index("relation")["r"].reindex(rels)
        ax.bar(
            x + (i - 0.5) * width,
            r,
            width,
            color=color,
            label=f"{model}, {SETTING_LABELS[setting]}",
        )
        if paper is not None:
            ref = [PAPER_CORRELATION_LLAMA31_8B.get(rel, (np.nan, np.nan))[i] for rel in rels]
            ax.scatter(
                x + (i - 0.5) * width,
                ref,
                marker="_",
                s=120,
                color="black",
                zorder=3,
                label=f"{paper}" if i == 0 else None,
            )
    ax.set_xticks(x, [label_of(r) for r in rels], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Pearson r (static vs dynamic)")
    ax.axhline(0, color="grey", lw=0.7)
    low = float(np.nanmin(c["r"])) - 0.05 if c["r"].notna().any() else -0.1
    ax.set_ylim(min(-0.1, low), 1.3)  # room for the legend above r = 1
    ax.legend(fontsize=8, frameon=False, ncol=3, loc="upper center")
    ax.set_title(f"{model}: correlation of static and dynamic relation scores (promotion)")
    fig.tight_layout()
    return fig


def _ablation_panel(ax: Any, d: pd.DataFrame, rel: str, base: pd.Series) -> None:
    """One relation's curves: its relation heads, random heads (mean ± std), its controls (mean)."""
    own = d[d["task"] == rel]
    curve = own[own["heads"] == "relation"]
    ax.plot(
        [0, *curve["n_removed"]],
        [base[rel], *curve["accuracy"]],
        color="#C44E52",
        lw=1.8,
        label="relation heads",
    )
    rnd = own[own["heads"] == "random"].groupby("n_removed")["accuracy"].agg(["mean", "std"])
    if len(rnd):
        x = np.array([0, *rnd.index])
        mean = np.array([base[rel], *rnd["mean"]])
        std = np.array([0.0, *rnd["std"].fillna(0.0)])
        ax.plot(
            x,
            mean,
            color="#4C72B0",
            lw=1.5,
            marker="o",
            ms=3,
            label="random heads (mean ± std)",
        )
        ax.fill_between(x, mean - std, mean + std, color="#4C72B0", alpha=0.2)
    ctrl = d[d["task"] != rel]
    if len(ctrl):
        c = ctrl.groupby("n_removed")["accuracy"].mean()
        c0 = base[ctrl["task"].unique()].mean()
        ax.plot(
            [0, *c.index],
            [c0, *c],
            color="#55A868",
            lw=1.5,
            ls="--",
            marker="s",
            ms=3,
            label="control tasks (mean)",
        )
    ax.set_title(label_of(rel), fontsize=10)
    ax.set_xlabel("heads removed")
    ax.set_ylim(-0.03, 1.03)


def ablation_curves(df: pd.DataFrame, model: str, ncols: int = 3) -> Figure:
    """Task accuracy as heads are removed: relation heads, random heads (mean ± std), controls (mean)."""
    targets = [
        r
        for r in dict.fromkeys(df["relation"])
        if ((df["relation"] == r) & (df["heads"] == "relation")).any()
    ]
    nrows = max(1, int(np.ceil(len(targets) / ncols)))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False, sharey=True
    )
    base = df[df["heads"] == "none"].set_index("task")["accuracy"]
    for ax, rel in zip(axes.flat, targets, strict=False):
        _ablation_panel(ax, df[df["relation"] == rel], rel, base)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(targets) :]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(
        legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize=8, frameon=False
    )
    fig.suptitle(f"{model}: accuracy as heads are zeroed at the last position", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def random_null(df: pd.DataFrame, model: str, ncols: int = 4) -> Figure:
    """Per relation: accuracy with each random head set removed (histogram) and with its relation heads."""
    full = df[(df["heads"] == "random") & (df["task"] == df["relation"])]
    last = full[full["n_removed"] == full.groupby("relation")["n_removed"].transform("max")]
    rels = list(dict.fromkeys(last["relation"]))
    nrows = max(1, int(np.ceil(len(rels) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.4 * nrows), squeeze=False)
    for ax, rel in zip(axes.flat, rels, strict=False):
        r = last[last["relation"] == rel]
        n = int(r["n_removed"].iloc[0])
        own = df[(df["relation"] == rel) & (df["task"] == rel) & (df["heads"] == "relation")]
        ax.hist(r["accuracy"], bins=np.linspace(0, 1, 26), color="#4C72B0", alpha=0.8)
        ax.axvline(own[own["n_removed"] == n]["accuracy"].iloc[0], color="#C44E52", lw=2)
        ax.set_title(f"{label_of(rel)} ({n} heads)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rels) :]:
        ax.axis("off")
    fig.suptitle(
        f"{model}: accuracy with random head sets removed (blue, {last['draw'].nunique()} draws) "
        "and with the relation heads (red)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def multi_token_bars(comparison: pd.DataFrame, model: str, mode: str = "promote") -> Figure:
    """Pearson r on single-token vs multi-token sources, per relation and setting."""
    c = comparison[comparison["mode"] == mode]
    rels = list(dict.fromkeys(c["relation"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    width = 0.38
    for ax, setting in zip(axes, ("no_context", "context"), strict=True):
        d = c[c["setting"] == setting].set_index("relation").reindex(rels)
        x = np.arange(len(rels))
        ax.bar(x - width / 2, d["r_single"], width, label="single-token sources", color="#4C72B0")
        ax.bar(x + width / 2, d["r_multi"], width, label="multi-token sources", color="#DD8452")
        ax.set_xticks(x, [label_of(r) for r in rels], rotation=20, ha="right", fontsize=8)
        ax.set_title(SETTING_LABELS[setting], fontsize=10)
        ax.axhline(0, color="grey", lw=0.7)
    axes[0].set_ylabel(f"Pearson r ({mode})")
    axes[0].set_ylim(top=1.25)  # room for the legend above r = 1
    axes[0].legend(fontsize=8, frameon=False, ncol=2, loc="upper center")
    fig.suptitle(f"{model}: static scores against head outputs, single vs multi-token", fontsize=11)
    fig.tight_layout()
    return fig
