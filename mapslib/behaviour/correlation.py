"""Does the static map predict behaviour? Static relation scores against head outputs in a forward pass.

For every relation, pair (s, t) and template, the model reads a prompt ending with s. At that last
position every head's output is projected to the vocabulary with U (no b_O, no final norm, no b_U)
and scored like the static score: the dynamic score phi*_R(h) is the fraction of pairs whose t is in
the top-k of y U (suppression: of -y U), with the relation's own k (`scores.relation_k`).

* With context: y = z_h W_O[h], z_h the head's attention-weighted values at the last position, b_V
  included (the normal run).
* Without context: the head attending to the last position alone, y = (x W_V[kv(h)] + b_V) W_O[h],
  where x is the attention input there. For the last position no attention has to be patched: the
  rest of the run is the normal one and only this head's output is recomputed.

Templates (PROTOCOL.md) carry the space before <X>. The model is causal, so the output at the src
position does not depend on the template's text after <X>: each prompt is cut after the src, which
makes the src the last token and lets all prompts of a template share one cached prefix.

The correlation is Pearson's r between static and dynamic scores over all heads and templates (the
static score repeated per template), per relation, mode and setting. Where either side is constant
r is undefined: it is reported as NaN with a note.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr
from torch import Tensor

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.heads import head_factors, value_factors
from mapslib.foundation.hooks import capture_last, common_prefix, extend, prefill, select_rows
from mapslib.foundation.kernels import Blocks, KernelStats, Unembedding, count_outside_many
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.foundation.tokens import token_texts
from mapslib.relation_map.relations import (
    REGISTRY,
    Relation,
    TokenizedRelation,
    category_of,
    scorable,
)
from mapslib.relation_map.scores import MODES, relation_k

TEMPLATES: tuple[str, ...] = (
    "This is a document about <X>",
    "No <X> means no",
    "The story of <X> contains",
    "When I think about <X> I think about",
)
SETTINGS = ("no_context", "context")
DYNAMIC_COLUMNS = [
    "layer",
    "head",
    "relation",
    "template",
    "setting",
    "mode",
    "k",
    "n_pairs",
    "score",
]
CORRELATION_COLUMNS = [
    "relation",
    "category",
    "mode",
    "setting",
    "r",
    "p",
    "n_points",
    "static_nonzero",
    "dynamic_nonzero",
    "max_static",
    "note",
]


# -- prompts -------------------------------------------------------------------------------------------
def src_prompt(template: str, src: str) -> str:
    """The template cut right after <X>, filled with `src`: the src is the prompt's last token(s)."""
    if "<X>" not in template:
        raise BadArgument(f"template {template!r} has no <X>")
    return template[: template.index("<X>")] + src


def parse_templates(spec: str | list[int] | None) -> list[int]:
    """`all` / None -> every template; `0,2` or [0, 2] -> those indices of TEMPLATES."""
    if spec is None or spec == "all":
        return list(range(len(TEMPLATES)))
    items = spec if isinstance(spec, list) else [x for x in str(spec).split(",") if x.strip()]
    try:
        chosen = sorted({int(x) for x in items})
    except ValueError:
        raise BadArgument(f"templates are 'all' or indices like 0,2; got {spec!r}") from None
    if not chosen or not all(0 <= t < len(TEMPLATES) for t in chosen):
        raise BadArgument(f"template indices run 0..{len(TEMPLATES) - 1}; got {spec!r}")
    return chosen


def sample_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All of range(n), or `limit` of them drawn without replacement from `seed`, in order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def correlation_rows(
    relations: list[TokenizedRelation],
    templates: list[int],
    vocab_size: int,
    max_pairs: int | None = None,
    seed: int = 0,
    k: int | None = None,
) -> pd.DataFrame:
    """One row per relation, template and pair: the prompt, the target token and the relation's k
    (`k`: the settings' override, else the protocol's rule, as the static score)."""
    rows = []
    for rel in relations:
        k_rel = relation_k(rel, vocab_size, k)
        for i in sample_indices(len(rel), max_pairs, seed):
            src, _ = rel.pairs[i]
            for t in templates:
                rows.append(
                    (rel.name, t, src, src_prompt(TEMPLATES[t], src), rel.dst_ids[i], k_rel)
                )
    return pd.DataFrame(rows, columns=["relation", "template", "src", "prompt", "target", "k"])


# -- forward passes -----------------------------------------------------------------------------------
def last_position_states(
    hw: HeadWeights,
    tokenizer: Any,
    prompts: list[str],
    groups: list[Any],
    batch_rows: int = 256,
) -> tuple[Tensor, Tensor]:
    """Attention input x (L, n, d) and z (L, n, H, d_head) at each prompt's last token, in order.

    Prompts with the same group key and token length form one batch (no padding); their common
    token prefix runs once with a KV cache, then only the rest, `batch_rows` rows per forward.
    """
    ids = tokenizer(list(prompts))["input_ids"]  # the tokenizer's default special tokens
    device = hw.device
    members: dict[tuple, list[int]] = defaultdict(list)
    for i, (key, seq) in enumerate(zip(groups, ids, strict=True)):
        members[(key, len(seq))].append(i)
    dtype = hw.dtype
    x = torch.empty(hw.n_layers, len(ids), hw.d_model, device=device, dtype=dtype)
    z = torch.empty(hw.n_layers, len(ids), hw.n_heads, hw.d_head, device=device, dtype=dtype)
    with torch.inference_mode():
        for rows in members.values():
            batch = torch.tensor([ids[i] for i in rows], device=device)
            c = common_prefix(batch)
            cache = prefill(hw.model, batch[:1, :c]) if c else None
            with capture_last(hw) as seen:
                for r0 in range(0, len(rows), batch_rows):
                    part = batch[r0 : r0 + batch_rows, c:]
                    zeros = torch.zeros(part.shape[0], dtype=torch.long, device=device)
                    extend(hw.model, part, select_rows(cache, zeros) if cache is not None else None)
            where = torch.tensor(rows, device=device)
            for layer in range(hw.n_layers):
                x[layer, where] = seen.inputs(layer)
                z[layer, where] = seen.heads_z(layer)
    return x, z


def no_context_z(hw: HeadWeights, layer: int, x: Tensor) -> Tensor:
    """z of every kv head when it attends to the position alone: x W_V + b_V, (n_kv, rows, d_head)."""
    return value_factors(hw, layer, x, value_bias=True)


# -- dynamic scores -------------------------------------------------------------------------------------
def dynamic_scores(
    hw: HeadWeights,
    tokenizer: Any,
    rows: pd.DataFrame,
    *,
    batch_rows: int = 256,
    sample_stride: int | None = None,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> pd.DataFrame:
    """phi* of every head for every (relation, template) group of `rows`, both settings and modes.

    `rows` has columns relation, template, prompt, target, k (see `correlation_rows`). Returns one row
    per layer, head, relation, template, setting and mode: DYNAMIC_COLUMNS.
    """
    device = hw.device
    prompts = list(dict.fromkeys(zip(rows["template"], rows["prompt"], strict=True)))
    where = {p: i for i, p in enumerate(prompts)}
    x, z = last_position_states(
        hw, tokenizer, [p for _, p in prompts], [t for t, _ in prompts], batch_rows
    )

    row_keys = list(zip(rows["relation"], rows["template"], strict=True))
    keys = list(dict.fromkeys(row_keys))
    key_index = {key: i for i, key in enumerate(keys)}
    gid = torch.tensor([key_index[key] for key in row_keys], device=device)
    n_groups = len(keys)
    prow = torch.tensor(
        [where[p] for p in zip(rows["template"], rows["prompt"], strict=True)], device=device
    )
    target = torch.tensor(rows["target"].to_numpy(), device=device).repeat(2)
    k_row = torch.tensor(rows["k"].to_numpy(), device=device).repeat(2)
    slot = torch.cat([gid, gid + n_groups])  # (setting, group) of each of the stacked rows
    n_pairs = torch.bincount(slot, minlength=2 * n_groups).float()
    cap = int(rows["k"].max())
    unembed = Unembedding.prepare(hw.unembedding(), sample_stride)
    blocks = Blocks.for_device(device)

    out = torch.zeros(hw.n_layers, hw.n_heads, len(MODES), 2 * n_groups)
    with torch.inference_mode():
        # no context: the head's own value at the last position, x W_V + b_V (the factor with b_V)
        factors = head_factors(
            hw, range(hw.n_layers), lambda la: x[la], bias="value", progress=progress
        )
        problems = (
            ((f.layer, f.head), torch.cat([f.a[prow], z[f.layer][prow, f.head]]), f.w_o, target)
            for f in factors
        )
        for (layer, head), *counts in count_outside_many(problems, unembed, cap, blocks, stats):
            for m, count in enumerate(counts):
                hits = torch.zeros(2 * n_groups, device=device)
                hits.index_add_(0, slot, (count < k_row).float())
                out[layer, head, m] = (hits / n_pairs).cpu()
    k_of = dict(zip(row_keys, rows["k"], strict=True))
    return _dynamic_frame(out, keys, k_of, n_pairs[:n_groups].long().tolist())


def _dynamic_frame(
    out: Tensor, keys: list[tuple[str, int]], k_of: dict, n_pairs: list[int]
) -> pd.DataFrame:
    """Long table of dynamic scores from the (layer, head, mode, setting x group) tensor."""
    n_layers, n_heads, n_modes, n_slots = out.shape
    index = pd.MultiIndex.from_product(
        [range(n_layers), range(n_heads), MODES, SETTINGS, range(len(keys))],
        names=["layer", "head", "mode", "setting", "group"],
    )
    values = out.reshape(n_layers, n_heads, n_modes, 2, len(keys)).reshape(-1).double().numpy()
    df = pd.DataFrame({"score": values}, index=index).reset_index()
    df["relation"] = df["group"].map({i: key[0] for i, key in enumerate(keys)})
    df["template"] = df["group"].map({i: key[1] for i, key in enumerate(keys)})
    df["k"] = df["group"].map({i: int(k_of[key]) for i, key in enumerate(keys)})
    df["n_pairs"] = df["group"].map(dict(enumerate(n_pairs)))
    df["score"] = df["score"].round(6)
    return (
        df[DYNAMIC_COLUMNS]
        .sort_values(["layer", "head", "relation", "template", "setting", "mode"], kind="stable")
        .reset_index(drop=True)
    )


# -- correlation ----------------------------------------------------------------------------------------
def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """Pearson r and two-sided p; NaN with a note when either side is constant (r is undefined).

    Computed in float64: scipy works in the inputs' dtype, and float32 scores underflow p below 1e-38.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return float("nan"), float("nan"), "fewer than 3 points"
    if np.ptp(x) == 0:
        return float("nan"), float("nan"), "static scores constant over heads"
    if np.ptp(y) == 0:
        return float("nan"), float("nan"), "dynamic scores constant over heads"
    res = pearsonr(x, y)
    return float(res.statistic), float(res.pvalue), ""


def correlations(static: pd.DataFrame, dynamic: pd.DataFrame) -> pd.DataFrame:
    """Pearson r between static and dynamic scores over heads x templates, per relation, mode, setting.

    Beside r: how many of the points have a non-zero static / dynamic score (an r carried by a
    handful of non-zero points is fragile) and the highest static score of any head.
    """
    key = ["layer", "head", "relation", "mode"]
    merged = dynamic.merge(
        static[key + ["score"]].rename(columns={"score": "static"}), on=key, how="inner"
    )
    top = static.groupby(["relation", "mode"])["score"].max()
    rows = []
    for (rel, mode, setting), g in merged.groupby(["relation", "mode", "setting"], sort=False):
        r, p, note = pearson(g["static"].to_numpy(), g["score"].to_numpy())
        nonzero = (int((g["static"] > 0).sum()), int((g["score"] > 0).sum()))
        rows.append(
            (rel, category_of(rel), mode, setting, r, p, len(g), *nonzero, top[(rel, mode)], note)
        )
    df = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    order = {name: i for i, name in enumerate(REGISTRY)}
    df["_o"] = df["relation"].map(lambda r: order.get(r, len(order)))
    df["_s"] = df["setting"].map({s: i for i, s in enumerate(SETTINGS)})
    df = df.sort_values(["_o", "mode", "_s"], kind="stable")
    return df.drop(columns=["_o", "_s"]).reset_index(drop=True)


def correlations_by_map(
    maps: dict[str, pd.DataFrame], dynamic: pd.DataFrame, mode: str = "promote"
) -> pd.DataFrame:
    """Pearson r per relation and setting for several static maps of the same heads (e.g. one per
    embedding mode) against the same dynamic scores: which static reading agrees with the forward pass.
    Relations in registry order; the last row is the median over the relations where r is defined."""
    parts = {}
    for label, static in maps.items():
        c = correlations(static, dynamic)
        c = c[c["mode"] == mode]
        wide = c.pivot(index="relation", columns="setting", values="r")  # keeps undefined (NaN) r
        parts[label] = wide.reindex(
            index=list(dict.fromkeys(c["relation"])), columns=list(SETTINGS)
        )
    table = pd.concat(parts, axis=1, names=["map", "setting"])
    table.loc["median"] = table.median()
    return table


CLEAR_MARGIN = 0.05  # a median r this much above the next map's counts as a clear preference


def supported_reading(table: pd.DataFrame, setting: str = "no_context") -> str:
    """One sentence naming the map (column group of `correlations_by_map`) with the highest median r
    in `setting`, and whether its lead over the next exceeds CLEAR_MARGIN."""
    med = table.loc["median"].xs(setting, level="setting").dropna().sort_values(ascending=False)
    if med.empty:
        return f"no map has a defined correlation {setting.replace('_', ' ')}"
    listed = ", ".join(f"{m} {r:.3f}" for m, r in med.items())
    if len(med) == 1:
        return f"median r {setting.replace('_', ' ')}: {listed} (one map only)"
    lead = med.iloc[0] - med.iloc[1]
    verdict = (
        f"{med.index[0]} tracks behaviour best (by {lead:.3f})"
        if lead > CLEAR_MARGIN
        else f"no clear winner ({med.index[0]} leads {med.index[1]} by {lead:.3f}, "
        f"under {CLEAR_MARGIN})"
    )
    return f"median r {setting.replace('_', ' ')}: {listed}; {verdict}"


PROTOCOL = {
    "prompt": "template cut after <X>, filled with src (the src is the last token)",
    "dynamic_score": "dst in the top-k of (z_h W_O[h]) U (suppress: of -(...) U), no b_O, no final "
    "norm; no_context: z_h = x_last W_V + b_V; k as the static score",
    "correlation": "Pearson r over heads x templates (static repeated per template)",
}


def run_dynamic_scores(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    templates: list[int] | str | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
    batch_rows: int = 256,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Dynamic scores of every head (DYNAMIC_COLUMNS) cached at `out` (.csv or folder; None: not
    written). Of the map settings only `k` and `min_pairs` reach them: E_in, biases and norms are
    the forward pass's own."""
    chosen = parse_templates(templates)
    tokenized = scorable(relations, lm.tokenizer, settings.min_pairs)
    params = {"relations": [r.sha256 for r in relations], "templates": chosen}
    params |= {"max_pairs": max_pairs, "seed": seed} | settings.changed("k", "min_pairs")
    stats = KernelStats()
    rows = correlation_rows(tokenized, chosen, lm.hw.vocab_size, max_pairs, seed, settings.k)
    return run_cached(
        lm,
        out,
        "dynamic_scores.csv",
        params,
        lambda: dynamic_scores(
            lm.hw, lm.tokenizer, rows, batch_rows=batch_rows, progress=progress, stats=stats
        ),
        found=lambda _: {
            "templates": {i: TEMPLATES[i] for i in chosen},
            "relations": [
                {"name": t.name, "sha256": t.relation.sha256, "pairs": len(t)} for t in tokenized
            ],
            "kernel": asdict(stats),
        },
        settings=settings,
        recompute=recompute,
        protocol=PROTOCOL,
        header=header,
        step="correlate",
    )


def prompt_examples(rows: pd.DataFrame, tokenizer: Any) -> pd.DataFrame:
    """The first prompt of each template, its text, and how the tokenizer splits it."""
    example = rows.drop_duplicates("template")[["template", "prompt"]].copy()
    example["template text"] = example["template"].map(lambda t: TEMPLATES[t])
    example["tokens"] = example["prompt"].map(
        lambda p: " | ".join(token_texts(tokenizer, tokenizer(p)["input_ids"]))
    )
    return example.set_index("template")


def median_r_by_reach(corr: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Median promotion r per setting over all relations, those some head implements (max static
    score >= tau) and those none does: low r comes with relations no head implements."""
    promote = corr[corr["mode"] == "promote"].pivot_table(
        index="relation", columns="setting", values=["r", "max_static"], sort=False
    )
    implemented = promote[("max_static", "context")] >= tau
    groups = {
        "all relations": promote,
        "some head reaches tau": promote[implemented],
        "no head reaches tau": promote[~implemented],
    }
    rows = {
        label: {
            "relations": len(g),
            "median r without context": g[("r", "no_context")].median(),
            "median r with context": g[("r", "context")].median(),
        }
        for label, g in groups.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")
