"""An OpenAI-compatible chat client with retries and an on-disk answer cache, for any LLM task.

The client is `openai.OpenAI` with its own retries turned off: this module retries, with exponential
backoff (honouring Retry-After), on rate limits, server errors, timeouts and dropped connections; a
truncated answer (finish_reason "length") or one the caller's parser rejects is asked again with the
next seed, and after `max_attempts` it is reported as a failure, never returned as an answer. JSON
mode is asked for first; a server that rejects it is asked again without it.

Settings come from the environment only: OPENAI_API_KEY (required for a call), OPENAI_BASE_URL
(optional: any OpenAI-compatible server, e.g. a local one) and MAPSLIB_LLM_MODEL (default gpt-4o).
The key is never written to a result, a cache file or a log message.

Every valid answer is cached under `cache_root()/llm/`, keyed by the SHA-256 of the model name, the
exact messages, the temperature and the seed, and written atomically: the book rebuilds identically
offline, and a rerun pays for nothing twice.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mapslib.errors import MapsError, MissingAPIKey
from mapslib.foundation.io import sha256_text, write_json
from mapslib.llm.server import LLMServerError

DEFAULT_LLM = "gpt-4o"
# seconds: on 2 cores a request takes ~1 min alone, ~4 min among 8 in llama-server's slots
LOCAL_TIMEOUT = 900.0
LOCAL_SUFFIXES = ("@llama-cpp", "@llama-server", "@transformers")
# Answers for the book's models, committed with the project so the book replays them offline.
COMMITTED_ANSWERS = Path(__file__).resolve().parent.parent / "data" / "llm_answers"

Parse = Callable[[str | None], Any]


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
    json_schema: bool = False  # send the schema with JSON mode (llama.cpp constrains to it)
    # temperature of the attempts after a truncated or unparseable answer; None: `temperature`.
    # At temperature 0 a local model repeats the same looping answer whatever the seed.
    retry_temperature: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where requests go when not to the environment's OPENAI_BASE_URL: a server the project started."""

    base_url: str
    key: str = "local"  # a local server checks none; the client needs a non-empty string
    model: str | None = None  # the name the server wants, if not config.model (the cache's key)


def answer_key(model: str, messages: list[dict[str, str]], temperature: float, seed: int) -> str:
    """SHA-256 of everything that decides the answer: model, exact messages, temperature, seed."""
    payload = {"model": model, "messages": messages, "temperature": temperature, "seed": seed}
    return sha256_text(json.dumps(payload, sort_keys=True, ensure_ascii=False))


def cache_dir() -> Path:
    """Where new answers are cached: `cache_root()/llm` (committed ones are read from the package)."""
    from mapslib.foundation.io import cache_root

    return cache_root() / "llm"


def _cache_path(root: Path, key: str) -> Path:
    """An answer's file under a cache folder: KEY[:2]/KEY.json."""
    return root / key[:2] / f"{key}.json"


def api_settings() -> tuple[str | None, str | None]:
    """OPENAI_API_KEY and OPENAI_BASE_URL from the environment (empty counts as unset)."""
    return os.environ.get("OPENAI_API_KEY") or None, os.environ.get("OPENAI_BASE_URL") or None


def llm_available() -> bool:
    """Whether a key is set, so uncached requests can be asked."""
    return api_settings()[0] is not None


def require_llm() -> None:
    """Fail early, with the fix, when heads are to be described but no key is set."""
    if not llm_available():
        raise MissingAPIKey(
            "--describe needs an API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
            "OpenAI-compatible server), or describe with a local model: --llm local; without "
            "--describe the salient mappings are written alone"
        )


def is_local_model(model: str) -> bool:
    """Whether a model name is one `--llm local` serves (its answers come from the cache here)."""
    return model.endswith(LOCAL_SUFFIXES)


def replays(model: str) -> bool:
    """Whether a chapter answers `model` from the caches alone: a local model (no server runs
    there) or an API model with no key set."""
    return is_local_model(model) or not llm_available()


def llm_config(
    model: str | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    json_schema: bool = False,
    local: bool = False,
) -> LLMConfig:
    """The LLM settings: `model` if given, else $MAPSLIB_LLM_MODEL or the default. A `local` server
    gets a long timeout: a request that times out is asked again while the server, which does not
    notice the client left, still computes the first one."""
    config = LLMConfig(temperature=temperature, seed=seed, json_schema=json_schema)
    if local:  # a looping answer is cut at 350 tokens (good ones take 100-250) and sampled again
        config = replace(
            config, timeout=LOCAL_TIMEOUT, max_tokens=350, max_attempts=3, retry_temperature=0.7
        )
    return replace(config, model=model) if model else config


class LLMClient:
    """Asks an OpenAI-compatible server, with retries and an on-disk answer cache; thread-safe.

    `endpoint` names a server the project started (else the environment's key and base URL);
    `health` returns a message when that server has died, so a dead server stops the run at once
    instead of being retried; `read_also` are further answer folders (the committed answers);
    `replay` never asks, answering from the caches only.
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        cache: Path | None = None,
        endpoint: Endpoint | None = None,
        health: Callable[[], str | None] | None = None,
        read_also: tuple[Path, ...] = (COMMITTED_ANSWERS,),
        replay: bool = False,
        sleep: Any = time.sleep,
        log: Any = None,
    ):
        self.config = config or LLMConfig()
        self.cache = cache or cache_dir()
        self.read_also = tuple(p for p in read_also if p != self.cache)
        self.endpoint, self.health = endpoint, health
        self.sleep, self.log = sleep, log or (lambda message: None)
        self._client: Any = None
        self._secret: str | None = None
        self._json_mode = True
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests made, for tests and cost reports
        self.replay = replay  # True: never ask, answer from the caches only

    @property
    def can_ask(self) -> bool:
        """Whether uncached requests can be asked: a started server, or a key in the environment."""
        return not self.replay and (self.endpoint is not None or llm_available())

    # -- client ---------------------------------------------------------------------------------------
    def client(self) -> Any:
        """The openai client, built on first use; raises MissingAPIKey when no key is set."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        """An openai.OpenAI for the endpoint, else for the environment's key and base URL."""
        import openai

        if self.endpoint is not None:
            key, base_url = self.endpoint.key, self.endpoint.base_url
        else:
            key, base_url = api_settings()
            if key is None:
                raise MissingAPIKey(
                    "no OPENAI_API_KEY in the environment: set it (and OPENAI_BASE_URL for an "
                    "OpenAI-compatible server), or use --llm local; cached answers work without it"
                )
            self._secret = key
        return openai.OpenAI(
            api_key=key, base_url=base_url, timeout=self.config.timeout, max_retries=0
        )

    def _redact(self, text: str) -> str:
        """An error message with the key, if it appears, replaced by ***."""
        return text.replace(self._secret, "***") if self._secret else text

    # -- cache ----------------------------------------------------------------------------------------
    def _key(self, messages: list[dict[str, str]]) -> str:
        """The answer key of these messages under this config."""
        c = self.config
        return answer_key(c.model, messages, c.temperature, c.seed)

    def cached(self, messages: list[dict[str, str]]) -> dict[str, Any] | None:
        """The cached record for these messages under this config (own cache, then committed)."""
        key = self._key(messages)
        for root in (self.cache, *self.read_also):
            path = _cache_path(root, key)
            if path.is_file():
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue  # a damaged entry is asked again and rewritten
        return None

    def _store(self, messages: list[dict[str, str]], record: dict[str, Any]) -> None:
        """Write an answer record into the own cache, atomically."""
        write_json(_cache_path(self.cache, self._key(messages)), record)

    # -- one request ----------------------------------------------------------------------------------
    def _request(
        self, messages: list[dict[str, str]], seed: int, schema: Any, temperature: float
    ) -> tuple[str, str, dict]:
        """One chat completion: (content, finish_reason, usage); JSON mode unless it was rejected."""
        import openai

        c = self.config
        served = self.endpoint.model if self.endpoint is not None else None
        kwargs: dict[str, Any] = dict(
            model=served or c.model,
            messages=messages,
            temperature=temperature,
            seed=seed,
            max_tokens=c.max_tokens,
        )
        if self._json_mode:
            fmt: dict[str, Any] = {"type": "json_object"}
            if c.json_schema and schema is not None:
                fmt["schema"] = schema
            try:
                with self._lock:
                    self.requests += 1
                return _content(
                    self.client().chat.completions.create(response_format=fmt, **kwargs)
                )
            except openai.BadRequestError as e:
                if "response_format" not in str(e) and "json" not in str(e).lower():
                    raise
                self._json_mode = False
                self.log("the server rejected JSON mode; asking without it")
        with self._lock:
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

    # -- an answer ------------------------------------------------------------------------------------
    def ask(
        self, messages: list[dict[str, str]], parse: Parse, schema: Any = None
    ) -> tuple[dict[str, Any] | None, str]:
        """Ask until a complete answer that `parse` accepts arrives (cached), or attempts run out.

        Returns (record, "") or (None, the last error).
        """
        import openai

        transient = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        last = ""
        seed, temperature = self.config.seed, self.config.temperature
        for attempt in range(self.config.max_attempts):
            start = time.perf_counter()
            try:
                content, finish, usage = self._request(messages, seed, schema, temperature)
            except transient as e:
                if self.health is not None and (dead := self.health()):
                    raise LLMServerError(dead) from None
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
            elif parse(content) is None:
                last = "answer is not the requested JSON"
            else:
                record = {
                    "model": self.config.model,
                    "temperature": self.config.temperature,
                    "seed": self.config.seed,
                    "seed_used": seed,
                    "temperature_used": temperature,
                    "messages": messages,
                    "content": content,
                    "finish_reason": finish,
                    "attempts": attempt + 1,
                    "usage": usage,
                    "seconds": round(time.perf_counter() - start, 3),
                }
                self._store(messages, record)
                return record, ""
            self.log(f"attempt {attempt + 1}: {last}; asking again with another seed")
            seed += 1  # as the paper did: the same request again, another seed
            if self.config.retry_temperature is not None:
                temperature = self.config.retry_temperature
        return None, last


def _content(resp: Any) -> tuple[str, str, dict[str, int]]:
    """The first choice's text and finish reason, and the tokens the server counted."""
    choice = resp.choices[0]
    usage = getattr(resp, "usage", None)
    counted = {k: int(getattr(usage, k, 0) or 0) for k in ("prompt_tokens", "completion_tokens")}
    return choice.message.content or "", choice.finish_reason or "", counted


def speed_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Tokens and seconds the server spent on these answers (the successful attempt of each)."""
    timed = [r for r in records if r.get("seconds")]
    prompt = sum(r.get("usage", {}).get("prompt_tokens", 0) for r in timed)
    answer = sum(r.get("usage", {}).get("completion_tokens", 0) for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    return {
        "answers": len(timed),
        "seconds per answer": round(seconds / len(timed), 1) if timed else float("nan"),
        "prompt tokens per answer": round(prompt / len(timed)) if timed else float("nan"),
        "answer tokens per answer": round(answer / len(timed)) if timed else float("nan"),
        "answer tokens per second": round(answer / seconds, 2) if seconds else float("nan"),
    }
