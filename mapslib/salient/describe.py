"""Describing a head's salient mappings with an LLM (paper, section 5.1 and appendix E).

The LLM sees a head's most salient tokens, each with its top mapped tokens, and answers in JSON: a
short reasoning, one sentence on the inputs, one on the pattern, or "Unclear". As in the paper, an
answer containing "clear" anywhere counts as *no pattern* (an upper bound on undetected patterns);
the prompt asks the model to use that word only when there is none.

The client is `openai.OpenAI` with its own retries turned off: this module retries, with exponential
backoff (honouring Retry-After), on rate limits, server errors, timeouts and dropped connections; a
truncated answer (finish_reason "length") or one that does not parse is asked again with the next
seed, and after `max_attempts` it is recorded as a failure, never as a description. JSON mode is asked
for first; a server that rejects it is asked again without it.

Settings come from the environment only: OPENAI_API_KEY (required for a call), OPENAI_BASE_URL
(optional: any OpenAI-compatible server, e.g. a local one) and MAPSLIB_LLM_MODEL (default gpt-4o).
The key is never written to a result, a cache file or a log message.

Every valid answer is cached under `cache_root()/llm/`, keyed by the SHA-256 of the model name, the
exact messages, the temperature and the seed, and written atomically: the book rebuilds identically
offline, and a rerun pays for nothing twice. With no key, `describe(..., cache_only=True)` (what the
chapters do) returns cached answers and marks the rest `unavailable`.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.errors import MapsError, MissingAPIKey
from mapslib.foundation.cache import Computed, cached_table
from mapslib.foundation.io import sha256_text, write_json

DEFAULT_LLM = "gpt-4o"
STATUSES = ("pattern", "no pattern", "failed", "unavailable")

SYSTEM_PROMPT = (
    "You analyse attention heads of transformer language models. You are shown token-to-token "
    "mappings read from one head's weights and say, briefly and concretely, what the head does. "
    "You answer with a single JSON object and nothing else."
)

USER_TEMPLATE = """Below are the {n} tokens that one attention head of a language model acts on most strongly. \
Each line shows a source token, then the {k} tokens the head most strongly {verb} in its output when it \
attends to that source token, strongest first. Tokens are shown exactly as they are in the vocabulary: \
'␣' stands for a leading space, '\\n' for a newline and \\xNN for a raw byte.

{lines}

Is there a pattern that holds for most of these lines? Think of relations between a source and its \
targets (copying, changes of case or spacing, spelling, word forms, translation, meaning, facts) and of \
what the source tokens have in common.

Answer with a JSON object with three string fields:
"reasoning": your analysis, at most three sentences;
"inputs": one sentence on what the source tokens are;
"pattern": one sentence on the operation the head applies to them.
If no pattern covers most lines, set "pattern" to exactly "Unclear". Use the word "clear" (or \
"clearly", "unclear") only in that case."""


class LLMError(MapsError):
    """The LLM server refused the request for a reason retrying cannot fix (e.g. a wrong key)."""


@dataclass(frozen=True)
class LLMConfig:
    """What decides an answer (model, temperature, seed) and how hard to try for it."""

    model: str = field(default_factory=lambda: os.environ.get("MAPSLIB_LLM_MODEL", DEFAULT_LLM))
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 600
    timeout: float = 60.0
    max_attempts: int = 4
    backoff: float = 2.0  # seconds before the first retry, doubled each time
    max_backoff: float = 60.0


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


def build_messages(lines: list[str], suppress: bool = False) -> list[dict[str, str]]:
    """The chat messages for one head: the system prompt and its salient mapping lines."""
    k = lines[0].count(",") + 1 if lines else 0
    user = USER_TEMPLATE.format(
        n=len(lines),
        k=k,
        verb="suppresses" if suppress else "promotes",
        lines="\n".join(lines),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def answer_key(model: str, messages: list[dict[str, str]], temperature: float, seed: int) -> str:
    """SHA-256 of everything that decides the answer: model, exact messages, temperature, seed."""
    payload = {"model": model, "messages": messages, "temperature": temperature, "seed": seed}
    return sha256_text(json.dumps(payload, sort_keys=True, ensure_ascii=False))


def cache_dir() -> Path:
    """Where answers are cached: `cache_root()/llm`."""
    from mapslib.foundation.models import cache_root

    return cache_root() / "llm"


def _cache_path(root: Path, key: str) -> Path:
    return root / key[:2] / f"{key}.json"


def parse_answer(text: str | None) -> dict[str, str] | None:
    """The answer's fields from JSON, fenced JSON or JSON inside prose; a bare 'Unclear'; else None."""
    if not text or not text.strip():
        return None
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
            fields = {str(k).strip().lower(): v for k, v in obj.items()}
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


def is_no_pattern(raw: str) -> bool:
    """The paper's rule: an answer that contains 'clear' anywhere means no pattern was found."""
    return "clear" in raw.lower()


def api_settings() -> tuple[str | None, str | None]:
    """OPENAI_API_KEY and OPENAI_BASE_URL from the environment (empty counts as unset)."""
    return os.environ.get("OPENAI_API_KEY") or None, os.environ.get("OPENAI_BASE_URL") or None


def llm_available() -> bool:
    """Whether a key is set, so uncached heads can be described."""
    return api_settings()[0] is not None


def require_llm() -> None:
    """Fail early, with the fix, when heads are to be described but no key is set."""
    if not llm_available():
        raise MissingAPIKey(
            "--describe needs an API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
            "OpenAI-compatible server); without --describe the salient mappings are written alone"
        )


def llm_config(model: str | None = None, temperature: float = 0.0, seed: int = 0) -> LLMConfig:
    """The LLM settings: `model` if given, else $MAPSLIB_LLM_MODEL or the default."""
    config = LLMConfig(temperature=temperature, seed=seed)
    return replace(config, model=model) if model else config


class Describer:
    """Asks an OpenAI-compatible server to describe heads, with retries and an on-disk answer cache."""

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        cache: Path | None = None,
        sleep: Any = time.sleep,
        log: Any = None,
    ):
        self.config = config or LLMConfig()
        self.cache = cache or cache_dir()
        self.sleep, self.log = sleep, log or (lambda message: None)
        self._client: Any = None
        self._secret: str | None = None
        self._json_mode = True
        self.requests = 0  # HTTP requests made, for tests and cost reports

    # -- client ---------------------------------------------------------------------------------------
    def client(self) -> Any:
        """The openai client, built on first use; raises MissingAPIKey when no key is set."""
        if self._client is None:
            key, base_url = api_settings()
            if key is None:
                raise MissingAPIKey(
                    "no OPENAI_API_KEY in the environment: set it (and OPENAI_BASE_URL for an "
                    "OpenAI-compatible server) to describe heads; cached answers work without it"
                )
            import openai

            self._secret = key
            self._client = openai.OpenAI(
                api_key=key, base_url=base_url, timeout=self.config.timeout, max_retries=0
            )
        return self._client

    def _redact(self, text: str) -> str:
        """An error message with the key, if it appears, replaced by ***."""
        return text.replace(self._secret, "***") if self._secret else text

    # -- cache ----------------------------------------------------------------------------------------
    def cached(self, messages: list[dict[str, str]]) -> dict[str, Any] | None:
        """The cached record for these messages under this config, or None."""
        c = self.config
        path = _cache_path(self.cache, answer_key(c.model, messages, c.temperature, c.seed))
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is asked again and rewritten

    def _store(self, messages: list[dict[str, str]], record: dict[str, Any]) -> None:
        c = self.config
        key = answer_key(c.model, messages, c.temperature, c.seed)
        write_json(_cache_path(self.cache, key), record)

    # -- one request ----------------------------------------------------------------------------------
    def _request(self, messages: list[dict[str, str]], seed: int) -> tuple[str, str]:
        """One chat completion: (content, finish_reason); JSON mode unless the server rejected it."""
        import openai

        c = self.config
        kwargs: dict[str, Any] = dict(
            model=c.model,
            messages=messages,
            temperature=c.temperature,
            seed=seed,
            max_tokens=c.max_tokens,
        )
        if self._json_mode:
            try:
                self.requests += 1
                resp = self.client().chat.completions.create(
                    response_format={"type": "json_object"}, **kwargs
                )
                return _content(resp)
            except openai.BadRequestError as e:
                if "response_format" not in str(e) and "json" not in str(e).lower():
                    raise
                self._json_mode = False
                self.log("the server rejected JSON mode; asking without it")
        self.requests += 1
        return _content(self.client().chat.completions.create(**kwargs))

    def _wait(self, attempt: int, error: Exception | None = None) -> None:
        """Back off before the next attempt: Retry-After if the server sent it, else exponential."""
        delay = min(self.config.max_backoff, self.config.backoff * 2**attempt)
        response = getattr(error, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None:
            try:
                delay = min(self.config.max_backoff, float(retry_after))
            except ValueError:
                pass
        self.sleep(delay)

    # -- a head ---------------------------------------------------------------------------------------
    def describe(
        self, lines: list[str], *, suppress: bool = False, cache_only: bool = False
    ) -> Description:
        """Describe one head from its salient mapping lines (cached answers first)."""
        messages = build_messages(lines, suppress)
        record = self.cached(messages)
        if record is not None:
            return _description(record["content"], record.get("attempts", 1), cached=True)
        if cache_only:
            return Description("unavailable", error="no API key and no cached answer")
        return self._ask(messages)

    def _ask(self, messages: list[dict[str, str]]) -> Description:
        """Ask until a complete, parseable answer arrives or the attempts run out."""
        import openai

        transient = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        last = ""
        seed = self.config.seed
        for attempt in range(self.config.max_attempts):
            try:
                content, finish = self._request(messages, seed)
            except transient as e:
                last = f"{type(e).__name__}: {self._redact(str(e))}"[:300]
                self.log(f"attempt {attempt + 1}: {last}; retrying")
                if attempt + 1 < self.config.max_attempts:
                    self._wait(attempt, e)
                continue
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                raise LLMError(
                    f"the LLM server refused the request: {type(e).__name__} "
                    f"(HTTP {e.status_code}): {self._redact(str(e))[:300]}"
                ) from None
            if finish == "length":
                last = "truncated answer (finish_reason 'length')"
            elif parse_answer(content) is None:
                last = "answer is not the requested JSON"
            else:
                record = {
                    "model": self.config.model,
                    "temperature": self.config.temperature,
                    "seed": self.config.seed,
                    "seed_used": seed,
                    "messages": messages,
                    "content": content,
                    "finish_reason": finish,
                    "attempts": attempt + 1,
                }
                self._store(messages, record)
                return _description(content, attempt + 1, cached=False)
            self.log(f"attempt {attempt + 1}: {last}; asking again with another seed")
            seed += 1  # as the paper did: the same request again, another seed
        return Description("failed", attempts=self.config.max_attempts, error=last)


def _content(resp: Any) -> tuple[str, str]:
    """The first choice's text and finish reason."""
    choice = resp.choices[0]
    return choice.message.content or "", choice.finish_reason or ""


def _description(content: str, attempts: int, cached: bool) -> Description:
    """A parsed answer as a Description, applying the paper's 'clear' rule."""
    fields = parse_answer(content) or {"pattern": "", "inputs": "", "reasoning": ""}
    status = "no pattern" if is_no_pattern(content) else "pattern"
    return Description(status, attempts=attempts, cached=cached, raw=content, **fields)


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
]


def describe_heads(
    salient: pd.DataFrame,
    *,
    config: LLMConfig | None = None,
    suppress: bool = False,
    cache_only: bool | None = None,
    describer: Describer | None = None,
) -> pd.DataFrame:
    """One description per head of a `salient_mappings` table; cache-only when no key is set."""
    from mapslib.salient.mappings import mapping_lines

    describer = describer or Describer(config)
    cache_only = (not llm_available()) if cache_only is None else cache_only
    rows = []
    for (layer, head), _ in salient.groupby(["layer", "head"], sort=True):
        d = describer.describe(
            mapping_lines(salient, layer, head), suppress=suppress, cache_only=cache_only
        )
        row = {"layer": int(layer), "head": int(head), "name": f"{layer}.{head}"}
        row |= {k: v for k, v in asdict(d).items() if k != "raw"}
        rows.append(row)
    return pd.DataFrame(rows, columns=DESCRIPTION_COLUMNS)


def availability_note(descriptions: pd.DataFrame) -> str:
    """A plain sentence on how many heads have descriptions, and why the others do not."""
    n = len(descriptions)
    counts = descriptions["status"].value_counts()
    unavailable = int(counts.get("unavailable", 0))
    described = int(counts.get("pattern", 0) + counts.get("no pattern", 0))
    if unavailable == n:
        return (
            f"LLM descriptions are unavailable: no OPENAI_API_KEY is set and none of the {n} heads "
            "has a cached answer. The salient mappings and the offline labels below stand on their own."
        )
    parts = [f"{described} of {n} heads have an LLM description"]
    if unavailable:
        parts.append(f"{unavailable} have none (no key and no cached answer)")
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
) -> pd.DataFrame:
    """`describe_heads` written to `out` with the LLM settings beside it; `attrs["note"]` says how
    many heads got a description. Answers are cached one by one, so this always asks for the rest."""
    config = config or LLMConfig()
    params = {
        "salient": salient.attrs.get("sidecar", {}).get("params"),
        "llm": asdict(config),
        "suppress": suppress,
    }

    def compute() -> Computed:
        desc = describe_heads(salient, config=config, suppress=suppress, cache_only=cache_only)
        return desc, {"llm": asdict(config)}

    desc = cached_table(
        out, params, compute, recompute=True, protocol=DESCRIBE_PROTOCOL, step="describe"
    )
    desc.attrs["note"] = availability_note(desc)
    return desc
