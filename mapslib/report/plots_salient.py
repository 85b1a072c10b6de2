"""Figures for the salient-operations, global-versus-specific and random-baseline chapters.

Each function takes tables from mapslib (no computation of its own beyond grouping), draws one
titled, labelled figure with matplotlib/seaborn, and returns it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mapslib.foundation.settings import DEFAULTS


def identification_rate(share: pd.DataFrame, model: str) -> Figure:
    """Share of heads per layer with an identified pattern, one line per method (paper, Figure 5)."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, col in enumerate(share.columns):
        ax.plot(share.index, 100 * share[col], marker="o", ms=4, label=col, color=f"C{i}")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("layer")
    ax.set_ylabel("heads with a pattern (%)")
    ax.set_title(f"{model}: heads whose salient mappings show a pattern, per layer")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def saliency_profile(sal: np.ndarray, head: str, model: str, top: int = 30) -> Figure:
    """A head's saliency over the vocabulary, sorted: the few tokens it acts on stand out at the left."""
    values = np.sort(np.asarray(sal))[::-1]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(np.arange(1, len(values) + 1), values, lw=1.2)
    ax.axvline(top, color="grey", ls="--", lw=1, label=f"top {top}")
    ax.set_xscale("log")
    ax.set_xlabel("token rank by saliency (log scale)")
    ax.set_ylabel("saliency ||e W_VO|| / ||e||")
    ax.set_title(f"{model}, head {head}: saliency of every vocabulary token")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def skewness_vs_space(
    table: pd.DataFrame,
    references: pd.DataFrame,
    model: str,
    column: str = "size_sample",
) -> Figure:
    """Input skewness and output-space size of every head per layer, with the reference heads."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    layers = sorted(table["layer"].unique())
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(table))
    ax1.scatter(table["layer"] + jitter, table["input_skewness"], s=8, alpha=0.5, color="C0")
    ax1.plot(
        layers, table.groupby("layer")["input_skewness"].mean(), color="C0", lw=2, label="mean"
    )
    ax1.set_xlabel("layer")
    ax1.set_ylabel("input skewness")
    ax1.set_title("input skewness (lower: broader input space)")
    ax1.legend(frameon=False)

    ax2.scatter(table["layer"] + jitter, table[column], s=8, alpha=0.5, color="C1")
    ax2.plot(layers, table.groupby("layer")[column].mean(), color="C1", lw=2, label="mean")
    ref_col = column if column in references else "size_exact"
    for (_, ref), style in zip(references.iterrows(), ("--", ":"), strict=False):
        ax2.axhline(ref[ref_col], color="k", ls=style, lw=1, label=ref["reference"])
    ax2.set_yscale("log")
    ax2.set_xlabel("layer")
    n = int(table["n_sources"].iloc[0])
    what = (
        "distinct argmax targets / sources" if column == "size_sample" else "estimated size / |V|"
    )
    ax2.set_ylabel(what)
    ax2.set_title(f"output-space size ({n} sources per head)")
    ax2.legend(frameon=False, fontsize=8)
    fig.suptitle(f"{model}: global versus specific heads", fontsize=12)
    fig.tight_layout()
    return fig


def skewness_space_scatter(table: pd.DataFrame, model: str, column: str = "size_sample") -> Figure:
    """Every head as a point: input skewness against output-space size, coloured by layer."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = ax.scatter(table[column], table["input_skewness"], c=table["layer"], cmap="viridis", s=14)
    fig.colorbar(pts, ax=ax, label="layer")
    ax.set_xscale("log")
    ax.set_xlabel("output-space size (" + column.replace("_", " ") + ")")
    ax.set_ylabel("input skewness")
    ax.set_title(f"{model}: input skewness against output-space size, one point per head")
    fig.tight_layout()
    return fig


def baseline_bars(table: pd.DataFrame, model: str) -> Figure:
    """Heads over tau per layer: real heads against random matrices with the layer's statistics."""
    per_layer = table.drop(index="total", errors="ignore")
    x = np.arange(len(per_layer))
    fig, ax = plt.subplots(figsize=(8, 3.3))
    ax.bar(x - 0.2, per_layer["real_over_tau"], 0.4, label="real heads", color="C0")
    ax.bar(x + 0.2, per_layer["random_over_tau"], 0.4, label="random W_VO", color="C3")
    ax.set_xticks(x, [str(i) for i in per_layer.index])
    ax.set_xlabel("layer")
    ax.set_ylabel(f"heads with a score >= {DEFAULTS.tau}")
    ax.set_title(f"{model}: relation heads, real versus random matrices")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def max_score_distribution(real: pd.DataFrame, random: pd.DataFrame, model: str) -> Figure:
    """Each head's highest relation score (any relation, either mode), real and random, against tau."""
    best_real = real.groupby(["layer", "head"])["score"].max()
    best_rand = random.groupby(["layer", "head"])["score"].max()
    bins = np.linspace(0, max(1e-3, best_real.max(), best_rand.max()), 41)
    fig, ax = plt.subplots(figsize=(8, 3.3))
    ax.hist(best_real, bins=bins, alpha=0.6, label="real heads", color="C0")
    ax.hist(best_rand, bins=bins, alpha=0.6, label="random W_VO", color="C3")
    ax.axvline(DEFAULTS.tau, color="k", ls="--", lw=1, label=f"tau = {DEFAULTS.tau}")
    ax.set_yscale("log")
    ax.set_xlabel("highest relation score of the head")
    ax.set_ylabel("heads")
    ax.set_title(f"{model}: best relation score per head")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
