"""Scoring descriptions by likelihood: which option does a description make more probable?

A chat judge that answers a head's questions as a letter list favours letters by position (the
project's first judge did, and was removed). This judge never sees letters: a language model scores
each option on its own, as the continuation of a plain-text context holding the description and the
source token, by the summed log-probability of the option's tokens (the multiple-choice method of
lm-evaluation-harness). A small model prefers short, common lists whatever the description says, so
each score is calibrated by the same option's log-probability after a context whose description is
a fixed "no description" text (domain-conditional PMI, Holtzman et al. 2021): what the description
adds. The pick is the option with the highest PMI; ties (an empty description gives PMI 0 to every
option) are broken by a seeded random draw, so an uninformative judge scores chance, not "always
the first".

Tokens are rendered as everywhere else in the project (`mapslib.foundation.tokens.shown`: '␣' for a
leading space): the describer saw its 30 lines that way, descriptions quote tokens that way, and
the positive control's context holds those very lines, so a judge can match an option to them
character for character. Quotes would need a second rendering (and `" Paris"` against `"Paris"`
is easy to misread); what '␣' costs in log-probability is the same with and without a description,
so PMI cancels it. The question line repeats the lines' own form, `source ->`, for the same reason.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from tqdm import tqdm

from mapslib.errors import MapsError
from mapslib.foundation.cache import Computed, cached_table
from mapslib.foundation.io import atomic_write, cache_root, sha256_text, write_json
from mapslib.salient.judge import (
    JudgeSetup,
    described_part,
    description_text,
    shuffled_sources,
)

HEADER = (
    "An attention head of a language model reads a source token and promotes a few tokens in its "
    "output. Tokens are shown as in the vocabulary: '␣' stands for a leading space.\n"
)
CONTEXT_TEMPLATE = (
    HEADER + "What the head does:\n{description}\n\n"
    "A source token the head reads, and the tokens it promotes most:\n{source} ->"
)
NO_DESCRIPTION = "(no description)"  # the calibration context's description
TIE = 1e-6  # scores closer than this to the best count as tied

POSITIVE = "positive control: seen mappings"
OWN = "own description"
SHUFFLED = "shuffled description (control)"
EMPTY = "empty description (control)"
EVIDENCE = "evidence template (no LLM)"
SHUFFLED_SEEN = "shuffled seen mappings (control)"
GROUPS = (POSITIVE, OWN, SHUFFLED, EMPTY, EVIDENCE)

JUDGED_COLUMNS = [
    *["layer", "head", "name", "group", "item", "options", "answer", "picked", "correct"],
    *["picked_uncalibrated", "correct_uncalibrated", "scores", "logp"],
]
PROTOCOL = {
    "score": "summed log-probability of the option's tokens after CONTEXT_TEMPLATE (option "
    "rendered with a leading space), minus the same after the template with NO_DESCRIPTION (PMI)",
    "pick": "highest PMI; ties within TIE broken by a seeded random draw (seed, group, head, item)",
    "uncalibrated": "highest log-probability with the description, same tie rule",
    "positions": "the real list's position cycles over the questions (judge.judge_items)",
}


class LikelihoodJudgeError(MapsError):
    """The likelihood judge cannot run: llama-cpp-python or the GGUF file is missing."""


class Scorer(Protocol):
    """Anything that gives the summed log-probability of continuations after a context."""

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation's tokens after `context`."""
        ...


def require_backend() -> None:
    """Check that llama_cpp imports (else one line naming the fix)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LikelihoodJudgeError(
            "llama-cpp-python is not installed, so descriptions cannot be scored by likelihood "
            "and no table made with these parameters was found; run: make setup-llm"
        )


def require_llama(gguf_path: str | Path) -> Path:
    """The GGUF path, after checking that llama_cpp imports and the file exists (else one line)."""
    require_backend()
    path = Path(gguf_path)
    if not path.is_file():
        raise LikelihoodJudgeError(
            f"GGUF file {path} not found, so descriptions cannot be scored by likelihood; install "
            "the model (make setup-llm) or pass an existing .gguf file"
        )
    return path


def resolve_gguf(source: str | Path | Callable[[], str | Path]) -> Path:
    """The judge's GGUF file; `source` may be a function that assembles it, called only once the
    backend is known to be installed (no model is assembled for a judge that cannot run)."""
    require_backend()
    return require_llama(source() if callable(source) else source)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (summing many small log-probabilities needs the precision)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class LlamaScorer:
    """Log-probabilities from a GGUF model run in-process by llama.cpp, reusing the context's KV
    cells for every continuation and a head's description for all of its questions.

    `lean` (default) asks llama.cpp for the logits it needs only (the context's last token and the
    continuation's tokens but its last) instead of every position's (`Llama.eval` with
    logits_all): the vocabulary projection is a large share of a small model's work, and a
    continuation of one token then costs no evaluation at all.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        lean: bool = True,
    ):
        import llama_cpp

        path = require_llama(gguf_path)
        self.name = path.name
        self.lean = lean
        # half the cores, as llama.cpp's own default: its threads wait on each other, and with
        # every core busy one preempted thread stalls the rest (7.2 s against 1.35 s per question
        # with 2 threads instead of 1 on 2 busy cores, benchmarks/bench_judge.py)
        n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=True,
            verbose=False,
        )
        self._shared: list[int] | None = None  # the context part whose KV cells are held
        self._last: np.ndarray | None = None  # logits after the context's last token
        self._shared_last: np.ndarray | None = None  # the same after the shared part
        self.evaluated = 0  # tokens run through the model
        self.seconds = 0.0  # time spent evaluating them

    def tokens(self, text: str, bos: bool) -> list[int]:
        """Token ids of `text`; with `bos`, a BOS first if the model's vocabulary asks for one."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _rewind(self, n: int) -> bool:
        """Forget every token past the first `n`: the position counter and their KV cells (as
        llama-cpp-python's generate() does for a prompt that shares a prefix). False when the
        model's memory refuses a partial removal: then everything is forgotten."""
        ctx = self.llm._ctx
        if ctx.kv_cache_seq_rm(-1, n, -1):
            self.llm.n_tokens = n
            return True
        ctx.kv_cache_clear()
        self.llm.n_tokens = 0
        return False

    def _eval(self, ids: list[int], every: bool = True) -> np.ndarray:
        """Run `ids` after the tokens kept; their logits, one row per token (`every`, or always
        without `lean`) or the last token's only. Counts tokens and time."""
        t0 = time.perf_counter()
        start = self.llm.n_tokens
        if self.lean:
            rows = [self._decode(ids[i : i + self.llm.n_batch], every) for i in self._batches(ids)]
            logits = np.concatenate(rows) if every else rows[-1][-1:]
        else:
            self.llm.eval(ids)
            logits = np.array(self.llm.scores[start : start + len(ids)])
            logits = logits if every else logits[-1:]
        self.seconds += time.perf_counter() - t0
        self.evaluated += len(ids)
        return logits

    def _batches(self, ids: list[int]) -> range:
        """Start of each batch of at most n_batch tokens."""
        return range(0, len(ids), self.llm.n_batch)

    def _decode(self, batch: list[int], every: bool) -> np.ndarray:
        """One llama_decode of `batch` after the tokens kept, asking for every token's logits or
        the last one's (llama-cpp-python's eval without its copy into `scores`)."""
        llm = self.llm
        llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=every)
        llm._ctx.decode(llm._batch)
        llm.input_ids[llm.n_tokens : llm.n_tokens + len(batch)] = batch
        llm.n_tokens += len(batch)
        rows = len(batch) if every else 1
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(rows, llm.n_vocab())).copy()

    def _parts(self, context: str) -> tuple[list[int], list[int]]:
        """The context's tokens in two parts: up to its last blank line (the description, shared by
        a head's questions) and the rest, each tokenised on its own."""
        cut = context.rfind("\n\n") + 2 if "\n\n" in context else len(context)
        rest = self.tokens(context[cut:], bos=False) if cut < len(context) else []
        return self.tokens(context[:cut], bos=True), rest

    def _set_context(self, shared: list[int], rest: list[int]) -> None:
        """Evaluate the context: its shared part only when it differs from the last one, then the
        rest. Always in the same batches, so a score does not depend on what was scored before
        (llama.cpp's numbers change slightly with how the tokens are batched)."""
        if shared != self._shared or not self._rewind(len(shared)):
            self._rewind(0)
            self._shared_last = self._eval(shared, every=False)
            self._shared = shared
        self._last = self._eval(rest, every=False) if rest else self._shared_last

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        """Summed log-probability of each continuation after `context` (context evaluated once)."""
        shared, rest = self._parts(context)
        self._set_context(shared, rest)
        start = len(shared) + len(rest)
        out = []
        for text in continuations:
            ids = self.tokens(text, bos=False)
            if not self._rewind(start):  # the memory refused: evaluate the context again
                self._shared = None
                self._set_context(shared, rest)
            logits = [self._last] + ([self._eval(ids[:-1])] if len(ids) > 1 else [])
            out.append(_summed(np.concatenate(logits), ids))
        return out

    def reset(self) -> None:
        """Forget everything evaluated (the next context is evaluated in full)."""
        self._rewind(0)
        self._shared = None

    def from_scratch(self, context: str, continuation: str) -> float:
        """The same score with nothing reused, context and continuation in one pass of
        `Llama.eval` (every position's logits): the reference the reuse is checked against."""
        shared, rest = self._parts(context)
        ids = self.tokens(continuation, bos=False)
        self.reset()
        start = len(shared) + len(rest)
        self.llm.eval(shared + rest + ids)
        return _summed(np.array(self.llm.scores[start - 1 : start - 1 + len(ids)]), ids)


def _summed(logits: np.ndarray, ids: list[int]) -> float:
    """Summed log-probability of `ids`, row i of `logits` being the logits before token i."""
    return float(_log_softmax(logits)[np.arange(len(ids)), ids].sum())


COMMITTED_SCORES = Path(__file__).resolve().parent.parent / "data" / "judge_scores"


def committed_scores(model: str, root: Path = COMMITTED_SCORES) -> dict[str, dict[str, float]]:
    """A judge model's committed scores, {context key: {continuation: log-probability}}; {} if none."""
    path = Path(root) / f"{model}.json.gz"
    return json.loads(gzip.decompress(path.read_bytes())) if path.is_file() else {}


class CachedScorer:
    """A scorer whose scores are kept on disk, one JSON file per (model, context), so an
    interrupted run resumes where it stopped. With `committed` (a folder: `lazy_scorer` passes
    COMMITTED_SCORES), scores are also read from the committed store (`export_scores`), so a fresh
    clone replays the book's judge with no model; `scorer` may be a function that opens the model,
    called only when a score is found in neither."""

    def __init__(
        self,
        scorer: Scorer | Callable[[], Scorer],
        model: str,
        root: str | Path | None = None,
        committed: str | Path | None = None,
    ):
        self._scorer = scorer if hasattr(scorer, "logprobs") else None
        self._open = None if self._scorer is not None else scorer
        self.model = model
        self.root = Path(root) if root is not None else cache_root() / "likelihood"
        self.committed = committed_scores(model, Path(committed)) if committed else {}
        self.hits = 0  # continuations read from the cache or the committed store
        self.misses = 0  # continuations scored

    @property
    def scorer(self) -> Scorer:
        """The scorer itself, opened on first use."""
        if self._scorer is None:
            self._scorer = self._open()  # type: ignore[misc]
        return self._scorer

    def key(self, context: str) -> str:
        """The key of one context under this model (its cache file's name)."""
        return sha256_text(json.dumps([self.model, context]))

    def path(self, context: str) -> Path:
        """The cache file of one context under this model."""
        key = self.key(context)
        return self.root / self.model / key[:2] / f"{key}.json"

    def logprobs(self, context: str, continuations: list[str]) -> list[float]:
        """Cached scores, the missing ones computed together and stored (atomically)."""
        path = self.path(context)
        stored = dict(self.committed.get(self.key(context), {}))
        if path.is_file():
            stored.update(json.loads(path.read_text())["scores"])
        missing = [c for c in dict.fromkeys(continuations) if c not in stored]
        if missing:
            stored.update(zip(missing, self.scorer.logprobs(context, missing), strict=True))
            write_json(path, {"model": self.model, "context": context, "scores": stored})
        self.misses += len(missing)
        self.hits += len(continuations) - len(missing)
        return [float(stored[c]) for c in continuations]


def export_scores(
    model: str, root: str | Path | None = None, out: str | Path = COMMITTED_SCORES
) -> Path:
    """Merge every score cached for `model` into its committed store (gzipped JSON, sorted keys,
    no time in the header: the same scores give the same bytes). `make judge-scores` runs it."""
    src = (Path(root) if root is not None else cache_root() / "likelihood") / model
    store = committed_scores(model, Path(out))
    for f in sorted(src.rglob("*.json")):
        store.setdefault(f.stem, {}).update(json.loads(f.read_text())["scores"])
    data = gzip.compress(json.dumps(store, sort_keys=True).encode(), mtime=0)
    return atomic_write(Path(out) / f"{model}.json.gz", lambda p: p.write_bytes(data))


def question_context(source: str, description: str) -> str:
    """The text an option continues: the description (or NO_DESCRIPTION when blank) and the source."""
    text = description.strip() or NO_DESCRIPTION
    return CONTEXT_TEMPLATE.format(description=text, source=source)


def continuation(option: str) -> str:
    """An option as a continuation: a space after the '->', then the list as shown."""
    return " " + option


def _rng(seed: int, group: str, layer: int, head: int, item: int) -> np.random.Generator:
    """The tie-breaking generator of one question in one group (crc32: stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32(group.encode()), layer, head, item])


def pick(scores: list[float], rng: np.random.Generator) -> int:
    """The best option; a seeded random one among those within TIE of the best."""
    arr = np.asarray(scores, dtype=float)
    best = np.flatnonzero(arr >= arr.max() - TIE)
    return int(best[0] if len(best) == 1 else rng.choice(best))


def _baselines(
    items: pd.DataFrame, names: set[str], scorer: Scorer, bar: tqdm
) -> dict[tuple[str, tuple[str, ...]], list[float]]:
    """logP of each option after the no-description context, once per (source, options) asked."""
    base: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for r in items.itertuples():
        key = (r.source, tuple(r.options))
        if f"{r.layer}.{r.head}" in names and key not in base:
            conts = [continuation(o) for o in r.options]
            base[key] = scorer.logprobs(question_context(r.source, ""), conts)
            bar.update(1)
    return base


def likelihood_judge(
    items: pd.DataFrame,
    contexts: dict[str, dict[str, str]],
    scorer: Scorer,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (group, question): the PMI pick and the uncalibrated pick, and their scores.

    `contexts` maps a group to {head "L.H": description}; a head absent from a group is not asked
    in it. The baseline (no description) is scored first, once per question for all groups; then
    each group in head order, so consecutive questions share the description as a cached prefix.
    """
    names = {n for descs in contexts.values() for n in descs}
    asked = [f"{la}.{h}" for la, h in zip(items["layer"], items["head"], strict=True)]
    total = sum(n in names for n in asked) + sum(
        n in descs for descs in contexts.values() for n in asked
    )
    rows = []
    with tqdm(total=total, desc="likelihood judge", unit="q", disable=not progress) as bar:
        base = _baselines(items, names, scorer, bar)
        for group, descs in contexts.items():
            for r, name in zip(items.itertuples(), asked, strict=True):
                if name not in descs:
                    continue
                rows.append(_judged_row(r, name, group, descs[name], base, scorer, seed))
                bar.update(1)
    return pd.DataFrame(rows, columns=JUDGED_COLUMNS)


def _judged_row(
    r: Any,
    name: str,
    group: str,
    description: str,
    base: dict[tuple[str, tuple[str, ...]], list[float]],
    scorer: Scorer,
    seed: int,
) -> dict[str, Any]:
    """One question judged with one description: calibrated and uncalibrated picks and scores."""
    prior = base[(r.source, tuple(r.options))]
    if description.strip():
        told = scorer.logprobs(
            question_context(r.source, description), [continuation(o) for o in r.options]
        )
    else:
        told = prior  # the very context of the baseline: PMI exactly 0
    pmi = [a - b for a, b in zip(told, prior, strict=True)]
    rng = _rng(seed, group, int(r.layer), int(r.head), int(r.item))
    picked, raw = pick(pmi, rng), pick(told, rng)
    return dict(
        layer=int(r.layer),
        head=int(r.head),
        name=name,
        group=group,
        item=int(r.item),
        options=len(r.options),
        answer=int(r.answer),
        picked=picked,
        correct=picked == r.answer,
        picked_uncalibrated=raw,
        correct_uncalibrated=raw == r.answer,
        scores=json.dumps([round(s, 6) for s in pmi]),
        logp=json.dumps([round(s, 6) for s in told]),
    )


def seen_descriptions(salient: pd.DataFrame, setup: JudgeSetup) -> dict[str, str]:
    """Per head: the lines the describer was shown, as the positive control's description."""
    from mapslib.salient.mappings import mapping_lines

    seen = described_part(salient, setup)
    heads = seen[["layer", "head"]].drop_duplicates().astype(int).itertuples(index=False)
    return {f"{la}.{h}": "\n".join(mapping_lines(seen, la, h)) for la, h in heads}


def own_descriptions(descriptions: pd.DataFrame) -> dict[str, str]:
    """Per described head (pattern or "Unclear"): the inputs and pattern sentences the judge reads."""
    done = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
    return {f"{int(r['layer'])}.{int(r['head'])}": description_text(r) for _, r in done.iterrows()}


def shuffled(descriptions: dict[str, str], seed: int) -> dict[str, str]:
    """Each head with another head's description (judge.shuffled_sources' seeded derangement)."""
    return {n: descriptions[m] for n, m in shuffled_sources(sorted(descriptions), seed).items()}


def empty(names: list[str]) -> dict[str, str]:
    """Each head with an empty description: PMI 0 for every option, so the judge guesses."""
    return dict.fromkeys(names, "")


def _ci(hits: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a share (NaN when nothing was asked)."""
    if not n:
        return float("nan"), float("nan")
    ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def _shares(positions: pd.Series, width: int, prefix: str) -> dict[str, float]:
    """The share of each position 0..width-1 (A, B, ...) among `positions`."""
    counts = positions.value_counts(normalize=True)
    return {f"{prefix} {chr(65 + i)}": round(float(counts.get(i, 0.0)), 3) for i in range(width)}


def group_accuracy(judged: pd.DataFrame) -> pd.DataFrame:
    """Per group: accuracy with its 95% interval and p-value against chance, the uncalibrated
    accuracy, and the share of each position among the picks and among the true answers."""
    rows = []
    width = int(judged["options"].max()) if len(judged) else 0
    for group, g in judged.groupby("group", sort=False):
        n, hits = len(g), int(g["correct"].astype(bool).sum())
        chance = float((1.0 / g["options"]).mean())
        low, high = _ci(hits, n)
        rows.append(
            {
                "group": group,
                "heads": g["name"].nunique(),
                "questions": n,
                "accuracy": hits / n,
                "ci low": low,
                "ci high": high,
                "chance": chance,
                "p (binomial, > chance)": binomtest(hits, n, chance, alternative="greater").pvalue,
                "accuracy uncalibrated": float(g["correct_uncalibrated"].astype(bool).mean()),
                **_shares(g["picked"], width, "picked"),
                **_shares(g["picked_uncalibrated"], width, "picked uncal."),
                **_shares(g["answer"], width, "answer"),
            }
        )
    return pd.DataFrame(rows)


def paired_permutation_p(
    judged: pd.DataFrame,
    a: str,
    b: str,
    n: int = 10_000,
    seed: int = 0,
    column: str = "correct",
) -> float:
    """One-sided p-value that group `a` beats group `b`: the groups' labels swapped at random within
    each question both answered (paired by layer, head, item), `n` seeded permutations."""
    keys = ["layer", "head", "item"]
    pa = judged[judged["group"] == a].set_index(keys)[column].astype(float)
    pb = judged[judged["group"] == b].set_index(keys)[column].astype(float)
    both = pa.index.intersection(pb.index)
    if not len(both):
        return float("nan")
    diff = (pa.loc[both] - pb.loc[both]).to_numpy()
    observed = diff.mean()
    rng = np.random.default_rng(seed)
    above = 0
    for start in range(0, n, 1000):  # in blocks: a permutation is a sign flip per pair
        signs = rng.choice([-1.0, 1.0], size=(min(1000, n - start), len(diff)))
        above += int(((signs * diff).mean(axis=1) >= observed - 1e-12).sum())
    return (1 + above) / (1 + n)


def open_llama(gguf_path: str | Path, **kw: Any) -> Scorer:
    """A llama.cpp scorer for a GGUF file (one-line error if the backend or the file is missing)."""
    return LlamaScorer(require_llama(gguf_path), **kw)


def open_scorer(gguf_path: str | Path, **kw: Any) -> CachedScorer:
    """A llama.cpp scorer for a GGUF file with its scores cached on disk."""
    path = Path(gguf_path)
    return CachedScorer(open_llama(path, **kw), path.name.removesuffix(".gguf"))


def lazy_scorer(
    source: str | Path | Callable[[], str | Path], model: str, **kw: Any
) -> CachedScorer:
    """A cached scorer named `model` whose GGUF file is found (`source` may be a function that
    assembles it) and opened only for a score missing from the cache and the committed store."""
    opener = lambda: open_llama(resolve_gguf(source), **kw)  # noqa: E731
    return CachedScorer(opener, model, committed=COMMITTED_SCORES)


class _Missing(Exception):
    """A score is in neither the cache nor the committed store."""


def all_cached(items: pd.DataFrame, contexts: dict[str, dict[str, str]], model: str) -> bool:
    """Whether every score the judge needs is cached or committed (reading them only)."""

    def missing() -> Scorer:
        raise _Missing

    try:
        reader = CachedScorer(missing, model, committed=COMMITTED_SCORES)
        likelihood_judge(items, contexts, reader, progress=False)
    except _Missing:
        return False
    return True


def _digest(obj: Any) -> str:
    """A short content hash of JSON-able inputs, for the table's parameters."""
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))[:16]


def run_likelihood_judgement(
    items: pd.DataFrame,
    contexts: dict[str, dict[str, str]],
    scorer: Scorer | str | Path | Callable[[], Scorer | str | Path],
    out: str | Path | None,
    params: dict[str, Any],
    *,
    seed: int = 0,
    recompute: bool = False,
    progress: bool = True,
    name: str | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """The likelihood judge's table, read from `out` when the same inputs made it (no model needed),
    else computed and written with its sidecar. `scorer` may be a GGUF path, or a function giving
    one (resolved only to compute), opened only for scores neither cached nor committed; `name` the
    scorer's name in the table's parameters (default: the file's name); `workers` > 1 scores the
    missing ones in that many processes first (`parallel_judge.prescore`)."""
    model = name or (Path(scorer).name if isinstance(scorer, str | Path) else type(scorer).__name__)
    key = {
        **params,
        "scorer": model,
        "seed": seed,
        "template": CONTEXT_TEMPLATE,
        "no_description": NO_DESCRIPTION,
        "contexts": _digest(contexts),
        "questions": _digest(items[["layer", "head", "item", "source", "options"]].to_dict("list")),
    }

    def compute() -> Computed:
        live = scorer if hasattr(scorer, "logprobs") else lazy_scorer(scorer, cache_name(model))
        if workers > 1 and live is not scorer and not all_cached(items, contexts, live.model):
            from mapslib.salient.parallel_judge import prescore

            prescore(items, contexts, resolve_gguf(scorer), live.model, workers, progress)  # type: ignore[arg-type]
        judged = likelihood_judge(items, contexts, live, seed=seed, progress=progress)
        found = {"group_accuracy": group_accuracy(judged).to_dict("records")}
        return judged, {**found, **_scorer_record(live)}

    judged = cached_table(out, key, compute, recompute=recompute, protocol=PROTOCOL, step="judge")
    # a CSV read back turns "23.10" into the number 23.1: names are rebuilt from layer and head
    judged["name"] = (
        judged["layer"].astype(int).astype(str) + "." + judged["head"].astype(int).astype(str)
    )
    return judged


def cache_name(file_name: str) -> str:
    """The judge's name in its cache and committed store: its GGUF file's name without `.gguf`."""
    return file_name.removesuffix(".gguf")


def _scorer_record(scorer: Any) -> dict[str, Any]:
    """What the scorer did, for the sidecar: cache hits and tokens evaluated per second."""
    inner = scorer._scorer if isinstance(scorer, CachedScorer) else scorer
    record: dict[str, Any] = {}
    if isinstance(scorer, CachedScorer):
        record["cache"] = {"hits": scorer.hits, "scored": scorer.misses}
    if isinstance(inner, LlamaScorer) and inner.seconds:
        record["speed"] = {
            "tokens": inner.evaluated,
            "seconds": round(inner.seconds, 3),
            "tokens_per_s": round(inner.evaluated / inner.seconds, 1),
        }
    return record
