"""Our results beside the paper's: the layouts of its tables, with its quoted numbers in their own columns.

Every function takes tables computed by the experiments and the labels to print; the paper's numbers
come from `reference` and are never mixed into a computed column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mapslib.foundation.heads import head_name
from mapslib.relation_map.relations import category_of, label_of
from mapslib.report.reference import (
    KNOWN_SCORES,
    PAPER_CAUSAL_PYTHIA12B,
    PAPER_CORRELATION_LLAMA31_8B,
    PAPER_RANDOM_BASELINE,
)


def p_text(p: float) -> str:
    """A p-value for reading: two significant digits; 0 (below the double range) as `< 1e-300`."""
    if np.isnan(p):
        return ""
    return "< 1e-300" if p == 0 else f"{p:.1e}"


def correlation_beside_paper(
    corr: pd.DataFrame, mode: str, ours: str, paper: str | None = None
) -> pd.DataFrame:
    """The paper's Table 1 layout: r without / with context (p as text, max static) per relation.

    `ours` labels the columns computed here (model, quantisation, data); for promotion the paper's
    Llama-3.1-8B numbers sit beside them under the `paper` label (the main text has promotion only).
    """
    c = corr[corr["mode"] == mode]
    rels = list(dict.fromkeys(c["relation"]))

    def column(setting: str, value: str) -> pd.Series:
        return c[c["setting"] == setting].set_index("relation")[value].reindex(rels)

    cols = {
        (ours, "r w/o context"): column("no_context", "r"),
        (ours, "r w/ context"): column("context", "r"),
        (ours, "p w/o context"): column("no_context", "p").map(p_text),
        (ours, "p w/ context"): column("context", "p").map(p_text),
        (ours, "max static score"): c.groupby("relation")["max_static"].first().reindex(rels),
    }
    if paper is not None and mode == "promote":
        ref = [PAPER_CORRELATION_LLAMA31_8B.get(r, (np.nan, np.nan)) for r in rels]
        cols[(paper, "r w/o context")] = pd.Series([a for a, _ in ref], index=rels)
        cols[(paper, "r w/ context")] = pd.Series([b for _, b in ref], index=rels)
    table = pd.DataFrame(cols)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index = pd.MultiIndex.from_arrays(
        [[category_of(r) for r in rels], [label_of(r) for r in rels]],
        names=["category", "relation"],
    )
    return table


def causal_beside_paper(summ: pd.DataFrame, ours: str, paper: str | None = None) -> pd.DataFrame:
    """The paper's Table 2 layout (TR base, -TR, -RND; CTR base, -TR), with Pythia 12B's beside."""
    idx = [label_of(r) for r in summ["relation"]]
    cols = {
        (ours, "TR base"): summ["base"].to_numpy(),
        (ours, "TR - TR heads"): summ["minus_relation"].to_numpy(),
        (ours, "TR - RND heads"): summ["minus_random"].to_numpy(),
        (ours, "CTR base"): summ["control_base"].to_numpy(),
        (ours, "CTR - TR heads"): summ["control_minus_relation"].to_numpy(),
    }
    if paper is not None:
        ref = [PAPER_CAUSAL_PYTHIA12B.get(r, (np.nan,) * 5) for r in summ["relation"]]
        for i, name in enumerate(
            ["TR base", "TR - TR heads", "TR - RND heads", "CTR base", "CTR - TR heads"]
        ):
            cols[(paper, name)] = [np.nan if v[i] is None else v[i] for v in ref]
    table = pd.DataFrame(cols, index=pd.Index(idx, name="relation"))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def known_scores(scores: pd.DataFrame, model: str) -> pd.DataFrame:
    """Scores recorded for this model in MODELS.md / PROTOCOL.md beside the ones just computed."""
    rows = []
    for rel, mode, layer, head, expected in KNOWN_SCORES.get(model, []):
        sel = scores[
            (scores["relation"] == rel)
            & (scores["mode"] == mode)
            & (scores["layer"] == layer)
            & (scores["head"] == head)
        ]
        ours = float(sel["score"].iloc[0]) if len(sel) else float("nan")
        rows.append(
            {
                "head": head_name(layer, head),
                "relation": rel,
                "mode": mode,
                "recorded": expected,
                "computed": ours,
            }
        )
    return pd.DataFrame(rows, columns=["head", "relation", "mode", "recorded", "computed"])


def random_baseline_beside_paper(table: pd.DataFrame, ours: str) -> pd.DataFrame:
    """The paper's random-baseline counts per model, with this model's (`baseline_table` total) last."""
    paper = pd.DataFrame(
        [
            {"model": m, "random over tau": r, "real relation heads": real_n, "heads": n}
            for m, (r, real_n, n) in PAPER_RANDOM_BASELINE.items()
        ]
    )
    total = table.loc["total"]
    row = {
        "model": ours,
        "random over tau": int(total["random_over_tau"]),
        "real relation heads": int(total["real_over_tau"]),
        "heads": int(total["heads"]),
    }
    return pd.concat([paper, pd.DataFrame([row])], ignore_index=True).astype(
        {"real relation heads": "Int64"}
    )
