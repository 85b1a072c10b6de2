"""Which reading of the weights predicts behaviour? Norm weights, E_in, biases, k and 4-bit noise.

The paper reads M = E_in W_V W_O U with no norm weights (`norms="ignore"`); the forward pass always
applies them (`norms="fold"`, foundation.adapters.NormFolded). This module maps every model of the
book under each reading (norms x E_in, and x b_V where the model has one), sweeps k in one kernel
pass, and maps a few draws of quantisation noise (foundation.quant_noise); then scores each reading
against what the book measured of the model's behaviour, from the tables its part already holds:
chapter 04's dynamic scores (median r over relations), chapter 10's IOI direct effects (known heads
recognised) and chapter 05's ablated heads (how many of them a reading would pick too).

All of one model's maps go into one long table (`readings/<model>.csv.gz`, committed), with a
column `kind`: `reading`, `k` or `noise`. The part's own maps (chapter 02 and 04's, `ignore`) are
read from the part, not recomputed; the model is loaded only for the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapslib.behaviour.correlation import CLEAR_MARGIN, correlations_by_map
from mapslib.behaviour.known_heads import PREDICTED_SIDE
from mapslib.crossmodel.parts import ModelPart, map_label
from mapslib.foundation.cache import cached_table
from mapslib.foundation.settings import DEFAULTS, EMBEDDINGS, NORMS, MapSettings
from mapslib.report.reference import PAPER_CORRELATION_RANGE

KS = (1, 3, 10, 25)  # the k sweep: both k rules of PROTOCOL.md are read off these
K_RULES = {"1 / 10 (|V| ~ 50k)": (1, 10), "3 / 25 (|V| >= 100k)": (3, 25)}  # copying / other
DRAWS = 2  # quantisation-noise draws per model
READING_COLUMNS = ["kind", "reading", "norms", "embedding", "bias", "draw"]


def reading_label(settings: MapSettings) -> str:
    """`ignore · paper`, `fold · raw + bias value`: the norms, then the part's map label."""
    return f"{settings.norms} · {map_label(settings.embedding, settings.bias)}"


def readings(has_value_bias: bool) -> list[MapSettings]:
    """Every reading the chapter compares: norms x E_in, and norms x b_V where the model has b_V."""
    out = [DEFAULTS.but(norms=n, embedding=e) for n in NORMS for e in EMBEDDINGS]
    if has_value_bias:
        out += [DEFAULTS.but(norms=n, bias="value") for n in NORMS]
    return out


def _tagged(df: pd.DataFrame, kind: str, settings: MapSettings, draw: int = -1) -> pd.DataFrame:
    """A map with the columns that say how it was made."""
    tags = dict(kind=kind, reading=reading_label(settings), norms=settings.norms)
    tags |= dict(embedding=settings.embedding, bias=settings.bias, draw=draw)
    return df.assign(**tags)[READING_COLUMNS + [c for c in df.columns if c not in tags]]


def compute_readings(part: ModelPart, draws: int = DRAWS, progress: bool = False) -> pd.DataFrame:
    """Every map of the chapter for one model: the readings (the part's own where it has them),
    the k sweep under both norm conventions, and `draws` maps with quantisation noise. Each map is
    cached on its own (`partial_map`), so an interrupted run resumes where it stopped."""
    from mapslib.foundation.models import load_model
    from mapslib.foundation.quant_noise import ov_bits, with_quant_noise
    from mapslib.relation_map.relations import keep_scorable, load_relations, tokenize_relation
    from mapslib.relation_map.scores import relation_scores, scores_by_k

    lm = load_model(part.name, device="cpu")
    hw = lm.hw
    kept = keep_scorable(
        [tokenize_relation(r, lm.tokenizer) for r in load_relations()], DEFAULTS.min_pairs, None
    )
    layers = list(range(hw.n_layers))
    own = part.maps()
    frames = []
    for s in readings("value" in hw.biases()):
        have = own.get(map_label(s.embedding, s.bias)) if s.norms == "ignore" else None
        scores = (
            have
            if have is not None
            else partial_map(
                part.name,
                f"reading {reading_label(s)}",
                lambda s=s: relation_scores(hw, kept, settings=s, progress=progress),
            )
        )
        frames.append(_tagged(scores, "reading", s))
    for norms in NORMS:
        s = DEFAULTS.but(norms=norms)
        sweep = partial_map(
            part.name, f"k {norms}", lambda s=s: scores_by_k(hw, kept, layers, list(KS), s)
        )
        frames.append(_tagged(sweep, "k", s))
    bits = ov_bits(hw, lm.location)
    for draw in range(draws):
        noisy = partial_map(
            part.name,
            f"noise {draw}",
            lambda d=draw: relation_scores(with_quant_noise(hw, bits, d), kept, progress=progress),
        )
        frames.append(_tagged(noisy, "noise", DEFAULTS, draw))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["found"] = {"norm_weights": norm_spread(hw), "noise": _noise_record(bits)}
    return table


def partial_map(model: str, what: str, compute: Any) -> pd.DataFrame:
    """One map of `compute_readings`, cached under the cache root until the whole table is
    written (the model's revision is not checked here: the whole table's sidecar records it)."""
    from mapslib.foundation.io import cache_root

    path = cache_root() / "readings" / model / f"{what.replace(' ', '_').replace('·', '')}.csv"
    params = {"model": model, "what": what, "ks": list(KS)}
    return cached_table(path, params, lambda: (compute(), {}), step="map")


def _noise_record(bits: dict[str, int]) -> dict[str, Any]:
    from mapslib.foundation.quant_noise import noise_record

    return noise_record(bits)


def norm_spread(hw: Any) -> dict[str, float]:
    """How far the norm weights are from one number: the coefficient of variation (sd / mean of
    the absolute values) of the weight each norm multiplies the dimensions by, averaged over layers,
    and of the final norm. Near 0, a norm is a scale only and folding it changes no top-k."""

    def cv(path: str | None) -> float:
        w = hw.norm_weight(path)
        return float("nan") if w is None else float(w.double().std() / w.double().abs().mean())

    out = {
        "input norms (mean cv)": np.nanmean(
            [cv(hw.attn_norm_path(la)) for la in range(hw.n_layers)]
        )
    }
    if hw.attn_out_norm_path(0) is not None:
        out["post-attention norms (mean cv)"] = np.nanmean(
            [cv(hw.attn_out_norm_path(la)) for la in range(hw.n_layers)]
        )
    out["final norm (cv)"] = cv(hw.family.final_norm)
    return {k: round(float(v), 4) for k, v in out.items()}


def run_readings(
    part: ModelPart, out: str | Path, draws: int = DRAWS, recompute: bool = False
) -> pd.DataFrame:
    """`compute_readings`, cached at `out/<model>.csv.gz` with what made it beside it."""
    path = Path(out) / f"{part.name}.csv.gz"
    params = {
        "model": part.name,
        "readings": "norms x embedding (+ bias value where the model has b_V)",
        "ks": list(KS),
        "draws": draws,
        "relations": "shipped",
        "min_pairs": DEFAULTS.min_pairs,
        "part_maps": sorted(part.maps()),
    }

    def compute() -> tuple[pd.DataFrame, dict[str, Any]]:
        table = compute_readings(part, draws, progress=True)
        return table, table.attrs.pop("found")

    return cached_table(path, params, compute, recompute=recompute, step="map")


# -- the readings against behaviour ---------------------------------------------------------------
def maps_of(table: pd.DataFrame, kind: str = "reading") -> dict[str, pd.DataFrame]:
    """The maps of one kind, by reading label (or by draw for noise, by k for the sweep)."""
    sub = table[table["kind"] == kind]
    key = {"reading": "reading", "noise": "draw", "k": "k"}[kind]
    return {k: g.drop(columns=READING_COLUMNS) for k, g in sub.groupby(key, sort=False)}


def heads_over_tau(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> dict[str, int]:
    """Heads with some relation at or over tau, promoting and suppressing."""
    over = scores[scores["score"] >= tau]
    return {
        m: over[over["mode"] == m][["layer", "head"]].drop_duplicates().shape[0]
        for m in ("promote", "suppress")
    }


def known_recognised(
    scores: pd.DataFrame, known: pd.DataFrame, tau: float = DEFAULTS.tau
) -> tuple[int, int]:
    """Chapter 10's heads with a role found by behaviour (IOI direct effect), and how many of them
    this map puts over tau for name copying on their role's side."""
    nc = scores[scores["relation"] == "name_copying"].pivot_table(
        index=["layer", "head"], columns="mode", values="score"
    )
    found = known[known["role"].map(PREDICTED_SIDE).notna()]
    hits = 0
    for r in found.itertuples():
        side = PREDICTED_SIDE[r.role]
        hits += bool(nc.loc[(r.layer, r.head), side] >= tau) if (r.layer, r.head) in nc.index else 0
    return hits, len(found)


def ablated_overlap(scores: pd.DataFrame, ablation: pd.DataFrame, paper: pd.DataFrame) -> float:
    """Of the heads chapter 05 ablated per relation (the paper reading's top heads), the share this
    reading would also pick as its top heads, over the ablated relations: 1.0 means the ablation
    result carries over to this reading unchanged."""
    from mapslib.behaviour.ablation import n_relation_heads, top_relation_heads

    heads = scores[["layer", "head"]].drop_duplicates().shape[0]
    m = n_relation_heads(heads)
    shares = []
    for rel in sorted(set(ablation["relation"]) & set(scores["relation"])):
        a = set(top_relation_heads(paper, rel, m))
        b = set(top_relation_heads(scores, rel, m))
        shares.append(len(a & b) / max(len(a), 1))
    return float(np.mean(shares)) if shares else float("nan")


def reading_summary(
    part: ModelPart, table: pd.DataFrame, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """Per reading of one model: heads over tau, median r against chapter 04's dynamic scores (no
    context / in context), chapter 10's known heads recognised, chapter 05's ablated heads kept."""
    maps = maps_of(table)
    dynamic, known, ablation = (
        part.table(t) for t in ("dynamic_scores.csv", "known_heads.csv", "ablation.csv")
    )
    med = correlations_by_map(maps, dynamic).loc["median"] if dynamic is not None else None
    paper = maps[reading_label(DEFAULTS)]
    rows = []
    for label, scores in maps.items():
        over = heads_over_tau(scores, tau)
        row = {
            "model": part.name,
            "reading": label,
            "heads over tau (promote)": over["promote"],
            "heads over tau (suppress)": over["suppress"],
        }
        if med is not None:
            row["median r, no context"] = med[(label, "no_context")]
            row["median r, in context"] = med[(label, "context")]
        if known is not None:
            hits, n = known_recognised(scores, known, tau)
            row["known heads recognised"] = f"{hits} of {n}"
            row["known share"] = hits / n if n else float("nan")
        if ablation is not None:
            row["ablated heads kept"] = ablated_overlap(scores, ablation, paper)
        rows.append(row)
    return pd.DataFrame(rows)


def k_summary(table: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.DataFrame:
    """Heads over tau (promote) at each k for every relation, and under each k rule of PROTOCOL.md
    (copying relations at the first k, the others at the second), per norm convention."""
    sweep = table[table["kind"] == "k"]
    rows = []
    for norms, g in sweep.groupby("norms", sort=False):
        row: dict[str, Any] = {"norms": norms}
        for k, gk in g.groupby("k"):
            row[f"k = {k}"] = heads_over_tau(gk, tau)["promote"]
        copying = g["relation"].isin(COPYING)
        for name, (kc, ko) in K_RULES.items():
            rule = g[(copying & (g["k"] == kc)) | (~copying & (g["k"] == ko))]
            row[f"rule {name}"] = heads_over_tau(rule, tau)["promote"]
        rows.append(row)
    return pd.DataFrame(rows)


COPYING = ("name_copying", "general_copying_english_500")  # the relations scored with the small k


def noise_summary(table: pd.DataFrame, tau: float = DEFAULTS.tau) -> dict[str, float]:
    """How far quantisation-sized noise moves the paper reading's map: the sd of a score over the
    noisy draws and the exact map (non-zero entries), the largest change, how many (head, relation,
    mode) entries cross tau in some draw, and the range of heads over tau."""
    key = ["layer", "head", "relation", "mode"]
    exact = maps_of(table)[reading_label(DEFAULTS)].set_index(key)["score"]
    draws = [
        g.set_index(key)["score"].reindex(exact.index) for g in maps_of(table, "noise").values()
    ]
    stack = np.column_stack([exact.to_numpy(), *[d.to_numpy() for d in draws]])
    moving = stack.max(1) > 0
    over = stack >= tau
    heads = [heads_over_tau(exact.reset_index(), tau)["promote"]]
    heads += [heads_over_tau(d.reset_index(), tau)["promote"] for d in draws]
    return {
        "draws": len(draws),
        "score sd (non-zero entries)": float(stack[moving].std(1, ddof=1).mean())
        if moving.any()
        else 0.0,
        "largest change": float(np.abs(stack[:, 1:] - stack[:, :1]).max()) if draws else 0.0,
        "entries over tau": int(over[:, 0].sum()),
        "entries crossing tau": int((over.any(1) & ~over.all(1)).sum()),
        "heads over tau (promote), exact": heads[0],
        "heads over tau (promote), noisy draws": ", ".join(str(h) for h in heads[1:]),
    }


def verdict(summary: pd.DataFrame) -> str:
    """One model's verdict: the reading with the highest median r without context, its lead over
    the paper's reading (clear above CLEAR_MARGIN), and the same for known heads."""
    s = summary.set_index("reading")
    paper = reading_label(DEFAULTS)
    out = []
    if "median r, no context" in s:
        r = s["median r, no context"].dropna()
        best = r.idxmax()
        lead = r[best] - r.get(paper, np.nan)
        clear = "a clear lead" if lead > CLEAR_MARGIN else "within the margin of the paper's"
        out.append(
            f"median r (no context) is highest under `{best}` ({r[best]:.2f}; paper's reading {r.get(paper, np.nan):.2f}: {clear})"
        )
        low = PAPER_CORRELATION_RANGE[0]
        holds = "holds" if r[best] >= low else "does not hold"
        out.append(
            f"the paper's static-dynamic agreement (r >= {low} for most relations) {holds} under it"
        )
    if "known share" in s and s["known share"].notna().any():
        k = s["known share"]
        best = k.idxmax()
        out.append(
            f"known heads: `{best}` recognises {s.loc[best, 'known heads recognised']} (paper's reading {s.loc[paper, 'known heads recognised']})"
        )
    return "; ".join(out) if out else "no behaviour table to compare with"


# -- every model side by side -----------------------------------------------------------------------
def load_tables(parts: list[ModelPart], out: str | Path) -> dict[str, pd.DataFrame]:
    """Each model's readings table, computed where missing (loads that model; minutes)."""
    return {p.name: run_readings(p, out) for p in parts}


def summary_table(
    parts: list[ModelPart], tables: dict[str, pd.DataFrame], tau: float
) -> pd.DataFrame:
    """`reading_summary` of every model, one row per model and reading."""
    return pd.concat([reading_summary(p, tables[p.name], tau) for p in parts], ignore_index=True)


def k_table(tables: dict[str, pd.DataFrame], tau: float) -> pd.DataFrame:
    """`k_summary` of every model."""
    return pd.concat(
        [k_summary(t, tau).assign(model=m) for m, t in tables.items()], ignore_index=True
    ).set_index(["model", "norms"])


def noise_table(tables: dict[str, pd.DataFrame], tau: float) -> pd.DataFrame:
    """`noise_summary` of every model, with the tensors' bit widths from the sidecar."""
    rows = {m: noise_summary(t, tau) for m, t in tables.items()}
    for m, t in tables.items():
        tensors = t.attrs.get("sidecar", {}).get("noise", {}).get("tensors", {})
        rows[m]["W_V, W_O tensors"] = ", ".join(f"{n} at {b}" for b, n in sorted(tensors.items()))
    return pd.DataFrame.from_dict(rows, orient="index")


def norm_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The spread of each model's norm weights (`norm_spread`, from the sidecar)."""
    rows = {m: t.attrs.get("sidecar", {}).get("norm_weights", {}) for m, t in tables.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def verdicts(summary: pd.DataFrame) -> pd.Series:
    """`verdict` per model."""
    return summary.groupby("model", sort=False).apply(verdict, include_groups=False)
