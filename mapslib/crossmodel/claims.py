"""The paper's claims, checked on the book's models: the verdicts, their evidence and their text.

`claim_checks` tests the paper's claims on the cross-model tables (`universality`,
`universality_behaviour`) by the rules in `claim_rules.CLAIM_RULES`: every verdict is computed from
the tables, never written by hand. `claims_markdown` writes the verdicts out as text, with each
model's evidence and, where a model does not support a claim, the facts in its tables that may
explain it. `write_tables` writes the chapter's tables with these rules in their sidecars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapslib.behaviour.correlation import CLEAR_MARGIN
from mapslib.behaviour.known_heads import PREDICTED_SIDE, ROLES
from mapslib.crossmodel.claim_rules import (
    CLAIM_ORDER,
    CLAIM_RULES,
    COMBINE_RULE,
    MIN_CLASSIFIED,
    MIXED,
    NOT_SUPPORTED,
    NOT_TESTABLE,
    SIMILAR_MAX,
    SUPPORTED,
    combine,
    direction_verdict,
    multi_category_range,
    range_verdict,
    share_verdict,
)
from mapslib.crossmodel.parts import (
    DEFAULT_READING,
    ModelPart,
    median_r,
    readings_for,
    size_text,
    sources,
)
from mapslib.crossmodel.universality import (
    DEPTH_RULE,
    classified_heads,
    depth_table,
    group_sharing_test,
    random_baseline_table,
    score_spread,
)
from mapslib.crossmodel.universality_behaviour import (
    MIN_DRAWS_FOR_P,
    STRONG_R,
    causal_effects,
    correlation_frame,
    correlation_rules,
    paper_causal_rules,
    paper_correlation_frame,
)
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.relations import label_of
from mapslib.report.reference import (
    GPT2_XL_MAX_SCORES,
    PAPER_CLAIMS,
    PAPER_MODEL_PARAMS,
    PAPER_MULTI_CATEGORY_SHARE,
    PAPER_RANDOM_BASELINE,
    PAPER_SUPPRESSION_SHARE,
)


def _pct(k: int, n: int) -> str:
    return f"{k} of {n} ({k / n:.0%})" if n else "0 of 0"


class _Checker:
    """The claims' checks on a set of parts, each returning (verdict, evidence) for one model, and
    the facts the `why` column draws on."""

    def __init__(self, parts: list[ModelPart], readings: dict[str, str], tau: float, **kw: Any):
        self.parts, self.readings, self.tau, self.kw = parts, readings, tau, kw
        self.spread = score_spread(parts, readings, tau)
        self.effects = causal_effects(parts)

    def heads(self, p: ModelPart) -> pd.DataFrame:
        """The part's classified heads under its reading."""
        return classified_heads(p, self.readings[p.name], self.tau)

    def effects_of(self, p: ModelPart) -> pd.DataFrame:
        """The part's rows of `causal_effects` (empty when no relation ran)."""
        return self.effects[self.effects["model"] == p.name] if len(self.effects) else self.effects

    # each check: (verdict, evidence) for one model
    def depth(self, p: ModelPart) -> tuple[str, str]:
        row = depth_table([p], self.readings, self.tau).iloc[0]
        n, share = int(row["classified heads"]), row["share in upper two thirds"]
        if n < MIN_CLASSIFIED:
            return NOT_TESTABLE, f"{n} classified heads"
        k = int(round(share * n))
        effect = share - row["share of all heads there"]
        return direction_verdict(effect, row["p (binomial, greater)"]), (
            f"{_pct(k, n)} classified heads in the upper two thirds, against "
            f"{row['share of all heads there']:.0%} of all heads (p = {row['p (binomial, greater)']:.2g})"
        )

    def grouped(self, p: ModelPart) -> tuple[str, ...]:
        if p.n_kv_heads is None or p.n_kv_heads in (1, p.n_heads):
            return NOT_TESTABLE, f"{p.attention} attention", False
        if (n := len(self.heads(p))) < MIN_CLASSIFIED:
            return NOT_TESTABLE, f"{n} classified heads"
        t = group_sharing_test(
            p.scores(self.readings[p.name]), p.n_heads, p.n_kv_heads, self.tau, **self.kw
        )
        if t["same_group_pairs"] == 0:
            return NOT_TESTABLE, "no relation heads"
        effect = t["same_group_rate"] - t["random_placement_rate"]
        return direction_verdict(effect, t["p"]), (
            f"same-group rate {t['same_group_rate']:.2f} against {t['random_placement_rate']:.2f} "
            f"under random placement (p = {t['p']:.3g})"
        )

    def multi_category(self, p: ModelPart) -> tuple[str, str]:
        heads, bounds = self.heads(p), multi_category_range(p.parameters)
        if bounds is None:
            return NOT_TESTABLE, "size unknown"
        k, n = int((heads["n_categories"] > 1).sum()), len(heads)
        return range_verdict(k, n, *bounds), (
            f"{_pct(k, n)} multi-category; the paper's trend at {size_text(p.parameters)}: "
            f"{bounds[0]:.0%}-{bounds[1]:.0%}"
        )

    def suppression(self, p: ModelPart) -> tuple[str, str]:
        heads = self.heads(p)
        k, n = int(heads["has_suppression"].sum()), len(heads)
        return range_verdict(k, n, *PAPER_SUPPRESSION_SHARE), f"{_pct(k, n)} suppress"

    def random_baseline(self, p: ModelPart) -> tuple[str, str]:
        t = random_baseline_table([p], self.tau)
        if p.name not in t.index:
            return NOT_TESTABLE, "no random baseline"
        row = t.loc[p.name]
        rnd = row["random over tau"] / row["random matrices"]
        real = row["real relation heads"] / row["heads"]
        worst = PAPER_RANDOM_BASELINE["GPT-2 xl"][0] / PAPER_RANDOM_BASELINE["GPT-2 xl"][2]
        verdict = SUPPORTED if rnd <= worst else NOT_SUPPORTED if rnd >= real / 2 else MIXED
        return verdict, (
            f"{row['random over tau']} of {row['random matrices']} random matrices over tau, "
            f"{row['real relation heads']} of {row['heads']} real heads"
        )

    def max_scores(self, p: ModelPart) -> tuple[str, str]:
        s = self.spread[self.spread["model"] == p.name].set_index(["relation", "mode"])["max_score"]
        items = [(key, v) for key, v in GPT2_XL_MAX_SCORES.items() if key in s.index]
        close = [key for key, v in items if abs(s[key] - v) <= SIMILAR_MAX]
        listed = ", ".join(f"{label_of(r)} ({m}) {s[(r, m)]:.2f} vs {v:.2f}" for (r, m), v in items)
        return share_verdict(len(close), len(items)), f"{_pct(len(close), len(items))}: {listed}"

    def graded(self, p: ModelPart) -> tuple[str, str]:
        s = self.spread[(self.spread["model"] == p.name) & self.spread["implemented"]]
        k, n = int(s["graded"].sum()), len(s)
        return share_verdict(k, n), f"{_pct(k, n)} implemented (relation, mode) graded"

    def _corr(self, p: ModelPart) -> dict[str, float] | None:
        frame = correlation_frame(p, self.readings[p.name])
        return None if frame is None else correlation_rules(frame, self.tau)

    def correlation(self, p: ModelPart) -> tuple[str, str]:
        c = self._corr(p)
        if c is None:
            return NOT_TESTABLE, "no correlations"
        return share_verdict(c["strong"], c["relations"]), (
            f"{_pct(c['strong'], c['relations'])} relations with r >= {STRONG_R} "
            f"(median {c['median r w/o context']:.2f})"
        )

    def context(self, p: ModelPart) -> tuple[str, str]:
        c = self._corr(p)
        if c is None:
            return NOT_TESTABLE, "no correlations"
        return share_verdict(c["holds with context"], c["strong, both defined"]), (
            f"{_pct(c['holds with context'], c['strong, both defined'])} strong relations hold "
            f"(median r over all {c['median r w/o context']:.2f} -> {c['median r w/ context']:.2f})"
        )

    def low_max(self, p: ModelPart) -> tuple[str, str]:
        c = self._corr(p)
        if c is None:
            return NOT_TESTABLE, "no correlations"
        a, b = c["median r, implemented"], c["median r, not implemented"]
        evidence = (
            f"median r {a:.2f} over {c['implemented']} implemented relations, {b:.2f} over the "
            f"other {c['relations'] - c['implemented']}"
        )
        if not (np.isfinite(a) and np.isfinite(b)):
            return NOT_TESTABLE, evidence
        return (SUPPORTED if a > b else NOT_SUPPORTED), evidence

    def causal(self, p: ModelPart) -> tuple[str, str]:
        e = self.effects_of(p)
        if e.empty:
            return NOT_TESTABLE, "no relation ran"
        k, n = int(e["relation heads hurt more"].sum()), len(e)
        return share_verdict(k, n), f"{_pct(k, n)} relations ({e['test'].iloc[0]})"

    def control(self, p: ModelPart) -> tuple[str, str]:
        e = self.effects_of(p)
        e = e[e["relative drop, controls"].notna()] if len(e) else e
        if e.empty:
            return NOT_TESTABLE, "no relation with control tasks"
        k = int((e["relative drop, relation heads"] > e["relative drop, controls"]).sum())
        return share_verdict(k, len(e)), f"{_pct(k, len(e))} relations with controls"

    def known_heads(self, p: ModelPart) -> tuple[str, str]:
        found = p.table("known_heads.csv")
        if found is None:
            return NOT_TESTABLE, "no chapter 10 table"
        found = found[found["role"].isin(ROLES)]
        if found.empty:
            return NOT_TESTABLE, "no name mover found by behaviour"
        s = p.scores(self.readings[p.name])
        s = s[s["relation"] == "name_copying"].set_index(["layer", "head", "mode"])["score"]
        if s.empty:
            return NOT_TESTABLE, "name copying not scored"
        keys = zip(found["layer"], found["head"], found["role"].map(PREDICTED_SIDE), strict=True)
        over = pd.Series([s.get(key, np.nan) >= self.tau for key in keys], index=found.index)
        counts = [
            f"{role}s {int(over[found['role'] == role].sum())} of {int((found['role'] == role).sum())}"
            for role in ROLES
        ]
        k, n = int(over.sum()), len(over)
        return share_verdict(k, n), f"{_pct(k, n)} over tau on their side ({', '.join(counts)})"

    def reading(self, p: ModelPart) -> tuple[str, str]:
        med = median_r(p)
        if med is None:
            return NOT_TESTABLE, "no dynamic scores"
        if len(med) < 2 or DEFAULT_READING not in med:
            return NOT_TESTABLE, "one map only"
        gap = med.max() - med[DEFAULT_READING]
        listed = ", ".join(f"{m} {r:.2f}" for m, r in med.sort_values(ascending=False).items())
        return (SUPPORTED if gap <= CLEAR_MARGIN else NOT_SUPPORTED), f"median r: {listed}"

    # -- claims judged across the models only ---------------------------------------------------
    def multi_category_trend(self) -> tuple[str, str]:
        points = []
        for p in self.parts:
            heads = self.heads(p)
            if p.parameters is not None and len(heads) >= MIN_CLASSIFIED:
                points.append((p.parameters, float((heads["n_categories"] > 1).mean()), p.name))
        if len(points) < 2:
            return (
                NOT_TESTABLE,
                f"{len(points)} model(s) with size and >= {MIN_CLASSIFIED} classified heads",
            )
        points.sort()
        agree = total = 0
        for i, (s1, v1, _) in enumerate(points):
            for s2, v2, _ in points[i + 1 :]:
                if s2 > s1:
                    total += 1
                    agree += v2 < v1
        verdict = (
            NOT_TESTABLE
            if total == 0
            else (SUPPORTED if agree == total else NOT_SUPPORTED if agree == 0 else MIXED)
        )
        listed = ", ".join(f"{n} ({size_text(s)}) {v:.0%}" for s, v, n in points)
        return verdict, f"{agree} of {total} pairs fall with size: {listed}"

    def max_scores_book(self) -> tuple[str, str]:
        if len(self.parts) < 2:
            return NOT_TESTABLE, "one model"
        wide = self.spread.pivot_table(
            index=["relation", "mode"], columns="model", values="max_score"
        )
        wide = wide.dropna()
        wide = wide[(wide >= self.tau).any(axis=1)]
        span = wide.max(axis=1) - wide.min(axis=1)
        k, n = int((span <= SIMILAR_MAX).sum()), len(span)
        return share_verdict(k, n), (
            f"{_pct(k, n)} (relation, mode) that every model scores and some model implements span "
            f"<= {SIMILAR_MAX} (median span {span.median():.2f})"
        )

    # -- why a model may not support a claim ------------------------------------------------------
    def reasons(self, p: ModelPart, kinds: tuple[str, ...]) -> list[str]:
        """The facts of `kinds` (REASON_KINDS) in the part's tables that may explain a verdict."""
        reading = self.readings[p.name]
        if "experiment_reading" in kinds:  # the experiment chose its heads from the paper's map
            reading, kinds = DEFAULT_READING, (*kinds, "reading")
        found = [getattr(self, f"_why_{k}")(p, reading) for k in REASON_KINDS if k in kinds]
        return [why for why in found if why]

    def _why_few_heads(self, p: ModelPart, reading: str) -> str | None:
        own = self.readings[p.name]  # the model's own reading, not the experiment's
        n = len(self.heads(p))
        if n < MIN_CLASSIFIED:
            return f"{p.name}: only {n} of {p.heads} heads reach tau under the {own} reading"
        return None

    def _why_reading(self, p: ModelPart, reading: str) -> str | None:
        med = median_r(p)
        if med is not None and reading in med and med.max() - med[reading] > CLEAR_MARGIN:
            return (
                f"{p.name}: the {reading} map tracks its head outputs less well than "
                f"{med.idxmax()} (median r without context {med[reading]:.2f} vs {med.max():.2f})"
            )
        return None

    def _why_size(self, p: ModelPart, reading: str) -> str | None:
        smallest = min(PAPER_MODEL_PARAMS.values())
        if p.parameters is not None and p.parameters < smallest:
            return (
                f"{p.name}: {size_text(p.parameters)} parameters, below the paper's smallest "
                f"model ({size_text(smallest)})"
            )
        return None

    def _why_k(self, p: ModelPart, reading: str) -> str | None:
        k = p.k_range(reading)
        if k != (1, 10):
            return (
                f"{p.name}: k = {k[0]} / {k[1]} for its {p.vocabulary or '?'}-token "
                "vocabulary (GPT-2 xl: 1 / 10 for about 50k)"
            )
        return None

    def _why_unimplemented(self, p: ModelPart, reading: str) -> str | None:
        c = self._corr(p)
        if c is not None and c["implemented"] < c["relations"] / 2:
            return (
                f"{p.name}: only {c['implemented']} of {c['relations']} correlated relations "
                "have a head at tau (the paper ties low r to such relations)"
            )
        return None

    def _why_draws(self, p: ModelPart, reading: str) -> str | None:
        e = self.effects_of(p)
        if not len(e) or e["n_draws"].isna().any():
            return None
        draws = int(e["n_draws"].min())
        if draws < MIN_DRAWS_FOR_P:
            return (
                f"{p.name}: {draws} random draws, so p_random >= {1 / (1 + draws):.2f} and the "
                "2-std margin decides"
            )
        return None

    def _why_relation_heads(self, p: ModelPart, reading: str) -> str | None:
        e = self.effects_of(p)
        few = e[e["n_heads"] < 5] if len(e) else e
        if len(few):
            return (
                f"{p.name}: {len(few)} of {len(e)} relations ran with fewer than 5 relation "
                "heads (heads with a positive static score)"
            )
        return None


REASON_KINDS = (  # the facts a verdict may come with, in the order they are given
    "few_heads",
    "reading",
    "size",
    "k",
    "unimplemented",
    "draws",
    "relation_heads",
)


_PER_MODEL_CLAIMS: dict[str, tuple[str, ...]] = {  # claim -> the kinds of reasons it may have
    "depth": ("few_heads", "reading"),
    "grouped": ("few_heads", "reading"),
    "multi_category": ("few_heads", "reading", "size"),
    "suppression": ("few_heads", "reading", "size"),
    "random_baseline": (),
    "max_scores": ("reading", "size", "k"),
    "graded": ("few_heads", "reading"),
    "correlation": ("unimplemented", "reading"),
    "context": ("unimplemented", "size"),
    "low_max": (),
    "causal": ("draws", "relation_heads", "experiment_reading"),
    "control": ("relation_heads",),
    "known_heads": ("few_heads", "reading"),
    "reading": (),
}
_PAPER_KEY = {"multi_category_trend": "multi_category", "max_scores_book": "max_scores"}


def paper_evidence() -> dict[str, str]:
    """What the paper's own (quoted) numbers give under each claim's rule, where they allow it."""
    c, k = correlation_rules(paper_correlation_frame()), paper_causal_rules()
    multi = ", ".join(f"{m} {s:.0%}" for m, s in PAPER_MULTI_CATEGORY_SHARE.items())
    return {
        "multi_category": multi,
        "multi_category_trend": multi,
        "suppression": "{:.0%}-{:.0%} over six models".format(*PAPER_SUPPRESSION_SHARE),
        "random_baseline": "; ".join(
            f"{m} {r} of {n}" for m, (r, _, n) in PAPER_RANDOM_BASELINE.items()
        ),
        "max_scores": "GPT-2 xl: "
        + ", ".join(f"{label_of(r)} ({m}) {v:.2f}" for (r, m), v in GPT2_XL_MAX_SCORES.items()),
        "correlation": f"Llama-3.1 8B: {_pct(c['strong'], c['relations'])} with r >= {STRONG_R}",
        "context": f"Llama-3.1 8B: {_pct(c['holds with context'], c['strong, both defined'])} "
        "strong relations hold",
        "causal": f"Pythia 12B: {_pct(k['relation drop > random drop'], k['relations'])} "
        "(relative drop above random's; no std quoted)",
        "control": f"Pythia 12B: {_pct(k['task drop > control drop'], k['with controls'])}",
        "known_heads": "GPT-2 small: 5 of 5 (name movers 3 of 3, negative name movers 2 of 2); "
        "6 of 8 backup heads",
    }


def claim_checks(
    parts: list[ModelPart],
    reading: str | dict[str, str] = DEFAULT_READING,
    tau: float = DEFAULTS.tau,
    permutations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every claim of CLAIM_RULES checked on every model (and across them): one row per claim and
    model (`all models` for the combined verdict, COMBINE_RULE), with the evidence and, where a
    model does not support a claim, the facts that may explain it."""
    readings = readings_for(parts, reading)
    check = _Checker(parts, readings, tau, permutations=permutations, seed=seed)
    rows = []
    for claim in CLAIM_ORDER:
        verdicts = []
        if claim in _PER_MODEL_CLAIMS:
            for p in parts:
                verdict, evidence, *explainable = getattr(check, claim)(p)
                wanted = verdict != SUPPORTED and all(explainable)
                why = check.reasons(p, _PER_MODEL_CLAIMS[claim]) if wanted else []
                rows.append((claim, p.name, verdict, evidence, "; ".join(why)))
                verdicts.append(verdict)
            overall, evidence = combine(verdicts), ""
        else:
            overall, evidence = getattr(check, claim)()
        rows.append((claim, "all models", overall, evidence, ""))
    return pd.DataFrame(rows, columns=["claim", "model", "verdict", "evidence", "why"])


def claims_table(checks: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: its title, the paper's sentence, the verdict per model and overall."""
    wide = checks.pivot(index="claim", columns="model", values="verdict").reindex(
        [c for c in CLAIM_ORDER if c in set(checks["claim"])]
    )
    models = [m for m in dict.fromkeys(checks["model"]) if m != "all models"]
    wide = wide[models + ["all models"]].fillna("")
    wide.insert(0, "claim (title)", [CLAIM_RULES[c][0] for c in wide.index])
    wide.insert(1, "paper", [PAPER_CLAIMS.get(_PAPER_KEY.get(c, c), "") for c in wide.index])
    wide.columns.name = None
    return wide


def verdict_changes(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The (claim, model) rows of two `claim_checks` whose verdicts differ, with both."""
    key = ["claim", "model"]
    both = before.merge(after, on=key, suffixes=(" before", " after"))
    changed = both[both["verdict before"] != both["verdict after"]]
    cols = key + ["verdict before", "verdict after", "evidence before", "evidence after"]
    return changed[cols].reset_index(drop=True)


def rules_table() -> pd.DataFrame:
    """Every claim's rule, as applied (CLAIM_RULES), and the paper's own numbers under it."""
    evidence = paper_evidence()
    return pd.DataFrame(
        {
            "claim": [CLAIM_RULES[c][0] for c in CLAIM_ORDER],
            "rule": [CLAIM_RULES[c][1] for c in CLAIM_ORDER],
            "the paper's quoted numbers": [evidence.get(c, "") for c in CLAIM_ORDER],
        },
        index=pd.Index(CLAIM_ORDER, name="id"),
    )


def claims_markdown(checks: pd.DataFrame) -> str:
    """The verdicts as text, grouped by overall verdict, with each model's evidence and reasons."""
    overall = checks[checks["model"] == "all models"].set_index("claim")
    per_model = checks[checks["model"] != "all models"]
    lines = []
    heads = {
        SUPPORTED: "Supported (by every model that can test it)",
        MIXED: "Mixed (supported by some models, or only in part)",
        NOT_SUPPORTED: "Not supported (by any model that can test it)",
        NOT_TESTABLE: "Not testable with these tables",
    }
    for verdict, title in heads.items():
        claims = [
            c for c in CLAIM_ORDER if c in overall.index and overall.loc[c, "verdict"] == verdict
        ]
        if not claims:
            continue
        lines.append(f"**{title}**\n")
        for c in claims:
            lines.append(
                f"- *{CLAIM_RULES[c][0]}*"
                + (f": {overall.loc[c, 'evidence']}" if overall.loc[c, "evidence"] else "")
            )
            for _, r in per_model[per_model["claim"] == c].iterrows():
                why = f" Why it may be: {r['why']}." if r["why"] else ""
                lines.append(f"  - {r['model']}: {r['verdict']}; {r['evidence']}.{why}")
        lines.append("")
    return "\n".join(lines)


# -- writing the chapter's tables -------------------------------------------------------------------
def flat(table: pd.DataFrame) -> pd.DataFrame:
    """A table with its index as columns and multi-level column names joined by ' | ', for CSV."""
    out = table.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [" | ".join(str(c) for c in col if str(c)) for col in out.columns]
    return out.reset_index() if out.index.name or out.index.nlevels > 1 else out


def write_tables(
    out_dir: str | Path, tables: dict[str, pd.DataFrame], parts: list[ModelPart], **params: Any
) -> list[Path]:
    """Write each table as `out_dir/<name>.csv` with a sidecar naming the models' tables it was made
    from (`sources`), the parameters and the claims' rules."""
    from mapslib.foundation.io import environment, write_table

    meta = {
        "params": {"models": [p.name for p in parts], **params},
        "sources": sources(parts),
        "protocol": {"depth": DEPTH_RULE, "claims": CLAIM_RULES, "combine": COMBINE_RULE},
        "environment": environment(),
    }
    return [
        write_table(Path(out_dir) / f"{name}.csv", flat(t), meta)
        for name, t in tables.items()
        if not t.empty
    ]
