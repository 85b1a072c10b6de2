"""Pillar (b) end to end: evidence, descriptions and the likelihood judge's groups, for one model.

The steps, each its own module: `evidence.head_evidence` computes per head what its 30 seen lines
show (copying, relations over tau, recurring targets, token classes) and a category, with no LLM;
`describe` gives those facts to the LLM, which picks a category and writes one sentence;
`likelihood.likelihood_judge` scores a description by how much it raises the log-likelihood of the
head's real mappings of 5 tokens the describer never saw, against 3 other heads' mappings of the
same tokens. This module builds the descriptions the judge reads, one set per group:

- `positive control: seen mappings`: the 30 lines themselves (the judge must score far above chance);
- `evidence template (no LLM)`: the sentence `evidence.template_description` writes from the facts
  alone, the baseline any LLM describer must beat;
- `own description`: the LLM's category and sentence;
- `shuffled description (control)`: another head's LLM description (chance expected);
- `empty description (control)`: nothing (chance by construction: every option's PMI is 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapslib.foundation.settings import DEFAULTS
from mapslib.salient.evidence import head_evidence, template_description
from mapslib.salient.judge import JudgeSetup
from mapslib.salient.likelihood import (
    EMPTY,
    EVIDENCE,
    OWN,
    POSITIVE,
    SHUFFLED,
    empty,
    run_likelihood_judgement,
    seen_descriptions,
    shuffled,
)

# the judge by default: the smallest instruct model on the package index whose positive control
# is far above chance (benchmarks/bench_judge.py: 0.83 on 60 SmolLM2 questions; the 1.5B: 0.93 at
# twice the time per head)
JUDGE_MODEL = "qwen2.5-coder-0.5b"  # a model alias (assembled from the package index) or a .gguf


def judge_gguf(model: str = JUDGE_MODEL) -> Path:
    """The judge's GGUF file: a model alias's (assembled on first use) or the path given."""
    from mapslib.foundation.packaged import ALIASES

    return ALIASES[model].path() if model in ALIASES else Path(model)


def evidence_table(
    salient: pd.DataFrame, relation_scores: pd.DataFrame | None, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """`head_evidence` of the described lines, with the template sentence of each head."""
    ev = head_evidence(salient, relation_scores, tau)
    by_head = dict(iter(salient.groupby(["layer", "head"], sort=True)))
    ev["template"] = [
        template_description(row, by_head[(row["layer"], row["head"])]) for _, row in ev.iterrows()
    ]
    return ev


def described_text(row: pd.Series) -> str:
    """What the judge reads of an LLM description: `category: sentence` for the category prompt,
    the inputs and pattern sentences for the paper's prompt."""
    category = str(row.get("category") or "")
    pattern = "" if pd.isna(row.get("pattern")) else str(row.get("pattern"))
    if category:
        return f"{category}: {pattern}".strip().rstrip(":")
    inputs = "" if pd.isna(row.get("inputs")) else str(row.get("inputs"))
    return "\n".join(p for p in (f"Inputs: {inputs}" if inputs else "", f"Pattern: {pattern}") if p)


def judge_contexts(
    salient_all: pd.DataFrame,
    setup: JudgeSetup,
    evidence: pd.DataFrame,
    descriptions: pd.DataFrame | None,
) -> dict[str, dict[str, str]]:
    """The description each group gives each head (module docstring); LLM groups only for heads
    the LLM described (pattern or no pattern)."""
    seen = seen_descriptions(salient_all, setup)
    contexts = {
        POSITIVE: seen,
        EVIDENCE: dict(zip(evidence["name"], evidence["template"], strict=True)),
    }
    if descriptions is not None:
        done = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
        own = {f"{int(r['layer'])}.{int(r['head'])}": described_text(r) for _, r in done.iterrows()}
        if own:
            contexts[OWN] = own
            contexts[SHUFFLED] = shuffled(own, setup.seed)
    contexts[EMPTY] = empty(sorted(seen))
    return contexts


def judge_file_name(model: str = JUDGE_MODEL) -> str:
    """The judge's GGUF file name, without assembling it (it names the judge in the parameters)."""
    from mapslib.foundation.packaged import ALIASES

    known = ALIASES.get(model)
    return str(known.filename) if known is not None and known.filename else Path(model).name


def export_judge_scores(model: str = JUDGE_MODEL) -> Path:
    """Write the judge's cached scores into the committed store (`likelihood.export_scores`)."""
    from mapslib.salient.likelihood import cache_name, export_scores

    return export_scores(cache_name(judge_file_name(model)))


def run_assessment(
    items: pd.DataFrame,
    contexts: dict[str, dict[str, str]],
    judge_model: str,
    out: str | Path | None,
    setup: JudgeSetup,
    describer: dict[str, Any] | None,
    recompute: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The likelihood judge over every group, cached at `out` (read back with no model when the
    same questions and descriptions made it); the judge's GGUF is found only to score what is
    neither cached nor committed, in `workers` processes (default: one per core, at most 8)."""
    from mapslib.salient.parallel_judge import default_workers

    params = {"setup": vars(setup), "describer": describer, "groups": list(contexts)}
    return run_likelihood_judgement(
        items,
        contexts,
        lambda: judge_gguf(judge_model),
        out,
        params,
        seed=setup.seed,
        recompute=recompute,
        name=judge_file_name(judge_model),
        workers=default_workers() if workers is None else workers,
        progress=progress,
    )


def own_p_values(judged: pd.DataFrame) -> tuple[float, float]:
    """One-sided paired permutation p that the LLM's descriptions beat another head's, and that
    they beat the evidence template (NaN without LLM descriptions)."""
    from mapslib.salient.likelihood import paired_permutation_p

    if OWN not in set(judged["group"]):
        return float("nan"), float("nan")
    return paired_permutation_p(judged, OWN, SHUFFLED), paired_permutation_p(judged, OWN, EVIDENCE)


def try_assessment(*args: Any, **kwargs: Any) -> pd.DataFrame | None:
    """`run_assessment`, or None with the reason printed when its table must be computed and the
    judge cannot run here (llama-cpp-python or the judge's model missing): a book built without
    them still renders, saying what is missing."""
    from mapslib.errors import MapsError

    try:
        return run_assessment(*args, **kwargs)
    except MapsError as e:
        print(f"The judge cannot run here, and no judged table matches these questions: {e}")
        return None


def judged_by_category(
    judged: pd.DataFrame, evidence: pd.DataFrame, descriptions: pd.DataFrame | None
) -> pd.DataFrame:
    """Accuracy per group and category (the evidence's category, and the LLM's where it gave one:
    a part with no LLM answer gets no LLM column, not one blank category)."""
    cats = evidence[["name", "category"]].rename(columns={"category": "evidence category"})
    out = judged.merge(cats, on="name", how="left")
    given = descriptions is not None and "category" in descriptions
    if given and descriptions["category"].fillna("").astype(str).str.len().gt(0).any():
        llm = descriptions.assign(
            name=descriptions["layer"].astype(int).astype(str)
            + "."
            + descriptions["head"].astype(int).astype(str)
        )
        out = out.merge(
            llm[["name", "category"]].rename(columns={"category": "LLM category"}),
            on="name",
            how="left",
        )
    return out


def side_by_side(
    salient: pd.DataFrame,
    evidence: pd.DataFrame,
    descriptions: pd.DataFrame | None,
    judged: pd.DataFrame,
    heads: list[str],
    lines: int = 3,
) -> pd.DataFrame:
    """Per head: its first `lines` seen mappings, the evidence's category and template, the LLM's
    category and sentence, and the judge's accuracy with each, so a reader can judge the judge."""
    from mapslib.salient.mappings import mapping_lines

    acc = judged.groupby(["name", "group"])["correct"].mean().unstack()
    ev = evidence.set_index("name")
    desc = None
    if descriptions is not None:
        desc = descriptions.assign(
            name=descriptions["layer"].astype(int).astype(str)
            + "."
            + descriptions["head"].astype(int).astype(str)
        ).set_index("name")
    rows = []
    for name in heads:
        la, h = (int(x) for x in name.split("."))
        row = {
            "head": name,
            "mappings": "\n".join(mapping_lines(salient, la, h)[:lines]),
            "evidence category": ev.loc[name, "category"],
            "template": ev.loc[name, "template"],
            "template score": acc.get(EVIDENCE, pd.Series(dtype=float)).get(name),
        }
        if desc is not None and name in desc.index:
            row["LLM category"] = desc.loc[name, "category"]
            row["LLM sentence"] = desc.loc[name, "pattern"]
        row["LLM score"] = acc.get(OWN, pd.Series(dtype=float)).get(name)
        row["seen-lines score"] = acc.get(POSITIVE, pd.Series(dtype=float)).get(name)
        rows.append(row)
    return pd.DataFrame(rows).set_index("head")


def spread_heads(evidence: pd.DataFrame, n: int = 20) -> list[str]:
    """`n` heads for the side-by-side table: every evidence category represented, then spread
    over depth (deterministic)."""
    picked: list[str] = []
    for _, g in evidence.groupby("category", sort=True):
        picked += g["name"].iloc[[0, len(g) // 2]].drop_duplicates().tolist()
    picked = picked[:n]
    rest = evidence[~evidence["name"].isin(picked)]["name"]
    want = min(len(rest), n - len(picked))
    if want > 0:  # evenly over the remaining heads in layer order, first and last included
        picked += rest.iloc[np.linspace(0, len(rest) - 1, want).round().astype(int)].tolist()
    return picked


def assessment_verdict(acc: pd.DataFrame, p_own_shuffled: float, p_own_template: float) -> str:
    """What the judge's table says, in words: whether the judge works (positive control over
    chance, controls at chance) and whether the LLM beats its controls and the template."""
    a = acc.set_index("group")

    def show(g: str) -> str:
        r = a.loc[g]
        return f"{r['accuracy']:.2f} [{r['ci low']:.2f}, {r['ci high']:.2f}]"

    out = []
    if POSITIVE in a.index:
        works = a.loc[POSITIVE, "ci low"] > a.loc[POSITIVE, "chance"]
        out.append(
            f"The judge {'works' if works else 'FAILS its positive control'}: the seen mappings "
            f"score {show(POSITIVE)} (chance {a.loc[POSITIVE, 'chance']:.2f})"
        )
    for g in (SHUFFLED, EMPTY):
        if g in a.index:
            out.append(f"{g}: {show(g)}")
    if EVIDENCE in a.index:
        out.append(f"the evidence template (no LLM): {show(EVIDENCE)}")
    if OWN in a.index:
        out.append(
            f"the LLM's own descriptions: {show(OWN)}; better than another head's description: "
            f"p = {p_own_shuffled:.3g}; better than the template: p = {p_own_template:.3g}"
        )
        if EVIDENCE in a.index:
            out.append(
                _against_template(
                    a.loc[OWN, "accuracy"], a.loc[EVIDENCE, "accuracy"], p_own_template
                )
            )
    return ".\n".join(out) + "."


def _against_template(llm: float, template: float, p: float, alpha: float = 0.05) -> str:
    """The LLM against the no-LLM template, in words (one-sided p that the LLM is better)."""
    if p < alpha:
        return "So the LLM's sentences carry more about the head than its facts alone"
    if llm < template:
        return (
            "So the LLM describer does not beat its own evidence template: the sentence written "
            "from the facts alone predicts more held-out mappings than the LLM's"
        )
    return "So the LLM describer adds nothing measurable to its evidence template"


def judged_part(salient_all: pd.DataFrame, evidence: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The salient rows of the heads the judge asks: every head (`n` None), or `n` heads chosen
    by `spread_heads` (every evidence category, then spread over depth)."""
    if n is None:
        return salient_all
    keep = set(spread_heads(evidence, n))
    names = (
        salient_all["layer"].astype(int).astype(str)
        + "."
        + salient_all["head"].astype(int).astype(str)
    )
    return salient_all[names.isin(keep)]
