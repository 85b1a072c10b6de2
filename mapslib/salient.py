"""Salient operations: the tokens a head acts on most strongly, and what it maps them to.

The saliency of token t for head h is sigma_t = ||e_t W_VO|| / ||e_t|| (paper, eq. 3), with e_t the
row of E_in the head reads (PROTOCOL.md). It is computed without any d x d product per token:
W_VO = W_V W_O and W_O^T = Q R (thin QR, R is d_head x d_head), so

    ||e_t W_V W_O|| = ||(e_t W_V) R^T||,

one n x d_head product per kv head (shared by its query heads) and one n x d_head x d_head product per
query head. The vocabulary is processed in chunks, so memory stays bounded for any |V|.

The salient mappings of a head are its `top_tokens` most salient tokens, each with the `top_mappings`
highest (or, for suppression, lowest) entries of its row of M = E_in W_VO U (paper, section 5.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mapslib.adapters import HeadWeights
from mapslib.display import token_text
from mapslib.embeddings import InputEmbeddings
from mapslib.kernels import Blocks, topk_rows

SALIENT_COLUMNS = [
    "layer",
    "head",
    "name",
    "salient_rank",
    "source_id",
    "source",
    "saliency",
    "rank",
    "target_id",
    "target",
    "score",
]


def ov_r_factors(hw: HeadWeights, layer: int) -> Tensor:
    """R^T of the thin QR of each W_O(h)^T, (n_heads, d_head, d_head): ||x W_O|| = ||x R^T|| for any x."""
    w_o = hw.W_O(layer)  # (H, d_head, d)
    r = torch.linalg.qr(w_o.transpose(1, 2), mode="r").R  # (H, d_head, d_head)
    return r.transpose(1, 2)


def saliency_chunk(x: Tensor, w_v: Tensor, r_t: Tensor, kv_of_head: list[int]) -> Tensor:
    """Saliency of every head of one layer on rows `x` of E_in: (n_heads, n); zero-norm rows get 0."""
    a = torch.einsum("nd,gde->gne", x, w_v)  # (n_kv, n, d_head): E_in W_V per kv head
    kv = torch.tensor(kv_of_head, device=x.device)
    out = torch.linalg.vector_norm(torch.bmm(a[kv], r_t), dim=2)  # (H, n) = ||e W_VO||
    norms = torch.linalg.vector_norm(x, dim=1)
    return torch.where(norms > 0, out / norms.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def saliency_scores(
    hw: HeadWeights,
    layers: Iterable[int] | None = None,
    *,
    embedding: str = "paper",
    chunk: int = 16384,
    inputs: InputEmbeddings | None = None,
) -> Tensor:
    """sigma_t for every token of the vocabulary, every head of `layers`: (n_layers, n_heads, |V|)."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    inputs = inputs or InputEmbeddings(hw, None, embedding)
    kv_of_head = [hw.kv_head(h) for h in range(hw.n_heads)]
    out = torch.empty(len(layers), hw.n_heads, hw.vocab_size)
    for li, layer in enumerate(layers):
        e_in, w_v, r_t = inputs.for_layer(layer), hw.W_V(layer), ov_r_factors(hw, layer)
        for c0 in range(0, e_in.shape[0], chunk):
            x = e_in[c0 : c0 + chunk]
            out[li, :, c0 : c0 + x.shape[0]] = saliency_chunk(x, w_v, r_t, kv_of_head).cpu()
    return out


def top_salient(sal: Tensor, n: int = 30) -> tuple[Tensor, Tensor]:
    """The `n` highest saliencies of each row of `sal` (..., |V|) and their token ids, highest first."""
    n = min(n, sal.shape[-1])
    return torch.topk(sal, n, dim=-1)


def _layer_heads(heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """Group (layer, head) pairs by layer, preserving first-seen order and dropping duplicates."""
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(int(layer), [])
        if int(head) not in grouped[layer]:
            grouped[layer].append(int(head))
    return grouped


def salient_mappings(
    hw: HeadWeights,
    tokenizer: Any,
    heads: Iterable[tuple[int, int]],
    *,
    top_tokens: int = 30,
    top_mappings: int = 5,
    suppress: bool = False,
    embedding: str = "paper",
    saliency: Tensor | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Each head's most salient tokens and their top (or bottom) mapped tokens, one row per mapping.

    `saliency` may pass `saliency_scores(hw)` for every layer (same embedding mode) to reuse it.
    """
    from tqdm import tqdm

    grouped = _layer_heads(heads)
    inputs = InputEmbeddings(hw, None, embedding)
    U = hw.unembedding()
    blocks = Blocks.for_device(U.device)
    frames = []
    for layer, hs in tqdm(grouped.items(), desc="layers", unit="layer", disable=not progress):
        sal = (
            saliency[layer]
            if saliency is not None
            else saliency_scores(hw, [layer], inputs=inputs)[0]
        )
        sal_v, sal_i = top_salient(sal[hs], top_tokens)
        e_in, w_v, w_o = inputs.for_layer(layer), hw.W_V(layer), hw.W_O(layer)
        # rows of E_in W_VO for every head's salient tokens, stacked: one pass over U per layer
        rows = torch.cat(
            [
                (e_in[sal_i[j].to(e_in.device)] @ w_v[hw.kv_head(h)]) @ w_o[h]
                for j, h in enumerate(hs)
            ]
        )
        eye = torch.eye(rows.shape[1], dtype=rows.dtype, device=rows.device)
        vals, cols = topk_rows(rows, eye, U, top_mappings, largest=not suppress, blocks=blocks)
        vals = vals.reshape(len(hs), -1, vals.shape[1]).cpu()
        cols = cols.reshape(len(hs), -1, cols.shape[1]).cpu()
        frames.append(_tidy(tokenizer, layer, hs, sal_v, sal_i, vals, cols))
    if not frames:
        return pd.DataFrame(columns=SALIENT_COLUMNS)
    return pd.concat(frames, ignore_index=True)[SALIENT_COLUMNS]


def _tidy(
    tokenizer: Any,
    layer: int,
    heads: list[int],
    sal_v: Tensor,
    sal_i: Tensor,
    vals: Tensor,
    cols: Tensor,
) -> pd.DataFrame:
    """Long table of one layer's salient mappings, with tokens decoded visibly once each."""
    ids = set(sal_i.flatten().tolist()) | set(cols.flatten().tolist())
    text = {i: token_text(tokenizer, i) for i in ids}
    rows = []
    for j, head in enumerate(heads):
        for s in range(sal_i.shape[1]):
            src = int(sal_i[j, s])
            for r in range(cols.shape[2]):
                tgt = int(cols[j, s, r])
                rows.append(
                    (
                        layer,
                        head,
                        f"{layer}.{head}",
                        s + 1,
                        src,
                        text[src],
                        round(float(sal_v[j, s]), 6),
                        r + 1,
                        tgt,
                        text[tgt],
                        round(float(vals[j, s, r]), 6),
                    )
                )
    return pd.DataFrame(rows, columns=SALIENT_COLUMNS)


def mapping_lines(df: pd.DataFrame, layer: int, head: int) -> list[str]:
    """One line per salient token of a head: `source -> t1, t2, ...`, most salient first."""
    tab = mapping_table(df, layer, head)
    return [f"{s} -> {t}" for s, t in zip(tab["source"], tab["targets"], strict=True)]


def mapping_table(df: pd.DataFrame, layer: int, head: int) -> pd.DataFrame:
    """A head's salient mappings as a compact table: saliency, source, its targets joined."""
    sel = df[(df["layer"] == layer) & (df["head"] == head)].sort_values(["salient_rank", "rank"])
    return (
        sel.groupby("salient_rank", sort=True)
        .agg(
            source=("source", "first"),
            saliency=("saliency", "first"),
            targets=("target", lambda t: ", ".join(t)),
        )
        .reset_index(drop=True)
    )
