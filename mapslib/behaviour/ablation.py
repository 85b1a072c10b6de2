"""Causal check: remove the heads MAPS says implement a relation, and see the task that needs it fail.

For a relation R with a task prompt (PROTOCOL.md, 13 of them), every single-token pair (s, t) gives
a prompt; the model is right when its greedy next token is t's token (`" " + t`, one token for the
pairs that survive the filter). Heads are removed by zeroing their output (their slice of z) at
the last position only (`hooks.ablate_last`).

* Relation heads: the top m heads by static promote score among those scoring > 0, m from the
  model's number of heads (< 300 -> 30, < 500 -> 50, < 1000 -> 100, < 1500 -> 150, else 250).
  They are removed one by one in score order: the accuracy curve at every level 1..n.
* Random baseline: as many heads drawn from the heads *not* among the relation's top m, in
  `random_draws` seeded draws (default 200), each removed in its drawn order. Every draw is
  evaluated with all n removed ("minus random heads": mean and sample std over the draws, and the
  empirical p-value: the share of draws that hurt the task at least as much as the relation heads,
  (1 + #{draws <= relation}) / (1 + draws)); the first `curve_draws` (5, the paper's number of
  draws) are also evaluated at every `step`-th level, for the curves, and summarised the paper's way
  (mean, population std).
* Controls: up to 5 other relations whose top heads overlap R's by < 15% (share of R's heads that
  are also theirs) and whose base accuracy is within 0.2 of R's, closest base accuracy first; R's
  relation heads are removed on their tasks, at the same levels as the random baseline.
* A relation whose base accuracy is < 0.1 is skipped (kept in the table with its base accuracy) and
  is not used as a control.

Speed: a last-position ablation cannot change any earlier position, so each task's prompts run all
but their last token once (one KV cache); every (prompt, ablation set) pair then costs one token,
many pairs per forward, each row with its own head mask.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mapslib.behaviour.correlation import sample_indices
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.heads import Head, head_name
from mapslib.foundation.hooks import (
    ablate_last,
    extend,
    keep_masks,
    prefill,
    removal_tensor,
    select_rows,
)
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.relation_map.relations import Relation, TokenizedRelation, label_of, scorable

TASK_PROMPTS: dict[str, str] = {
    "country_to_capital_wikidata": "The capital of <X> is",
    "country_to_official_language_wikidata": "The official language of <X> is",
    "product_by_company": "Nesquik is made by Nestle; Mustang is made by Ford; <X> is made by",
    "object_superclass": "A <X> is a kind of",
    "adj_comparative": " lovely-> lovelier; edgy-> edgier; <X>->",
    "verb_past_tense": " hike->hiked; purchase-> purchased; <X>->",
    "word_first_letter": " word-> w, o, r, d; cat-> c, a, t; <X>->",
    "word_last_letter": " word-> d, r, o, w; cat-> t, a, c; <X>->",
    "year_to_following": " 1300-> 1301; 1000-> 1001; <X>->",
    "general_copying_english_500": " walk-> walk; cat-> cat; water-> water; <X>->",
    "name_copying": " John-> John; Donna-> Donna; <X>->",
    "entity_to_pronoun": " mother-> she; father-> he; tribe-> they; actress-> she; apartment-> it; <X>->",
    "english_to_spanish": " apartment-> departamento; computer-> computadora; tribe-> tribu; <X>->",
}
MIN_BASE = 0.1
MAX_OVERLAP = 0.15
MAX_BASE_GAP = 0.2
MAX_CONTROLS = 5
PROTOCOL = {
    "relation_heads": "top m heads by static promote score among scores > 0; m by the model's heads: "
    "< 300 -> 30, < 500 -> 50, < 1000 -> 100, < 1500 -> 150, else 250",
    "rules": {
        "min_base_accuracy": MIN_BASE,
        "control_max_overlap": MAX_OVERLAP,
        "control_max_base_gap": MAX_BASE_GAP,
        "max_controls": MAX_CONTROLS,
    },
    "accuracy": "greedy next token == the dst token (' ' + dst, single-token pairs)",
    "ablation": "heads' z zeroed at the last position only",
    "random": "mean and sample std (ddof 1) over all draws with n heads removed; p_random = "
    "(1 + #{draws with accuracy <= minus_relation}) / (1 + draws); minus_random_5: the first 5 "
    "draws, mean and population std (ddof 0), as the paper reports",
}
CURVE_DRAWS = 5  # random draws evaluated at every level (the curves), the paper's number of draws
SUMMARY_COLUMNS = [  # ablation_summary's, one row per relation
    "relation",
    "n_prompts",
    "n_heads",
    "base",
    "minus_relation",
    "minus_random",
    "minus_random_std",
    "n_draws",
    "p_random",
    "minus_random_5",
    "minus_random_5_std",
    "control_base",
    "control_minus_relation",
    "controls",
    "status",
]
ABLATION_COLUMNS = [
    "relation",
    "task",
    "heads",
    "draw",
    "n_removed",
    "accuracy",
    "n_prompts",
]


# -- which heads -------------------------------------------------------------------------------------
def n_relation_heads(total_heads: int) -> int:
    """m by the model's number of heads: < 300 -> 30, < 500 -> 50, < 1000 -> 100, < 1500 -> 150, else 250."""
    for bound, m in ((300, 30), (500, 50), (1000, 100), (1500, 150)):
        if total_heads < bound:
            return m
    return 250


def top_relation_heads(static: pd.DataFrame, relation: str, m: int) -> list[Head]:
    """The top `m` heads by static promote score among those scoring > 0, best first (ties by position)."""
    s = static[(static["relation"] == relation) & (static["mode"] == "promote")]
    s = s[s["score"] > 0].sort_values(["score", "layer", "head"], ascending=[False, True, True])
    return [(int(r.layer), int(r.head)) for r in s.head(m).itertuples()]


def random_heads(
    n_layers: int, n_heads: int, exclude: list[Head], n: int, seed: int, draw: int, relation: str
) -> list[Head]:
    """`n` heads drawn without replacement from those not in `exclude`, in drawn order (seeded)."""
    banned = set(exclude)
    pool = [(lay, h) for lay in range(n_layers) for h in range(n_heads) if (lay, h) not in banned]
    rng = np.random.default_rng([seed, draw, zlib.crc32(relation.encode())])
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def overlap(target: list[Head], other: list[Head]) -> float:
    """Share of the target's heads that are also the other relation's heads."""
    return len(set(target) & set(other)) / len(target) if target else 0.0


def choose_controls(
    target: str,
    heads: dict[str, list[Head]],
    base: dict[str, float],
    skipped: set[str],
    max_controls: int = MAX_CONTROLS,
    max_overlap: float = MAX_OVERLAP,
    max_gap: float = MAX_BASE_GAP,
) -> list[str]:
    """Up to `max_controls` relations with < `max_overlap` head overlap and base accuracy within `max_gap`."""
    fits = [
        r
        for r in heads
        if r != target
        and r not in skipped
        and overlap(heads[target], heads[r]) < max_overlap
        and abs(base[r] - base[target]) <= max_gap + 1e-9
    ]
    return sorted(fits, key=lambda r: (abs(base[r] - base[target]), r))[:max_controls]


def curve_levels(n: int, step: int) -> list[int]:
    """Levels 1..n at which a curve is evaluated: every `step`-th, and always n."""
    return sorted({*range(step, n + 1, step), n}) if n else []


# -- task prompts and accuracy ---------------------------------------------------------------------------
@dataclass
class Task:
    """The prompts of one relation's task, with the token a correct model predicts next."""

    relation: str
    prompts: list[str]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.prompts)


def build_task(relation: TokenizedRelation, max_prompts: int | None = None, seed: int = 0) -> Task:
    """Task prompts from the relation's single-token pairs (all, or `max_prompts` drawn from `seed`)."""
    template = TASK_PROMPTS[relation.name]
    chosen = sample_indices(len(relation), max_prompts, seed)
    prompts = [template.replace("<X>", relation.pairs[i][0]) for i in chosen]
    return Task(relation.name, prompts, [relation.dst_ids[i] for i in chosen])


class TaskRunner:
    """One task's prompts with their prefixes cached, scoring any number of head sets removed."""

    def __init__(self, hw: HeadWeights, tokenizer: Any, task: Task, batch_rows: int = 256):
        self.hw, self.task, self.batch_rows = hw, task, batch_rows
        device = hw.device
        ids = tokenizer(task.prompts)["input_ids"]  # the tokenizer's default special tokens
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, seq in enumerate(ids):
            by_length[len(seq)].append(i)
        self.groups = []  # (ids (B, t), targets (B,), cache of ids[:, :-1])
        with torch.inference_mode():
            for rows in by_length.values():
                batch = torch.tensor([ids[i] for i in rows], device=device)
                target = torch.tensor([task.targets[i] for i in rows], device=device)
                self.groups.append((batch, target, prefill(hw.model, batch[:, :-1])))

    def accuracy(self, removed: list[list[Head]]) -> np.ndarray:
        """Accuracy of the task with each head set of `removed` zeroed at the last position."""
        sets = removal_tensor(self.hw, removed)
        correct = torch.zeros(len(removed), device=sets.device)
        with torch.inference_mode():
            for batch, target, cache in self.groups:
                n = batch.shape[0]
                prompt = torch.arange(n, device=sets.device).repeat(len(removed))
                which = torch.arange(len(removed), device=sets.device).repeat_interleave(n)
                for r0 in range(0, len(prompt), self.batch_rows):
                    p, s = prompt[r0 : r0 + self.batch_rows], which[r0 : r0 + self.batch_rows]
                    with ablate_last(self.hw, keep_masks(sets[s])):
                        logits = extend(self.hw.model, batch[p, -1:], select_rows(cache, p), True)
                    correct.index_add_(0, s, (logits.argmax(-1) == target[p]).float())
        return correct.cpu().numpy().astype(np.float64) / len(self.task)


# -- the experiment --------------------------------------------------------------------------------------
def _rows(relation: str, task: Task, heads: str, draw: int, levels: list[int], acc) -> list[tuple]:
    """Table rows for accuracies `acc` at `levels`."""
    return [
        (relation, task.relation, heads, draw, n, float(a), len(task))
        for n, a in zip(levels, acc, strict=True)
    ]


def ablation_experiment(
    hw: HeadWeights,
    tokenizer: Any,
    relations: list[TokenizedRelation],
    static: pd.DataFrame,
    *,
    max_prompts: int | None = None,
    random_draws: int = 200,
    curve_draws: int = CURVE_DRAWS,
    seed: int = 0,
    step: int = 5,
    batch_rows: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracy curves for every relation with a task prompt: ABLATION_COLUMNS, one row per point.

    `heads` is none (base accuracy, n_removed 0), relation or random (`draw` 0.. ; else -1). Rows
    whose `task` differs from `relation` are controls: the relation's heads removed on that task.
    Random draws below `curve_draws` are evaluated at every `step`-th level, the others at n only.
    """
    with_task = [r for r in relations if r.name in TASK_PROMPTS]
    tasks = {r.name: build_task(r, max_prompts, seed) for r in with_task}
    m = n_relation_heads(hw.n_layers * hw.n_heads)
    heads = {name: top_relation_heads(static, name, m) for name in tasks}
    rows: list[tuple] = []
    base: dict[str, float] = {}
    bar = tqdm(total=2 * len(tasks), desc="tasks", disable=not progress)
    for name, task in tasks.items():  # pass 1: base, relation curve, random baseline
        runner = TaskRunner(hw, tokenizer, task, batch_rows)
        base[name] = float(runner.accuracy([[]])[0])
        rows += _rows(name, task, "none", -1, [0], [base[name]])
        top, n = heads[name], len(heads[name])
        if base[name] >= MIN_BASE and n:
            levels = [
                curve_levels(n, step) if d < curve_draws else [n] for d in range(random_draws)
            ]
            drawn = [
                random_heads(hw.n_layers, hw.n_heads, top, n, seed, d, name)
                for d in range(random_draws)
            ]
            sets = [top[:i] for i in range(1, n + 1)]
            sets += [r[:i] for r, lv in zip(drawn, levels, strict=True) for i in lv]
            acc = runner.accuracy(sets)
            rows += _rows(name, task, "relation", -1, list(range(1, n + 1)), acc[:n])
            at = n
            for d, lv in enumerate(levels):
                rows += _rows(name, task, "random", d, lv, acc[at : at + len(lv)])
                at += len(lv)
        bar.update(1)
    rows += _control_rows(hw, tokenizer, tasks, heads, base, step, batch_rows)
    bar.update(len(tasks))
    bar.close()
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def _control_rows(
    hw: HeadWeights,
    tokenizer: Any,
    tasks: dict[str, Task],
    heads: dict[str, list[Head]],
    base: dict[str, float],
    step: int,
    batch_rows: int,
) -> list[tuple]:
    """Pass 2: each relation's heads removed on its control tasks, one prefix cache per control."""
    skipped = {name for name, b in base.items() if b < MIN_BASE}
    wanted: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)  # control task -> targets
    for name in tasks:
        if name not in skipped and heads[name]:
            for c in choose_controls(name, heads, base, skipped):
                wanted[c].append((name, curve_levels(len(heads[name]), step)))
    rows: list[tuple] = []
    for c, targets in wanted.items():
        runner = TaskRunner(hw, tokenizer, tasks[c], batch_rows)
        acc = runner.accuracy([heads[t][:i] for t, levels in targets for i in levels])
        at = 0
        for t, levels in targets:
            rows += _rows(t, tasks[c], "relation", -1, levels, acc[at : at + len(levels)])
            at += len(levels)
    return rows


# -- summaries ---------------------------------------------------------------------------------------------
def ablation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per relation: base, minus relation heads, minus random heads (mean, std over draws), and the
    controls' mean base and mean accuracy minus the relation's heads; skipped relations say so."""
    out = []
    base = df[df["heads"] == "none"].set_index("task")["accuracy"]
    for rel in df["relation"].unique():
        d = df[df["relation"] == rel]
        own, ctrl = d[d["task"] == rel], d[d["task"] != rel]
        rel_curve = own[own["heads"] == "relation"]
        row: dict[str, Any] = {
            "relation": rel,
            "base": base[rel],
            "n_prompts": int(own["n_prompts"].iloc[0]),
        }
        if base[rel] < MIN_BASE:
            out.append(row | {"status": f"skipped: base accuracy < {MIN_BASE}"})
            continue
        if rel_curve.empty:
            out.append(row | {"status": "no head with a positive score"})
            continue
        n = int(rel_curve["n_removed"].max())
        rnd = own[(own["heads"] == "random") & (own["n_removed"] == n)].sort_values("draw")
        last = ctrl[ctrl["n_removed"] == n]
        minus_relation = float(rel_curve[rel_curve["n_removed"] == n]["accuracy"].iloc[0])
        row |= {
            "n_heads": n,
            "minus_relation": minus_relation,
            **random_control(rnd["accuracy"].to_numpy(), minus_relation),
            "control_base": float(base[last["task"]].mean()) if len(last) else np.nan,
            "control_minus_relation": float(last["accuracy"].mean()) if len(last) else np.nan,
            "controls": ", ".join(last["task"]),
            "status": "ok",
        }
        out.append(row)
    df = pd.DataFrame(out).reindex(columns=SUMMARY_COLUMNS)
    return df.astype({"n_heads": "Int64", "n_draws": "Int64"})


def random_control(acc: np.ndarray, minus_relation: float) -> dict[str, float | int]:
    """The random draws' accuracies with n heads removed, summarised against the relation heads'.

    Mean and sample std (ddof 1) over all draws; the empirical p-value of "random heads hurt as much":
    (1 + #{draws <= minus_relation}) / (1 + draws), never 0; and the first CURVE_DRAWS draws the
    paper's way (mean, population std), for the comparison with its 5 draws.
    """
    first = acc[:CURVE_DRAWS]
    return {
        "minus_random": float(acc.mean()) if len(acc) else np.nan,
        "minus_random_std": float(acc.std(ddof=1)) if len(acc) > 1 else np.nan,
        "n_draws": len(acc),
        "p_random": float((1 + np.sum(acc <= minus_relation)) / (1 + len(acc))),
        "minus_random_5": float(first.mean()) if len(first) else np.nan,
        "minus_random_5_std": float(first.std(ddof=0)) if len(first) else np.nan,
    }


def effects(summ: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per run relation: accuracy drop with its relation heads, with random heads (mean, sample std),
    on its controls, the empirical p-value, and whether the relation heads matter more: p < `alpha`
    (fewer than 5% of random sets hurt as much). With 5 draws this cannot pass (p >= 1/6), which is
    why the draws are many."""
    ok = summ[summ["status"] == "ok"].set_index("relation")
    out = pd.DataFrame(
        {
            "drop, relation heads": ok["base"] - ok["minus_relation"],
            "drop, random heads": ok["base"] - ok["minus_random"],
            "random std": ok["minus_random_std"],
            "drop on controls": ok["control_base"] - ok["control_minus_relation"],
            "random draws": ok["n_draws"],
            "p (random as harmful)": ok["p_random"],
        }
    )
    out["relation heads matter more"] = out["p (random as harmful)"] < alpha
    return out


def random_draws_table(summ: pd.DataFrame) -> pd.DataFrame:
    """Per run relation: the random control from all draws beside the paper's way (first 5, ddof 0)."""
    ok = summ[summ["status"] == "ok"].set_index("relation")
    return pd.DataFrame(
        {
            "minus relation heads": ok["minus_relation"],
            "random, first 5: mean": ok["minus_random_5"],
            "random, first 5: std (ddof 0)": ok["minus_random_5_std"],
            "random, all: mean": ok["minus_random"],
            "random, all: std (ddof 1)": ok["minus_random_std"],
            "draws": ok["n_draws"],
            "p (random as harmful)": ok["p_random"],
        }
    )


def check_task_relations(relations: list[Relation]) -> None:
    """Every relation must have a task prompt: say which do not, and which relations have one."""
    missing = [r.name for r in relations if r.name not in TASK_PROMPTS]
    if missing:
        raise BadArgument(
            f"no task prompt for {', '.join(missing)}; relations with one: {', '.join(TASK_PROMPTS)}"
        )


def run_ablation(
    lm: LoadedModel,
    relations: list[Relation],
    static: pd.DataFrame,
    out: str | Path | None,
    *,
    max_prompts: int | None = 100,
    random_draws: int = 200,
    step: int = 5,
    seed: int = 0,
    batch_rows: int = 256,
    static_source: str = "computed with the default map settings",
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The ablation experiment (ABLATION_COLUMNS) cached at `out` (.csv or folder; None: not written).

    `static` holds the static scores the relation heads are chosen from (made with `settings`);
    `static_source` says where they came from, for the sidecar. The per-relation summary is
    recorded there too.
    """
    check_task_relations(relations)
    tokenized = scorable(relations, lm.tokenizer, settings.min_pairs)
    params = {"relations": [t.relation.sha256 for t in tokenized], "static": static_source}
    params |= {"max_prompts": max_prompts, "random_draws": random_draws, "step": step, "seed": seed}
    params |= settings.changed("embedding", "k", "min_pairs", "bias", "norms")  # made `static`
    return run_cached(
        lm,
        out,
        "ablation.csv",
        params,
        lambda: ablation_experiment(
            lm.hw,
            lm.tokenizer,
            tokenized,
            static,
            max_prompts=max_prompts,
            random_draws=random_draws,
            seed=seed,
            step=step,
            batch_rows=batch_rows,
            progress=progress,
        ),
        found=lambda table: {
            "static": static_source,
            "summary": _records(ablation_summary(table)),
            "task_prompts": {t.name: TASK_PROMPTS[t.name] for t in tokenized},
        },
        settings=settings,
        recompute=recompute,
        protocol=PROTOCOL,
        header=header,
        step="ablate",
    )


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts, missing values as None (JSON has no NaN)."""
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def relation_head_table(static: pd.DataFrame, heads: dict[str, list[Head]]) -> pd.DataFrame:
    """Per relation: heads with a positive static promote score, relation heads used, the top five."""
    promote = static[(static["mode"] == "promote") & (static["score"] > 0)]
    positive = promote.groupby("relation").size()
    return pd.DataFrame(
        {
            "heads with score > 0": [int(positive.get(r, 0)) for r in heads],
            "relation heads": [len(h) for h in heads.values()],
            "strongest five": [", ".join(head_name(*x) for x in h[:5]) for h in heads.values()],
        },
        index=pd.Index(list(heads), name="relation"),
    )


def overlap_matrix(heads: dict[str, list[Head]]) -> pd.DataFrame:
    """Share of the row relation's heads that are also the column relation's."""
    return pd.DataFrame(
        [[overlap(heads[a], heads[b]) for b in heads] for a in heads],
        index=pd.Index(list(heads), name="share of"),
        columns=list(heads),
    )


def effect_sentence(summ: pd.DataFrame, relation: str) -> str:
    """One line on a relation's result: base, minus its heads, minus as many random heads."""
    by_rel = summ.set_index("relation")
    if relation not in by_rel.index or by_rel.loc[relation, "status"] != "ok":
        return f"{label_of(relation).lower()} is not run for this model or these parameters"
    c = by_rel.loc[relation]
    return (
        f"base {c['base']:.3f}; minus its {int(c['n_heads'])} relation heads "
        f"{c['minus_relation']:.3f} (drop {c['base'] - c['minus_relation']:.3f}); minus as many "
        f"random heads {c['minus_random']:.3f} ± {c['minus_random_std']:.3f} over "
        f"{int(c['n_draws'])} draws (drop {c['base'] - c['minus_random']:.3f}; share of random sets "
        f"that hurt as much, p = {c['p_random']:.3f})"
    )
