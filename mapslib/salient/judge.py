"""Scoring descriptions without people: does a description predict what the head does to new tokens?

The paper judged descriptions by a human study. This check is automatic and reproducible. For each
head, the describer sees its 30 most salient tokens (as in the paper); the next `held_out` salient
tokens are kept back. For each held-out token, a judge (an LLM given *only* the description) must
pick the head's real top mappings of that token among `options` lists: the real one and the top
mappings of the *same* token under other heads of the model, drawn at random. Because every option
starts from the same source token, the judge cannot answer from the token alone; only a description
that says what the head does to such tokens helps. Chance is 1 / `options`.

Controls: heads the describer called "Unclear" should score near chance, and so should every head
judged with another head's description (a shuffled-description control, a seeded derangement).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from tqdm import tqdm

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import Computed, cached_table
from mapslib.foundation.heads import Head, all_heads
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.salient.describe import Describer
from mapslib.salient.mappings import mapping_table, top_mappings

LETTERS = "ABCDEFGH"
JUDGE_SYSTEM = (
    "You predict what an attention head of a language model does from a short description of it. "
    "You answer with a single JSON object and nothing else."
)
JUDGE_TEMPLATE = """You will read a description of one attention head, then {n} questions. Each \
question names a source token the head attends to and offers {m} lists of tokens, labelled \
{labels}. Exactly one list holds the tokens this head promotes most when it attends to that source \
token, strongest first; the other lists come from other heads. Tokens are shown as in the \
vocabulary: '␣' stands for a leading space. Using the description, pick the list that fits it best.

Answer with a JSON object with one field, "answers": a list of {n} letters, one per question, in order.

Description of the head:
{description}

Questions:
{questions}"""


HELD_COLUMNS = ["layer", "head", "item", "source_id", "source", "real"]
ITEM_COLUMNS = ["layer", "head", "item", "source", "options", "option_heads", "answer"]
JUDGED_COLUMNS = [
    *["layer", "head", "name", "item", "status", "description_of", "answer", "picked", "correct"]
]


@dataclass(frozen=True)
class JudgeSetup:
    """How the held-out test is built: tokens kept back, options per question, and the seed."""

    described: int = 30  # salient tokens the describer sees (the paper's 30)
    held_out: int = 5  # the next salient tokens, kept back for the judge
    options: int = 4  # lists per question: the real one and options - 1 from other heads
    seed: int = 0

    @property
    def chance(self) -> float:
        """Accuracy of a judge that guesses."""
        return 1.0 / self.options


def with_descriptions(salient: pd.DataFrame, descriptions: pd.DataFrame) -> pd.DataFrame:
    """The rows of the heads that have a description (pattern or "Unclear"): the ones to judge."""
    answered = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
    keys = set(zip(answered["layer"].astype(int), answered["head"].astype(int), strict=True))
    pairs = zip(salient["layer"].astype(int), salient["head"].astype(int), strict=True)
    return salient[[p in keys for p in pairs]]  # by (layer, head): a table read back may hold
    # names as numbers


def described_part(salient: pd.DataFrame, setup: JudgeSetup) -> pd.DataFrame:
    """The rows the describer sees: each head's first `described` salient tokens."""
    return salient[salient["salient_rank"] <= setup.described]


def held_out_sources(salient: pd.DataFrame, setup: JudgeSetup) -> pd.DataFrame:
    """One row per head and held-out token: its id, text and real top mappings (shown, joined)."""
    rows = []
    last = setup.described + setup.held_out
    for (layer, head), grp in salient.groupby(["layer", "head"], sort=True):
        keep = grp[(grp["salient_rank"] > setup.described) & (grp["salient_rank"] <= last)]
        if keep["salient_rank"].nunique() < setup.held_out:
            raise ValueError(
                f"head {layer}.{head} has {keep['salient_rank'].nunique()} salient tokens past the "
                f"first {setup.described}; compute the salient mappings with top_tokens={last}"
            )
        tab = mapping_table(keep, int(layer), int(head))
        ids = keep.drop_duplicates("salient_rank").sort_values("salient_rank")["source_id"]
        for item, (src, targets, sid) in enumerate(
            zip(tab["source"], tab["targets"], ids, strict=True)
        ):
            rows.append(
                dict(
                    layer=int(layer),
                    head=int(head),
                    item=item,
                    source_id=int(sid),
                    source=src,
                    real=targets,
                )
            )
    return pd.DataFrame(rows, columns=HELD_COLUMNS)  # columns kept when no head is described


def _distractor_heads(heads: list[Head], own: Head, n: int, rng: np.random.Generator) -> list[Head]:
    """`n` other heads of the model, in a seeded random order (more than needed: some may tie)."""
    others = [h for h in heads if h != own]
    order = rng.permutation(len(others))[: min(len(others), n)]
    return [others[i] for i in order]


def judge_items(
    hw: HeadWeights,
    tokenizer: Any,
    salient: pd.DataFrame,
    setup: JudgeSetup,
    settings: MapSettings = DEFAULTS,
) -> pd.DataFrame:
    """The questions: per head and held-out token, shuffled options and the index of the real one.

    A distractor is the same token's top mappings under another head of the model; heads whose list starts with
    the same top target as the real one are skipped, so no two options look alike at a glance. The
    real list's position is the question's running index modulo its option count (heads, then
    items, in order), so every position holds the answer equally often and a judge that favours a
    position scores chance exactly; the distractors' order is seeded random.
    """
    held = held_out_sources(salient, setup)
    pool = all_heads(hw)  # distractors come from every head, whichever heads are judged
    spare = 3 * (setup.options - 1)  # candidates per question, of which options - 1 are kept
    plan = {
        r.Index: _distractor_heads(
            pool,
            (r.layer, r.head),
            spare,
            np.random.default_rng([setup.seed, r.layer, r.head, r.item]),
        )
        for r in held.itertuples()
    }
    lists = _top_lists(hw, tokenizer, held, plan, settings)
    rows = []
    for index, r in enumerate(held.itertuples()):
        first = r.real.split(", ")[0]
        kept = [h for h in plan[r.Index] if lists[(h, r.source_id)].split(", ")[0] != first]
        kept = kept[: setup.options - 1]
        order = np.random.default_rng([setup.seed, r.layer, r.head, r.item, 1]).permutation(
            len(kept)
        )
        kept = [kept[i] for i in order]  # the distractors in a seeded random order
        answer = index % (len(kept) + 1)  # the real list's position cycles over the questions
        options = [lists[(h, r.source_id)] for h in kept]
        names = [f"{la}.{h}" for la, h in kept]
        options.insert(answer, r.real)
        names.insert(answer, f"{r.layer}.{r.head}")
        rows.append(
            dict(
                layer=r.layer,
                head=r.head,
                item=r.item,
                source=r.source,
                options=options,
                option_heads=names,
                answer=answer,
            )
        )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def _top_lists(
    hw: HeadWeights,
    tokenizer: Any,
    held: pd.DataFrame,
    plan: dict[Any, list[Head]],
    settings: MapSettings,
) -> dict[tuple[Head, int], str]:
    """Top-5 targets (shown, joined) of each asked token under each distractor head: one
    `top_mappings` call per head, for all the tokens it is asked about."""
    asked: dict[Head, set[int]] = {}
    for r in held.itertuples():
        for h in plan[r.Index]:
            asked.setdefault(h, set()).add(r.source_id)
    lists = {}
    for (layer, head), ids in asked.items():
        ids_sorted = sorted(ids)
        targets = top_mappings(hw, tokenizer, layer, head, ids_sorted, k=5, settings=settings)
        joined = targets["target"].tolist()  # ordered by source, then rank
        for i, sid in enumerate(ids_sorted):
            lists[((layer, head), sid)] = ", ".join(joined[5 * i : 5 * i + 5])
    return lists


def description_text(row: pd.Series) -> str:
    """What the judge reads of a description: its inputs and pattern sentences."""
    parts = [f"Inputs: {row['inputs']}" if row.get("inputs") else "", f"Pattern: {row['pattern']}"]
    return "\n".join(p for p in parts if p)


def judge_messages(description: str, items: pd.DataFrame) -> list[dict[str, str]]:
    """The chat messages for one head's questions; the instructions come first (shared prefix)."""
    m = len(items["options"].iloc[0])
    questions = []
    for n, r in enumerate(items.itertuples(), start=1):
        opts = " ".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(r.options))
        questions.append(f"{n}. source {r.source}: {opts}")
    user = JUDGE_TEMPLATE.format(
        n=len(items),
        m=m,
        labels=", ".join(LETTERS[:m]),
        description=description,
        questions="\n".join(questions),
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def judge_schema(n: int, m: int) -> dict[str, Any]:
    """JSON schema of the judge's answer: exactly n letters out of the first m."""
    letter = {"type": "string", "enum": list(LETTERS[:m])}
    answers = {"type": "array", "items": letter, "minItems": n, "maxItems": n}
    return {"type": "object", "properties": {"answers": answers}, "required": ["answers"]}


def parse_judgement(text: str | None, n: int, m: int) -> list[int] | None:
    """The picked option per question (0-based), or None unless there are exactly n valid letters."""
    if not text:
        return None
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    try:
        obj = json.loads(match.group(0) if match else text)
    except json.JSONDecodeError:
        return None
    answers = obj.get("answers") if isinstance(obj, dict) else None
    if not isinstance(answers, list) or len(answers) != n:
        return None
    picked = [LETTERS.find(str(a).strip().upper()[:1]) for a in answers]
    return picked if all(0 <= p < m for p in picked) else None


def shuffled_sources(names: list[str], seed: int) -> dict[str, str]:
    """A seeded derangement: each head gets another head's description (the control).

    Heads sit on a ring ordered by a seeded hash of their name and each takes the next head's
    description, so describing more heads later changes only the new heads' neighbours' controls
    (a permutation of the whole list would re-ask every cached control).
    """
    if len(names) < 2:
        return {}
    ring = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    return dict(zip(ring, ring[1:] + ring[:1], strict=True))


def judge_heads(
    items: pd.DataFrame,
    descriptions: pd.DataFrame,
    describer: Describer,
    *,
    control: bool = False,
    seed: int = 0,
    cache_only: bool | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per question: the option the judge picked and whether it is the real one.

    Only heads with a description (pattern or "Unclear") are judged. With `control`, each head's
    questions are asked with another head's description. Heads with no usable judgement get NaN.
    """
    cache_only = (not describer.can_ask) if cache_only is None else cache_only
    desc = descriptions[descriptions["status"].isin(["pattern", "no pattern"])].set_index("name")
    names = list(desc.index)
    source_of = shuffled_sources(names, seed) if control else {n: n for n in names}
    rows = []
    groups = [
        (k, g)
        for k, g in items.groupby(["layer", "head"], sort=True)
        if f"{k[0]}.{k[1]}" in source_of
    ]
    bar = "judging (control)" if control else "judging"
    for (layer, head), grp in tqdm(groups, desc=bar, unit="head", disable=not progress):
        name = f"{layer}.{head}"
        text = description_text(desc.loc[source_of[name]])
        messages = judge_messages(text, grp)
        n, m = len(grp), len(grp["options"].iloc[0])
        picked = _judge(describer, messages, n, m, cache_only)
        for k, r in enumerate(grp.itertuples()):
            p = picked[k] if picked is not None else None
            rows.append(
                dict(
                    layer=layer,
                    head=head,
                    name=name,
                    item=r.item,
                    status=desc.loc[name, "status"],
                    description_of=source_of[name],
                    answer=r.answer,
                    picked=p,
                    correct=None if p is None else bool(p == r.answer),
                )
            )
    return pd.DataFrame(rows, columns=JUDGED_COLUMNS)


def _judge(
    describer: Describer, messages: list[dict[str, str]], n: int, m: int, cache_only: bool
) -> list[int] | None:
    """The judge's picks for one head: cached, else asked (unless cache-only); None if none usable."""
    parse = partial(parse_judgement, n=n, m=m)
    record = describer.cached(messages)
    if record is None and not cache_only:
        record, _ = describer.ask(messages, parse, judge_schema(n, m))
    return None if record is None else parse(record["content"])


GROUPS = ("described a pattern", '"Unclear" (no pattern)', "shuffled descriptions (control)")


def _group(judged: pd.DataFrame) -> pd.Series:
    """Each question's group: its head's own description (pattern or not) or the control."""
    own = judged["status"].map({"pattern": GROUPS[0], "no pattern": GROUPS[1]})
    control = judged["control"] if "control" in judged else False
    return own.where(~pd.Series(control, index=judged.index).astype(bool), GROUPS[2])


def question_text(items: pd.DataFrame, index: int = 0) -> str:
    """One question as the judge saw it (its options, each with the head it came from), for the
    chapter; a sentence when there is none."""
    if items.empty:
        return "No question: no head of this model has a description to score yet."
    q = items.iloc[index]
    own = f"{q['layer']}.{q['head']}"
    lines = [f"head {own}, source {q['source']}"]
    for letter, option, head in zip(LETTERS, q["options"], q["option_heads"], strict=False):
        lines.append(
            f"  {letter}) {option}    <- head {head}" + ("  (real)" if head == own else "")
        )
    return "\n".join(lines)


def judge_verdict(summary: pd.DataFrame, alpha: float = 0.05) -> str:
    """What accuracy_summary says, in one sentence: own descriptions against chance and control."""
    by = summary.set_index("group")
    own, ctrl = by.loc[GROUPS[0]], by.loc[GROUPS[2]]
    if not own["questions"]:
        return "Nothing to score yet: no head of this model has a description with a pattern."
    text = (
        f"With their own descriptions, {int(own['heads'])} heads answered {own['accuracy']:.3f} of "
        f"{int(own['questions'])} held-out questions (chance {own['chance']:.2f}, binomial p = "
        f"{own['p (binomial, > chance)']:.3g})"
    )
    if ctrl["questions"]:
        text += f"; with shuffled descriptions, {ctrl['accuracy']:.3f} of {int(ctrl['questions'])}"
    better = own["p (binomial, > chance)"] < alpha and (
        not ctrl["questions"] or own["accuracy"] > ctrl["accuracy"]
    )
    verdict = (
        "the descriptions carry information about the heads' mappings"
        if better
        else "the descriptions do not predict the held-out mappings better than chance or the "
        "control"
    )
    return f"{text}: {verdict} (alpha {alpha})."


def per_head_accuracy(judged: pd.DataFrame) -> pd.DataFrame:
    """Per head and group: questions answered and the share answered right (the likelihood
    judge's table names its groups; the chat judge's are derived)."""
    ok = judged.dropna(subset=["correct"])
    if "group" not in ok:
        ok = ok.assign(group=_group(ok))
    ok = ok.assign(correct=ok["correct"].astype(bool))
    out = ok.groupby(["group", "layer", "head", "name"], sort=True)["correct"].agg(["size", "mean"])
    return out.rename(columns={"size": "questions", "mean": "accuracy"}).reset_index()


def accuracy_summary(judged: pd.DataFrame, setup: JudgeSetup) -> pd.DataFrame:
    """Accuracy against chance for described heads, "Unclear" heads and the shuffled control."""
    ok = judged.dropna(subset=["correct"])
    ok = ok.assign(group=_group(ok), correct=ok["correct"].astype(bool))
    rows = []
    for label in GROUPS:
        g = ok[ok["group"] == label]
        hits, n = int(g["correct"].sum()), len(g)
        p = binomtest(hits, n, setup.chance, alternative="greater").pvalue if n else float("nan")
        rows.append(
            {
                "group": label,
                "heads": g["name"].nunique(),
                "questions": n,
                "accuracy": round(hits / n, 3) if n else float("nan"),
                "chance": setup.chance,
                "p (binomial, > chance)": p,
            }
        )
    return pd.DataFrame(rows)


def accuracy_by_layer(judged: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per layer over the judged questions (not the control), and heads averaged."""
    ok = judged.dropna(subset=["correct"])
    if "control" in ok.columns:
        ok = ok[~ok["control"].astype(bool)]
    ok = ok.assign(correct=ok["correct"].astype(bool))
    out = (
        ok.groupby("layer")["correct"]
        .agg(["mean", "size"])
        .rename(columns={"mean": "accuracy", "size": "questions"})
    )
    out["heads"] = ok.groupby("layer")["name"].nunique()
    return out.reset_index()


JUDGE_PROTOCOL = {
    "held_out": "the salient tokens ranked after the described ones; the describer never saw them",
    "options": "the real top-5 mappings of the token and those of the same token under other "
    "heads (seeded draw; a head whose top target equals the real one is skipped)",
    "judge": "JUDGE_TEMPLATE of mapslib.salient.judge, given only the inputs and pattern sentences",
    "control": "each head judged with another head's description (seeded derangement)",
}


def run_judgement(
    items: pd.DataFrame,
    descriptions: pd.DataFrame,
    describer: Describer,
    out: str | Path | None,
    *,
    setup: JudgeSetup,
    cache_only: bool | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The judge's picks with each head's own description and in the shuffled control (column
    `control`), written to `out` with the setup beside them; answers are cached one by one."""
    params = {"setup": asdict(setup), "llm": asdict(describer.config), "heads": len(descriptions)}

    def compute() -> Computed:
        kw = dict(seed=setup.seed, cache_only=cache_only, progress=progress)
        own = judge_heads(items, descriptions, describer, **kw)
        ctrl = judge_heads(items, descriptions, describer, control=True, **kw)
        both = pd.concat([own.assign(control=False), ctrl.assign(control=True)], ignore_index=True)
        return both, {"setup": asdict(setup), "requests": describer.requests}

    return cached_table(out, params, compute, recompute=True, protocol=JUDGE_PROTOCOL, step="judge")
