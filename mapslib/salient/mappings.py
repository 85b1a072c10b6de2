"""What a head maps tokens to: rows of its M = E_in W_VO U, for chosen or salient source tokens.

The salient mappings of a head are its `top_tokens` most salient tokens (`saliency`), each with the
`top_mappings` highest (or, for suppression, lowest) entries of its row of M (paper, section 5.1).
Tables store token ids and raw token text; `mapping_table` and `mapping_lines` show them with
visible glyphs ('␣' for a space).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.heads import Head, head_factors, head_name
from mapslib.foundation.kernels import Blocks, topk_rows
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, EMBEDDINGS, MapSettings
from mapslib.foundation.tokens import shown, token_raw
from mapslib.relation_map.relations import single_token_ids
from mapslib.salient.saliency import saliency_scores, top_salient

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
SALIENCY_RULE = "||e_t W_VO|| / ||e_t||, e_t a row of E_in, over the whole vocabulary"


def _by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """Group (layer, head) pairs by layer, preserving first-seen order and dropping duplicates."""
    grouped: dict[int, list[int]] = {}
    for layer, head in heads:
        grouped.setdefault(int(layer), [])
        if int(head) not in grouped[layer]:
            grouped[layer].append(int(head))
    return grouped


def _top_targets(
    rows: Tensor, U: Tensor, k: int, suppress: bool, blocks: Blocks
) -> tuple[Tensor, Tensor]:
    """Top-k (bottom-k) values and columns of rows @ U: rows are x W_VO, already d wide."""
    eye = torch.eye(rows.shape[1], dtype=rows.dtype, device=rows.device)
    return topk_rows(rows, eye, U, k, largest=not suppress, blocks=blocks)


def top_mappings(
    hw: HeadWeights,
    tokenizer: Any,
    layer: int,
    head: int,
    token_ids: list[int],
    k: int = 5,
    *,
    suppress: bool = False,
    settings: MapSettings = DEFAULTS,
) -> pd.DataFrame:
    """For each source token: its k highest (or, with `suppress`, lowest) entries in the head's M."""
    hw = hw.with_norms(settings.norms)
    ids = torch.tensor(token_ids, device=hw.device)
    inputs = InputEmbeddings(hw, ids, settings.embedding)
    (f,) = head_factors(hw, [layer], inputs.for_layer, heads=lambda _: [head], bias=settings.bias)
    U = hw.unembedding(stored=True)  # the kernel upcasts a bf16 checkpoint's U per block
    values, cols = topk_rows(f.a, f.w_o, U, k, largest=not suppress)
    rows = [
        {
            "source": shown(token_raw(tokenizer, src)),
            "rank": rank + 1,
            "target": shown(token_raw(tokenizer, int(cols[i, rank]))),
            "score": float(values[i, rank]),
        }
        for i, src in enumerate(token_ids)
        for rank in range(k)
    ]
    return pd.DataFrame(rows)


def mappings_by_embedding(
    hw: HeadWeights,
    tokenizer: Any,
    layer: int,
    head: int,
    token_ids: list[int],
    k: int = 3,
    settings: MapSettings = DEFAULTS,
) -> pd.DataFrame:
    """Top-k targets of each source token under every embedding, side by side."""
    columns = {
        embedding: mapping_strings(
            top_mappings(
                hw, tokenizer, layer, head, token_ids, k, settings=settings.but(embedding=embedding)
            )
        )
        for embedding in EMBEDDINGS
    }
    return pd.DataFrame(columns)


def ov_summary(hw: HeadWeights, layer: int, head: int) -> dict[str, float | int | str]:
    """Size and rank of one head's OV circuit: W_VO is d x d but its rank is at most d_head."""
    w_vo = hw.W_VO(layer, head)
    return {
        "W_VO shape": f"{w_vo.shape[0]} x {w_vo.shape[1]}",
        "rank of W_VO": int(torch.linalg.matrix_rank(w_vo)),
        "d_head": hw.d_head,
        "entries of M (|V|^2)": hw.vocab_size**2,
        "GiB to store M in float32": round(hw.vocab_size**2 * 4 / 2**30, 1),
    }


def mapping_strings(df: pd.DataFrame) -> pd.Series:
    """One line per source token: `␣France -> ␣Paris, ␣French, ...` (for compact tables)."""
    return df.groupby("source", sort=False)["target"].agg(lambda t: ", ".join(t))


def single_tokens(tokenizer: Any, words: list[str]) -> tuple[list[int], list[str]]:
    """Ids of the words whose `" " + word` is one token, and the words that are not (to report them)."""
    ids = single_token_ids(tokenizer, words)
    missing = [w for w, i in zip(words, ids, strict=True) if i is None]
    return [i for i in ids if i is not None], missing


def salient_mappings(
    hw: HeadWeights,
    tokenizer: Any,
    heads: Iterable[Head],
    *,
    top_tokens: int = 30,
    top_mappings: int = 5,
    suppress: bool = False,
    settings: MapSettings = DEFAULTS,
    saliency: Tensor | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Each head's most salient tokens and their top (or bottom) mapped tokens, one row per mapping.

    `saliency` may pass `saliency_scores(hw)` for every layer (same settings) to reuse it.
    """
    from tqdm import tqdm

    hw = hw.with_norms(settings.norms)
    grouped = _by_layer(heads)
    # E_in before U: a weights-only source drops the first block's MLP before it reads U
    inputs = InputEmbeddings(hw, None, settings.embedding).prepare(list(grouped))
    U = hw.unembedding(stored=True)  # the kernel upcasts a bf16 checkpoint's U per block
    blocks = Blocks.for_device(U.device)
    frames = []
    for layer, hs in tqdm(grouped.items(), desc="layers", unit="layer", disable=not progress):
        sal = (
            saliency[layer]
            if saliency is not None
            else saliency_scores(hw, [layer], inputs=inputs)[0]
        )
        sal_v, sal_i = top_salient(sal[hs], top_tokens)
        # rows of E_in W_VO for every head's own salient tokens, stacked: one pass over U per layer
        union, where = torch.unique(sal_i.to(U.device), return_inverse=True)
        x = inputs.for_layer(layer)[union]
        factors = head_factors(
            hw, [layer], lambda _, x=x: x, heads=lambda _, hs=hs: hs, bias=settings.bias
        )
        rows = torch.cat([f.a[where[j]] @ f.w_o for j, f in enumerate(factors)])
        vals, cols = _top_targets(rows, U, top_mappings, suppress, blocks)
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
    """Long table of one layer's salient mappings: ids and raw token text, decoded once each."""
    ids = set(sal_i.flatten().tolist()) | set(cols.flatten().tolist())
    text = {i: token_raw(tokenizer, i) for i in ids}
    rows = []
    for j, head in enumerate(heads):
        for s in range(sal_i.shape[1]):
            src = int(sal_i[j, s])
            for r in range(cols.shape[2]):
                tgt = int(cols[j, s, r])
                score = round(float(vals[j, s, r]), 6)
                saliency = round(float(sal_v[j, s]), 6)
                name = head_name(layer, head)
                rows.append(
                    (
                        layer,
                        head,
                        name,
                        s + 1,
                        src,
                        text[src],
                        saliency,
                        r + 1,
                        tgt,
                        text[tgt],
                        score,
                    )
                )
    return pd.DataFrame(rows, columns=SALIENT_COLUMNS)


def run_salient(
    lm: LoadedModel,
    heads: list[Head],
    out: str | Path | None,
    *,
    top_tokens: int = 30,
    top_mappings: int = 5,
    suppress: bool = False,
    settings: MapSettings = DEFAULTS,
    saliency: Tensor | None = None,
    recompute: bool = False,
    header: dict[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """`salient_mappings` of `heads`, cached at `out` (.json, .csv or a folder; None: not written)."""
    mode = "suppress" if suppress else "promote"
    names = [head_name(*h) for h in heads]
    params = {"top_tokens": top_tokens, "top_mappings": top_mappings, "mode": mode, "heads": names}
    params |= settings.params("embedding")
    return run_cached(
        lm,
        out,
        "salient_mappings.json.gz",
        params,
        lambda: salient_mappings(
            lm.hw,
            lm.tokenizer,
            heads,
            top_tokens=top_tokens,
            top_mappings=top_mappings,
            suppress=suppress,
            settings=settings,
            saliency=saliency,
            progress=progress,
        ),
        found={
            "heads": names,
            "mode": mode,
            "top_tokens": top_tokens,
            "top_mappings": top_mappings,
        },
        settings=settings,
        recompute=recompute,
        protocol={"saliency": SALIENCY_RULE, "tokens": "raw text and ids; shown with glyphs"},
        header=header,
        step="salient",
    )


def mapping_table(df: pd.DataFrame, layer: int, head: int) -> pd.DataFrame:
    """A head's salient mappings as a compact table: saliency, source, its targets joined (shown)."""
    sel = df[(df["layer"] == layer) & (df["head"] == head)].sort_values(["salient_rank", "rank"])
    return (
        sel.groupby("salient_rank", sort=True)
        .agg(
            source=("source", lambda s: shown(s.iloc[0])),
            saliency=("saliency", "first"),
            targets=("target", lambda t: ", ".join(map(shown, t))),
        )
        .reset_index(drop=True)
    )


def mapping_lines(df: pd.DataFrame, layer: int, head: int) -> list[str]:
    """One line per salient token of a head: `source -> t1, t2, ...`, most salient first (shown)."""
    tab = mapping_table(df, layer, head)
    return [f"{s} -> {t}" for s, t in zip(tab["source"], tab["targets"], strict=True)]
