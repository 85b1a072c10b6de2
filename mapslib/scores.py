"""Relation scores: how strongly every head implements every relation, promoted and suppressed.

phi_R(h) is the fraction of pairs (s, t) of R whose t is among the top-k entries of row M[s, :] of the
head's M = E_in W_VO U (suppression: the top-k of -M[s, :]). All relations are scored together: the
pairs of every relation form one batch of rows per head, E_in W_V is computed once per kv head and
shared by its query heads, and one kernel pass answers promotion and suppression for every k.
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm import tqdm

from mapslib.adapters import HeadWeights
from mapslib.embeddings import InputEmbeddings
from mapslib.errors import BadArgument, TooFewPairs
from mapslib.kernels import Blocks, KernelStats, Unembedding, count_outside
from mapslib.relations import TokenizedRelation

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
    if not relations:
        raise TooFewPairs("no relation has enough single-token pairs to score for this tokenizer")
    layers = list(range(hw.n_layers)) if layers is None else layers
    device = hw.embedding_module.weight.device
    ks = [relation_k(r, hw.vocab_size, k) for r in relations]
    src = torch.tensor([s for r in relations for s in r.src_ids], device=device)
    dst = torch.tensor([t for r in relations for t in r.dst_ids], device=device)
    rel = torch.cat([torch.full((len(r),), i, device=device) for i, r in enumerate(relations)])
    k_pair = torch.tensor(ks, device=device)[rel]
    n_pairs = torch.bincount(rel, minlength=len(relations)).float()

    uniq, inverse = torch.unique(src, return_inverse=True)
    inputs = InputEmbeddings(hw, uniq, embedding)
    unembed = Unembedding.prepare(hw.unembedding(), sample_stride)
    blocks = Blocks.for_device(device)

    n_rel = len(relations)
    scores = torch.zeros(len(layers), hw.n_heads, 2, n_rel)
    bar = tqdm(total=len(layers) * hw.n_heads, desc="heads", unit="head", disable=not progress)
    for li, layer in enumerate(layers):
        a_kv = torch.einsum("nd,gde->gne", inputs.for_layer(layer), hw.W_V(layer))  # per kv head
        w_o = hw.W_O(layer)
        for head in range(hw.n_heads):
            a = a_kv[hw.kv_head(head)][inverse]
            above, below = count_outside(a, w_o[head], unembed, dst, max(ks), blocks, stats)
            for m, count in enumerate((above, below)):
                hits = torch.zeros(n_rel, device=device).index_add_(
                    0, rel, (count < k_pair).float()
                )
                scores[li, head, m] = (hits / n_pairs).cpu()
            bar.update(1)
    bar.close()
    return _to_frame(scores, layers, relations, ks)


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


def _to_frame(
    scores: torch.Tensor, layers: list[int], relations: list[TokenizedRelation], ks: list[int]
) -> pd.DataFrame:
    """Long table with one row per layer, head, relation and mode."""
    n_layers, n_heads, _, n_rel = scores.shape
    index = pd.MultiIndex.from_product(
        [layers, range(n_heads), MODES, [r.name for r in relations]],
        names=["layer", "head", "mode", "relation"],
    )
    df = pd.DataFrame({"score": scores.reshape(-1).numpy()}, index=index).reset_index()
    df["k"] = df["relation"].map(dict(zip([r.name for r in relations], ks, strict=True)))
    df["n_pairs"] = df["relation"].map({r.name: len(r) for r in relations})
    df["score"] = df["score"].round(6)
    return (
        df[SCORE_COLUMNS]
        .sort_values(["layer", "head", "relation", "mode"], kind="stable")
        .reset_index(drop=True)
    )
