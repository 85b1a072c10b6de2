"""Scoring the judge's questions in several processes gives the table one process gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from test_likelihood import make_items, real_lists

from mapslib.foundation.io import cache_root
from mapslib.salient.likelihood import (
    all_cached,
    lazy_scorer,
    likelihood_judge,
    run_likelihood_judgement,
)
from mapslib.salient.parallel_judge import head_tasks

GGUF = cache_root() / "gguf" / "qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf"
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def test_one_task_per_head_with_its_questions_and_descriptions() -> None:
    items = make_items()
    contexts = {"own": real_lists(items), "empty": {"0.0": "", "1.1": ""}}
    tasks = head_tasks(items, contexts)
    assert len(tasks) == 8 and sum(len(q) for q, _ in tasks) == len(items)
    for questions, groups in tasks:
        (name,) = {f"{la}.{h}" for la, h in zip(questions["layer"], questions["head"], strict=True)}
        assert all(list(descs) == [name] for descs in groups.values())
        assert ("empty" in groups) == (name in {"0.0", "1.1"})


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (make setup-llm)")
@pytest.mark.skipif(not GGUF.is_file(), reason=f"{GGUF.name} is not in the cache")
def test_two_processes_give_the_table_of_one(tmp_path: Path, monkeypatch) -> None:
    """Same picks and the very same scores: a score depends on its context and option only."""
    items = make_items().head(10)  # heads 0.0 and 0.1, 5 questions each
    contexts = {"own": real_lists(items)}
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path / "parallel"))
    parallel = run_likelihood_judgement(items, contexts, GGUF, None, {}, progress=False, workers=2)
    assert all_cached(items, contexts, GGUF.stem)
    single = likelihood_judge(
        items, contexts, lazy_scorer(GGUF, "single", n_threads=1), progress=False
    )
    columns = ["name", "group", "item", "picked", "scores", "logp"]
    pd.testing.assert_frame_equal(parallel[columns], single[columns])
