"""Rows of one head's M = E_in W_VO U: the tokens a source token is mapped to most strongly."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from mapslib.adapters import HeadWeights
from mapslib.display import token_text
from mapslib.embeddings import EMBEDDING_MODES, InputEmbeddings
from mapslib.errors import BadArgument
from mapslib.kernels import topk_rows
from mapslib.relations import single_token_ids


def parse_head(spec: str, hw: HeadWeights | None = None) -> tuple[int, int]:
    """`23.2` -> (23, 2), checked against the model when `hw` is given."""
    try:
        layer, head = (int(x) for x in spec.strip().split("."))
    except ValueError:
        raise BadArgument(f"a head is written LAYER.HEAD, e.g. 23.2; got {spec!r}") from None
    if hw is not None and not (0 <= layer < hw.n_layers and 0 <= head < hw.n_heads):
        raise BadArgument(
            f"head {spec} does not exist: this model has layers 0..{hw.n_layers - 1}, heads 0..{hw.n_heads - 1}"
        )
    return layer, head


def head_factors(
    hw: HeadWeights, layer: int, head: int, token_ids: torch.Tensor, embedding: str = "paper"
) -> torch.Tensor:
    """a = E_in[tokens] @ W_V for one head (n x d_head): the left factor of its rows of M."""
    x = InputEmbeddings(hw, token_ids, embedding).for_layer(layer)
    return x @ hw.W_V(layer)[hw.kv_head(head)]


def top_mappings(
    hw: HeadWeights,
    tokenizer: Any,
    layer: int,
    head: int,
    token_ids: list[int],
    k: int = 5,
    *,
    suppress: bool = False,
    embedding: str = "paper",
) -> pd.DataFrame:
    """For each source token: its k highest (or, with `suppress`, lowest) entries in the head's M."""
    ids = torch.tensor(token_ids, device=hw.embedding_module.weight.device)
    a = head_factors(hw, layer, head, ids, embedding)
    values, cols = topk_rows(a, hw.W_O(layer)[head], hw.unembedding(), k, largest=not suppress)
    rows = []
    for i, src in enumerate(token_ids):
        for rank in range(k):
            rows.append(
                {
                    "source": token_text(tokenizer, src),
                    "rank": rank + 1,
                    "target": token_text(tokenizer, int(cols[i, rank])),
                    "score": float(values[i, rank]),
                }
            )
    return pd.DataFrame(rows)


def mappings_by_embedding(
    hw: HeadWeights, tokenizer: Any, layer: int, head: int, token_ids: list[int], k: int = 3
) -> pd.DataFrame:
    """Top-k targets of each source token under every embedding mode, side by side."""
    columns = {
        mode: mapping_strings(
            top_mappings(hw, tokenizer, layer, head, token_ids, k, embedding=mode)
        )
        for mode in EMBEDDING_MODES
    }
    return pd.DataFrame(columns)


def ov_summary(hw: HeadWeights, layer: int, head: int) -> dict[str, float | int]:
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
    return [i for i in ids if i is not None], [
        w for w, i in zip(words, ids, strict=True) if i is None
    ]
