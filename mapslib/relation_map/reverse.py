"""Reverse search: which heads map a source token to a target token, e.g. ` France` to ` Paris`?

For a pair (s, t) each head's row of M = E_in W_V W_O U for s is `E_in[s] W_V W_O U` (its factors
from foundation.heads, under the map settings: embedding, bias, norms). The head's target rank is
1 + the number of tokens whose entry in that row is greater than M[s, t] (rank 1: t is the head's
top target for s); `suppress` ranks on -M, so it counts the entries below. The rank is exact, over
all |V| columns of U, and `score` is M[s, t] itself (not negated under `suppress`).

Ties follow the kernels' rule (foundation.kernels): an entry within rounding error of the target's
is a tie and counts on neither side, in the target's favour; two tokens with equal columns of U get
the same rank. Unlike the relation map, which needs only "is it in the top-k" and decides most rows
on a sample of U's columns, a rank needs every entry, so every head is answered by one full pass
over U: the heads' rows for the sources (one d-vector per head and pair, cheap since d_head << d)
are stacked and multiplied by U in column blocks. Memory stays (rows x block); nothing |V| x |V|,
nor heads x |V|, is formed.

Several pairs: `target_rank` and `score` are the means over the pairs, and `rank_i` / `score_i`
(i = 1, 2, ... in the order given) are each pair's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.embeddings import EMBEDDING_RULE, InputEmbeddings
from mapslib.foundation.heads import head_factors, head_name
from mapslib.foundation.kernels import Blocks, Unembedding, tie_tolerance
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.foundation.tokens import token_raw
from mapslib.relation_map.scores import BIAS_RULE, NORMS_RULE

COLUMNS = ["name", "layer", "head", "target_rank", "score"]  # then rank_i, score_i per pair


def head_rows(hw: HeadWeights, sources: Tensor, settings: MapSettings) -> Tensor:
    """Every head's row of E_in W_V W_O (+ biases as `settings.bias` asks) for each source:
    (n_layers * n_heads, n_sources, d), heads in (layer, head) order."""
    layers = list(range(hw.n_layers))
    # E_in before U: a weights-only source drops the first block's MLP before U is read
    inputs = InputEmbeddings(hw, sources, settings.embedding).prepare(layers)
    factors = head_factors(hw, layers, inputs.for_layer, bias=settings.bias)
    return torch.stack([f.rows() for f in factors])


def reverse_blocks(device: torch.device) -> Blocks:
    """Tiles for the one pass over U: the kernels' rows, wider columns. Each entry is compared once,
    so the pass is bound by the product, and on 2 CPU cores 16384 columns ran ~1.3x faster than
    the kernels' cache-sized 2048 (a 270 x 49152 product)."""
    return Blocks(Blocks.for_device(device).rows, 16384)


def count_beyond(
    rows: Tensor, targets: Tensor, unembed: Unembedding, below: bool = False
) -> tuple[Tensor, Tensor]:
    """For each row r of `rows` (n, d): how many entries of r @ U lie above (`below`: below) r's
    target entry by more than rounding error, and the target entry; U is streamed once, in column
    blocks, for all rows."""
    u_t = unembed.rows[targets].to(rows.dtype)
    v = (rows * u_t).sum(1)
    sign = -1.0 if below else 1.0  # below: -entry > -v + tol; negation is exact
    x, bar = sign * rows, (sign * v + tie_tolerance(rows, u_t, unembed))[:, None]
    n, V, U = rows.shape[0], unembed.vocab_size, unembed.U
    blocks = reverse_blocks(rows.device)
    count = torch.zeros(n, dtype=rows.dtype, device=rows.device)
    for c0 in range(0, V, blocks.cols):
        c1 = min(c0 + blocks.cols, V)
        cols = U[:, c0:c1].to(rows.dtype)  # a bf16/fp16 U is upcast one block at a time
        for r0 in range(0, n, blocks.rows):
            r1 = min(r0 + blocks.rows, n)
            # in place, on floats: several times faster than a bool reduction
            hit = (x[r0:r1] @ cols).gt_(bar[r0:r1])
            t = targets[r0:r1]
            inside = ((t >= c0) & (t < c1)).nonzero().squeeze(1)
            hit[inside, t[inside] - c0] = 0.0  # the target is never beyond itself
            count[r0:r1] += hit.sum(1)
    return count.long(), v


def target_ranks(
    hw: HeadWeights,
    source_ids: Sequence[int],
    target_ids: Sequence[int],
    settings: MapSettings = DEFAULTS,
    suppress: bool = False,
) -> pd.DataFrame:
    """Every head ranked by where each target falls in its row for the paired source: one row per
    head, columns COLUMNS then rank_i, score_i per pair, sorted by target_rank (best first)."""
    if len(source_ids) != len(target_ids) or not source_ids:
        raise BadArgument(
            f"sources and targets pair up in order: got {len(source_ids)} sources and "
            f"{len(target_ids)} targets"
        )
    for t in (*source_ids, *target_ids):
        check_token(hw, int(t))
    hw = hw.with_norms(settings.norms)
    device = hw.device
    src = torch.tensor(list(source_ids), device=device)
    dst = torch.tensor(list(target_ids), device=device)
    sources, inverse = torch.unique(src, return_inverse=True)
    rows = head_rows(hw, sources, settings)[:, inverse]  # (heads, pairs, d)
    n_heads, n_pairs = rows.shape[:2]
    unembed = Unembedding.prepare(hw.unembedding(stored=True))
    beyond, entries = count_beyond(
        rows.reshape(n_heads * n_pairs, -1), dst.repeat(n_heads), unembed, below=suppress
    )
    ranks = (1 + beyond).reshape(n_heads, n_pairs).cpu()
    return ranks_frame(hw, ranks, entries.reshape(n_heads, n_pairs).double().cpu(), suppress)


def check_token(hw: HeadWeights, token_id: int) -> None:
    """A token id must name a column of U (and a row of E)."""
    if not 0 <= token_id < hw.vocab_size:
        raise BadArgument(f"token id {token_id} is out of range: the model has {hw.vocab_size}")


def ranks_frame(hw: HeadWeights, ranks: Tensor, entries: Tensor, suppress: bool) -> pd.DataFrame:
    """The table of `target_ranks` from (heads, pairs) ranks and target entries."""
    heads = [(layer, h) for layer in range(hw.n_layers) for h in range(hw.n_heads)]
    df = pd.DataFrame(
        {
            "name": [head_name(layer, h) for layer, h in heads],
            "layer": [layer for layer, _ in heads],
            "head": [h for _, h in heads],
            # one pair: the rank itself, an integer; several: their mean
            "target_rank": (ranks[:, 0] if ranks.shape[1] == 1 else ranks.double().mean(1)).numpy(),
            "score": entries.mean(1).numpy().round(6),
        }
    )
    for i in range(ranks.shape[1]):
        df[f"rank_{i + 1}"] = ranks[:, i].numpy()
        df[f"score_{i + 1}"] = entries[:, i].numpy().round(6)
    order = ["target_rank", "score", "layer", "head"]
    df = df.sort_values(order, ascending=[True, suppress, True, True], kind="stable")
    return df.reset_index(drop=True)


# --- tokens and the cached entry point --------------------------------------------------------------


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of `text` exactly as given (leading space included), without special tokens."""
    return list(tokenizer([text], add_special_tokens=False)["input_ids"][0])


def token_id(tokenizer: Any, text: str, role: str = "token") -> int:
    """The id of `text` when it is exactly one token; else a one-line error that shows how the
    tokenizer splits it and, when that is one token, suggests the spaced form."""
    ids = encode(tokenizer, text)
    if len(ids) == 1:
        return int(ids[0])
    pieces = " + ".join(repr(token_raw(tokenizer, i)) for i in ids) or "nothing"
    message = f"{role} {text!r} is not one token: this tokenizer splits it into {pieces}"
    spaced = " " + text.lstrip()
    if spaced != text and len(encode(tokenizer, spaced)) == 1:
        message += f"; {spaced!r} is one token (the leading space is part of it): use that"
    else:
        message += "; a source and a target must each be one token of this model's tokenizer"
    raise BadArgument(message)


def protocol(settings: MapSettings, suppress: bool) -> dict[str, Any]:
    """The rules `run_heads` applies, for its sidecar."""
    side = "below (rank on -M)" if suppress else "above"
    return {
        "target_rank": f"1 + the number of tokens whose entry in row M[s, :] of the head's "
        f"M = E_in W_V W_O U lies {side} M[s, t] by more than rounding error (entries within "
        "rounding error are ties, in the target's favour); over all |V| columns of U",
        "score": "M[s, t], the target's entry (not negated under suppress)",
        "pairs": "several pairs: target_rank and score are means over the pairs; rank_i and "
        "score_i are pair i's (1-based, in the order given)",
        "tokenisation": "each source and target exactly as given (leading space included), "
        "without special tokens; each must be one token",
        "embedding": EMBEDDING_RULE,
        "bias": BIAS_RULE[settings.bias],
        "norms": NORMS_RULE[settings.norms],
    }


def run_heads(
    lm: Any,
    pairs: Sequence[tuple[str, str]],
    out: str | Path | None,
    *,
    settings: MapSettings = DEFAULTS,
    suppress: bool = False,
    header: dict[str, Any] | None = None,
    recompute: bool = True,
) -> pd.DataFrame:
    """Every head of `lm` (a LoadedModel or LoadedWeights) ranked on the (source, target) text
    pairs (`target_ranks`), written atomically with its sidecar to `out` (a .csv or .json file, or
    a folder for `heads.csv`; None: not written)."""
    if not pairs:
        raise BadArgument("give at least one (source, target) pair")
    ids = [
        (token_id(lm.tokenizer, s, "source"), token_id(lm.tokenizer, t, "target")) for s, t in pairs
    ]
    mode = "suppress" if suppress else "promote"
    params = {"pairs": [list(p) for p in pairs], "token_ids": [list(p) for p in ids], "mode": mode}
    params |= settings.params("embedding")
    return run_cached(
        lm,
        out,
        "heads.csv",
        params,
        lambda: target_ranks(lm.hw, [s for s, _ in ids], [t for _, t in ids], settings, suppress),
        found={
            "architecture": lm.hw.describe(),
            "mode": mode,
            "pairs": [
                {"pair": i + 1, "source": s, "target": t, "source_id": si, "target_id": ti}
                for i, ((s, t), (si, ti)) in enumerate(zip(pairs, ids, strict=True))
            ],
        },
        settings=settings,
        recompute=recompute,
        protocol=protocol(settings, suppress),
        header=header,
        step="heads",
    )
