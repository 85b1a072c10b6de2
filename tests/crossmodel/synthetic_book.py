"""Synthetic book folders for the cross-model chapter's tests: model parts with a relation map,
and the chapter 04 and 05 tables written beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RELATIONS = ["name_copying", "country_to_capital_wikidata", "adj_antonym", "verb_past_tense"]
REAL = ["smollm2-135m", "gemma3-270m"]  # the models whose committed parts the tests read

# heads of a 4-layer, 4-head model with 2 kv groups ({0, 1}, {2, 3})
SMALL = {
    (2, 0, "name_copying", "promote"): 0.8,  # algorithmic and knowledge: multi-category
    (2, 0, "country_to_capital_wikidata", "promote"): 0.5,
    (2, 1, "name_copying", "promote"): 0.3,  # same kv group as (2, 0), same relation
    (3, 2, "adj_antonym", "suppress"): 0.25,  # a suppressor
    (0, 3, "verb_past_tense", "promote"): 0.1,  # below tau
    (3, 3, "adj_antonym", "promote"): 0.05,
}


def scores_frame(
    n_layers: int, n_heads: int, set_scores: dict[tuple[int, int, str, str], float]
) -> pd.DataFrame:
    """Every head x RELATIONS x mode at 0, except `set_scores` {(layer, head, relation, mode): s}."""
    rows = [
        (la, h, r, m, 1 if "copying" in r else 10, 40, set_scores.get((la, h, r, m), 0.0))
        for la in range(n_layers)
        for h in range(n_heads)
        for r in RELATIONS
        for m in ("promote", "suppress")
    ]
    return pd.DataFrame(
        rows, columns=["layer", "head", "relation", "mode", "k", "n_pairs", "score"]
    )


def write(path: Path, df: pd.DataFrame, side: dict) -> None:
    """Write a table and its JSON sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    path.with_name(path.name + ".json").write_text(json.dumps(side))


def make_part(
    book: Path,
    name: str,
    n_layers: int,
    n_heads: int,
    set_scores: dict,
    *,
    n_kv: int | None = None,
    architecture: str = "sidecar",
    embedding_maps: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """A model's part with its relation map; `architecture` says where its shape is recorded:
    `sidecar` (an architecture record), `notebook` (chapter 01's describe() output) or `none`."""
    folder = book / "models" / name
    params = {
        "layers": list(range(n_layers)),
        "relations": RELATIONS,
        "k": None,
        "min_pairs": 30,
        "embedding": "paper",
        "model": {"spec": name},
    }
    side = {
        "params": params,
        "layers": list(range(n_layers)),
        "model": {"spec": name, "model_type": "llama", "quantization": "none"},
    }
    arch = {
        "model_type": "llama",
        "layers": n_layers,
        "heads per layer": n_heads,
        "kv heads per layer": n_kv or n_heads,
        "vocabulary": 1000,
    }
    if architecture == "sidecar":
        side["architecture"] = arch
    write(
        folder / "data" / "relation_scores.csv", scores_frame(n_layers, n_heads, set_scores), side
    )
    if architecture == "notebook":
        cell = {
            "cell_type": "code",
            "source": ["print(lm.quantization)\n", "hw.describe()"],
            "outputs": [{"output_type": "execute_result", "data": {"text/plain": [repr(arch)]}}],
        }
        (folder / "01_methods.ipynb").write_text(json.dumps({"cells": [cell]}))
    for i, (embedding, df) in enumerate((embedding_maps or {}).items()):
        write(
            folder / "data" / f"relation_scores_{i:010d}.csv",
            df,
            {"params": params | {"embedding": embedding}, "layers": list(range(n_layers))},
        )
    return folder


def correlations_csv(
    r: dict[str, tuple[float, float]], max_static: dict[str, float]
) -> pd.DataFrame:
    """Chapter 04's correlations.csv (promotion) with r (without, with context) per relation."""
    rows = []
    for rel, (r0, r1) in r.items():
        for setting, value in (("no_context", r0), ("context", r1)):
            rows.append((rel, "x", "promote", setting, value, 0.0, 10, 1, 1, max_static[rel], ""))
    cols = ["relation", "category", "mode", "setting", "r", "p", "n_points"]
    cols += ["static_nonzero", "dynamic_nonzero", "max_static", "note"]
    return pd.DataFrame(rows, columns=cols)


def ablation_csv() -> pd.DataFrame:
    """Two relations with 5 random draws: name copying (relation heads hurt) and verb past tense
    (no more than random), plus one skipped relation."""
    rows = [
        ("name_copying", "name_copying", "none", -1, 0, 0.8, 10),
        ("name_copying", "name_copying", "relation", -1, 1, 0.2, 10),
        ("name_copying", "name_copying", "relation", -1, 2, 0.0, 10),
        ("verb_past_tense", "verb_past_tense", "none", -1, 0, 0.5, 10),
        ("verb_past_tense", "verb_past_tense", "relation", -1, 1, 0.4, 10),
        ("adj_antonym", "adj_antonym", "none", -1, 0, 0.05, 10),
        ("name_copying", "verb_past_tense", "relation", -1, 2, 0.45, 10),  # a control
    ]
    for d, (a, b) in enumerate([(0.8, 0.5), (0.7, 0.4), (0.8, 0.5), (0.7, 0.3), (0.8, 0.4)]):
        rows.append(("name_copying", "name_copying", "random", d, 2, a, 10))
        rows.append(("verb_past_tense", "verb_past_tense", "random", d, 1, b, 10))
    cols = ["relation", "task", "heads", "draw", "n_removed", "accuracy", "n_prompts"]
    return pd.DataFrame(rows, columns=cols)
