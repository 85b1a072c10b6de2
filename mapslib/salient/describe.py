"""Describing a head's salient mappings with an LLM (paper, section 5.1 and appendix E).

The LLM sees a head's most salient tokens, each with its top mapped tokens, and answers in JSON: a
short reasoning, one sentence on the inputs, one on the pattern, or "Unclear". As in the paper, an
answer containing "clear" anywhere counts as *no pattern* (an upper bound on undetected patterns);
the prompt asks the model to use that word only when there is none.

The requests (retries, JSON mode, the answer cache keyed by the exact messages) are
`mapslib.llm.client`'s; this module holds the prompt, the parsing of an answer and the description
run. With no LLM to ask, `describe(..., cache_only=True)` (what the chapters do) returns cached
answers and marks the rest `unavailable`.

A second prompt is used when a head's evidence is passed (`mapslib.salient.evidence`: facts counted
from the same lines): the LLM picks one of the fixed `CATEGORIES` first, then writes one sentence
quoting example tokens. Its status comes from the category alone: "no pattern" exactly when the
category is "no pattern". Without evidence the messages, the parsing and the 'clear' rule are the
original ones, byte for byte (the committed answers are keyed on the messages).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.foundation.cache import Computed, cached_table
from mapslib.llm.client import LLMClient, LLMConfig, replays
from mapslib.salient.evidence import CATEGORIES, CATEGORY_GLOSSES, evidence_lines

STATUSES = ("pattern", "no pattern", "failed", "unavailable")

SYSTEM_PROMPT = (
    "You analyse attention heads of transformer language models. You are shown token-to-token "
    "mappings read from one head's weights and say, briefly and concretely, what the head does. "
    "You answer with a single JSON object and nothing else."
)

# The instructions every head shares come first and the head's own lines last, so a server that keeps
# the previous prompt's KV cache (llama.cpp) or shares prefixes skips the shared part's prefill.
USER_TEMPLATE = """You will see the {n} tokens that one attention head of a language model acts on most \
strongly, one per line. Each line shows a source token, then the {k} tokens the head most strongly \
{verb} in its output when it attends to that source token, strongest first. Tokens are shown exactly as \
they are in the vocabulary: '␣' stands for a leading space, '\\n' for a newline and \\xNN for a raw byte.

Is there a pattern that holds for most of these lines? Think of relations between a source and its \
targets (copying, changes of case or spacing, spelling, word forms, translation, meaning, facts) and of \
what the source tokens have in common.

Answer with a JSON object with three string fields:
"reasoning": your analysis, at most two sentences;
"inputs": one short sentence on what the source tokens have in common (do not list them);
"pattern": one sentence on the operation the head applies to them.
If no pattern covers most lines, set "pattern" to exactly "Unclear". Use the word "clear" (or \
"clearly", "unclear") only in that case.

The lines:
{lines}"""

# A server with grammar-constrained JSON (llama.cpp) is given this schema: the answer always parses.
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("reasoning", "inputs", "pattern")},
    "required": ["reasoning", "inputs", "pattern"],
}

# The prompt with evidence: shared instructions (and the category list) first, the head's lines and
# facts last. Categories come before the sentence so that a small model commits to one first.
EVIDENCE_TEMPLATE = """You will see the {n} tokens that one attention head of a language model acts on most \
strongly, one per line. Each line shows a source token, then the {k} tokens the head most strongly \
{verb} in its output when it attends to that source token, strongest first. Tokens are shown exactly as \
they are in the vocabulary: '␣' stands for a leading space, '\\n' for a newline and \\xNN for a raw byte. \
After the lines come facts a program counted from them: they are exact, but check them against the lines.

First pick the one category that fits most lines:
{categories}
Then write one sentence (at most 30 words) on what the head does to its source tokens, quoting two or \
three example tokens from the lines as they are shown.

Answer with a JSON object with two string fields, in this order:
"category": one of the categories above, written exactly as there;
"description": the sentence.

The lines:
{lines}

Facts counted from the lines:
{facts}"""

CATEGORY_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "description": {"type": "string"},
    },
    "required": ["category", "description"],
}

# Small variants of a category an LLM may write, after lower-casing and dropping '-', '_' and quotes.
CATEGORY_ALIASES = {
    "none": "no pattern",
    "no": "no pattern",
    "nothing": "no pattern",
    "unclear": "no pattern",
    "no clear pattern": "no pattern",
    "no pattern found": "no pattern",
    "n/a": "no pattern",
    "copy": "copying",
    "copies": "copying",
    "suppression": "suppressing the source",
    "suppressing": "suppressing the source",
    "suppresses the source": "suppressing the source",
    "relation": "named relation",
    "named relations": "named relation",
    "known relation": "named relation",
    "morphological": "morphology",
    "word forms": "morphology",
    "inflection": "morphology",
    "fixed output": "fixed output set",
    "fixed set": "fixed output set",
    "fixed outputs": "fixed output set",
    "token class shift": "token class",
    "token classes": "token class",
    "class shift": "token class",
}


@dataclass
class Description:
    """The LLM's reading of one head, or why there is none."""

    status: str  # one of STATUSES
    pattern: str = ""
    inputs: str = ""
    reasoning: str = ""
    attempts: int = 0
    cached: bool = False
    error: str = ""
    raw: str = ""
    category: str = ""  # one of CATEGORIES with the evidence prompt; "" with the original one


def build_messages(
    lines: list[str], suppress: bool = False, evidence: list[str] | None = None
) -> list[dict[str, str]]:
    """The chat messages for one head: the system prompt and its salient mapping lines, with the
    evidence prompt when the head's `evidence` lines are given (else the original prompt, unchanged)."""
    k = lines[0].count(",") + 1 if lines else 0
    if evidence is not None:
        categories = "\n".join(f"- {c}: {CATEGORY_GLOSSES[c]}" for c in CATEGORIES)
        user = EVIDENCE_TEMPLATE.format(
            n=len(lines),
            k=k,
            verb="suppresses" if suppress else "promotes",
            categories=categories,
            lines="\n".join(lines),
            facts="\n".join(evidence),
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    user = USER_TEMPLATE.format(
        n=len(lines),
        k=k,
        verb="suppresses" if suppress else "promotes",
        lines="\n".join(lines),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_answer(text: str | None) -> dict[str, str] | None:
    """The answer's fields from JSON, fenced JSON or JSON inside prose; a bare 'Unclear'; else None."""
    if not text or not text.strip():
        return None
    fields = _json_object(text) or {}
    pattern = fields.get("pattern")
    if isinstance(pattern, str) and pattern.strip():
        return {
            "pattern": pattern.strip(),
            "inputs": str(fields.get("inputs", "") or "").strip(),
            "reasoning": str(fields.get("reasoning", "") or "").strip(),
        }
    if re.fullmatch(r"[\s\"'`.]*unclear[\s\"'`.]*", text, flags=re.IGNORECASE):
        return {"pattern": "Unclear", "inputs": "", "reasoning": ""}
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a reply: bare, fenced, or inside prose; None if there is none."""
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip(), flags=re.IGNORECASE)
    candidates = [body]
    if "{" in body and "}" in body:
        candidates.append(body[body.index("{") : body.rindex("}") + 1])
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return {str(k).strip().lower(): v for k, v in obj.items()}
    return None


def canonical_category(text: Any) -> str | None:
    """A category as one of CATEGORIES, tolerating case, '-', '_', quotes and a few variants."""
    if not isinstance(text, str):
        return None
    key = re.sub(r"[\s_\-]+", " ", re.sub(r"[\"'`.:!]", "", text)).strip().lower()
    return key if key in CATEGORIES else CATEGORY_ALIASES.get(key)


def parse_category_answer(text: str | None) -> dict[str, str] | None:
    """The evidence prompt's answer, {"category", "description"}; None (asked again) when the JSON
    is missing, the category is unknown, or a pattern comes without its sentence."""
    if not text or not text.strip():
        return None
    fields = _json_object(text)
    if fields is None:
        return None
    category = canonical_category(fields.get("category"))
    description = fields.get("description")
    description = description.strip() if isinstance(description, str) else ""
    if category is None or (not description and category != "no pattern"):
        return None
    return {"category": category, "description": description}


def is_no_pattern(raw: str) -> bool:
    """The paper's rule: an answer that contains 'clear' anywhere means no pattern was found."""
    return "clear" in raw.lower()


class Describer(LLMClient):
    """An LLM client that describes heads from their salient mapping lines."""

    def describe(
        self,
        lines: list[str],
        *,
        suppress: bool = False,
        cache_only: bool = False,
        evidence: list[str] | None = None,
    ) -> Description:
        """Describe one head from its salient mapping lines (cached answers first); with `evidence`
        (its `evidence_lines`), by the category prompt."""
        messages = build_messages(lines, suppress, evidence)
        read = _description if evidence is None else _category_description
        record = self.cached(messages)
        if record is not None:
            return read(record["content"], record.get("attempts", 1), cached=True)
        if cache_only:
            return Description("unavailable", error="no LLM to ask and no cached answer")
        parse, schema = (
            (parse_answer, ANSWER_SCHEMA)
            if evidence is None
            else (parse_category_answer, CATEGORY_SCHEMA)
        )
        record, error = self.ask(messages, parse, schema)
        if record is None:
            return Description("failed", attempts=self.config.max_attempts, error=error)
        return read(record["content"], record["attempts"], cached=False)


def _description(content: str, attempts: int, cached: bool) -> Description:
    """A parsed answer as a Description, applying the paper's 'clear' rule."""
    fields = parse_answer(content) or {"pattern": "", "inputs": "", "reasoning": ""}
    status = "no pattern" if is_no_pattern(content) else "pattern"
    return Description(status, attempts=attempts, cached=cached, raw=content, **fields)


def _category_description(content: str, attempts: int, cached: bool) -> Description:
    """A parsed evidence-prompt answer as a Description: no pattern only by its category."""
    fields = parse_category_answer(content) or {"category": "", "description": ""}
    status = "no pattern" if fields["category"] == "no pattern" else "pattern"
    return Description(
        status,
        pattern=fields["description"],
        category=fields["category"],
        attempts=attempts,
        cached=cached,
        raw=content,
    )


DESCRIPTION_COLUMNS = [
    "layer",
    "head",
    "name",
    "status",
    "pattern",
    "inputs",
    "reasoning",
    "attempts",
    "cached",
    "error",
    "category",
]


def _evidence_for(evidence: pd.DataFrame, layer: int, head: int) -> list[str]:
    """One head's `evidence_lines` from a `head_evidence` table."""
    row = evidence[(evidence["layer"] == layer) & (evidence["head"] == head)]
    if row.empty:
        raise KeyError(f"no evidence for head {layer}.{head}")
    return evidence_lines(row.iloc[0])


def describe_heads(
    salient: pd.DataFrame,
    *,
    config: LLMConfig | None = None,
    suppress: bool = False,
    cache_only: bool | None = None,
    describer: Describer | None = None,
    concurrency: int = 1,
    progress: bool = False,
    evidence: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One description per head of a `salient_mappings` table; cache-only when nobody can be asked.

    `concurrency` requests are in flight at once (a server with continuous batching answers them
    together); every answer is cached as it arrives, so an interrupted run resumes where it stopped.
    With `evidence` (a `head_evidence` table of the same lines) each head is asked by the category
    prompt with its facts, and `category` holds the answer's category ("" otherwise).
    """
    from tqdm import tqdm

    from mapslib.salient.mappings import mapping_lines

    describer = describer or Describer(config)
    cache_only = (not describer.can_ask) if cache_only is None else cache_only
    heads = [(int(la), int(h)) for (la, h), _ in salient.groupby(["layer", "head"], sort=True)]

    def one(head: tuple[int, int]) -> Description:
        lines = mapping_lines(salient, *head)
        facts = None if evidence is None else _evidence_for(evidence, *head)
        return describer.describe(lines, suppress=suppress, cache_only=cache_only, evidence=facts)

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        results = list(
            tqdm(
                pool.map(one, heads),
                total=len(heads),
                desc="describing",
                unit="head",
                disable=not progress,
            )
        )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C or a dead server: drop the queue
    rows = []
    for (layer, head), d in zip(heads, results, strict=True):
        row = {"layer": layer, "head": head, "name": f"{layer}.{head}"}
        rows.append(row | {k: v for k, v in asdict(d).items() if k != "raw"})
    return pd.DataFrame(rows, columns=DESCRIPTION_COLUMNS)


def availability_note(descriptions: pd.DataFrame) -> str:
    """A plain sentence on how many heads have descriptions, and why the others do not."""
    n = len(descriptions)
    counts = descriptions["status"].value_counts()
    unavailable = int(counts.get("unavailable", 0))
    described = int(counts.get("pattern", 0) + counts.get("no pattern", 0))
    if unavailable == n:
        return (
            f"LLM descriptions are unavailable: no LLM to ask (no OPENAI_API_KEY, no --llm local) "
            f"and none of the {n} heads has a cached answer. The salient mappings and the offline labels below stand on their own."
        )
    parts = [f"{described} of {n} heads have an LLM description"]
    if unavailable:
        parts.append(f"{unavailable} have none (no LLM to ask and no cached answer)")
    if counts.get("failed", 0):
        parts.append(f"{int(counts['failed'])} failed after retries")
    return "; ".join(parts) + "."


DESCRIBE_PROTOCOL = {
    "prompt": "the system prompt and USER_TEMPLATE of mapslib.salient.describe, one head per request",
    "no_pattern": "an answer containing 'clear' anywhere counts as no pattern (the paper's rule)",
    "retries": "transient errors with backoff; truncated or unparseable answers asked again with "
    "the next seed; then recorded as failed",
}


def run_descriptions(
    salient: pd.DataFrame,
    out: str | Path | None,
    *,
    config: LLMConfig | None = None,
    suppress: bool = False,
    cache_only: bool | None = None,
    describer: Describer | None = None,
    concurrency: int = 1,
    server: dict[str, Any] | None = None,
    evidence: pd.DataFrame | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """`describe_heads` written to `out` with the LLM settings (and `server`, if local) beside it;
    `attrs["note"]` says how many heads got a description. Answers are cached one by one, so this
    always asks only for the rest. With `evidence`, the category prompt with each head's facts."""
    describer = describer or Describer(config)
    config = describer.config
    params = {
        "salient": salient.attrs.get("sidecar", {}).get("params"),
        "llm": asdict(config),
        "suppress": suppress,
    }
    if evidence is not None:
        params["prompt"] = "category, with the evidence"

    def compute() -> Computed:
        desc = describe_heads(
            salient,
            suppress=suppress,
            cache_only=cache_only,
            describer=describer,
            concurrency=concurrency,
            progress=progress,
            evidence=evidence,
        )
        found = {"llm": asdict(config), "server": server, "concurrency": concurrency}
        return desc, found | {"requests": describer.requests}

    desc = cached_table(
        out, params, compute, recompute=True, protocol=DESCRIBE_PROTOCOL, step="describe"
    )
    desc.attrs["note"] = availability_note(desc)
    return desc


def replay_describer(model: str, temperature: float = 0.0, seed: int = 0) -> Describer:
    """A Describer for a chapter: it asks the API only for an API model with a key set; answers of a
    local model (served by `salient --describe --llm local`) are read from the caches."""
    config = LLMConfig(model=model, temperature=temperature, seed=seed)
    return Describer(config, replay=replays(model))


def answer_records(
    client: LLMClient,
    salient: pd.DataFrame,
    suppress: bool = False,
    evidence: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The cached answer records of the heads of `salient` (those that have one); with `evidence`,
    those of the category prompt."""
    from mapslib.salient.mappings import mapping_lines

    records = []
    for (layer, head), _ in salient.groupby(["layer", "head"], sort=True):
        facts = None if evidence is None else _evidence_for(evidence, int(layer), int(head))
        record = client.cached(build_messages(mapping_lines(salient, layer, head), suppress, facts))
        if record is not None:
            records.append(record)
    return records
