"""Scoring the likelihood judge's questions in several processes, one llama.cpp thread each.

llama.cpp's threads within one process wait for each other at every layer, so on a machine whose
cores are also busy with other work a preempted thread stalls the rest (`LlamaScorer`'s default is
half the cores for that reason). Processes of one thread each never wait for one another: `workers`
of them, each scoring whole heads (a head's questions share its description as a cached prefix),
fill the judge's disk cache, and the judge then reads every score from it. A score depends only on
its context and continuation (`LlamaScorer` evaluates them in the same batches whatever came
before), so the table is the one a single process would make.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mapslib.salient.likelihood import CachedScorer, lazy_scorer, likelihood_judge

MAX_WORKERS = 8  # each process holds its own copy of the judge model (0.5B at 4 bits: ~0.4 GB)

_SCORER: dict[str, CachedScorer] = {}  # the worker process's scorer, opened by _open


def default_workers() -> int:
    """MAPSLIB_JUDGE_WORKERS if set, else one process per core, at most MAX_WORKERS."""
    chosen = os.environ.get("MAPSLIB_JUDGE_WORKERS", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(
                f"MAPSLIB_JUDGE_WORKERS={chosen!r}: give a whole number of processes, 1 or more"
            )
        return int(chosen)
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _open(gguf: str, model: str) -> None:
    """Pool initializer: this process's single-threaded scorer (opened on its first miss)."""
    _SCORER["scorer"] = lazy_scorer(gguf, model, n_threads=1)


def _score(task: tuple[pd.DataFrame, dict[str, dict[str, str]]]) -> int:
    """Score one head's questions in every group into the disk cache; the questions done."""
    items, contexts = task
    likelihood_judge(items, contexts, _SCORER["scorer"], progress=False)
    return len(items)


def head_tasks(
    items: pd.DataFrame, contexts: dict[str, dict[str, str]]
) -> list[tuple[pd.DataFrame, dict[str, dict[str, str]]]]:
    """One task per head asked: its questions and its description in each group."""
    asked = items["layer"].astype(int).astype(str) + "." + items["head"].astype(int).astype(str)
    names = sorted({n for descs in contexts.values() for n in descs})
    tasks = []
    for name in names:
        own = {g: {name: d[name]} for g, d in contexts.items() if name in d}
        tasks.append((items[asked == name], own))
    return tasks


def prescore(
    items: pd.DataFrame,
    contexts: dict[str, dict[str, str]],
    gguf: str | Path,
    model: str,
    workers: int,
    progress: bool = True,
) -> None:
    """Fill the judge's disk cache (named `model`) for every question and group, head by head, in
    `workers` single-threaded processes."""
    tasks = head_tasks(items, contexts)
    pool = multiprocessing.get_context("spawn").Pool(workers, _open, (str(gguf), model))
    with (
        pool,
        tqdm(total=len(tasks), desc="judge (parallel)", unit="head", disable=not progress) as bar,
    ):
        for _ in pool.imap_unordered(_score, tasks):
            bar.update(1)
