"""The LLM client against a real local HTTP server speaking /v1/chat/completions.

No mocking of the openai client: each test queues what the server answers (success, invalid JSON, a
429, a timeout, a truncated answer, a rejected JSON mode) and checks what the client made of it,
what it cached, and that the key appears nowhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from fake_llm import GOOD, KEY, FakeServer, parse_json

from mapslib.errors import MissingAPIKey
from mapslib.llm.client import (
    COMMITTED_ANSWERS,
    Endpoint,
    LLMClient,
    LLMConfig,
    LLMError,
    answer_key,
    is_local_model,
    replays,
    speed_summary,
)
from mapslib.llm.server import LLMServerError

MESSAGES = [
    {"role": "system", "content": "You answer with a JSON object."},
    {"role": "user", "content": "What does ␣John -> ␣John, John, ␣J do?"},
]
OTHER = [{"role": "user", "content": "And ␣Mary -> ␣Mary, Mary, ␣M?"}]
SCHEMA = {"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]}


def client(tmp_path: Path, **config) -> tuple[LLMClient, list[float]]:
    """A client with a private cache, a short timeout and a recorded (not slept) backoff."""
    waits: list[float] = []
    settings = dict(model="test-model", timeout=0.5, backoff=0.01, max_attempts=3) | config
    return LLMClient(LLMConfig(**settings), cache=tmp_path / "llm", sleep=waits.append), waits


def ask(c: LLMClient, messages: list[dict[str, str]] = MESSAGES) -> tuple[dict | None, str]:
    """Ask for a JSON object."""
    return c.ask(messages, parse_json, SCHEMA)


def assert_no_key(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(encoding="utf-8", errors="replace")


def test_success_is_cached_and_not_paid_twice(server: FakeServer, tmp_path: Path) -> None:
    c, _ = client(tmp_path)
    record, error = ask(c)
    assert record is not None and error == ""
    assert record["content"] == GOOD and record["attempts"] == 1
    req = server.requests[0]
    assert req["model"] == "test-model" and req["temperature"] == 0.0 and req["seed"] == 0
    assert req["response_format"] == {"type": "json_object"}  # a schema only with json_schema
    assert req["messages"] == MESSAGES
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"  # the key is sent, only there
    again, _ = client(tmp_path)  # a fresh client: only the disk cache can answer
    assert again.cached(MESSAGES) == record and again.cached(OTHER) is None
    assert len(server.requests) == 1
    assert_no_key(tmp_path)


def test_answer_key_covers_model_messages_temperature_seed() -> None:
    base = answer_key("gpt-4o", MESSAGES, 0.0, 0)
    assert base == answer_key("gpt-4o", [dict(m) for m in MESSAGES], 0.0, 0)
    assert base != answer_key("gpt-4o-mini", MESSAGES, 0.0, 0)
    assert base != answer_key("gpt-4o", MESSAGES, 0.7, 0)
    assert base != answer_key("gpt-4o", MESSAGES, 0.0, 1)
    assert base != answer_key("gpt-4o", MESSAGES[1:], 0.0, 0)


def test_answer_key_is_pinned() -> None:
    """The committed answers are filed under this hash: changing it orphans every one of them."""
    key = answer_key("gpt-4o", [{"role": "user", "content": "␣John -> ␣John"}], 0.0, 0)
    assert key == "77aedb8aad68785206ae5443e778dda8eac528bd58fd438d8c22f8211bc785bc"


def test_every_committed_answer_is_filed_under_its_key() -> None:
    paths = sorted(COMMITTED_ANSWERS.glob("*/*.json"))
    assert paths
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        key = answer_key(r["model"], r["messages"], r["temperature"], r["seed"])
        assert path.stem == key and path.parent.name == key[:2], path


def test_invalid_json_is_retried_then_reported_as_failure(
    server: FakeServer, tmp_path: Path
) -> None:
    server.script = [{"content": "I think it copies {names"}] * 3
    c, _ = client(tmp_path)
    record, error = ask(c)
    assert record is None and "JSON" in error
    assert [r["seed"] for r in server.requests] == [0, 1, 2]  # asked again with other seeds
    assert not list((tmp_path / "llm").rglob("*.json"))  # failures are not cached


def test_invalid_json_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": "not json"}, {"content": GOOD}]
    c, _ = client(tmp_path)
    record, _ = ask(c)
    assert record is not None and record["attempts"] == 2 and record["seed_used"] == 1
    assert record["seed"] == 0  # the cache is keyed by the configured seed, not the one used


def test_rate_limit_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [
        {"status": 429, "message": "rate limited", "headers": {"Retry-After": "0.02"}},
        {"content": GOOD},
    ]
    c, waits = client(tmp_path)
    record, _ = ask(c)
    assert record is not None and record["attempts"] == 2
    assert waits == [0.02]  # Retry-After honoured
    assert [r["seed"] for r in server.requests] == [0, 0]  # a transient error keeps the seed


def test_server_errors_back_off_exponentially(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"status": 500}, {"status": 503}, {"content": GOOD}]
    c, waits = client(tmp_path)
    assert ask(c)[0] is not None
    assert waits == [0.01, 0.02]


def test_timeout_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "sleep": 1.5}, {"content": GOOD}]
    c, waits = client(tmp_path)
    record, _ = ask(c)
    assert record is not None and record["attempts"] == 2 and len(waits) == 1


def test_timeouts_exhaust_attempts(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "sleep": 1.0}] * 2
    c, _ = client(tmp_path, max_attempts=2)
    record, error = ask(c)
    assert record is None and "Timeout" in error


def test_truncated_answer_is_retried_then_failure(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD[:40], "finish": "length"}] * 3
    c, _ = client(tmp_path)
    record, error = ask(c)
    assert record is None and "truncated" in error


def test_truncated_then_complete(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "finish": "length"}, {"content": GOOD}]
    c, _ = client(tmp_path)
    assert ask(c)[0]["attempts"] == 2


def test_a_looping_answer_is_sampled_again_at_the_retry_temperature(
    server: FakeServer, tmp_path: Path
) -> None:
    """At temperature 0 another seed repeats a local model's loop; the retry samples instead."""
    server.script = [
        {"content": '{"reasoning": "the the the', "finish": "length"},
        {"content": GOOD},
    ]
    c, _ = client(tmp_path, retry_temperature=0.7)
    record, _ = ask(c)
    assert record is not None and record["attempts"] == 2
    assert [r["temperature"] for r in server.requests] == [0.0, 0.7]
    assert c.cached(MESSAGES)["temperature_used"] == 0.7 and record["seed_used"] == 1


def test_server_without_json_mode(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "reject_json_mode": True}]
    c, _ = client(tmp_path)
    assert ask(c)[0] is not None
    assert "response_format" in server.requests[0] and "response_format" not in server.requests[1]
    ask(c, OTHER)  # JSON mode is not asked for again
    assert "response_format" not in server.requests[2]


def test_wrong_key_is_an_error_without_the_key(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"status": 401, "message": f"Incorrect API key provided: {KEY}"}]
    c, _ = client(tmp_path)
    with pytest.raises(LLMError) as err:
        ask(c)
    assert KEY not in str(err.value) and "401" in str(err.value)


def test_no_key_raises_and_the_cache_still_answers(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = client(tmp_path)
    ask(c)  # cached while the key was there
    monkeypatch.delenv("OPENAI_API_KEY")
    offline, _ = client(tmp_path)
    assert not offline.can_ask and offline.cached(MESSAGES) is not None
    with pytest.raises(MissingAPIKey):
        ask(offline, OTHER)


def test_key_never_printed_or_logged(
    server: FakeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    server.script = [{"status": 429}, {"content": "oops"}, {"content": GOOD}]
    c = LLMClient(
        LLMConfig(model="test-model", timeout=0.5, backoff=0.0, max_attempts=3),
        cache=tmp_path / "llm",
        sleep=lambda s: None,
        log=messages.append,
    )
    ask(c)
    out = capsys.readouterr()
    assert len(messages) == 2  # the 429 and the unparseable answer were reported
    for text in [out.out, out.err, caplog.text, *messages]:
        assert KEY not in text


SECRET = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")


def test_executed_notebooks_hold_no_key() -> None:
    """No executed chapter (or its tables) contains an API key, the environment's or any sk-... string."""
    root = Path(__file__).resolve().parents[2]
    env_key = os.environ.get("OPENAI_API_KEY")
    files = list((root / "book").rglob("*.ipynb")) + list((root / "book").rglob("*.json"))
    files += list((root / "notebooks").glob("*.ipynb"))
    assert any(f.suffix == ".ipynb" for f in files)
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        assert not SECRET.search(text), f
        if env_key:
            assert env_key not in text, f


def test_an_endpoint_needs_no_key_and_sends_its_own_model_name(tmp_path: Path, monkeypatch) -> None:
    """A server the project started: no key from the environment, the pinned name and the schema in
    requests, and the cache keyed by the config's model name (machine-independent)."""
    srv = FakeServer()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        cfg = LLMConfig(model="local-model@llama-cpp", json_schema=True)
        c = LLMClient(cfg, cache=tmp_path, endpoint=Endpoint(srv.url, model="/models/x.gguf"))
        assert c.can_ask
        record, _ = ask(c)
        assert record is not None and record["model"] == "local-model@llama-cpp"
        req = srv.requests[0]
        assert req["model"] == "/models/x.gguf"
        assert req["response_format"] == {"type": "json_object", "schema": SCHEMA}
        replay = LLMClient(cfg, cache=tmp_path)  # no endpoint, no key: the cache answers
        assert not replay.can_ask and replay.cached(MESSAGES) == record
    finally:
        srv.close()


def test_a_dead_server_stops_the_run_instead_of_retrying(tmp_path: Path) -> None:
    cfg = LLMConfig(model="m", timeout=0.5, max_attempts=3, backoff=0.01)
    dead = "the llama-cpp LLM server stopped during the run (exit code -9)"
    c = LLMClient(
        cfg, cache=tmp_path, endpoint=Endpoint("http://127.0.0.1:9/v1"), health=lambda: dead
    )
    with pytest.raises(LLMServerError, match="stopped during the run"):
        ask(c)
    assert c.requests == 1


def test_local_models_replay_and_speed_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert is_local_model("qwen@llama-cpp") and not is_local_model("gpt-4o")
    assert replays("qwen@llama-cpp") and not replays("gpt-4o")
    assert not LLMClient(LLMConfig(model="gpt-4o"), replay=True).can_ask
    monkeypatch.delenv("OPENAI_API_KEY")
    assert replays("gpt-4o")  # no key: nothing to ask
    records = [
        {"seconds": 10.0, "usage": {"prompt_tokens": 900, "completion_tokens": 100}},
        {"seconds": 30.0, "usage": {"prompt_tokens": 700, "completion_tokens": 60}},
        {"usage": {}},  # an answer from before timings were recorded: left out
    ]
    s = speed_summary(records)
    assert s["answers"] == 2 and s["seconds per answer"] == 20.0
    assert s["prompt tokens per answer"] == 800 and s["answer tokens per second"] == 4.0
