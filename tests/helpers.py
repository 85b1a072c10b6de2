"""Helpers shared by tests of several packages: hand computations on tiny models, a word tokenizer."""

from __future__ import annotations

import zlib

import pandas as pd
import torch
from tiny_models import VOCAB

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.hooks import ablate_last


def attention_io(model, hw: HeadWeights, ids: torch.Tensor, keep: dict | None = None):
    """One forward with patterns: per layer the attention input X and output, and A."""
    xs, outs, handles = {}, {}, []
    for layer in range(hw.n_layers):
        attn = hw.attention(layer)

        def grab_x(_m, args, kwargs, layer=layer):
            xs[layer] = args[0] if args else kwargs["hidden_states"]

        def grab_out(_m, _args, out, layer=layer):
            outs[layer] = out[0] if isinstance(out, tuple) else out

        handles.append(attn.register_forward_pre_hook(grab_x, with_kwargs=True))
        handles.append(attn.register_forward_hook(grab_out))
    try:
        if keep is None:
            result = model(ids, output_attentions=True)
        else:
            with ablate_last(hw, keep):
                result = model(ids, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return xs, outs, result.attentions, result.logits


def hand_z(hw: HeadWeights, layer: int, X: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """z of every head at every position from the weights: sum_j A[h,i,j] (X_j W_V + b_V)."""
    values = torch.einsum("btd,kde->bkte", X, hw.W_V(layer)) + hw.b_V(layer)[None, :, None, :]
    kv = [hw.kv_head(h) for h in range(hw.n_heads)]
    return A @ values[:, kv]  # (batch, head, pos, d_head)


def _word_id(word: str) -> int:
    return (
        int(word[1:])
        if word[:1] == "w" and word[1:].isdigit()
        else zlib.crc32(word.encode()) % VOCAB
    )


class WordTokenizer:
    """A stand-in tokenizer: `w17` is token 17, any other word a fixed id from its CRC32; no specials."""

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": [[_word_id(w) for w in t.replace(";", " ").split()] for t in texts]}


def prompt_of(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def static_table(
    heads: dict[str, list[tuple[int, int]]], n_layers: int, n_heads: int
) -> pd.DataFrame:
    """A static table where each relation's listed heads score 0.9, 0.8, ... and the rest 0."""
    rows = []
    for rel, top in heads.items():
        for layer in range(n_layers):
            for h in range(n_heads):
                s = 0.9 - 0.1 * top.index((layer, h)) if (layer, h) in top else 0.0
                for mode in ("promote", "suppress"):
                    rows.append((layer, h, rel, mode, 10, 30, s if mode == "promote" else 0.5))
    return pd.DataFrame(
        rows, columns=["layer", "head", "relation", "mode", "k", "n_pairs", "score"]
    )
