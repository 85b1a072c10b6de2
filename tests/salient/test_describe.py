"""The LLM client path against a real local HTTP server speaking /v1/chat/completions.

No mocking of the openai client: each test queues what the server answers (success, invalid JSON, a
429, a timeout, a truncated answer, a rejected JSON mode) and checks what the Describer made of it,
what it cached, and that the key appears nowhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from fake_llm import GOOD, KEY, LINES, FakeServer

from mapslib.errors import MissingAPIKey
from mapslib.salient.describe import (
    Describer,
    Endpoint,
    LLMConfig,
    LLMError,
    answer_key,
    availability_note,
    build_messages,
    describe_heads,
    is_local_model,
    is_no_pattern,
    parse_answer,
    replay_describer,
    speed_summary,
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    srv = FakeServer()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
    yield srv
    srv.close()


def describer(tmp_path: Path, **config) -> tuple[Describer, list[float]]:
    """A Describer with a private cache, a short timeout and a recorded (not slept) backoff."""
    waits: list[float] = []
    settings = dict(model="test-model", timeout=0.5, backoff=0.01, max_attempts=3) | config
    cfg = LLMConfig(**settings)
    return Describer(cfg, cache=tmp_path / "llm", sleep=waits.append), waits


def assert_no_key(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(encoding="utf-8", errors="replace")


def test_success_is_cached_and_not_paid_twice(server: FakeServer, tmp_path: Path) -> None:
    d, _ = describer(tmp_path)
    first = d.describe(LINES)
    assert first.status == "pattern" and first.pattern.startswith("Copies")
    assert first.attempts == 1 and not first.cached
    req = server.requests[0]
    assert req["model"] == "test-model" and req["temperature"] == 0.0 and req["seed"] == 0
    assert req["response_format"] == {"type": "json_object"}
    assert "␣John -> ␣John, John, ␣J" in req["messages"][1]["content"]
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"  # the key is sent, only there
    again, _ = describer(tmp_path)  # a fresh client: only the disk cache can answer
    second = again.describe(LINES)
    assert second.cached and second.pattern == first.pattern
    assert len(server.requests) == 1
    assert_no_key(tmp_path)


def test_answer_key_covers_model_prompt_temperature_seed() -> None:
    m = build_messages(LINES)
    base = answer_key("gpt-4o", m, 0.0, 0)
    assert base == answer_key("gpt-4o", build_messages(list(LINES)), 0.0, 0)
    assert base != answer_key("gpt-4o-mini", m, 0.0, 0)
    assert base != answer_key("gpt-4o", m, 0.7, 0)
    assert base != answer_key("gpt-4o", m, 0.0, 1)
    assert base != answer_key("gpt-4o", build_messages(LINES[:2]), 0.0, 0)
    assert base != answer_key("gpt-4o", build_messages(LINES, suppress=True), 0.0, 0)


def test_invalid_json_is_retried_then_recorded_as_failure(
    server: FakeServer, tmp_path: Path
) -> None:
    server.script = [{"content": "I think it copies {names"}] * 3
    d, _ = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "failed" and out.pattern == "" and "JSON" in out.error
    assert len(server.requests) == 3
    assert [r["seed"] for r in server.requests] == [0, 1, 2]  # asked again with other seeds
    assert not list((tmp_path / "llm").rglob("*.json"))  # failures are not cached


def test_invalid_json_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": "not json"}, {"content": "```json\n" + GOOD + "\n```"}]
    d, _ = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "pattern" and out.attempts == 2


def test_rate_limit_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [
        {"status": 429, "message": "rate limited", "headers": {"Retry-After": "0.02"}},
        {"content": GOOD},
    ]
    d, waits = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "pattern" and out.attempts == 2
    assert waits == [0.02]  # Retry-After honoured
    assert [r["seed"] for r in server.requests] == [0, 0]  # a transient error keeps the seed


def test_server_errors_back_off_exponentially(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"status": 500}, {"status": 503}, {"content": GOOD}]
    d, waits = describer(tmp_path)
    assert d.describe(LINES).status == "pattern"
    assert waits == [0.01, 0.02]


def test_timeout_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "sleep": 1.5}, {"content": GOOD}]
    d, waits = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "pattern" and out.attempts == 2 and len(waits) == 1


def test_timeouts_exhaust_attempts(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "sleep": 1.0}] * 2
    d, _ = describer(tmp_path, max_attempts=2)
    out = d.describe(LINES)
    assert out.status == "failed" and "Timeout" in out.error


def test_truncated_answer_is_retried_then_failure(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD[:40], "finish": "length"}] * 3
    d, _ = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "failed" and "truncated" in out.error and out.pattern == ""


def test_truncated_then_complete(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "finish": "length"}, {"content": GOOD}]
    d, _ = describer(tmp_path)
    assert d.describe(LINES).attempts == 2


def test_server_without_json_mode(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"content": GOOD, "reject_json_mode": True}]
    d, _ = describer(tmp_path)
    out = d.describe(LINES)
    assert out.status == "pattern"
    assert "response_format" in server.requests[0] and "response_format" not in server.requests[1]
    d.describe(LINES[:2])  # JSON mode is not asked for again
    assert "response_format" not in server.requests[2]


def test_unclear_counts_as_no_pattern(server: FakeServer, tmp_path: Path) -> None:
    server.script = [
        {
            "content": json.dumps(
                {"reasoning": "Mixed.", "inputs": "Various.", "pattern": "Unclear"}
            )
        },
        {
            "content": json.dumps(
                {"reasoning": "No clear link.", "inputs": "x", "pattern": "Maps x"}
            )
        },
    ]
    d, _ = describer(tmp_path)
    assert d.describe(LINES).status == "no pattern"
    assert d.describe(LINES[:1]).status == "no pattern"  # 'clear' anywhere in the answer


def test_wrong_key_is_an_error_without_the_key(server: FakeServer, tmp_path: Path) -> None:
    server.script = [{"status": 401, "message": f"Incorrect API key provided: {KEY}"}]
    d, _ = describer(tmp_path)
    with pytest.raises(LLMError) as err:
        d.describe(LINES)
    assert KEY not in str(err.value) and "401" in str(err.value)


def test_no_key_raises_and_cache_only_still_works(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = describer(tmp_path)
    d.describe(LINES)  # cached while the key was there
    monkeypatch.delenv("OPENAI_API_KEY")
    offline, _ = describer(tmp_path)
    with pytest.raises(MissingAPIKey):
        offline.describe(LINES[:2])
    assert offline.describe(LINES, cache_only=True).cached
    assert offline.describe(LINES[:2], cache_only=True).status == "unavailable"


def test_describe_heads_table_and_note(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = []
    for head in (0, 1):
        for s, src in enumerate(["␣a", "␣b"]):
            for r, tgt in enumerate(["␣x", "␣y"]):
                rows.append(
                    dict(
                        layer=3,
                        head=head,
                        name=f"3.{head}",
                        salient_rank=s + 1,
                        source=src,
                        saliency=1.0,
                        rank=r + 1,
                        target=f"{tgt}{head}",
                        score=0.5,
                    )
                )
    sal = pd.DataFrame(rows)
    d, _ = describer(tmp_path)
    table = describe_heads(sal, describer=d)
    assert table["status"].tolist() == ["pattern", "pattern"]
    assert "2 of 2 heads" in availability_note(table)
    monkeypatch.delenv("OPENAI_API_KEY")
    fresh, _ = describer(tmp_path / "empty")
    none = describe_heads(sal, describer=fresh)
    assert none["status"].tolist() == ["unavailable"] * 2
    assert availability_note(none).startswith("LLM descriptions are unavailable")
    assert_no_key(tmp_path)


def test_parse_answer_is_tolerant() -> None:
    assert parse_answer(GOOD)["pattern"].startswith("Copies")
    assert parse_answer("Sure! Here it is: " + GOOD + " Hope this helps.")["inputs"]
    assert parse_answer('{"Pattern": "Capitalises", "Inputs": "words"}')["pattern"] == "Capitalises"
    assert parse_answer("Unclear")["pattern"] == "Unclear"
    assert parse_answer('"Unclear."')["pattern"] == "Unclear"
    for bad in (None, "", "   ", "it copies", '{"pattern": ""}', "[1, 2]", GOOD[:30]):
        assert parse_answer(bad) is None
    assert is_no_pattern("The pattern is unclear") and not is_no_pattern(GOOD)


def test_prompt_states_format_and_rule() -> None:
    msgs = build_messages(LINES, suppress=True)
    user = msgs[1]["content"]
    assert "suppresses" in user and '"Unclear"' in user and "'␣'" in user
    assert all(line in user for line in LINES) and "3 tokens" in user


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
    d = Describer(
        LLMConfig(model="test-model", timeout=0.5, backoff=0.0, max_attempts=3),
        cache=tmp_path / "llm",
        sleep=lambda s: None,
        log=messages.append,
    )
    d.describe(LINES)
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
    """A server the project started: no key from the environment, the pinned name in requests,
    and the cache keyed by the config's model name (machine-independent)."""
    srv = FakeServer()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        cfg = LLMConfig(model="local-model@llama-cpp", json_schema=True)
        d = Describer(cfg, cache=tmp_path, endpoint=Endpoint(srv.url, model="/models/x.gguf"))
        assert d.can_ask
        out = d.describe(LINES)
        assert out.status == "pattern"
        req = srv.requests[0]
        assert req["model"] == "/models/x.gguf"
        assert req["response_format"]["schema"]["required"] == ["reasoning", "inputs", "pattern"]
        replay = Describer(cfg, cache=tmp_path)  # no endpoint, no key: the cache answers
        assert replay.describe(LINES, cache_only=True).cached
    finally:
        srv.close()


def test_concurrent_requests_keep_the_heads_in_order(server: FakeServer, tmp_path: Path) -> None:
    table = pd.DataFrame(
        [
            dict(
                layer=la,
                head=h,
                salient_rank=1,
                source=f" s{la}{h}",
                saliency=1.0,
                rank=1,
                target=f" t{la}{h}",
            )
            for la, h in [(2, 1), (0, 3), (1, 0), (0, 1)]
        ]
    )
    server.script = [
        {"content": GOOD, "sleep": 0.05 * (4 - i)} for i in range(4)
    ]  # early ones end last
    d, _ = describer(tmp_path)
    out = describe_heads(table, describer=d, concurrency=4)
    assert list(out["name"]) == ["0.1", "0.3", "1.0", "2.1"]
    assert (out["status"] == "pattern").all() and len(server.requests) == 4


def test_a_dead_server_stops_the_run_instead_of_retrying(tmp_path: Path) -> None:
    from mapslib.salient.llm_server import LLMServerError

    cfg = LLMConfig(model="m", timeout=0.5, max_attempts=3, backoff=0.01)
    dead = "the llama-cpp LLM server stopped during the run (exit code -9)"
    d = Describer(
        cfg, cache=tmp_path, endpoint=Endpoint("http://127.0.0.1:9/v1"), health=lambda: dead
    )
    with pytest.raises(LLMServerError, match="stopped during the run"):
        d.describe(LINES)
    assert d.requests == 1


def test_replay_and_speed_summary(tmp_path: Path) -> None:
    assert is_local_model("qwen@llama-cpp") and not is_local_model("gpt-4o")
    assert replay_describer("qwen@llama-cpp").can_ask is False
    records = [
        {"seconds": 10.0, "usage": {"prompt_tokens": 900, "completion_tokens": 100}},
        {"seconds": 30.0, "usage": {"prompt_tokens": 700, "completion_tokens": 60}},
        {"usage": {}},  # an answer from before timings were recorded: left out
    ]
    s = speed_summary(records)
    assert s["answers"] == 2 and s["seconds per answer"] == 20.0
    assert s["prompt tokens per answer"] == 800 and s["answer tokens per second"] == 4.0


def test_a_looping_answer_is_sampled_again_at_the_retry_temperature(
    server: FakeServer, tmp_path: Path
) -> None:
    """At temperature 0 another seed repeats a local model's loop; the retry samples instead."""
    server.script = [
        {"content": '{"reasoning": "the the the', "finish": "length"},
        {"content": GOOD},
    ]
    d, _ = describer(tmp_path, retry_temperature=0.7)
    out = d.describe(LINES)
    assert out.status == "pattern" and out.attempts == 2
    assert [r["temperature"] for r in server.requests] == [0.0, 0.7]
    record = d.cached(build_messages(LINES))
    assert record["temperature_used"] == 0.7 and record["seed_used"] == 1
