"""Figures for the book: matplotlib/seaborn, each titled and labelled, each returning its Figure."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.relations import CATEGORIES, category_of, label_of
from mapslib.relation_map.summary import head_table, score_grid

CATEGORY_COLORS = {
    "algorithmic": "#4C72B0",
    "knowledge": "#DD8452",
    "linguistic": "#55A868",
    "translation": "#C44E52",
    "custom": "#8172B3",
}


def relation_heatmaps(
    scores: pd.DataFrame, mode: str, model: str, tau: float = DEFAULTS.tau, ncols: int = 4
) -> Figure:
    """Small multiples: one layers x heads heatmap of scores per relation, for one mode."""
    relations = list(dict.fromkeys(scores["relation"]))
    nrows = math.ceil(len(relations) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False, sharey=True
    )
    for ax, rel in zip(axes.flat, relations, strict=False):
        grid = score_grid(scores, rel, mode)
        sns.heatmap(
            grid, ax=ax, vmin=0, vmax=1, cmap="viridis", cbar=False, xticklabels=2, yticklabels=5
        )
        n_over = int((grid.to_numpy() >= tau).sum())
        ax.set_title(f"{label_of(rel)}\n{n_over} heads ≥ {tau}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(relations) :]:
        ax.axis("off")
    fig.colorbar(axes[0, 0].collections[0], ax=axes, shrink=0.6, label=f"relation score ({mode})")
    fig.suptitle(f"{model}: relation scores per head, {mode}", fontsize=12)
    return fig


def category_map(
    scores: pd.DataFrame, n_layers: int, n_heads: int, model: str, tau: float = DEFAULTS.tau
) -> Figure:
    """The paper's function-distribution figure: each head coloured by the category it implements."""
    heads = head_table(scores, tau)
    names = ["none", *CATEGORIES, "several categories"]
    grid = np.zeros((n_heads, n_layers), dtype=int)
    for row in heads.itertuples():
        cats = row.categories.split(", ")
        grid[row.head, row.layer] = (
            len(names) - 1 if len(cats) > 1 else names.index(cats[0]) if cats[0] in names else 0
        )
    colors = ["#EEEEEE", *[CATEGORY_COLORS[c] for c in CATEGORIES], "#333333"]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * n_layers + 2), max(2.5, 0.3 * n_heads + 1)))
    ax.imshow(
        grid,
        cmap=ListedColormap(colors),
        vmin=0,
        vmax=len(names) - 1,
        aspect="auto",
        origin="lower",
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_xticks(range(0, n_layers, 2))
    ax.set_yticks(range(n_heads))
    ax.set_title(
        f"{model}: heads implementing a relation of each category (τ = {tau}, promote or suppress)"
    )
    handles = [Patch(color=c, label=n) for c, n in zip(colors, names, strict=True)]
    ax.legend(
        handles=handles, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, frameon=False
    )
    fig.tight_layout()
    return fig


def relation_head_bars(rel_heads: pd.DataFrame, model: str) -> Figure:
    """Heads over tau per relation, promote and suppress side by side, coloured bars by mode."""
    data = rel_heads.assign(label=rel_heads["relation"].map(label_of))
    fig, ax = plt.subplots(figsize=(8, 0.32 * data["relation"].nunique() + 1.5))
    sns.barplot(
        data=data, y="label", x="heads_over_tau", hue="mode", ax=ax, palette=["#4C72B0", "#C44E52"]
    )
    ax.set_xlabel("heads with score ≥ τ")
    ax.set_ylabel("")
    ax.set_title(f"{model}: relation heads per relation")
    fig.tight_layout()
    return fig


def max_score_bars(rel_heads: pd.DataFrame, model: str, tau: float = DEFAULTS.tau) -> Figure:
    """The highest score any head reaches per relation and mode, with tau marked."""
    data = rel_heads.assign(label=rel_heads["relation"].map(label_of))
    fig, ax = plt.subplots(figsize=(8, 0.32 * data["relation"].nunique() + 1.5))
    sns.barplot(
        data=data, y="label", x="max_score", hue="mode", ax=ax, palette=["#4C72B0", "#C44E52"]
    )
    ax.axvline(tau, color="k", ls="--", lw=1, label=f"τ = {tau}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("highest relation score over all heads")
    ax.set_ylabel("")
    ax.set_title(f"{model}: strongest head per relation")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def category_layer_lines(counts: pd.DataFrame, model: str) -> Figure:
    """Heads per layer implementing each category: where in depth each kind of function sits."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for cat in counts.columns:
        ax.plot(
            counts.index, counts[cat], marker="o", ms=3, label=cat, color=CATEGORY_COLORS.get(cat)
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("heads")
    ax.set_title(f"{model}: heads per layer implementing each category")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def category_color(relation: str) -> str:
    """Colour of a relation's category."""
    return CATEGORY_COLORS.get(category_of(relation), "#999999")
