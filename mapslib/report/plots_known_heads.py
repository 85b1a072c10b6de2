"""Figures for the known-heads chapter: direct effect on the IOI logit difference beside MAPS's
name-copying scores, and each head's direct effect over the model's layers."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mapslib.behaviour.known_heads import PREDICTED_SIDE
from mapslib.foundation.heads import head_name

ROLE_COLORS = {
    "name mover": "#2CA02C",
    "negative name mover": "#D62728",
    "S mover": "#9467BD",
    "S suppressor": "#FF7F0E",
    "other large effect": "#7F7F7F",
}
OTHER_COLOR = "#4C72B0"


def effect_vs_static(
    table: pd.DataFrame,
    model: str,
    tau: float,
    given: dict[str, list[tuple[int, int]]] | None = None,
) -> Figure:
    """Direct effect (x) against the name-copying promote score (left) and suppress score (right),
    one point per head, coloured by the role behaviour gives it; tau as a dashed line; `given` heads
    ringed. A head is labelled where its score passes tau, on its role's side, and (role without a
    side, or ringed without a role) on the promote panel."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), sharex=True)
    ringed = {h for heads in (given or {}).values() for h in heads}
    for ax, mode in zip(axes, ("promote", "suppress"), strict=True):
        plain = table[~table["role"].isin(ROLE_COLORS)]
        ax.scatter(
            plain["direct_effect"],
            plain[mode],
            s=10,
            alpha=0.45,
            color=OTHER_COLOR,
            label="no role",
        )
        for role, color in ROLE_COLORS.items():
            d = table[table["role"] == role]
            if len(d):
                ax.scatter(d["direct_effect"], d[mode], s=30, color=color, label=role, zorder=3)
        for r in table.itertuples():
            key = (int(r.layer), int(r.head))
            score = getattr(r, mode)
            side = PREDICTED_SIDE.get(r.role)
            # label a head once where it belongs: a score over tau, its role's side, or (no side)
            # the promote panel
            marked = key in ringed or r.role in ROLE_COLORS
            if score >= tau or side == mode or (marked and side is None and mode == "promote"):
                ax.annotate(
                    head_name(*key),
                    (r.direct_effect, score),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            if key in ringed:
                ax.scatter(
                    [r.direct_effect],
                    [score],
                    s=90,
                    facecolors="none",
                    edgecolors="black",
                    lw=0.8,
                    zorder=4,
                )
        ax.axhline(tau, color="grey", lw=0.8, ls="--")
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("direct effect on logit(IO) - logit(S), mean over prompts")
        ax.set_ylabel(f"name copying, static {mode} score")
        ax.set_title(f"{mode} (dashed: tau = {tau})", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{model}: heads' direct effect in IOI vs MAPS name copying", fontsize=11)
    fig.tight_layout()
    return fig


def effect_grid(table: pd.DataFrame, model: str) -> Figure:
    """Mean direct effect of every head as a layer x head grid (diverging colours around 0)."""
    grid = table.pivot(index="layer", columns="head", values="direct_effect")
    lim = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    fig, ax = plt.subplots(figsize=(0.45 * grid.shape[1] + 2.5, 0.16 * grid.shape[0] + 1.5))
    im = ax.imshow(grid.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="direct effect (logit difference)")
    ax.set_title(f"{model}: direct effect of each head on logit(IO) - logit(S)", fontsize=10)
    fig.tight_layout()
    return fig
