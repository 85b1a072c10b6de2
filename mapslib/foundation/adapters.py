"""Architecture adapters: where each model family keeps the weights MAPS reads.

MAPS needs, per attention head h of layer l: W_V(h) (d x d_head), its bias b_V(h), and W_O(h)
(d_head x d); for the model: E (|V| x d, with any scaling the forward pass applies), U (d x |V|), and the
first block's MLP with the norm that feeds it (and, in Gemma, the norm on its output). Families differ
only in where these live and how q/k/v are packed, so a family is a row of data, not a class.

Grouped-query attention: query head h reads kv head h // (n_heads // n_kv_heads), the order of
transformers' `repeat_interleave`. W_V is returned per kv head, so work on it is shared by its group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from mapslib.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Family:
    """Attribute paths and packing conventions of one architecture family."""

    layers: str  # dotted path from the model to the ModuleList of blocks
    embed: str  # dotted path to the token embedding module
    attn: str  # attribute of a block: the attention module
    out_proj: str  # attribute of the attention module: output projection (input = concatenated z)
    mlp: str  # attribute of a block: the MLP
    mlp_norm: str  # attribute of a block: the norm whose output feeds the MLP
    mlp_out_norm: str | None = None  # attribute of a block: a norm on the MLP's output (Gemma)
    qkv: str = "separate"  # "separate" (v_proj), "gpt2" (Conv1D c_attn), "neox" (fused per head)
    conv1d: bool = False  # GPT-2 stores weights as (in, out)
    embed_scale: bool = False  # the forward pass multiplies embeddings by sqrt(d) (Gemma)


_LLAMA_LIKE = Family(
    layers="model.layers",
    embed="model.embed_tokens",
    attn="self_attn",
    out_proj="o_proj",
    mlp="mlp",
    mlp_norm="post_attention_layernorm",
)
_GEMMA = Family(
    layers="model.layers",
    embed="model.embed_tokens",
    attn="self_attn",
    out_proj="o_proj",
    mlp="mlp",
    mlp_norm="pre_feedforward_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
    embed_scale=True,
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        layers="transformer.h",
        embed="transformer.wte",
        attn="attn",
        out_proj="c_proj",
        mlp="mlp",
        mlp_norm="ln_2",
        qkv="gpt2",
        conv1d=True,
    ),
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn="attention",
        out_proj="dense",
        mlp="mlp",
        mlp_norm="post_attention_layernorm",
        qkv="neox",
    ),
    # Phi-2: parallel block, one input norm feeds both attention and MLP.
    "phi": Family(
        layers="model.layers",
        embed="model.embed_tokens",
        attn="self_attn",
        out_proj="dense",
        mlp="mlp",
        mlp_norm="input_layernorm",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
}


def _get(obj: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class HeadWeights:
    """Per-head OV weights, E, U and MLP_0 of a transformers causal LM, in MAPS's layout."""

    def __init__(self, model: nn.Module):
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in FAMILIES:
            raise UnsupportedArchitecture(
                f"architecture {model_type!r} is not supported; supported model types: {', '.join(FAMILIES)}"
            )
        self.model = model
        self.family = FAMILIES[model_type]
        cfg = model.config
        self.n_layers: int = cfg.num_hidden_layers
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_model: int = cfg.hidden_size
        self.d_head: int = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size: int = self.embedding_module.weight.shape[0]

    def describe(self) -> dict[str, int | str]:
        """The dimensions MAPS works with, for a table in the book."""
        return {
            "model_type": self.model.config.model_type,
            "layers": self.n_layers,
            "heads per layer": self.n_heads,
            "kv heads per layer": self.n_kv_heads,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "vocabulary": self.vocab_size,
            "embedding scale": round(self.embed_scale, 4),
        }

    # -- modules (also used for hooks) -------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.model, self.family.layers)

    @property
    def embedding_module(self) -> nn.Embedding:
        return _get(self.model, self.family.embed)

    def attention(self, layer: int) -> nn.Module:
        """The attention module of a block (its input is the normed residual stream)."""
        return getattr(self.layers[layer], self.family.attn)

    def out_proj(self, layer: int) -> nn.Module:
        """The output projection; its input is z of all heads, concatenated head-major."""
        return getattr(self.attention(layer), self.family.out_proj)

    # -- per-head weights -----------------------------------------------------------------------------
    def kv_head(self, head: int) -> int:
        """The kv head a query head reads (grouped- and multi-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    def _value_weight_bias(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """Value projection as (n_kv, d, d_head) and bias (n_kv, d_head) or None."""
        attn, f = self.attention(layer), self.family
        n_kv, dh, d = self.n_kv_heads, self.d_head, self.d_model
        if f.qkv == "gpt2":  # Conv1D: weight (d, 3d) = [q | k | v], each head-major
            w = attn.c_attn.weight[:, 2 * d :].reshape(d, n_kv, dh).permute(1, 0, 2)
            b = attn.c_attn.bias[2 * d :].reshape(n_kv, dh)
            return w, b
        if f.qkv == "neox":  # Linear: weight (3d, d) laid out (head, [q k v], d_head)
            qkv = attn.query_key_value
            w = qkv.weight.reshape(n_kv, 3, dh, d)[:, 2].transpose(1, 2)
            b = qkv.bias.reshape(n_kv, 3, dh)[:, 2] if qkv.bias is not None else None
            return w, b
        v = attn.v_proj
        w = v.weight.reshape(n_kv, dh, d).transpose(1, 2)
        b = v.bias.reshape(n_kv, dh) if v.bias is not None else None
        return w, b

    def W_V(self, layer: int) -> Tensor:
        """Value weights of every kv head of `layer`: (n_kv_heads, d, d_head)."""
        return self._value_weight_bias(layer)[0].detach()

    def b_V(self, layer: int) -> Tensor:
        """Value biases of every kv head of `layer`: (n_kv_heads, d_head); zeros if the model has none."""
        w, b = self._value_weight_bias(layer)
        return b.detach() if b is not None else w.new_zeros(self.n_kv_heads, self.d_head)

    def W_O(self, layer: int) -> Tensor:
        """Output weights of every query head of `layer`: (n_heads, d_head, d)."""
        w = self.out_proj(layer).weight  # Linear: (d, n*dh); Conv1D: (n*dh, d)
        w = w if self.family.conv1d else w.T
        return w.reshape(self.n_heads, self.d_head, self.d_model).detach()

    def b_O(self, layer: int) -> Tensor:
        """The output projection's bias, (d,): added once per layer to the heads' summed output;
        zeros if the model has none."""
        b = getattr(self.out_proj(layer), "bias", None)
        return b.detach() if b is not None else self.W_O(layer).new_zeros(self.d_model)

    def biases(self) -> list[str]:
        """Which of b_V and b_O the model has (non-zero in some layer): `value`, `output`."""
        layers = range(self.n_layers)
        found = {
            "value": any(bool(self.b_V(la).abs().max() > 0) for la in layers),
            "output": any(bool(self.b_O(la).abs().max() > 0) for la in layers),
        }
        return [name for name, present in found.items() if present]

    def W_VO(self, layer: int, head: int) -> Tensor:
        """The full d x d OV matrix of one head; for tests and the naive baseline only."""
        return self.W_V(layer)[self.kv_head(head)] @ self.W_O(layer)[head]

    # -- vocabulary ---------------------------------------------------------------------------------
    @cached_property
    def embed_scale(self) -> float:
        """The factor the forward pass applies to token embeddings (sqrt(d) in Gemma, else 1)."""
        scale = getattr(self.embedding_module, "embed_scale", None)
        if scale is not None:
            return float(scale)
        if self.family.embed_scale:  # Gemma 2 scales in the model's forward, rounded to its dtype
            return float(
                torch.tensor(math.sqrt(self.d_model), dtype=self.embedding_module.weight.dtype)
            )
        return 1.0

    def embedding(self) -> Tensor:
        """E: (|V|, d), including the scale the forward pass applies."""
        return (self.embedding_module.weight * self.embed_scale).detach()

    def embed(self, token_ids: Tensor) -> Tensor:
        """Rows of E for `token_ids`, without building all of E."""
        return (self.embedding_module.weight[token_ids] * self.embed_scale).detach()

    def unembedding(self) -> Tensor:
        """U: (d, |V|), the lm_head weight transposed (E^T for tied models)."""
        return self.model.get_output_embeddings().weight.detach().T

    def mlp0(self, x: Tensor) -> Tensor:
        """What the first block's MLP writes on residual stream x, norms included, no residual."""
        block, f = self.layers[0], self.family
        with torch.no_grad():
            out = getattr(block, f.mlp)(getattr(block, f.mlp_norm)(x))
            return getattr(block, f.mlp_out_norm)(out) if f.mlp_out_norm else out
