"""The likelihood judge: PMI picks, ties at chance, balanced positions, statistics, caching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from mapslib.foundation.io import cache_root
from mapslib.salient import likelihood as lk
from mapslib.salient.likelihood import (
    NO_DESCRIPTION,
    CachedScorer,
    LikelihoodJudgeError,
    empty,
    export_scores,
    group_accuracy,
    likelihood_judge,
    paired_permutation_p,
    question_context,
    run_likelihood_judgement,
    shuffled,
)

HEADS = [(layer, head) for layer in range(4) for head in range(2)]  # 8 heads x 5 items: 40
OPTIONS = 4


def _option(layer: int, head: int, item: int, k: int) -> str:
    """A made-up top-5 list, its first token unique to (head, item, option)."""
    return ", ".join(f"␣w{layer}x{head}y{item}z{k}t{t}" for t in range(5))


def make_items() -> pd.DataFrame:
    """Questions like judge.judge_items': the real list at running index % options."""
    rows = []
    for index, (layer, head, item) in enumerate((la, h, i) for la, h in HEADS for i in range(5)):
        answer = index % OPTIONS
        options = [_option(layer, head, item, k) for k in range(OPTIONS)]
        rows.append(
            dict(
                layer=layer,
                head=head,
                item=item,
                source=f"␣src{item}",
                options=options,
                option_heads=[f"{layer}.{head}" if k == answer else "9.9" for k in range(OPTIONS)],
                answer=answer,
            )
        )
    return pd.DataFrame(rows)


@pytest.fixture
def items() -> pd.DataFrame:
    return make_items()


def real_lists(items: pd.DataFrame) -> dict[str, str]:
    """Per head: its real lists, one per line (a description that knows every answer)."""
    out: dict[str, list[str]] = {}
    for r in items.itertuples():
        out.setdefault(f"{r.layer}.{r.head}", []).append(r.options[r.answer])
    return {k: "\n".join(v) for k, v in out.items()}


class ConstantScorer:
    """Every option equally likely, whatever the context."""

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        return [-1.0] * len(continuations)


class FirstScorer:
    """Prefers the first option whenever a description is given (a position bias)."""

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        told = NO_DESCRIPTION not in context
        return [-1.0 + (told and i == 0) for i in range(len(continuations))]


class KnowingScorer:
    """Scores an option high when the context holds it word for word."""

    def __init__(self) -> None:
        self.calls = 0

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        self.calls += 1
        return [-10.0 + 5.0 * (c.strip() in context) for c in continuations]


class PriorScorer:
    """logP = a large prior (favouring the last option) + a small bonus when the context holds the
    option's first token."""

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        first = [c.strip().split(", ")[0] for c in continuations]
        prior = [-20.0 + 3.0 * int(c.split("z")[1][0]) for c in continuations]  # the last wins
        return [p + 1.0 * (f in context) for p, f in zip(prior, first, strict=True)]


def test_context_holds_the_description_and_the_source() -> None:
    ctx = question_context("␣Paris", "maps cities to countries")
    assert "maps cities to countries" in ctx and ctx.endswith("␣Paris ->")
    assert question_context("␣Paris", "  ") == question_context("␣Paris", "")
    assert NO_DESCRIPTION in question_context("␣Paris", "")


def test_a_first_option_bias_scores_chance_exactly(items: pd.DataFrame) -> None:
    """Positions are balanced, so always picking the first option is right 1 time in 4."""
    names = sorted(real_lists(items))
    judged = likelihood_judge(
        items, {"x": dict.fromkeys(names, "anything")}, FirstScorer(), progress=False
    )
    assert (judged["picked"] == 0).all() and (judged["picked_uncalibrated"] == 0).all()
    assert judged["correct"].mean() == 1 / OPTIONS == judged["correct_uncalibrated"].mean()


def test_an_uninformative_scorer_guesses_at_random(items: pd.DataFrame) -> None:
    """All options tie: the picks are a seeded draw spread over the positions, not the first."""
    names = sorted(real_lists(items))
    contexts = {"e": empty(names), "c": dict.fromkeys(names, "some text")}
    judged = likelihood_judge(items, contexts, ConstantScorer(), progress=False)
    assert set(judged["picked"]) == set(range(OPTIONS))
    assert 0.05 < judged["correct"].mean() < 0.5
    assert json.loads(judged["scores"].iloc[0]) == [0.0] * OPTIONS
    again = likelihood_judge(items, contexts, ConstantScorer(), progress=False)
    pd.testing.assert_frame_equal(judged, again)  # seeded


def test_a_knowing_scorer_gets_every_answer(items: pd.DataFrame) -> None:
    judged = likelihood_judge(items, {"own": real_lists(items)}, KnowingScorer(), progress=False)
    assert judged["correct"].all() and len(judged) == len(items)
    assert list(judged.columns) == lk.JUDGED_COLUMNS


def test_pmi_cancels_the_prior(items: pd.DataFrame) -> None:
    """The prior decides the uncalibrated pick; PMI is left with the description's bonus."""
    firsts = {}
    for r in items.itertuples():
        firsts.setdefault(f"{r.layer}.{r.head}", []).append(r.options[r.answer].split(", ")[0])
    descs = {k: " ".join(v) for k, v in firsts.items()}
    judged = likelihood_judge(items, {"own": descs}, PriorScorer(), progress=False)
    assert judged["correct"].all()
    assert (judged["picked_uncalibrated"] == OPTIONS - 1).all()
    pmi = [json.loads(s) for s in judged["scores"]]
    assert all(sorted(p) == pytest.approx([0.0, 0.0, 0.0, 1.0]) for p in pmi)


def test_the_baseline_is_scored_once_for_all_groups(items: pd.DataFrame) -> None:
    scorer = KnowingScorer()
    descs = real_lists(items)
    contexts = {"own": descs, "shuffled": shuffled(descs, 0), "empty": empty(sorted(descs))}
    judged = likelihood_judge(items, contexts, scorer, progress=False)
    assert scorer.calls == 3 * len(items)  # baseline, own, shuffled; empty reuses the baseline
    assert judged.groupby("group")["correct"].mean()["own"] == 1.0


def test_statistics(items: pd.DataFrame) -> None:
    descs = real_lists(items)
    names = sorted(descs)
    contexts = {"own": descs, "shuffled": shuffled(descs, 0), "empty": empty(names)}
    judged = likelihood_judge(items, contexts, KnowingScorer(), progress=False)
    summary = group_accuracy(judged).set_index("group")
    assert (summary["ci low"] <= summary["accuracy"]).all()
    assert (summary["accuracy"] <= summary["ci high"]).all()
    assert summary.loc["own", "accuracy"] == 1.0 and summary.loc["own", "chance"] == 0.25
    assert summary.loc["own", "p (binomial, > chance)"] < 1e-10
    assert summary.loc["own", "answer A"] == 0.25 == summary.loc["own", "picked D"]
    assert paired_permutation_p(judged, "own", "shuffled") < 0.001
    assert paired_permutation_p(judged, "shuffled", "empty") > 0.05
    assert paired_permutation_p(judged, "empty", "shuffled") > 0.05


def test_shuffled_descriptions_come_from_other_heads() -> None:
    descs = {f"{i}.0": f"head {i}" for i in range(5)}
    other = shuffled(descs, 0)
    assert sorted(other.values()) == sorted(descs.values())
    assert all(other[n] != descs[n] for n in descs)


def test_scores_are_cached_on_disk(tmp_path: Path) -> None:
    inner = KnowingScorer()
    cached = CachedScorer(inner, "m", root=tmp_path)
    first = cached.logprobs("A B", [" A", " B", " Q"])
    assert inner.calls == 1 and first == [-5.0, -5.0, -10.0]
    resumed = CachedScorer(inner, "m", root=tmp_path)  # a new run: read back, only R is scored
    assert resumed.logprobs("A B", [" Q", " R"]) == [-10.0, -10.0]
    assert inner.calls == 2 and resumed.hits == 1 and resumed.misses == 1
    assert CachedScorer(inner, "other", root=tmp_path).path("A B") != cached.path("A B")


@pytest.mark.parametrize("name", ["judged.json", "judged.csv"])
def test_the_table_replays_without_a_model(
    items: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Read back (a CSV turns "23.10" into 23.1), the names are still "layer.head" text; the
    model is opened only for a score that is not cached, and is missed with one line."""
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / name
    gguf = tmp_path / "absent.gguf"
    contexts = {"own": real_lists(items)}
    real = lk.open_llama, lk.resolve_gguf
    monkeypatch.setattr(lk, "resolve_gguf", lambda source: gguf)
    monkeypatch.setattr(lk, "open_llama", lambda path: KnowingScorer())
    made = run_likelihood_judgement(items, contexts, gguf, out, {"run": 1}, progress=False)
    monkeypatch.setattr(lk, "open_llama", real[0])
    monkeypatch.setattr(lk, "resolve_gguf", real[1])
    again = run_likelihood_judgement(items, contexts, gguf, out, {"run": 1}, progress=False)
    assert again["correct"].all() and len(again) == len(made)
    expected = again["layer"].astype(str) + "." + again["head"].astype(str)
    assert again["name"].tolist() == expected.tolist()
    assert again.attrs["sidecar"]["group_accuracy"][0]["accuracy"] == 1.0
    cached = run_likelihood_judgement(items, contexts, gguf, out, {"run": 2}, progress=False)
    assert cached.attrs["sidecar"]["cache"]["scored"] == 0  # every score from the disk cache
    changed = {"own": {n: d + " More." for n, d in contexts["own"].items()}}
    with pytest.raises(LikelihoodJudgeError, match="make setup-llm"):
        run_likelihood_judgement(items, changed, gguf, out, {"run": 3}, progress=False)


def test_committed_scores_replay_with_no_cache_and_no_model(tmp_path: Path) -> None:
    """Exported scores are read back with an empty cache, no scorer opened; exporting twice
    writes the same bytes (git sees no change)."""
    cache, store = tmp_path / "cache", tmp_path / "store"
    CachedScorer(KnowingScorer(), "m", root=cache).logprobs("A B", [" A", " Q"])
    first = export_scores("m", root=cache, out=store).read_bytes()
    assert export_scores("m", root=cache, out=store).read_bytes() == first

    def never() -> KnowingScorer:
        raise AssertionError("the model was opened")

    replay = CachedScorer(never, "m", root=tmp_path / "empty", committed=store)
    assert replay.logprobs("A B", [" Q", " A"]) == [-10.0, -5.0] and replay.hits == 2
    with pytest.raises(AssertionError, match="opened"):
        replay.logprobs("A B", [" R"])  # not committed: only now is the model needed


GGUF = cache_root() / "gguf" / "qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf"
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (make setup-llm)")
@pytest.mark.skipif(not GGUF.is_file(), reason=f"{GGUF.name} is not in the cache")
def test_kv_reuse_matches_scoring_from_scratch() -> None:
    """Reusing the context's KV cells gives the scores of a fresh evaluation: exactly when the
    tokens are batched alike (whatever was scored before, and with llama-cpp-python's own eval),
    up to the quantised kernels' batching noise (~0.05 nats a token) in one pass."""
    scorer = lk.LlamaScorer(GGUF, n_ctx=512, n_threads=2)
    options = [" ␣France, ␣Italy, ␣Spain", " ␣the, ␣of, ␣and", " ␣cat"]
    paris = question_context("␣Paris", "maps capital cities to their countries")
    rome = question_context("␣Rome", "maps capital cities to their countries")
    first = scorer.logprobs(paris, options)
    scorer.logprobs(rome, options)  # shares the description: only the rest is evaluated
    assert scorer.logprobs(paris, options) == first
    scorer.reset()
    assert scorer.logprobs(paris, options) == first
    full = lk.LlamaScorer(GGUF, n_ctx=512, n_threads=2, lean=False)  # Llama.eval, all logits
    assert full.logprobs(paris, options) == first
    fresh = [scorer.from_scratch(paris, o) for o in options]
    assert first == pytest.approx(fresh, abs=0.5)  # Q4 kernels differ with the batch's shape
    assert all(s < 0 for s in first) and first[0] > first[1]
