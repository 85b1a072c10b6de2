"""Saliency: the tokens a head acts on most strongly.

The saliency of token t for head h is sigma_t = ||e_t W_VO|| / ||e_t|| (paper, eq. 3), with e_t the
row of E_in the head reads (PROTOCOL.md). It is computed without any d x d product per token:
W_VO = W_V W_O and W_O^T = Q R (thin QR, R is d_head x d_head), so

    ||e_t W_V W_O|| = ||(e_t W_V) R^T||,

one n x d_head product per kv head (shared by its query heads) and one n x d_head x d_head product per
query head. The vocabulary is processed in chunks, so memory stays bounded for any |V|.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.heads import value_factors
from mapslib.foundation.settings import DEFAULTS, MapSettings


def ov_r_factors(hw: HeadWeights, layer: int) -> Tensor:
    """R^T of the thin QR of each W_O(h)^T, (n_heads, d_head, d_head): ||x W_O|| = ||x R^T|| for any x."""
    w_o = hw.W_O(layer)  # (H, d_head, d)
    r = torch.linalg.qr(w_o.transpose(1, 2), mode="r").R  # (H, d_head, d_head)
    return r.transpose(1, 2)


def saliency_chunk(hw: HeadWeights, layer: int, x: Tensor, r_t: Tensor) -> Tensor:
    """Saliency of every head of `layer` on rows `x` of E_in: (n_heads, n); zero-norm rows get 0."""
    a = value_factors(hw, layer, x)  # (n_kv, n, d_head): E_in W_V per kv head
    kv = torch.tensor([hw.kv_head(h) for h in range(hw.n_heads)], device=x.device)
    out = torch.linalg.vector_norm(torch.bmm(a[kv], r_t), dim=2)  # (H, n) = ||e W_VO||
    norms = torch.linalg.vector_norm(x, dim=1)
    return torch.where(norms > 0, out / norms.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def saliency_scores(
    hw: HeadWeights,
    layers: Iterable[int] | None = None,
    *,
    settings: MapSettings = DEFAULTS,
    chunk: int = 16384,
    inputs: InputEmbeddings | None = None,
) -> Tensor:
    """sigma_t for every token of the vocabulary, every head of `layers`: (n_layers, n_heads, |V|).

    Saliency is ||e W_VO|| / ||e||: the norms' weights (settings.norms) change it, biases do not
    enter it (a bias is the same for every token)."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    hw = hw.with_norms(settings.norms)
    inputs = inputs or InputEmbeddings(hw, None, settings.embedding)
    out = torch.empty(len(layers), hw.n_heads, hw.vocab_size)
    for li, layer in enumerate(layers):
        e_in, r_t = inputs.for_layer(layer), ov_r_factors(hw, layer)
        for c0 in range(0, e_in.shape[0], chunk):
            x = e_in[c0 : c0 + chunk]
            out[li, :, c0 : c0 + x.shape[0]] = saliency_chunk(hw, layer, x, r_t).cpu()
    return out


def top_salient(sal: Tensor, n: int = 30) -> tuple[Tensor, Tensor]:
    """The `n` highest saliencies of each row of `sal` (..., |V|) and their token ids, highest first."""
    n = min(n, sal.shape[-1])
    return torch.topk(sal, n, dim=-1)
