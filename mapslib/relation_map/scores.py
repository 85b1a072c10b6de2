"""Relation scores: how strongly every head implements every relation, promoted and suppressed.

phi_R(h) is the fraction of pairs (s, t) of R whose t is among the top-k entries of row M[s, :] of the
head's M = E_in W_VO U (suppression: the top-k of -M[s, :]). All relations are scored together: the
pairs of every relation form one batch of rows per head, E_in W_V is computed once per kv head and
shared by its query heads, and one kernel pass answers promotion and suppression for every k.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mapslib.errors import BadArgument, TooFewPairs
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import Computed, cached_table, params_key, table_path
from mapslib.foundation.embeddings import (
    EMBEDDING_MODES,
    EMBEDDING_RULE,
    InputEmbeddings,
    embedding_kind,
)
from mapslib.foundation.heads import check_bias, head_factors
from mapslib.foundation.io import sha256_text
from mapslib.foundation.kernels import Blocks, KernelStats, Unembedding, count_outside_many
from mapslib.foundation.models import LoadedModel
from mapslib.relation_map.relations import (
    MIN_PAIRS,
    REGISTRY,
    Relation,
    TokenizedRelation,
    keep_scorable,
    tokenize_relation,
)

TAU = 0.15
MODES = ("promote", "suppress")
SCORE_COLUMNS = ["layer", "head", "relation", "mode", "k", "n_pairs", "score"]
K_RULE = "PROTOCOL.md: |V|<100k -> 1 (copying) / 10; else 3 / 25"
BIAS_RULE = {
    "none": "no biases, as in the paper",
    "value": "b_V added: rows of (E_in W_V + b_V) W_O U",
    "value+output": "b_V and b_O added: rows of ((E_in W_V + b_V) W_O + b_O) U",
}


def default_k(vocab_size: int, copying: bool) -> int:
    """k by vocabulary size (PROTOCOL.md): about 50k tokens -> 1 (copying) / 10; 100k or more -> 3 / 25."""
    if vocab_size < 100_000:
        return 1 if copying else 10
    return 3 if copying else 25


def relation_k(relation: TokenizedRelation, vocab_size: int, k: int | None = None) -> int:
    """The k a relation is scored with: the override if given, else the protocol's rule."""
    if k is not None:
        if k < 1:
            raise BadArgument(f"k must be a positive integer, got {k}")
        return k
    return default_k(vocab_size, relation.relation.copying)


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

    def fractions(self, above: Tensor, below: Tensor) -> Tensor:
        """Per relation, the share of pairs whose target is in the top-k (promote) and bottom-k (suppress)."""
        n_rel = len(self.relations)
        n_pairs = torch.bincount(self.rel, minlength=n_rel).float()
        out = torch.zeros(2, n_rel, device=self.rel.device)
        for m, count in enumerate((above, below)):
            out[m].index_add_(0, self.rel, (count < self.k_pair).float())
        return (out / n_pairs).cpu()


def relation_scores(
    hw: HeadWeights,
    relations: list[TokenizedRelation],
    *,
    layers: list[int] | None = None,
    k: int | None = None,
    embedding: str = "paper",
    bias: str = "none",
    sample_stride: int | None = None,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> pd.DataFrame:
    """Promote and suppress scores of every (layer, head, relation): one row each, columns SCORE_COLUMNS.

    `bias` (foundation.heads.BIASES) adds b_V, or b_V and b_O, to the map; the paper omits both.
    """
    layers = list(range(hw.n_layers)) if layers is None else layers
    device = hw.device
    batch = PairBatch.build(relations, hw.vocab_size, k, device)
    # E_in before U: a weights-only source drops the first block's MLP before it reads U
    inputs = InputEmbeddings(hw, batch.sources, embedding).prepare(layers)
    unembed = Unembedding.prepare(hw.unembedding(stored=True), sample_stride)
    blocks = Blocks.for_device(device)
    scores = torch.zeros(len(layers), hw.n_heads, 2, len(relations))
    row = {layer: i for i, layer in enumerate(layers)}
    factors = head_factors(hw, layers, inputs.for_layer, bias=bias, progress=progress)
    problems = (((f.layer, f.head), f.a[batch.inverse], f.w_o, batch.dst) for f in factors)
    for (layer, head), *counts in count_outside_many(problems, unembed, batch.cap, blocks, stats):
        scores[row[layer], head] = batch.fractions(*counts)
    return scores_frame(scores, layers, batch)


def protocol(k: int | None = None, min_pairs: int = MIN_PAIRS) -> dict[str, Any]:
    """The rules the relation map applies, for the sidecar of every table it writes."""
    return {
        "score": "share of pairs (s, t) whose t is in the top-k of row s of M = E_in W_VO U "
        "(suppress: of -M); entries within rounding error of the target are ties, in its favour",
        "k_rule": "override" if k is not None else K_RULE,
        "tau": TAU,
        "tokenisation": "' ' + word without special tokens; a pair is kept when both sides are one token",
        "min_pairs": min_pairs,
        "embedding": EMBEDDING_RULE,
    }


def relation_provenance(
    tokenized: list[TokenizedRelation], vocab_size: int, k: int | None, min_pairs: int
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
            "scored": len(t) >= min_pairs,
            "k": relation_k(t, vocab_size, k) if len(t) >= min_pairs else None,
        }
        for t in tokenized
    ]


def _table_name(params: dict[str, Any], relations: list[Relation], n_layers: int) -> str:
    """`relation_scores.csv` for the full default map; other choices get a name by parameter hash."""
    default = [r.name for r in relations] == list(REGISTRY) and params["layers"] == list(
        range(n_layers)
    )
    choices = (params["k"], params["embedding"], params["min_pairs"], params.get("bias"))
    if default and choices == (None, "paper", MIN_PAIRS, None):
        return "relation_scores.csv"
    return f"relation_scores_{sha256_text(json.dumps(params_key(params), sort_keys=True))[:10]}.csv"


def run_relation_map(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    layers: list[int] | None = None,
    k: int | None = None,
    embedding: str = "paper",
    bias: str = "none",
    min_pairs: int = MIN_PAIRS,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The relation map of `lm` (SCORE_COLUMNS), cached at `out` (a .csv, or a folder; None: not written).

    In a folder the full default map (all shipped relations, all layers, PROTOCOL.md's k and
    embeddings) is `relation_scores.csv`, shared by every chapter that needs it; other choices get a
    file named by a hash of their parameters, so they never overwrite it.
    """
    hw = lm.hw
    embedding_kind(embedding, 1)  # an unknown mode or bias fails before any work
    check_bias(bias)
    layers = list(range(hw.n_layers)) if layers is None else layers
    tokenized = [tokenize_relation(r, lm.tokenizer) for r in relations]
    kept = keep_scorable(tokenized, min_pairs, log)
    params = {"model": lm.info(), "relations": [r.sha256 for r in relations], "layers": layers}
    params |= {"k": k, "embedding": embedding, "min_pairs": min_pairs}
    if bias != "none":  # recorded only when used, so tables made before the option stay valid
        params["bias"] = bias

    def compute() -> Computed:
        stats = KernelStats()
        df = relation_scores(
            hw,
            kept,
            layers=layers,
            k=k,
            embedding=embedding,
            bias=bias,
            progress=progress,
            stats=stats,
        )
        found = {
            "model": lm.info(),
            "architecture": hw.describe(),
            "layers": layers,
            "embedding": embedding,
            "relations": relation_provenance(tokenized, hw.vocab_size, k, min_pairs),
            "kernel": asdict(stats),
        }
        return df, found

    path = None if out is None else table_path(out, _table_name(params, relations, hw.n_layers))
    return cached_table(
        path,
        params,
        compute,
        recompute=recompute,
        protocol=protocol(k, min_pairs) | {"bias": BIAS_RULE[bias]},
        header=header,
        step="score",
    )


def maps_by_embedding(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    first: str = "paper",
    **kwargs: Any,
) -> dict[str, pd.DataFrame]:
    """The relation map under every reading of E_in, `first` first; each cached as `run_relation_map`."""
    modes = [first] + [m for m in EMBEDDING_MODES if m != first]
    return {m: run_relation_map(lm, relations, out, embedding=m, **kwargs) for m in modes}


def maps_by_bias(
    lm: LoadedModel, relations: list[Relation], out: str | Path | None, **kwargs: Any
) -> dict[str, pd.DataFrame]:
    """The relation map without biases and with each bias the model has (b_V, then b_V and b_O);
    each cached as `run_relation_map`. A model without biases gets the plain map alone."""
    has = lm.hw.biases()
    wanted = ["none"] + (["value"] if "value" in has else [])
    wanted += ["value+output"] if "output" in has else []
    return {b: run_relation_map(lm, relations, out, bias=b, **kwargs) for b in wanted}


def static_scores(
    lm: LoadedModel, relations: list[Relation], path: str | Path | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Static scores for a behaviour experiment: read from `path` (checked), or the default map
    computed now; `attrs["source"]` says which, for the experiment's sidecar."""
    if path is None:
        static = run_relation_map(lm, relations, None, log=lambda _: None, **kwargs)
        static.attrs["source"] = "computed (PROTOCOL.md defaults)"
        return static
    names = [
        t.name
        for t in keep_scorable(
            [tokenize_relation(r, lm.tokenizer) for r in relations], log=lambda _: None
        )
    ]
    static = read_static(path, names, lm.hw.n_layers)
    static.attrs["source"] = str(path)
    return static


def read_static(path: str | Path, relations: list[str], n_layers: int) -> pd.DataFrame:
    """Static scores written by `run_relation_map`, checked to cover every layer and `relations`."""
    path = Path(path)
    if not path.is_file():
        raise BadArgument(f"static scores file not found: {path}")
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
    embedding: str = "paper",
) -> pd.DataFrame:
    """Relation scores recomputed with each k in `ks` (one k for all relations), to see how k sets strictness."""
    frames = [relation_scores(hw, relations, layers=layers, k=k, embedding=embedding) for k in ks]
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
