"""The likelihood judge on SmolLM2's real questions: seconds per head, tokens/s, control accuracies.

`--heads` layers spread evenly over the model, one head each (head = layer mod heads per layer), its 5 held-out questions built from the
weights (`judge_items`, balanced answer positions), scored by a local GGUF model in-process
(`LlamaScorer`, nothing cached on disk, so every score is computed) in three groups:

- "empty description (control)": the baseline alone (PMI 0: a seeded guess); its time is the cost
  of the no-description scores, which the other groups share;
- "positive control: seen mappings": the 30 lines the describer saw, as the description;
- "shuffled seen mappings (control)": another head's 30 lines (judge.shuffled_sources).

    python benchmarks/bench_judge.py --models qwen2.5-coder-0.5b qwen2.5-coder-1.5b --heads 30

`--workers` times the whole judge instead (`run_likelihood_judgement`, every score computed into a
fresh cache) on the positive control and the shuffled seen lines: one process of one llama.cpp
thread (the default on 2 cores before `parallel_judge`), one process of two threads, and
`parallel_judge`'s processes of one thread each:

    python benchmarks/bench_judge.py --models qwen2.5-coder-0.5b --heads 8 --workers 1 2

On a 2-core machine that another process keeps busy, `--threads 1` is ~5x faster than 2: llama.cpp's
threads wait for each other at every operation, and a preempted one stalls the rest (measured
with Qwen2.5-Coder-0.5B: 1.35 against 7.2 s per question).

Results go to benchmarks/results/judge_<model>_<N>heads.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapslib.foundation.io import read_table, write_json
from mapslib.foundation.models import load_model
from mapslib.foundation.packaged import ALIASES
from mapslib.salient.judge import JudgeSetup, judge_items
from mapslib.salient.likelihood import (
    EMPTY,
    POSITIVE,
    SHUFFLED_SEEN,
    LlamaScorer,
    empty,
    group_accuracy,
    likelihood_judge,
    paired_permutation_p,
    seen_descriptions,
    shuffled,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
SALIENT = ROOT / "book/models/smollm2-135m/data/salient_mappings.json.gz"


class Memo:
    """An in-memory cache in front of a scorer: the baseline is scored once for all groups."""

    def __init__(self, scorer: LlamaScorer):
        self.scorer = scorer
        self.seen: dict[tuple[str, str], float] = {}

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        """Scores from memory, the missing ones from the scorer."""
        missing = [c for c in continuations if (context, c) not in self.seen]
        if missing:
            scores = self.scorer.logprobs(context, missing)
            self.seen.update({(context, c): s for c, s in zip(missing, scores, strict=True)})
        return [self.seen[(context, c)] for c in continuations]


def build_items(heads: int, setup: JudgeSetup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SmolLM2's salient table for one head per layer and its held-out questions."""
    salient = read_table(SALIENT)
    lm = load_model("smollm2-135m", device="cpu")
    per_layer = int(salient["head"].max()) + 1
    layers = np.linspace(0, int(salient["layer"].max()), heads).round().astype(int)
    keep = {(int(la), int(la) % per_layer) for la in layers}
    pairs = zip(salient["layer"], salient["head"], strict=True)
    chosen = salient[[p in keep for p in pairs]]
    return chosen, judge_items(lm.hw, lm.tokenizer, chosen, setup)


def one_model(model: str, items: pd.DataFrame, seen: dict[str, str], threads: int) -> dict:
    """Judge the three groups with one GGUF model; time and tokens per group."""
    path = ALIASES[model].path() if model in ALIASES else Path(model)
    t0 = time.perf_counter()
    scorer = LlamaScorer(path, n_ctx=2048, n_threads=threads)
    load = time.perf_counter() - t0
    memo = Memo(scorer)
    groups = {EMPTY: empty(sorted(seen)), POSITIVE: seen, SHUFFLED_SEEN: shuffled(seen, 0)}
    judged, timing = [], {}
    for group, descs in groups.items():
        tokens, busy, t0 = scorer.evaluated, scorer.seconds, time.perf_counter()
        judged.append(likelihood_judge(items, {group: descs}, memo, progress=True))
        wall = time.perf_counter() - t0
        n = scorer.evaluated - tokens
        timing[group] = {
            "seconds": round(wall, 2),
            "seconds_per_head": round(wall / len(descs), 3),
            "tokens_evaluated": n,
            "tokens_per_s": round(n / max(scorer.seconds - busy, 1e-9), 1),
        }
    table = pd.concat(judged, ignore_index=True)
    summary = group_accuracy(table)
    return {
        "model": path.name,
        "load_s": round(load, 2),
        "timing": timing,
        "accuracy": summary.round(4).to_dict("records"),
        "paired_permutation_p": {
            f"{POSITIVE} > {SHUFFLED_SEEN}": paired_permutation_p(table, POSITIVE, SHUFFLED_SEEN),
            f"{POSITIVE} > {EMPTY}": paired_permutation_p(table, POSITIVE, EMPTY),
        },
    }


def workers_timing(
    model: str, items: pd.DataFrame, seen: dict[str, str], workers: list[int]
) -> dict:
    """Wall time of the whole judge per layout, each into a fresh cache (the committed store is not
    read: run this before `make judge-scores` has the questions, or on other heads)."""
    import tempfile

    from mapslib.salient.likelihood import CachedScorer, run_likelihood_judgement

    path = ALIASES[model].path() if model in ALIASES else Path(model)
    contexts = {POSITIVE: seen, SHUFFLED_SEEN: shuffled(seen, 0)}
    layouts: list[tuple[str, Any]] = [("1 process x 2 threads", 2)]
    layouts += [(f"{w} process(es) x 1 thread", w) for w in workers]
    out = {}
    for label, n in layouts:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["MAPSLIB_CACHE"] = cache
            t0 = time.perf_counter()
            if label.startswith("1 process x 2"):
                scorer = CachedScorer(LlamaScorer(path, n_threads=n), path.stem)
                run_likelihood_judgement(items, contexts, scorer, None, {}, progress=False)
            else:
                run_likelihood_judgement(items, contexts, path, None, {}, progress=False, workers=n)
            wall = time.perf_counter() - t0
        out[label] = {"seconds": round(wall, 1), "seconds_per_head": round(wall / len(seen), 2)}
        print(label, out[label], flush=True)
    return out


def main() -> None:
    """Parse the arguments, build the questions once, judge them with each model, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--heads", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", help="time the judge's process layouts")
    args = ap.parse_args()
    setup = JudgeSetup()
    salient, items = build_items(args.heads, setup)
    seen = seen_descriptions(salient, setup)
    if args.workers:
        for model in args.models:
            timing = workers_timing(model, items, seen, args.workers)
            stem = Path(ALIASES[model].filename if model in ALIASES else model).stem
            write_json(
                RESULTS / f"judge_workers_{stem}_{len(seen)}heads.json",
                {"heads": len(seen), "questions": len(items), "timing": timing,
                 "machine": f"{platform.machine()} {platform.processor()}".strip(),
                 "cpus": os.cpu_count()},
            )  # fmt: skip
        return
    for model in args.models:
        result = one_model(model, items, seen, args.threads)
        result.update(
            heads=len(seen),
            questions=len(items),
            threads=args.threads,
            machine=f"{platform.machine()} {platform.processor()}".strip(),
        )
        stem = result["model"].removesuffix(".gguf")
        write_json(RESULTS / f"judge_{stem}_{len(seen)}heads.json", result)
        print(result["timing"])
        print(pd.DataFrame(result["accuracy"]).to_string())


if __name__ == "__main__":
    main()
