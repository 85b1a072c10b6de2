"""The command line as a user calls it: the `relations` contract end to end, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mapslib.cli import main
from mapslib.relation_map.scores import SCORE_COLUMNS


@pytest.mark.slow
def test_relations_end_to_end_on_smollm2(tmp_path: Path) -> None:
    """All shipped relations, all layers: the CSV contract, the sidecar, and the recorded head scores."""
    out = tmp_path / "scores.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapslib",
            "relations",
            "--model",
            "smollm2-135m",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipping relation year_to_following: 0 of 700" in proc.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == 30 * 9 * 16 * 2
    assert set(df["mode"]) == {"promote", "suppress"}
    assert df.groupby(["layer", "head", "relation", "mode"]).size().max() == 1
    score = df.set_index(["layer", "head", "relation", "mode"])["score"]
    assert score[(23, 2, "name_copying", "promote")] == pytest.approx(0.84, abs=0.01)
    assert score[(23, 3, "name_copying", "suppress")] == pytest.approx(0.87, abs=0.01)
    assert set(df.loc[df.relation == "name_copying", "k"]) == {1}
    assert set(df.loc[df.relation == "country_to_capital_wikidata", "k"]) == {10}

    side = json.loads(out.with_name("scores.csv.json").read_text())
    assert (
        side["model"]["revision"].startswith("sha256:") and "Q4_1" in side["model"]["quantization"]
    )
    assert side["environment"]["mapslib"] and side["layers"] == list(range(30))
    rels = {r["name"]: r for r in side["relations"]}
    assert len(rels) == 20 and len(rels["name_copying"]["sha256"]) == 64
    assert (
        rels["name_copying"]["single_token_pairs"] == 99
        and rels["year_to_following"]["scored"] is False
    )
    assert {"load", "score", "total"} <= set(side["timings_s"])
    assert side["command"].startswith("python -m mapslib relations --model smollm2-135m")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


@pytest.mark.slow
def test_user_relation_layers_and_k(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rel = tmp_path / "first_names.csv"
    names = [
        "John",
        "Mary",
        "James",
        "Anna",
        "David",
        "Sarah",
        "Michael",
        "Laura",
        "Peter",
        "Emma",
    ] * 3
    rel.write_text("src,dst\n" + "".join(f"{n},{n}\n" for n in names))
    out = tmp_path / "s.csv"
    rc = main(
        [
            "relations",
            "--relations",
            str(rel),
            "names",
            "--layers",
            "22,23",
            "--k",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    df = pd.read_csv(out)
    assert set(df["relation"]) == {"first_names", "name_copying"}
    assert set(df["layer"]) == {22, 23} and set(df["k"]) == {2}
    assert df.loc[(df.relation == "first_names") & (df["mode"] == "promote"), "score"].max() > 0.5


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    return err


def test_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(
        ["relations", "--model", "no-such-model-xyz", "--out", str(tmp_path / "a.csv")], capsys
    )
    assert "smollm2-135m" in err and "gemma3-270m" in err
    err = _error(
        ["relations", "--model", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "a.csv")],
        capsys,
    )
    assert "GGUF file not found" in err


def test_malformed_relation_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('[["a", "b"], ["c", "d", "e"]]')
    err = _error(["relations", "--relations", str(bad), "--out", str(tmp_path / "a.csv")], capsys)
    assert str(bad) in err and "row 1" in err


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--out must end in .csv" in _error(
        ["relations", "--out", str(tmp_path / "a.txt")], capsys
    )
    assert "k must be a positive" in _error(
        ["relations", "--k", "0", "--out", str(tmp_path / "a.csv")], capsys
    )
    assert "unknown relation" in _error(
        ["relations", "--relations", "nope", "--out", str(tmp_path / "a.csv")], capsys
    )
    missing = str(tmp_path / "none.csv")
    for cmd in ("correlate", "ablate", "known-heads"):  # before the model is loaded
        err = _error([cmd, "--static", missing, "--out", str(tmp_path / "a.csv")], capsys)
        assert "--static file not found" in err and "Loading" not in err
    assert "no task prompt for word_to_synonym" in _error(
        ["ablate", "--relations", "synonym", "--out", str(tmp_path / "a.csv")], capsys
    )
    assert "--n-prompts must be a positive integer, got 0" in _error(
        ["known-heads", "--n-prompts", "0", "--out", str(tmp_path / "a.csv")], capsys
    )
    assert "--bias" in _error(  # argparse's own message, still one error line and status 2
        ["relations", "--bias", "output", "--out", str(tmp_path / "a.csv")], capsys
    )
    err = _error(["book", "--weights-only", "--chapters", "02", "05", "--no-build"], capsys)
    assert "05_causal_ablation run(s) the model" in err and "--chapters 01 02 03 07 08" in err


@pytest.mark.slow
def test_too_few_pairs_and_bad_layers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small = tmp_path / "tiny_rel.json"
    small.write_text(json.dumps([["cat", "cats"], ["dog", "dogs"]]))
    err = _error(
        [
            "relations",
            "--relations",
            str(small),
            "--out",
            str(tmp_path / "a.csv"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert (
        "skipping relation tiny_rel: 2 of 2 pairs" in err
        and "no relation has enough single-token pairs" in err
    )
    err = _error(
        ["relations", "--layers", "0,30", "--out", str(tmp_path / "a.csv"), "--device", "cpu"],
        capsys,
    )
    assert "layers 0..29" in err


def test_unsupported_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A local model folder of an unsupported family is refused before its weights are read."""
    from transformers import OPTConfig

    OPTConfig(
        num_hidden_layers=1, hidden_size=16, num_attention_heads=2, ffn_dim=32, vocab_size=50
    ).save_pretrained(tmp_path)
    err = _error(["relations", "--model", str(tmp_path), "--out", str(tmp_path / "a.csv")], capsys)
    assert "'opt' is not supported" in err and "llama" in err and "gpt2" in err


def test_describe_without_a_key_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    err = _error(
        ["salient", "--heads", "23.2", "--describe", "--out", str(tmp_path / "s.json")], capsys
    )
    assert "OPENAI_API_KEY" in err and "Loading" not in err


def test_bad_llm_arguments_fail_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = ["--out", str(tmp_path / "s.json")]
    err = _error(["salient", "--heads", "23.2", "--judge", *out], capsys)
    assert "--judge" in err and "--describe" in err and "Loading" not in err
    local = ["salient", "--heads", "23.2", "--describe", "--llm", "local", *out]
    err = _error([*local, "--llm-backend", "transformers"], capsys)
    assert "serves a saved model folder" in err and "Loading" not in err
    err = _error([*local, "--llm-model", str(tmp_path / "missing.gguf")], capsys)
    assert "neither a model alias" in err
    err = _error([*local, "--llm-concurrency", "0"], capsys)
    assert "--llm-concurrency must be at least 1" in err


def test_an_unbuilt_llama_server_names_the_make_target(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAPSLIB_LLAMA_SERVER", str(tmp_path / "no-such-binary"))
    local = ["salient", "--heads", "23.2", "--describe", "--llm", "local"]
    err = _error(
        [*local, "--llm-backend", "llama-server", "--out", str(tmp_path / "s.json")], capsys
    )
    assert "make setup-llm-server" in err and "Loading" not in err and "Traceback" not in err


@pytest.fixture
def fake_openai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A scripted chat-completions server as OPENAI_BASE_URL, and a cache reusing the model."""
    from fake_llm import KEY, FakeServer

    from mapslib.foundation.io import cache_root

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(
        cache_root() / "models"
    )  # reuse the dequantised model
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path / "cache"))
    server = FakeServer()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    yield server
    server.close()


@pytest.mark.slow
def test_describe_against_a_local_server(
    tmp_path: Path, capsys: pytest.CaptureFixture, fake_openai
) -> None:
    """`salient --describe` end to end, the LLM being a local chat-completions server: the category
    prompt, each head's evidence in it, the category read back."""
    from fake_llm import KEY

    fake_openai.script = [{"content": CATEGORY_ANSWER}] * 2
    out = tmp_path / "s.json"
    args = ["salient", "--heads", "23.2,23.3", "--describe", "--llm-model", "local"]
    rc = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    desc = pd.read_csv(tmp_path / "s.descriptions.csv", dtype={"name": str})
    assert list(desc["name"]) == ["23.2", "23.3"] and set(desc["status"]) == {"pattern"}
    assert set(desc["category"]) == {"copying"}
    requests = fake_openai.requests
    assert len(requests) == 2 and requests[0]["model"] == "local"
    prompt = requests[0]["messages"][1]["content"]
    assert "␣" in prompt and "Top target equals the source" in prompt  # lines and evidence
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), path
    assert KEY not in err


CATEGORY_ANSWER = '{"category": "copying", "description": "Copies the source: ␣Paris -> ␣Paris."}'


class ConstantScorer:
    """A judge that finds every option equally likely: every group must come out at chance."""

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        return [-1.0] * len(continuations)


@pytest.mark.slow
def test_describe_and_judge_against_a_local_server(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fake_openai,
) -> None:
    """`--judge` scores each head's 5 held-out questions in every group (positive control, the
    template, own and another head's description, none) and logs the verdict."""
    import mapslib.salient.likelihood as lk
    from mapslib.salient.likelihood import GROUPS

    monkeypatch.setattr(lk, "resolve_gguf", lambda source: tmp_path / "judge.gguf")
    monkeypatch.setattr(lk, "open_llama", lambda path: ConstantScorer())
    monkeypatch.setattr(lk, "COMMITTED_SCORES", tmp_path / "no store")  # the book's real scores
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAPSLIB_JUDGE_WORKERS", "1")  # a spawned process would not see the patches
    fake_openai.script = [{"content": CATEGORY_ANSWER}] * 2
    args = ["salient", "--heads", "23.2,23.3", "--describe", "--judge", "--llm-model", "local"]
    rc = main([*args, "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 0, err
    judged = pd.read_csv(tmp_path / "s.judgements.csv", dtype={"name": str})
    assert len(fake_openai.requests) == 2 and len(judged) == 2 * 5 * 5  # heads x questions x groups
    assert set(judged["group"]) == set(GROUPS)
    assert "The judge FAILS its positive control" in caplog.text  # it cannot tell lists apart


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--llm", "local"], 1),  # llama-cpp-python's server answers one request at a time
        (["--llm", "local", "--llm-backend", "llama-server"], 8),  # one slot each, decoded together
        (["--llm", "local", "--llm-backend", "llama-server", "--llm-concurrency", "3"], 3),
        (["--llm", "openai"], 8),
    ],
)
def test_requests_in_flight_by_backend(argv: list[str], expected: int) -> None:
    import argparse

    from mapslib.cli.describe import concurrency, llm_args

    p = argparse.ArgumentParser()
    llm_args(p)
    assert concurrency(p.parse_args(argv)) == expected
