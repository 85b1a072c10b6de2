"""Relation scores: how strongly every head implements every relation, promoted and suppressed.

phi_R(h) is the fraction of pairs (s, t) of R whose t is among the top-k entries of row M[s, :] of the
head's M = E_in W_VO U (suppression: the top-k of -M[s, :]). All relations are scored together: the
pairs of every relation form one batch of rows per head, E_in W_V is computed once per kv head and
shared by its query heads, and one kernel pass answers promotion and suppression for every k.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from mapslib.adapters import HeadWeights
from mapslib.embeddings import InputEmbeddings
from mapslib.errors import BadArgument, TooFewPairs
from mapslib.io import sha256_text
from mapslib.kernels import Blocks, KernelStats, Unembedding, count_outside
from mapslib.models import LoadedModel
from mapslib.relations import MIN_PAIRS, REGISTRY, Relation, TokenizedRelation, scorable
from mapslib.results import cache_key, cached_table

TAU = 0.15
MODES = ("promote", "suppress")
SCORE_COLUMNS = ["layer", "head", "relation", "mode", "k", "n_pairs", "score"]


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


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Parse `0,5,12` (or None for all layers), checking each against the model's depth."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    try:
        layers = [int(x) for x in str(spec).split(",") if x.strip() != ""]
    except ValueError:
        raise BadArgument(
            f"--layers expects comma-separated integers like 0,5,12, got {spec!r}"
        ) from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise BadArgument(
            f"layers {bad or spec} out of range: this model has layers 0..{n_layers - 1}"
        )
    return sorted(set(layers))


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
    sample_stride: int | None = None,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> pd.DataFrame:
    """Promote and suppress scores of every (layer, head, relation): one row each, columns SCORE_COLUMNS."""
    layers = list(range(hw.n_layers)) if layers is None else layers
    device = hw.embedding_module.weight.device
    batch = PairBatch.build(relations, hw.vocab_size, k, device)
    inputs = InputEmbeddings(hw, batch.sources, embedding)
    unembed = Unembedding.prepare(hw.unembedding(), sample_stride)
    blocks = Blocks.for_device(device)
    scores = torch.zeros(len(layers), hw.n_heads, 2, len(relations))
    bar = tqdm(total=len(layers) * hw.n_heads, desc="heads", unit="head", disable=not progress)
    for li, layer in enumerate(layers):
        a_kv = torch.einsum("nd,gde->gne", inputs.for_layer(layer), hw.W_V(layer))  # per kv head
        w_o = hw.W_O(layer)
        for head in range(hw.n_heads):
            a = a_kv[hw.kv_head(head)][batch.inverse]
            counts = count_outside(a, w_o[head], unembed, batch.dst, batch.cap, blocks, stats)
            scores[li, head] = batch.fractions(*counts)
            bar.update(1)
    bar.close()
    return scores_frame(scores, layers, batch)


def cached_relation_scores(
    loaded: LoadedModel,
    hw: HeadWeights,
    relations: list[Relation],
    out_dir: str | Path,
    *,
    layers: list[int] | None = None,
    k: int | None = None,
    embedding: str = "paper",
    min_pairs: int = MIN_PAIRS,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """`relation_scores`, reused from `out_dir` when a table made with the same parameters is there.

    The full default map (all shipped relations, all layers, PROTOCOL.md's k and embeddings) is
    `relation_scores.csv`, shared by every chapter that needs it; other choices get a file named by a
    hash of their parameters, so they never overwrite it.
    """
    tokenized = scorable(relations, loaded.tokenizer, min_pairs, log=log)
    layers = list(range(hw.n_layers)) if layers is None else layers
    params = {"model": loaded.info(), "relations": [r.sha256 for r in relations], "layers": layers}
    params |= {"k": k, "embedding": embedding, "min_pairs": min_pairs}
    default = [r.name for r in relations] == list(REGISTRY) and layers == list(range(hw.n_layers))
    default = default and (k, embedding, min_pairs) == (None, "paper", MIN_PAIRS)
    name = (
        "relation_scores.csv"
        if default
        else f"relation_scores_{sha256_text(json.dumps(cache_key(params), sort_keys=True))[:10]}.csv"
    )
    return cached_table(
        Path(out_dir) / name,
        params,
        lambda: relation_scores(hw, tokenized, layers=layers, k=k, embedding=embedding),
    )


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
