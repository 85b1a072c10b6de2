"""Describing heads: the prompt, the parsing of answers, and describing against an LLM server.

A local HTTP server speaking /v1/chat/completions answers (no mocking of the openai client); the
client's own retries, cache and key handling are tested in tests/llm/test_client.py. When
llama-cpp-python is installed (`make setup-llm`) or llama.cpp's llama-server is built (`make
setup-llm-server`), heads are described by each on the real SmolLM2-135M-Instruct GGUF, whose
grammar-constrained JSON always parses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_llm import GOOD, KEY, LINES, FakeServer

from mapslib.errors import MissingAPIKey
from mapslib.llm.client import Endpoint, LLMConfig, answer_key
from mapslib.llm.server import LocalServer, backend_installed, local_spec
from mapslib.salient.describe import (
    CATEGORY_SCHEMA,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    Describer,
    availability_note,
    build_messages,
    describe_heads,
    is_no_pattern,
    parse_answer,
    parse_category_answer,
    replay_describer,
)
from mapslib.salient.evidence import CATEGORIES, head_evidence


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


def test_the_prompt_and_its_key_are_pinned() -> None:
    """The committed answers are filed under the key of these exact messages: a change to the
    prompt orphans every one of them (and needs them asked again)."""
    model = "qwen2.5-coder-1.5b-instruct.Q4_K_M@llama-cpp"
    keys = [answer_key(model, build_messages(LINES, suppress), 0.0, 0) for suppress in (0, 1)]
    assert keys == [
        "3c64d97d6588a466173426fe4e9054c8ba737ce6d43a5d4a8b80884ddf8b7237",
        "73e160201220471e3bcfa11d85dde5bf6962fa788c1d30343910fd0eeaad7198",
    ]
    assert keys[0] != answer_key(model, build_messages(LINES[:2]), 0.0, 0)


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


def test_a_grammar_constrained_server_gets_the_answer_schema(tmp_path: Path, monkeypatch) -> None:
    """A server the project started (llama.cpp) is sent the answer's schema with JSON mode, and a
    replay with no server reads the answer from the cache."""
    srv = FakeServer()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        cfg = LLMConfig(model="local-model@llama-cpp", json_schema=True)
        d = Describer(cfg, cache=tmp_path, endpoint=Endpoint(srv.url, model="/models/x.gguf"))
        out = d.describe(LINES)
        assert out.status == "pattern"
        req = srv.requests[0]
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


def test_a_chapter_replays_a_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    local = replay_describer("qwen@llama-cpp", 0.0, 3)
    assert isinstance(local, Describer) and not local.can_ask and local.config.seed == 3
    assert replay_describer("gpt-4o").can_ask  # an API model with a key is asked


def salient_table(heads: list[tuple[int, int]]) -> pd.DataFrame:
    """A minimal salient_mappings table: two salient tokens with one target each, per head (the
    heads differ, so each is its own request)."""
    rows = []
    for i, (layer, head) in enumerate(heads):
        pairs = [("␣John", "␣John"), ("␣Mary", "␣Mary"), ("␣Paris", "␣France")]
        for s, (src, tgt) in enumerate(pairs[i % 3 :] + pairs[: i % 3], start=1):
            rows.append(
                dict(
                    layer=layer,
                    head=head,
                    name=f"{layer}.{head}",
                    salient_rank=s,
                    source_id=s,
                    source=src.replace("␣", " "),
                    saliency=1.0,
                    rank=1,
                    target_id=s,
                    target=tgt.replace("␣", " "),
                    score=1.0,
                )
            )
    return pd.DataFrame(rows)


GGUF_SERVERS = [
    pytest.param(
        "llama-cpp",
        marks=pytest.mark.skipif(
            not backend_installed("llama-cpp"),
            reason="llama-cpp-python[server] is not installed (make setup-llm)",
        ),
    ),
    pytest.param(
        "llama-server",
        marks=pytest.mark.skipif(
            not backend_installed("llama-server"),
            reason="llama.cpp's llama-server is not built (make setup-llm-server)",
        ),
    ),
]


@pytest.mark.parametrize("backend", GGUF_SERVERS)
def test_real_llama_cpp_server_describes_caches_and_replays(backend: str, tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct under grammar-constrained JSON: answers that parse are cached, one
    that runs past max_tokens is retried and then recorded as a failure naming why (seen on head
    0.0: a 135M model can ramble); a rerun with no server answers from the cache alone."""
    spec = local_spec("smollm2-135m", backend, threads=2)
    config = LLMConfig(model=spec.name, max_tokens=200, json_schema=True, timeout=300)
    table = salient_table([(0, 0), (3, 1)])
    with LocalServer(spec) as server:
        d = Describer(
            config,
            cache=tmp_path,
            endpoint=Endpoint(server.base_url, model=server.request_model),
            health=server.failure,
        )
        first = describe_heads(table, describer=d)
    ok = first["status"].isin(["pattern", "no pattern"])
    assert ok.any() and (first.loc[~ok, "status"] == "failed").all()
    assert (first.loc[~ok, "error"].str.len() > 0).all() and (first.loc[~ok, "attempts"] > 1).all()
    assert len(list(tmp_path.rglob("*.json"))) == ok.sum()
    replay = Describer(config, cache=tmp_path, read_also=())
    again = describe_heads(table, describer=replay, cache_only=True)
    assert again.loc[ok, "cached"].all() and replay.requests == 0
    assert list(again.loc[ok, "pattern"]) == list(first.loc[ok, "pattern"])


# -- the prompt with evidence and a category ------------------------------------------------------------

FACTS = ["Top target equals the source (up to case and leading space) in 3 of 3 lines."]


def answer(category: str, description: str = "Copies the token: ␣John -> ␣John.") -> str:
    return json.dumps({"category": category, "description": description})


def test_without_evidence_the_messages_are_the_original_ones() -> None:
    for suppress in (False, True):
        user = USER_TEMPLATE.format(
            n=3, k=3, verb="suppresses" if suppress else "promotes", lines="\n".join(LINES)
        )
        expected = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]
        assert build_messages(LINES, suppress) == expected
        assert build_messages(LINES, suppress, evidence=None) == expected


def test_evidence_prompt_puts_shared_text_first_then_lines_then_facts() -> None:
    user = build_messages(LINES, evidence=FACTS)[1]["content"]
    other = build_messages(["␣a -> ␣b, ␣c, ␣d"] * 3, evidence=["Another fact."])[1]["content"]
    shared = user[: user.index("The lines:")]
    assert other.startswith(shared)  # one prefix for every head of a run
    assert all(f"- {c}: " in shared for c in CATEGORIES) and '"category"' in shared
    assert user.index(LINES[-1]) < user.index(FACTS[0]) and user.endswith(FACTS[0])
    assert "clear" not in shared.lower()  # the status no longer hangs on a word
    assert build_messages(LINES, evidence=FACTS)[0]["content"] == SYSTEM_PROMPT
    assert "suppresses" in build_messages(LINES, True, FACTS)[1]["content"]


def test_parse_category_answer() -> None:
    good = parse_category_answer(answer("copying"))
    assert good == {"category": "copying", "description": "Copies the token: ␣John -> ␣John."}
    for variant, category in [
        ("Copying", "copying"),
        ("no-pattern", "no pattern"),
        ("None", "no pattern"),
        (" Fixed_Output_Set ", "fixed output set"),
        ("token-class shift", "token class"),
        ("NAMED RELATION.", "named relation"),
    ]:
        assert parse_category_answer(answer(variant))["category"] == category
    fenced = "```json\n" + answer("morphology") + "\n```"
    assert parse_category_answer(fenced)["category"] == "morphology"
    prose = "Here you go: " + answer("copying") + " Hope it helps."
    assert parse_category_answer(prose)["category"] == "copying"
    assert (
        parse_category_answer('{"Category": "copying", "Description": "x"}')["description"] == "x"
    )
    assert parse_category_answer(answer("no pattern", ""))["description"] == ""
    for bad in (
        None,
        "",
        "copying",
        answer("antonyms"),  # not a category: asked again
        answer("copying", ""),  # a pattern without its sentence
        '{"description": "Copies"}',
        '{"category": 3, "description": "x"}',
        answer("copying")[:25],
    ):
        assert parse_category_answer(bad) is None


def test_no_pattern_comes_from_the_category_only(server: FakeServer, tmp_path: Path) -> None:
    server.script = [
        {"content": answer("copying", "Copies, though the last line is unclear.")},
        {"content": answer("none", "Maps tokens to themselves")},
        {"content": answer("antonyms")},  # unknown: asked again with the next seed
        {"content": answer("Fixed output set", "Promotes ␣the.")},
    ]
    d, _ = describer(tmp_path)
    first = d.describe(LINES, evidence=FACTS)
    assert (first.status, first.category) == ("pattern", "copying") and "unclear" in first.pattern
    second = d.describe(LINES[:2], evidence=FACTS)
    assert (second.status, second.category) == ("no pattern", "no pattern")
    third = d.describe(LINES[:1], evidence=FACTS)
    assert third.category == "fixed output set" and third.attempts == 2
    assert d.describe(LINES, evidence=FACTS).cached  # the cache keys on the evidence prompt
    assert d.describe(LINES).category == ""  # the original prompt is another request
    assert len(server.requests) == 5


def test_describe_heads_with_evidence(server: FakeServer, tmp_path: Path) -> None:
    sal = salient_table([(0, 0), (3, 1)])
    evidence = head_evidence(sal)
    server.script = [{"content": answer("copying")}, {"content": answer("no pattern", "None.")}]
    d, _ = describer(tmp_path)
    out = describe_heads(sal, describer=d, evidence=evidence)
    assert list(out["category"]) == ["copying", "no pattern"]
    assert list(out["status"]) == ["pattern", "no pattern"]
    user = server.requests[0]["messages"][1]["content"]
    assert "Facts counted from the lines:\nTop target equals the source" in user
    plain = describe_heads(sal, describer=d)  # the original prompt: category left empty
    assert list(plain["category"]) == ["", ""] and len(server.requests) == 4


def test_a_grammar_constrained_server_gets_the_category_schema(tmp_path: Path, monkeypatch) -> None:
    srv = FakeServer()
    srv.script = [{"content": answer("copying")}]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        cfg = LLMConfig(model="local-model@llama-cpp", json_schema=True)
        d = Describer(cfg, cache=tmp_path, endpoint=Endpoint(srv.url, model="/models/x.gguf"))
        assert d.describe(LINES, evidence=FACTS).category == "copying"
        schema = srv.requests[0]["response_format"]["schema"]
        assert schema == CATEGORY_SCHEMA
        assert schema["properties"]["category"]["enum"] == list(CATEGORIES)
    finally:
        srv.close()
