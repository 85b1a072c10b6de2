"""Architecture adapters: where each model family keeps the weights MAPS reads.

MAPS needs, per attention head h of layer l: W_V(h) (d x d_head), its bias b_V(h), and W_O(h)
(d_head x d); for the model: E (|V| x d, with any scaling the forward pass applies), U (d x |V|), and the
first block's MLP with the norm that feeds it (and, in Gemma, the norm on its output). Families differ
only in where these live and how q/k/v are packed, so a family is a row of data, not a class.

The family's module paths name the tensors too: the value projection of layer 3 of a Llama is the
module `model.layers.3.self_attn.v_proj`, and its weight is the tensor `model.layers.3.self_attn.v_proj.weight`
in the loaded model and in its checkpoint alike. HeadWeights reads tensors by these names from a
TensorSource: a loaded model (`ModuleSource`) or a checkpoint on disk read tensor by tensor
(`mapslib.foundation.checkpoint`), so this file is the one place that knows where weights live.

Grouped-query attention: query head h reads kv head h // (n_heads // n_kv_heads), the order of
transformers' `repeat_interleave`. W_V is returned per kv head, so work on it is shared by its group.

Norms: HeadWeights returns the weights as stored, without the norm weights the forward pass applies
around them (the paper's reading, `norms="ignore"`); `with_norms("fold")` returns a view
(`NormFolded`) whose W_V, b_V, W_O and b_O carry them, for every caller alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from mapslib.errors import BadArgument, UnsupportedArchitecture
from mapslib.foundation.settings import NORMS


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
    value: str = "v_proj"  # attribute of the attention module: the value (or fused qkv) projection
    unembed: str = "lm_head"  # dotted path to the output embedding (U^T; tied models share E's)
    conv1d: bool = False  # GPT-2 stores weights as (in, out)
    embed_scale: bool = False  # the forward pass multiplies embeddings by sqrt(d) (Gemma)
    final_norm: str = "model.norm"  # dotted path to the norm before the unembedding
    attn_out_norm: str | None = None  # attribute of a block: a norm on the attention output (Gemma)
    norm_unit_offset: bool = False  # its RMSNorms scale by (1 + weight), not weight (Gemma)
    attn_norm: str = (
        "input_layernorm"  # attribute of a block: the norm whose output feeds attention
    )
    layer_norm: bool = (
        False  # its norms are LayerNorms (centre, then weight and bias), not RMSNorms
    )


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
    attn_out_norm="post_attention_layernorm",
    norm_unit_offset=True,
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
        value="c_attn",
        conv1d=True,
        final_norm="transformer.ln_f",
        attn_norm="ln_1",
        layer_norm=True,
    ),
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn="attention",
        out_proj="dense",
        mlp="mlp",
        mlp_norm="post_attention_layernorm",
        qkv="neox",
        value="query_key_value",
        final_norm="gpt_neox.final_layer_norm",
        layer_norm=True,
    ),
    # Phi-2: parallel block, one input norm feeds both attention and MLP.
    "phi": Family(
        layers="model.layers",
        embed="model.embed_tokens",
        attn="self_attn",
        out_proj="dense",
        mlp="mlp",
        mlp_norm="input_layernorm",
        final_norm="model.final_layernorm",
        layer_norm=True,
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


class TensorSource(ABC):
    """Where HeadWeights reads tensors: parameters named by their dotted path in the transformers model
    (`model.layers.3.self_attn.v_proj.weight`), whatever holds them.

    Two sources: `ModuleSource`, a loaded model (its parameters, no copy), and
    `checkpoint.CheckpointSource`, a checkpoint on disk read one tensor at a time. Tensors come in the
    source's compute dtype, on its device, except where `stored=True` allows the dtype on disk.
    """

    config: Any  # the transformers config
    device: torch.device
    dtype: torch.dtype  # the dtype tensors are computed in

    @property
    def model(self) -> nn.Module | None:
        """The live model, when there is one (needed for hooks and forward passes)."""
        return None

    @abstractmethod
    def get(self, path: str, *, stored: bool = False, keep: bool = False) -> Tensor | None:
        """The tensor at `path`, or None if the model has none (a missing bias).

        `stored`: the dtype it is stored in may be returned when narrower (for the kernels, which upcast
        per block); `keep`: keep it for later calls (U).
        """

    @abstractmethod
    def rows(self, path: str, ids: Tensor) -> Tensor:
        """Rows `ids` of a 2-D tensor, without reading the others where possible."""

    @abstractmethod
    def shape(self, path: str) -> tuple[int, ...]:
        """The shape of the tensor at `path`, without reading it."""

    @abstractmethod
    def module(self, path: str) -> nn.Module:
        """The module at `path` with its weights (the first block's MLP and its norms)."""

    def scalar(self, path: str) -> float | None:
        """A scalar attribute of a module (Gemma's `embed_scale`), when the source can read it."""
        return None


class ModuleSource(TensorSource):
    """A loaded transformers model: tensors are its parameters (views, no copy)."""

    def __init__(self, model: nn.Module):
        _refuse_offloaded(model)
        self._model = model
        self.config = model.config

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self._model.get_input_embeddings().weight.dtype

    def get(self, path: str, *, stored: bool = False, keep: bool = False) -> Tensor | None:
        module, _, name = path.rpartition(".")
        t = getattr(_get(self._model, module), name, None)
        return None if t is None else t.detach()

    def rows(self, path: str, ids: Tensor) -> Tensor:
        return self.get(path)[ids]

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.get(path).shape)

    def module(self, path: str) -> nn.Module:
        return _get(self._model, path)

    def scalar(self, path: str) -> float | None:
        module, _, name = path.rpartition(".")
        value = getattr(_get(self._model, module), name, None)
        return None if value is None else float(value)


def _refuse_offloaded(model: nn.Module) -> None:
    """Name the problem when weights are on the meta device (accelerate's offloading), whose views
    would otherwise fail deep inside torch or give no numbers at all."""
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise BadArgument(
            f"{len(meta)} weights of this model are on the meta device (e.g. {meta[0]!r}): it was "
            "loaded with offloading (device_map with CPU or disk offload), and MAPS reads the "
            "weights themselves. Load it with mapslib's load_model(..., max_memory=...,"
            " offload_folder=...) (CLI: --max-memory, --offload-folder), which reads them from the "
            "checkpoint, or map it with --weights-only (the static analyses)."
        )


class HeadWeights:
    """Per-head OV weights, E, U and MLP_0 of a causal LM, in MAPS's layout.

    Built on a loaded model (`HeadWeights(model)`) or on any TensorSource, such as a checkpoint read
    tensor by tensor (`checkpoint.CheckpointSource`). Tensor names come from the Family's module
    paths, the same for both. The module accessors (`layers`, `attention`, `out_proj`,
    `embedding_module`, `model`) need a loaded model.

    Norm weights are not in these tensors (`norms = "ignore"`, the paper's reading);
    `with_norms("fold")` gives the same weights with them folded in (`NormFolded`).
    """

    norms: str = "ignore"  # the norm convention of W_V, b_V, W_O, b_O (settings.NORMS)

    def __init__(self, source: nn.Module | TensorSource):
        self.source = source if isinstance(source, TensorSource) else ModuleSource(source)
        cfg = self.source.config
        model_type = getattr(cfg, "model_type", "?")
        if model_type not in FAMILIES:
            raise UnsupportedArchitecture(
                f"architecture {model_type!r} is not supported; supported model types: {', '.join(FAMILIES)}"
            )
        self.config = cfg
        self.family = FAMILIES[model_type]
        self.n_layers: int = cfg.num_hidden_layers
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_model: int = cfg.hidden_size
        self.d_head: int = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.vocab_size: int = self.source.shape(self.embed_path)[0]

    def describe(self) -> dict[str, int | str]:
        """The dimensions MAPS works with, for a table in the book."""
        return {
            "model_type": self.config.model_type,
            "layers": self.n_layers,
            "heads per layer": self.n_heads,
            "kv heads per layer": self.n_kv_heads,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "vocabulary": self.vocab_size,
            "embedding scale": round(self.embed_scale, 4),
        }

    @property
    def device(self) -> torch.device:
        """Where the weights are (and the work on them happens)."""
        return self.source.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are computed in."""
        return self.source.dtype

    # -- where the tensors are: the Family's module paths ------------------------------------------
    @property
    def embed_path(self) -> str:
        """The token embedding's weight (E before any scale)."""
        return f"{self.family.embed}.weight"

    @property
    def unembed_path(self) -> str:
        """The output embedding's weight (U transposed); tied models share it with E."""
        return f"{self.family.unembed}.weight"

    def block_path(self, layer: int) -> str:
        return f"{self.family.layers}.{layer}"

    def value_path(self, layer: int) -> str:
        """The module holding the value projection (fused with q and k in GPT-2 and GPT-NeoX)."""
        return f"{self.block_path(layer)}.{self.family.attn}.{self.family.value}"

    def out_proj_path(self, layer: int) -> str:
        return f"{self.block_path(layer)}.{self.family.attn}.{self.family.out_proj}"

    def attn_norm_path(self, layer: int) -> str:
        """The norm whose output the attention of `layer` reads (`input_layernorm`, GPT-2's `ln_1`)."""
        return f"{self.block_path(layer)}.{self.family.attn_norm}"

    def attn_out_norm_path(self, layer: int) -> str | None:
        """The norm on the attention output of `layer` (Gemma 2/3), or None where there is none."""
        name = self.family.attn_out_norm
        return None if name is None else f"{self.block_path(layer)}.{name}"

    # -- modules (also used for hooks; a loaded model only) ------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The loaded model; weights-only sources have none."""
        model = self.source.model
        if model is None:
            raise BadArgument(
                "this needs the whole model (a forward pass or hooks), but the weights were read "
                "without building it (--weights-only / load_weights); load it with load_model"
            )
        return model

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

    def final_norm_module(self) -> nn.Module:
        """The norm applied to the residual stream before the unembedding."""
        return _get(self.model, self.family.final_norm)

    def attention_out_norm_module(self, layer: int) -> nn.Module | None:
        """The norm on a block's attention output (Gemma 2/3), or None where it is added as is."""
        name = self.family.attn_out_norm
        return None if name is None else getattr(self.layers[layer], name)

    # -- norms --------------------------------------------------------------------------------------
    def norm_weight(self, path: str | None) -> Tensor | None:
        """What the norm at module `path` multiplies each dimension by after dividing by its scale:
        its weight, or 1 + weight in Gemma (Gemma3RMSNorm: `x_normed * (1.0 + weight)`); None for
        no norm or no weight."""
        w = None if path is None else self.source.get(f"{path}.weight")
        if w is None:
            return None
        return 1.0 + w if self.family.norm_unit_offset else w

    def norm_bias(self, path: str | None) -> Tensor | None:
        """The bias a LayerNorm adds after its weight; None for RMSNorms (and bias-free norms)."""
        return None if path is None else self.source.get(f"{path}.bias")

    def with_norms(self, norms: str) -> HeadWeights:
        """These weights with the norm weights of settings.NORMS applied: `ignore` adds none and
        returns this object; `fold` a NormFolded view on the same source, made once.

        Folded weights stay folded: `ignore` adds nothing and `fold` is not applied twice, so an
        analysis given `hw.with_norms("fold")` and the default settings (which call
        `with_norms("ignore")`) reads the folded map. The plain weights are its `base`."""
        if norms not in NORMS:
            raise BadArgument(f"unknown norms {norms!r}; choose one of {', '.join(NORMS)}")
        if norms == "ignore":
            return self
        folded = self.__dict__.get("_folded")
        if folded is None:
            folded = self.__dict__["_folded"] = NormFolded(self)
        return folded

    # -- per-head weights -----------------------------------------------------------------------------
    def kv_head(self, head: int) -> int:
        """The kv head a query head reads (grouped- and multi-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    def W_V(self, layer: int) -> Tensor:
        """Value weights of every kv head of `layer`: (n_kv_heads, d, d_head)."""
        n_kv, dh, d = self.n_kv_heads, self.d_head, self.d_model
        w = self.source.get(f"{self.value_path(layer)}.weight")
        if self.family.qkv == "gpt2":  # Conv1D: weight (d, 3d) = [q | k | v], each head-major
            return w[:, 2 * d :].reshape(d, n_kv, dh).permute(1, 0, 2)
        if self.family.qkv == "neox":  # Linear: weight (3d, d) laid out (head, [q k v], d_head)
            return w.reshape(n_kv, 3, dh, d)[:, 2].transpose(1, 2)
        return w.reshape(n_kv, dh, d).transpose(1, 2)

    def b_V(self, layer: int) -> Tensor:
        """Value biases of every kv head of `layer`: (n_kv_heads, d_head); zeros if the model has none."""
        n_kv, dh, d = self.n_kv_heads, self.d_head, self.d_model
        b = self.source.get(f"{self.value_path(layer)}.bias")
        if b is None:
            return torch.zeros(n_kv, dh, dtype=self.dtype, device=self.device)
        if self.family.qkv == "gpt2":
            return b[2 * d :].reshape(n_kv, dh)
        if self.family.qkv == "neox":
            return b.reshape(n_kv, 3, dh)[:, 2]
        return b.reshape(n_kv, dh)

    def W_O(self, layer: int) -> Tensor:
        """Output weights of every query head of `layer`: (n_heads, d_head, d)."""
        # Linear: (d, n*dh); Conv1D: (n*dh, d)
        w = self.source.get(f"{self.out_proj_path(layer)}.weight")
        w = w if self.family.conv1d else w.T
        return w.reshape(self.n_heads, self.d_head, self.d_model)

    def b_O(self, layer: int) -> Tensor:
        """The output projection's bias, (d,): added once per layer to the heads' summed output;
        zeros if the model has none."""
        b = self.source.get(f"{self.out_proj_path(layer)}.bias")
        if b is None:
            return torch.zeros(self.d_model, dtype=self.dtype, device=self.device)
        return b

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
        scale = self.source.scalar(f"{self.family.embed}.embed_scale")
        if scale is not None:
            return scale
        if self.family.embed_scale:  # Gemma 2 scales in the model's forward, rounded to its dtype
            return float(torch.tensor(math.sqrt(self.d_model), dtype=self.dtype))
        return 1.0

    def embedding(self) -> Tensor:
        """E: (|V|, d), including the scale the forward pass applies."""
        return self.source.get(self.embed_path) * self.embed_scale

    def embed(self, token_ids: Tensor) -> Tensor:
        """Rows of E for `token_ids`, without building all of E."""
        return self.source.rows(self.embed_path, token_ids) * self.embed_scale

    def unembedding(self, stored: bool = False) -> Tensor:
        """U: (d, |V|), the output embedding's weight transposed (E^T for tied models).

        With `stored`, U may come in the narrower dtype its checkpoint stores it in (bf16, fp16), kept
        for later calls: only for the kernels, which upcast it per column block. A loaded model's U is
        its weight, whatever `stored` says.
        """
        return self.source.get(self.unembed_path, stored=stored, keep=True).T

    def mlp0_function(self) -> Callable[[Tensor], Tensor]:
        """`mlp0` with the first block's MLP and norms fetched once (a checkpoint builds them): call it
        on every chunk, then drop it."""
        block, f = self.block_path(0), self.family
        mlp = self.source.module(f"{block}.{f.mlp}")
        norm = self.source.module(f"{block}.{f.mlp_norm}")
        out_norm = self.source.module(f"{block}.{f.mlp_out_norm}") if f.mlp_out_norm else None

        def mlp0(x: Tensor) -> Tensor:
            with torch.no_grad():
                out = mlp(norm(x))
                return out_norm(out) if out_norm is not None else out

        return mlp0

    def mlp0(self, x: Tensor) -> Tensor:
        """What the first block's MLP writes on residual stream x, norms included, no residual."""
        return self.mlp0_function()(x)


class NormFolded(HeadWeights):
    """HeadWeights with every norm weight on a head's path to the logits folded into its factors
    (`norms="fold"`): every caller reads the map the forward pass applies, at the same cost.

    In the forward pass a head turns a residual row x into logits through three kinds of norm:
    final_norm(post_norm(norm_in(x) W_V W_O)) U. Each divides its row by a positive scale, then
    multiplies dimension i by a weight w_i (1 + w_i in Gemma), and a LayerNorm (GPT-2, GPT-NeoX,
    Phi) first centres the row (C = I - 11^T / d, a projection) and ends by adding a bias. So the
    map x W_V W_O U (`ignore`) becomes x W_V' W_O' U (`fold`), with

        W_V' = C diag(w_in) W_V                 the layer's input norm: `input_layernorm`,
                                                GPT-2's `ln_1` (C only in LayerNorm families);
        W_O' = W_O diag(w_post) C diag(w_f)     Gemma 2/3's norm on the attention output
                                                (`post_attention_layernorm`), then the final norm
                                                (`model.norm`, `ln_f`, `final_layer_norm`,
                                                `final_layernorm`; C only in LayerNorm families).

    Both are d x d_head work per layer, done when W_V or W_O is asked for; the norm weights are
    read once (d numbers each) and kept. The final norm sits on W_O's output side rather than on
    U: exact by associativity (x W_V W_O diag(w_f) U), and free, where scaling U would make a
    second |V| x d copy. So `unembedding` and the kernels are unchanged. Callers reading U without
    W_O see the lm_head's U as it is (globality normalises its columns); behaviour.direct_effect
    applies the model's own norms and must be given plain weights.

    The bias settings: the input LayerNorm's bias beta adds beta W_V to every value whatever the
    token, so it joins the value bias, b_V' = b_V + beta W_V, used where the bias setting includes
    `value` (like b_V, a constant input next to x W_V', which the forward pass divides by the
    norm's scale). b_O (`value+output`) passes the same norms as the heads' outputs:
    b_O' = b_O diag(w_post) C diag(w_f). The final LayerNorm's bias and the lm_head's bias add one
    vector to the logits whatever the head and token: they are no head's, and are left out (as in
    behaviour.direct_effect).

    Left out, on purpose: the norms' scales (1 / RMS, 1 / std). For a fixed input each is one
    positive number per row (Gemma's post-attention RMS is over the sum of all heads' outputs,
    still one number per row), so it multiplies a whole row of M by a positive factor and leaves
    its order, hence every top-k and argmax, unchanged. Saliency already divides by ||e||.

    What the heads read is unchanged: E_in (embeddings.py) comes from the model's own modules,
    MLP_0 with its input norm and, in Gemma, its output norm (`post_feedforward_layernorm`,
    applied in `mlp0_function`), and E with Gemma's sqrt(d).
    """

    norms = "fold"

    def __init__(self, base: HeadWeights):
        super().__init__(base.source)
        self.base = base
        self._norm_tensors: dict[str, Tensor | None] = {}

    def with_norms(self, norms: str) -> HeadWeights:
        """This object for either value: the norms are folded already (`ignore` adds none)."""
        self.base.with_norms(norms)  # the same check of the value
        return self

    def _kept(self, name: str, read: Callable[[], Tensor | None]) -> Tensor | None:
        """A norm's weight or bias, read from the source once (d numbers)."""
        if name not in self._norm_tensors:
            self._norm_tensors[name] = read()
        return self._norm_tensors[name]

    def _weight(self, path: str | None) -> Tensor | None:
        return self._kept(f"{path}.weight", lambda: self.norm_weight(path))

    def _bias(self, path: str | None) -> Tensor | None:
        return self._kept(f"{path}.bias", lambda: self.norm_bias(path))

    def W_V(self, layer: int) -> Tensor:
        """C diag(w_in) W_V: the input norm's weight on each row over d, then its centring."""
        w = super().W_V(layer)  # (G, d, d_head)
        w_in = self._weight(self.attn_norm_path(layer))
        if w_in is not None:
            w = w * w_in[:, None]
        return w - w.mean(dim=1, keepdim=True) if self.family.layer_norm else w

    def b_V(self, layer: int) -> Tensor:
        """b_V + beta W_V: the input LayerNorm's bias is a constant input to the value projection."""
        b = super().b_V(layer)
        beta = self._bias(self.attn_norm_path(layer))
        if beta is None:
            return b
        return b + torch.einsum("d,gde->ge", beta, super().W_V(layer))

    def _write(self, layer: int, y: Tensor) -> Tensor:
        """y (..., d), a write to the residual stream by attention of `layer`, as the logits see it:
        y diag(w_post) C diag(w_f)."""
        w_post = self._weight(self.attn_out_norm_path(layer))
        if w_post is not None:
            y = y * w_post
        if self.family.layer_norm:
            y = y - y.mean(dim=-1, keepdim=True)
        w_f = self._weight(self.family.final_norm)
        return y * w_f if w_f is not None else y

    def W_O(self, layer: int) -> Tensor:
        """W_O diag(w_post) C diag(w_f), per query head: (n_heads, d_head, d)."""
        return self._write(layer, super().W_O(layer))

    def b_O(self, layer: int) -> Tensor:
        """b_O diag(w_post) C diag(w_f): the output bias through the same norms as the heads."""
        return self._write(layer, super().b_O(layer))
