"""Known heads, found by behaviour: name movers in indirect object identification, beside MAPS.

Wang et al. (2022) found, in GPT-2 small, heads that finish the indirect object identification (IOI)
task ("When Mary and John went to the store, John gave a drink to" -> " Mary"): *name movers*
attend from the last position to the indirect object (IO) and copy it into the logits; *negative
name movers* write against the name they attend to. MAPS reads name copying from weights alone
(the `name_copying` relation, promote and suppress). This module finds such heads by behaviour in
any supported model and sets them beside the static scores.

* Prompts: `mapslib.behaviour.ioi` (templates and single-token names, ABBA and BABA, the IO and S
  positions).
* Direct effect of each head on logit(IO) - logit(S) at the last position, through the frozen norms,
  and its attention to the IO and S tokens: `mapslib.behaviour.direct_effect`.
* Roles (PROTOCOL): from each head's mean direct effect over prompts. A head has a *large* effect
  when its robust z-score against all heads, (effect - median) / (1.4826 MAD), is beyond ROBUST_Z
  and its |effect| is at least MIN_SHARE of the largest |effect| of any head (most heads write almost
  nothing here, so the MAD is tiny and z alone would pass many heads). It *attends to* the IO (or S)
  when its mean attention to that name is at least MIN_ATTENTION and more than to the other name.
  Large and positive, attending to the IO: a **name mover**; large and negative, attending to the
  IO: a **negative name mover** (both as Wang et al. define them: they read the IO and write for or
  against it). The same split for heads that attend to S: large negative, an **S mover** (it copies
  the subject); large positive, an **S suppressor** (it suppresses the subject). A large effect with
  neither name attended: **other large effect**.
* Beside MAPS: each head's static name-copying promote and suppress scores. A copying head should
  raise the name it reads and a suppressing head lower it, so MAPS *recognises* a name mover or an S
  mover when its promote score >= tau, a negative name mover or an S suppressor when its suppress
  score >= tau. The heads MAPS puts over tau (either side) that behaviour does not give a role on
  that side are the ones behaviour "misses". Spearman's rank correlation between effect and static
  score: heads with a positive mean effect against the promote score, heads with a negative one
  (-effect) against the suppress score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from torch import Tensor

from mapslib.behaviour.direct_effect import IOIStates, direct_effects, final_softcap, ioi_states
from mapslib.behaviour.ioi import IOIData, ioi_prompts, load_ioi_data, locate, single_token_names
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.heads import Head, head_name, parse_head
from mapslib.foundation.io import sha256_text
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings

RELATION = "name_copying"
ROBUST_Z = 3.0  # |robust z| of a head's mean direct effect for a large effect
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
MIN_SHARE = 0.1  # ... and |effect| at least this share of the largest |effect| of any head
MIN_ATTENTION = 0.1  # a head attends to a name: mean weight at least this, and above the other's
ROLES = ("name mover", "negative name mover")  # the IOI paper's roles
OTHER_ROLES = ("S mover", "S suppressor", "other large effect")
NO_ROLE = "-"  # no large effect (not an empty string: CSV readers turn that into NaN)
# the side of the static map that should hold a head of each role (None: no prediction)
PREDICTED_SIDE: dict[str, str | None] = {
    "name mover": "promote",
    "negative name mover": "suppress",
    "S mover": "promote",
    "S suppressor": "suppress",
    "other large effect": None,
}
# Wang et al. 2022, "Interpretability in the Wild" (arXiv:2211.00593), section 3 and figure 2,
# quoted (not computed): the GPT-2 small heads of the IOI circuit that act at the last position.
IOI_GPT2_SMALL: dict[str, list[str]] = {
    "name mover": ["9.9", "10.0", "9.6"],
    "negative name mover": ["10.7", "11.10"],
    "backup name mover": ["10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0", "11.9"],
}
HEAD_COLUMNS = [
    "layer",
    "head",
    "direct_effect",
    "direct_effect_sd",
    "robust_z",
    "attn_io",
    "attn_s",
    "role",
    "promote",
    "suppress",
    "maps_promote",
    "maps_suppress",
]
PROTOCOL = {
    "prompts": "templates and names of mapslib/data/ioi; ' ' + name one token; IO once and S "
    "twice in the prompt's tokens; ABBA and BABA alternate; answer ' ' + IO",
    "direct_effect": "z_h W_O[h] at the last position (no b_O), every norm's scale frozen at the "
    "forward pass's value (final norm: centred for LayerNorm, / scale, * weight (1 + w for Gemma); "
    "Gemma 2/3: also the attention-output norm), dotted with U[:, IO] - U[:, S]; mean over prompts; "
    "final logit softcapping: effects decompose the logit difference before the cap",
    "attention": "eager attention weight from the last position to the IO token; to the S tokens: "
    "the sum over both; mean over prompts",
    "roles": {
        "robust_z": "(mean effect - median over heads) / (1.4826 * MAD over heads)",
        "large": f"|robust_z| >= {ROBUST_Z} and |effect| >= {MIN_SHARE} * max |effect| over heads",
        "attends to X": f"mean attention to X >= {MIN_ATTENTION} and > mean attention to the other name",
        "name mover": "large, effect > 0, attends to IO",
        "negative name mover": "large, effect < 0, attends to IO",
        "S mover": "large, effect < 0, attends to S",
        "S suppressor": "large, effect > 0, attends to S",
        "other large effect": "large, attends to neither",
    },
    "maps": f"name_copying score >= tau = {DEFAULTS.tau} on the role's side: promote for name movers and S "
    "movers, suppress for negative name movers and S suppressors",
    "agreement": "Spearman rho: heads with mean effect > 0, effect vs promote score; heads with "
    "mean effect < 0, -effect vs suppress score",
}


# -- the table -------------------------------------------------------------------------------------
def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); a zero MAD (half the values equal) gives NaN."""
    med = np.median(x)
    mad = MAD_SCALE * np.median(np.abs(x - med))
    return (x - med) / mad if mad > 0 else np.full_like(x, np.nan, dtype=np.float64)


def assign_roles(
    effect: np.ndarray,
    z: np.ndarray,
    attn_io: np.ndarray,
    attn_s: np.ndarray,
    threshold: float = ROBUST_Z,
    min_share: float = MIN_SHARE,
    min_attention: float = MIN_ATTENTION,
) -> list[str]:
    """Role of each head by the PROTOCOL rule (module docstring); NO_ROLE without a large effect."""
    top = float(np.max(np.abs(effect))) if len(effect) else 0.0
    roles = []
    for e, zi, io, s in zip(effect, z, attn_io, attn_s, strict=True):
        large = bool(abs(zi) >= threshold) and top > 0 and abs(e) >= min_share * top
        if not large:
            roles.append(NO_ROLE)
        elif io >= min_attention and io > s:
            roles.append(ROLES[0] if e > 0 else ROLES[1])
        elif s >= min_attention and s > io:
            roles.append("S suppressor" if e > 0 else "S mover")
        else:
            roles.append("other large effect")
    return roles


def static_name_copying(static: pd.DataFrame, n_layers: int, n_heads: int) -> pd.DataFrame:
    """Per head (layer, head index), the name_copying promote and suppress scores; a clear error
    when the static table has none (the relation is not scored for this tokenizer)."""
    s = static[static["relation"] == RELATION]
    if s.empty:
        raise BadArgument(
            "the static scores have no name_copying rows: the relation keeps too few single-token "
            "pairs for this tokenizer, so MAPS cannot be compared on it"
        )
    wide = s.pivot_table(index=["layer", "head"], columns="mode", values="score")
    if len(wide) != n_layers * n_heads:
        raise BadArgument(
            f"the static name_copying scores cover {len(wide)} heads, not {n_layers * n_heads}"
        )
    return wide.reindex(columns=["promote", "suppress"])


def static_digest(static: pd.DataFrame) -> str:
    """A hash of the static name_copying scores (rounded to 6 decimals), for the cache parameters."""
    s = static[static["relation"] == RELATION][["layer", "head", "mode", "score"]]
    s = s.sort_values(["layer", "head", "mode"]).assign(score=s["score"].round(6))
    return sha256_text(s.to_csv(index=False, float_format="%.6f"))


def head_table(
    hw: HeadWeights,
    states: IOIStates,
    effects: Tensor,
    static: pd.DataFrame,
    tau: float = DEFAULTS.tau,
) -> pd.DataFrame:
    """One row per head: mean direct effect (and its sd over prompts), robust z, attention to IO and
    S, role by behaviour, the static name-copying scores and whether MAPS puts them over tau."""
    L, H = hw.n_layers, hw.n_heads
    eff = effects.mean(0).reshape(-1).numpy()
    sd = effects.std(0, correction=1).reshape(-1).numpy() if len(effects) > 1 else eff * np.nan
    a_io = states.attn_io.double().mean(1).reshape(-1).numpy()
    a_s = states.attn_s.double().mean(1).reshape(-1).numpy()
    z = robust_z(eff)
    df = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(L), H),
            "head": np.tile(np.arange(H), L),
            "direct_effect": eff,
            "direct_effect_sd": sd,
            "robust_z": z,
            "attn_io": a_io,
            "attn_s": a_s,
            "role": assign_roles(eff, z, a_io, a_s),
        }
    )
    scores = static_name_copying(static, L, H)
    df = df.join(scores, on=["layer", "head"])
    df["maps_promote"] = df["promote"] >= tau
    df["maps_suppress"] = df["suppress"] >= tau
    return df[HEAD_COLUMNS]


def run_summary(states: IOIStates, effects: Tensor, dropped: int, names: dict[str, int]) -> dict:
    """What the run found: prompts, names, the model's logit difference and accuracy, the heads'
    summed direct effect."""
    ld = states.logit_diff.double()
    return {
        "prompts": len(states.located),
        "prompts_dropped": dropped,
        "names_single_token": len(names),
        "mean_logit_diff": float(ld.mean()),
        "accuracy_io_over_s": float((ld > 0).double().mean()),
        "heads_total_direct_effect": float(effects.sum((1, 2)).mean()),
    }


def run_known_heads(
    lm: LoadedModel,
    static: pd.DataFrame,
    out: str | Path | None,
    *,
    n_prompts: int = 300,
    seed: int = 0,
    data: IOIData | None = None,
    batch_rows: int = 64,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Per head (HEAD_COLUMNS): direct effect on IOI, attention, role, static name-copying scores
    (made with `settings`; a head is over `settings.tau` or not); cached at `out` (a .csv, or a
    folder for `known_heads.csv`; None: not written)."""
    data = load_ioi_data() if data is None else data
    hw = lm.hw
    names = single_token_names(lm.tokenizer, data.names)
    static_name_copying(static, hw.n_layers, hw.n_heads)  # fails before any forward pass
    rule = {"robust_z": ROBUST_Z, "min_share": MIN_SHARE, "min_attention": MIN_ATTENTION}
    params = {"ioi_data": data.sha256, "static_name_copying": static_digest(static)}
    params |= {"n_prompts": n_prompts, "seed": seed, "rule": rule | {"tau": settings.tau}}
    located, dropped = locate(lm.tokenizer, ioi_prompts(data, names, n_prompts, seed))
    found: dict[str, Any] = {}

    def table() -> pd.DataFrame:
        states = ioi_states(hw, located, batch_rows, progress)
        effects = direct_effects(hw, states)
        found["summary"] = run_summary(states, effects, dropped, names)
        return head_table(hw, states, effects, static, settings.tau)

    return run_cached(
        lm,
        out,
        "known_heads.csv",
        params,
        table,
        found=lambda _: (
            found
            | {
                "final_logit_softcapping": final_softcap(hw),
                "names_dropped": sorted(set(data.names) - set(names)),
                "example_prompt": located[0].prompt.text if located else None,
            }
        ),
        settings=settings,
        recompute=recompute,
        protocol=PROTOCOL,
        header=header,
        step="ioi",
    )


# -- readings for the chapter ----------------------------------------------------------------------
def is_gpt2_small(hw: HeadWeights) -> bool:
    """GPT-2 small: the model the IOI paper studied (12 layers x 12 heads, d = 768)."""
    cfg = hw.model.config
    return cfg.model_type == "gpt2" and (hw.n_layers, hw.n_heads, hw.d_model) == (12, 12, 768)


def parse_known_heads(known: dict[str, list[str]], hw: HeadWeights) -> dict[str, list[Head]]:
    """{role: ["9.9", ...]} -> {role: [(9, 9), ...]}, each head checked against the model."""
    return {role: [parse_head(h, hw) for h in heads] for role, heads in known.items()}


def default_known_heads(hw: HeadWeights) -> dict[str, list[str]] | None:
    """The IOI paper's lists for GPT-2 small; None for any other model (use the heads found here)."""
    return dict(IOI_GPT2_SMALL) if is_gpt2_small(hw) else None


def _named(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a first column `name` (layer.head)."""
    df = df.copy()
    df.insert(
        0, "name", [head_name(int(a), int(b)) for a, b in zip(df["layer"], df["head"], strict=True)]
    )
    return df


def recognised(table: pd.DataFrame) -> pd.Series:
    """Per head: whether MAPS puts it over tau on its role's side (NA without a predicted side)."""
    side = table["role"].map(PREDICTED_SIDE)
    out = pd.Series(pd.NA, index=table.index, dtype="boolean")
    out[side == "promote"] = table.loc[side == "promote", "maps_promote"]
    out[side == "suppress"] = table.loc[side == "suppress", "maps_suppress"]
    return out


def movers(table: pd.DataFrame, roles: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The heads with a role (all, or `roles`), strongest |effect| first, with the side MAPS should
    put them on and whether it does."""
    keep = table["role"].isin(roles) if roles is not None else table["role"] != NO_ROLE
    m = _named(table[keep])
    m["MAPS side"] = m["role"].map(PREDICTED_SIDE)
    m["maps recognises"] = recognised(m)
    return m.reindex(m["direct_effect"].abs().sort_values(ascending=False).index).set_index("name")


def known_table(table: pd.DataFrame, known: dict[str, list[Head]]) -> pd.DataFrame:
    """Each given head with its given role, its behaviour here (effect, z, attention, role found) and
    its static scores; `maps recognises`: suppress >= tau for a given role that starts with
    "negative", promote >= tau otherwise."""
    t = table.set_index(["layer", "head"])
    rows = []
    for role, heads in known.items():
        for head in heads:
            r = t.loc[head]
            side = "maps_suppress" if role.startswith("negative") else "maps_promote"
            rows.append(
                {
                    "head": head_name(*head),
                    "given role": role,
                    "direct_effect": r["direct_effect"],
                    "robust_z": r["robust_z"],
                    "attn_io": r["attn_io"],
                    "attn_s": r["attn_s"],
                    "role found": r["role"],
                    "promote": r["promote"],
                    "suppress": r["suppress"],
                    "maps recognises": bool(r[side]),
                }
            )
    columns = ["head", "given role", "direct_effect", "robust_z", "attn_io", "attn_s"]
    columns += ["role found", "promote", "suppress", "maps recognises"]
    return pd.DataFrame(rows, columns=columns).set_index("head")


def missed_by_behaviour(table: pd.DataFrame) -> pd.DataFrame:
    """Heads MAPS puts over tau for name copying (promote or suppress) whose behavioural role is not
    on that side (mostly: no role at all); highest static score first."""
    side = table["role"].map(PREDICTED_SIDE)
    promote = table["maps_promote"] & (side != "promote")
    suppress = table["maps_suppress"] & (side != "suppress")
    m = _named(table[promote | suppress])
    p, s = promote[m.index], suppress[m.index]
    m["MAPS says"] = np.where(p & s, "promote and suppress", np.where(p, "promote", "suppress"))
    order = m[["promote", "suppress"]].max(axis=1).sort_values(ascending=False).index
    return m.loc[order].set_index("name")


def recognition(table: pd.DataFrame) -> pd.DataFrame:
    """Per role with a predicted side: heads found by behaviour and how many of them MAPS puts over
    tau on that side; and per side, how many heads MAPS puts over tau in all."""
    rows = {}
    for role, side in PREDICTED_SIDE.items():
        found = table[table["role"] == role]
        rows[role] = {
            "MAPS side": side or "-",
            "found by behaviour": len(found),
            "MAPS over tau among them": int(found[f"maps_{side}"].sum()) if side else pd.NA,
            "MAPS over tau on that side, all heads": int(table[f"maps_{side}"].sum())
            if side
            else pd.NA,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho between direct effect and static score: positive effects against promote,
    negative effects (as -effect) against suppress; NaN where either side is constant."""
    rows = {}
    sides = (
        ("promote", table["direct_effect"] > 0, 1.0),
        ("suppress", table["direct_effect"] < 0, -1.0),
    )
    for mode, sel, sign in sides:
        x = sign * table.loc[sel, "direct_effect"].to_numpy()
        y = table.loc[sel, mode].to_numpy()
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            rho, p = float("nan"), float("nan")
        else:
            res = spearmanr(x, y)
            rho, p = float(res.statistic), float(res.pvalue)
        rows[mode] = {"heads": int(sel.sum()), "spearman rho": rho, "p": p}
    return pd.DataFrame.from_dict(rows, orient="index")


def _names(df: pd.DataFrame) -> str:
    """Head names of `df`'s rows, comma-separated, or 'none'."""
    names = [head_name(int(a), int(b)) for a, b in zip(df["layer"], df["head"], strict=True)]
    return ", ".join(names) or "none"


def _describe(r: pd.Series) -> str:
    """One head in words: effect, attention to IO and S, role, static scores."""
    return (
        f"{head_name(int(r['layer']), int(r['head']))} (effect {r['direct_effect']:+.3f}; attention "
        f"IO {r['attn_io']:.2f}, S {r['attn_s']:.2f}; role: {r['role']}; name copying promote "
        f"{r['promote']:.2f}, suppress {r['suppress']:.2f})"
    )


def findings(table: pd.DataFrame, summary: dict[str, Any], tau: float = DEFAULTS.tau) -> list[str]:
    """What this run shows, in sentences built from the table and the run's summary (for the
    chapter: its prose states no number of its own)."""
    lines = [
        f"The model prefers the IO on {summary['accuracy_io_over_s']:.1%} of "
        f"{summary['prompts']} prompts (mean logit difference {summary['mean_logit_diff']:.3f}); "
        f"all heads' direct effects sum to {summary['heads_total_direct_effect']:.3f} of it on average.",
    ]
    for role in PREDICTED_SIDE:
        d = table[table["role"] == role]
        lines.append(f"{role}s ({len(d)}): {_names(d)}.")
    with_side = table[table["role"].map(PREDICTED_SIDE).notna()]
    ok = recognised(with_side).astype(bool)
    lines.append(
        f"MAPS puts {int(ok.sum())} of the {len(with_side)} heads whose role predicts a side over "
        f"tau = {tau} on that side; not: {_names(with_side[~ok])}."
    )
    for mode in ("promote", "suppress"):
        over = table[table[f"maps_{mode}"]]
        side = over["role"].map(PREDICTED_SIDE)
        lines.append(
            f"MAPS: {len(over)} heads over tau for name-copying {mode}; behaviour gives "
            f"{int((side != mode).sum())} of them no role on that side: {_names(over[side != mode])}."
        )
    lines.append(
        "Strongest positive head: " + _describe(table.loc[table["direct_effect"].idxmax()]) + "."
    )
    lines.append(
        "Strongest negative head: " + _describe(table.loc[table["direct_effect"].idxmin()]) + "."
    )
    a = agreement(table)
    for mode, r in a.iterrows():
        sign = "positive" if mode == "promote" else "negative"
        lines.append(
            f"Spearman rho, heads with a {sign} effect ({int(r['heads'])}) against the {mode} "
            f"score: {r['spearman rho']:.3f} (p = {r['p']:.2g})."
        )
    return lines


def known_findings(known: pd.DataFrame) -> list[str]:
    """Per given role: how many of the given heads MAPS recognises, and which it does not."""
    lines = []
    for role, d in known.groupby("given role", sort=False):
        missed = ", ".join(d.index[~d["maps recognises"]]) or "none"
        found = int((d["role found"] != NO_ROLE).sum())
        lines.append(
            f"{role}s ({len(d)}): MAPS recognises {int(d['maps recognises'].sum())} (not: {missed}); "
            f"this run's behaviour gives {found} of them a role."
        )
    return lines
