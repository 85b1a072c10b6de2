"""Relation scores: how strongly every head implements every relation, promoted and suppressed.

phi_R(h) is the fraction of pairs (s, t) of R whose t is among the top-k entries of row M[s, :] of the
head's M = E_in W_VO U (suppression: the top-k of -M[s, :]). All relations are scored together: the
pairs of every relation form one batch of rows per head, E_in W_V is computed once per kv head and
shared by its query heads, and one kernel pass answers promotion and suppression for every k.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mapslib.errors import BadArgument, TooFewPairs
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import params_key, run_cached
from mapslib.foundation.embeddings import EMBEDDING_RULE, InputEmbeddings
from mapslib.foundation.heads import Head, head_factors
from mapslib.foundation.io import sha256_text, sidecar_path
from mapslib.foundation.kernels import Blocks, KernelStats, Unembedding, count_outside_many
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, EMBEDDINGS, MapSettings
from mapslib.relation_map.relations import (
    REGISTRY,
    Relation,
    TokenizedRelation,
    keep_scorable,
    tokenize_relation,
)

MODES = ("promote", "suppress")
SCORE_COLUMNS = ["layer", "head", "relation", "mode", "k", "n_pairs", "score"]
K_RULE = "PROTOCOL.md: |V|<100k -> 1 (copying) / 10; else 3 / 25"
BIAS_RULE = {
    "none": "no biases, as in the paper",
    "value": "b_V added: rows of (E_in W_V + b_V) W_O U",
    "value+output": "b_V and b_O added: rows of ((E_in W_V + b_V) W_O + b_O) U",
}
NORMS_RULE = {
    "ignore": "no norm weights, as in the paper's code",
    "fold": "every norm weight on the path folded in as the forward pass applies it (the layer's "
    "input norm into W_V; a post-attention norm and the final norm into W_O's output side, the same "
    "M as before U); the norms' positive per-row scales are left out, as they change no top-k",
}


def default_k(vocab_size: int, copying: bool) -> int:
    """k by vocabulary size (PROTOCOL.md): about 50k tokens -> 1 (copying) / 10; 100k or more -> 3 / 25."""
    if vocab_size < 100_000:
        return 1 if copying else 10
    return 3 if copying else 25


def relation_k(relation: TokenizedRelation, vocab_size: int, k: int | None = None) -> int:
    """The k a relation is scored with: the override if given (checked by MapSettings), else the
    protocol's rule."""
    return default_k(vocab_size, relation.relation.copying) if k is None else k


@dataclass(frozen=True)
class PairBatch:
    """The pairs of several relations as one batch of rows, so every head is scored on all at once."""

    relations: list[TokenizedRelation]
    ks: list[int]  # k per relation
    dst: Tensor  # (n_pairs,) target token per pair
    rel: Tensor  # (n_pairs,) relation index per pair
    k_pair: Tensor  # (n_pairs,) k per pair
    sources: Tensor  # (n_unique,) distinct source tokens: E_in is computed for these only
    inverse: Tensor  # (n_pairs,) row of `sources` per pair

    @staticmethod
    def build(
        relations: list[TokenizedRelation], vocab_size: int, k: int | None, device: torch.device
    ) -> PairBatch:
        """Concatenate the relations' pairs; k per relation by the protocol's rule or the override."""
        if not relations:
            raise TooFewPairs(
                "no relation has enough single-token pairs to score for this tokenizer"
            )
        ks = [relation_k(r, vocab_size, k) for r in relations]
        src = torch.tensor([s for r in relations for s in r.src_ids], device=device)
        dst = torch.tensor([t for r in relations for t in r.dst_ids], device=device)
        rel = torch.cat([torch.full((len(r),), i, device=device) for i, r in enumerate(relations)])
        sources, inverse = torch.unique(src, return_inverse=True)
        return PairBatch(
            relations, ks, dst, rel, torch.tensor(ks, device=device)[rel], sources, inverse
        )

    @property
    def cap(self) -> int:
        """The largest k: counts beyond it need not be exact."""
        return max(self.ks)

    def fractions(self, above: Tensor, below: Tensor, k: int | None = None) -> Tensor:
        """Per relation, the share of pairs whose target is in the top-k (promote) and bottom-k
        (suppress); `k`: one k for every relation instead of each relation's (at most `cap`, where
        the counts are exact)."""
        n_rel = len(self.relations)
        n_pairs = torch.bincount(self.rel, minlength=n_rel).float()
        k_pair = self.k_pair if k is None else torch.full_like(self.k_pair, k)
        out = torch.zeros(2, n_rel, device=self.rel.device)
        for m, count in enumerate((above, below)):
            out[m].index_add_(0, self.rel, (count < k_pair).float())
        return (out / n_pairs).cpu()


def relation_scores(
    hw: HeadWeights,
    relations: list[TokenizedRelation],
    *,
    layers: list[int] | None = None,
    settings: MapSettings = DEFAULTS,
    sample_stride: int | None = None,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> pd.DataFrame:
    """Promote and suppress scores of every (layer, head, relation): one row each, columns SCORE_COLUMNS.

    `settings` says what heads read, the k, the biases and the norm weights in the map.
    """
    layers = list(range(hw.n_layers)) if layers is None else layers
    batch = PairBatch.build(relations, hw.vocab_size, settings.k, hw.device)
    scores = torch.zeros(len(layers), hw.n_heads, 2, len(relations))
    row = {layer: i for i, layer in enumerate(layers)}
    for (layer, head), *counts in head_counts(
        hw, batch, layers, settings, sample_stride, progress, stats
    ):
        scores[row[layer], head] = batch.fractions(*counts)
    return scores_frame(scores, layers, batch)


def head_counts(
    hw: HeadWeights,
    batch: PairBatch,
    layers: list[int],
    settings: MapSettings,
    sample_stride: int | None = None,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> Iterator[tuple[Head, Tensor, Tensor]]:
    """Per head, how many tokens score above / below each pair's target (exact up to `batch.cap`):
    the counts every score of the relation map is read from."""
    hw = hw.with_norms(settings.norms)
    # E_in before U: a weights-only source drops the first block's MLP before it reads U
    inputs = InputEmbeddings(hw, batch.sources, settings.embedding).prepare(layers)
    unembed = Unembedding.prepare(hw.unembedding(stored=True), sample_stride)
    factors = head_factors(hw, layers, inputs.for_layer, bias=settings.bias, progress=progress)
    problems = (((f.layer, f.head), f.a[batch.inverse], f.w_o, batch.dst) for f in factors)
    blocks = Blocks.for_device(hw.device)
    yield from count_outside_many(problems, unembed, batch.cap, blocks, stats)


def protocol(settings: MapSettings = DEFAULTS) -> dict[str, Any]:
    """The rules the relation map applies, for the sidecar of every table it writes."""
    return {
        "score": "share of pairs (s, t) whose t is in the top-k of row s of M = E_in W_VO U "
        "(suppress: of -M); entries within rounding error of the target are ties, in its favour",
        "k_rule": "override" if settings.k is not None else K_RULE,
        "tau": settings.tau,
        "tokenisation": "' ' + word without special tokens; a pair is kept when both sides are one token",
        "min_pairs": settings.min_pairs,
        "embedding": EMBEDDING_RULE,
        "bias": BIAS_RULE[settings.bias],
        "norms": NORMS_RULE[settings.norms],
    }


def relation_provenance(
    tokenized: list[TokenizedRelation], vocab_size: int, settings: MapSettings
) -> list[dict[str, Any]]:
    """Per relation: its file and hash, pairs before and after the single-token filter, its k."""
    return [
        {
            "name": t.name,
            "category": t.relation.category,
            "path": t.relation.path,
            "sha256": t.relation.sha256,
            "pairs": len(t.relation),
            "single_token_pairs": len(t),
            "scored": len(t) >= settings.min_pairs,
            "k": relation_k(t, vocab_size, settings.k) if len(t) >= settings.min_pairs else None,
        }
        for t in tokenized
    ]


MAP_KEY = ("k", "embedding", "min_pairs")  # the settings that decide a relation map's table


def _table_name(
    params: dict[str, Any], relations: list[Relation], n_layers: int, settings: MapSettings
) -> str:
    """`relation_scores.csv` for the full default map; other choices get a name by parameter hash."""
    full = [r.name for r in relations] == list(REGISTRY) and params["layers"] == list(
        range(n_layers)
    )
    if full and settings.params(*MAP_KEY) == DEFAULTS.params(*MAP_KEY):
        return "relation_scores.csv"
    return f"relation_scores_{sha256_text(json.dumps(params_key(params), sort_keys=True))[:10]}.csv"


def run_relation_map(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    layers: list[int] | None = None,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The relation map of `lm` (SCORE_COLUMNS), cached at `out` (a .csv, or a folder; None: not written).

    In a folder the full default map (all shipped relations, all layers, default settings) is
    `relation_scores.csv`, shared by every chapter that needs it; other choices get a file named by
    a hash of their parameters, so they never overwrite it.
    """
    hw = lm.hw
    layers = list(range(hw.n_layers)) if layers is None else layers
    tokenized = [tokenize_relation(r, lm.tokenizer) for r in relations]
    kept = keep_scorable(tokenized, settings.min_pairs, log)
    params = {"relations": [r.sha256 for r in relations], "layers": layers}
    params |= settings.params(*MAP_KEY)
    stats = KernelStats()
    return run_cached(
        lm,
        out,
        _table_name({"model": lm.info(), **params}, relations, hw.n_layers, settings),
        params,
        lambda: relation_scores(
            hw, kept, layers=layers, settings=settings, progress=progress, stats=stats
        ),
        found=lambda _: {
            "architecture": hw.describe(),
            "layers": layers,
            "relations": relation_provenance(tokenized, hw.vocab_size, settings),
            "kernel": asdict(stats),
        },
        settings=settings,
        recompute=recompute,
        protocol=protocol(settings),
        header=header,
        step="score",
    )


def maps_by_embedding(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    settings: MapSettings = DEFAULTS,
    **kwargs: Any,
) -> dict[str, pd.DataFrame]:
    """The relation map under every reading of E_in, `settings.embedding` first; each cached as
    `run_relation_map`."""
    modes = [settings.embedding] + [m for m in EMBEDDINGS if m != settings.embedding]
    return {
        m: run_relation_map(lm, relations, out, settings=settings.but(embedding=m), **kwargs)
        for m in modes
    }


def maps_by_bias(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    settings: MapSettings = DEFAULTS,
    **kwargs: Any,
) -> dict[str, pd.DataFrame]:
    """The relation map without biases and with each bias the model has (b_V, then b_V and b_O);
    each cached as `run_relation_map`. A model without biases gets the plain map alone."""
    has = lm.hw.biases()
    wanted = ["none"] + (["value"] if "value" in has else [])
    wanted += ["value+output"] if "output" in has else []
    return {
        b: run_relation_map(lm, relations, out, settings=settings.but(bias=b), **kwargs)
        for b in wanted
    }


def static_scores(
    lm: LoadedModel,
    relations: list[Relation],
    path: str | Path | None = None,
    settings: MapSettings = DEFAULTS,
    **kwargs: Any,
) -> pd.DataFrame:
    """Static scores for a behaviour experiment: read from `path` (checked to cover the relations
    and to be made with `settings`), or the map computed now with `settings`; `attrs["source"]`
    says which, for the experiment's sidecar."""
    if path is None:
        static = run_relation_map(
            lm, relations, None, settings=settings, log=lambda _: None, **kwargs
        )
        static.attrs["source"] = "computed with " + settings_text(settings)
        return static
    names = [
        t.name
        for t in keep_scorable(
            [tokenize_relation(r, lm.tokenizer) for r in relations],
            settings.min_pairs,
            log=lambda _: None,
        )
    ]
    static = read_static(path, names, lm.hw.n_layers, settings)
    static.attrs["source"] = str(path)
    return static


def settings_text(settings: MapSettings) -> str:
    """The settings that decide a map, as `embedding=paper, k=None, ...` (for sidecars and errors)."""
    return ", ".join(f"{k}={v}" for k, v in settings.params(*MAP_KEY).items())


def check_made_with(path: Path, settings: MapSettings) -> None:
    """A stored map's sidecar must record `settings`, so that a behaviour check reads the map it
    asks for; a table without a sidecar is taken as it is."""
    side = sidecar_path(path)
    if not side.is_file():
        return
    stored = json.loads(side.read_text()).get("params", {})
    made = {k: stored.get(k, getattr(DEFAULTS, k)) for k in (*MAP_KEY, "bias", "norms")}
    asked = {k: getattr(settings, k) for k in made}
    if made != asked:
        diff = ", ".join(f"{k}={made[k]} (asked: {asked[k]})" for k in made if made[k] != asked[k])
        raise BadArgument(
            f"static scores {path} were made with {diff}; pass the same map settings, or make "
            "them again with `python -m mapslib relations` and these settings"
        )


def read_static(
    path: str | Path, relations: list[str], n_layers: int, settings: MapSettings = DEFAULTS
) -> pd.DataFrame:
    """Static scores written by `run_relation_map`, checked to cover every layer and `relations`,
    and to be made with `settings`."""
    path = Path(path)
    if not path.is_file():
        raise BadArgument(f"static scores file not found: {path}")
    check_made_with(path, settings)
    static = pd.read_csv(path)
    missing = set(relations) - set(static.get("relation", []))
    if missing or static.get("layer", pd.Series([])).nunique() != n_layers:
        raise BadArgument(
            f"static scores {path} do not cover every layer and relation asked for (missing: "
            f"{', '.join(sorted(missing)) or 'layers'}); make them with `python -m mapslib relations`"
        )
    return static


def scores_by_k(
    hw: HeadWeights,
    relations: list[TokenizedRelation],
    layers: list[int],
    ks: list[int],
    settings: MapSettings = DEFAULTS,
) -> pd.DataFrame:
    """Relation scores with each k in `ks` (one k for all relations), to see how k sets strictness:
    one pass of the kernel, counting exactly up to the largest k, read at every k."""
    batch = PairBatch.build(relations, hw.vocab_size, max(ks), hw.device)
    scores = torch.zeros(len(ks), len(layers), hw.n_heads, 2, len(relations))
    row = {layer: i for i, layer in enumerate(layers)}
    for (layer, head), *counts in head_counts(hw, batch, layers, settings):
        for i, k in enumerate(ks):
            scores[i, row[layer], head] = batch.fractions(*counts, k=k)
    frames = []
    for i, k in enumerate(ks):
        frame = scores_frame(scores[i], layers, batch)
        frames.append(frame.assign(k=k))
    return pd.concat(frames, ignore_index=True)


def scores_frame(scores: Tensor, layers: list[int], batch: PairBatch) -> pd.DataFrame:
    """Long table from a (layers, heads, 2 modes, relations) tensor: one row per layer, head, relation, mode."""
    names = [r.name for r in batch.relations]
    index = pd.MultiIndex.from_product(
        [layers, range(scores.shape[1]), MODES, names], names=["layer", "head", "mode", "relation"]
    )
    df = pd.DataFrame({"score": scores.reshape(-1).double().numpy()}, index=index).reset_index()
    df["k"] = df["relation"].map(dict(zip(names, batch.ks, strict=True)))
    df["n_pairs"] = df["relation"].map({r.name: len(r) for r in batch.relations})
    df["score"] = df["score"].round(6)
    return (
        df[SCORE_COLUMNS]
        .sort_values(["layer", "head", "relation", "mode"], kind="stable")
        .reset_index(drop=True)
    )
