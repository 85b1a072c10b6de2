"""Direct effects: how a head's output at the last position reaches the logits, on IOI prompts.

* Direct effect of head h on a prompt: its output at the last position, y = z_h W_O[h] (no b_O),
  through the rest of the model with every norm's scale frozen at its value in this forward pass:
  the final norm (x - mean(x) for LayerNorm; divided by its per-prompt scale, sqrt(var + eps) or
  sqrt(mean(x^2) + eps); times its weight, 1 + w in Gemma's RMSNorm), and in Gemma 2/3 also the norm
  on the attention output (y divided by that layer's scale, times its weight), then dotted with
  U[:, IO] - U[:, S]. The final norm's bias and b_U depend on no head: they belong to the other
  components. Summed over heads, b_O, embeddings and MLPs this reproduces the model's logit
  difference up to its own rounding (tests/behaviour/test_direct_effect.py). Where the model
  softcaps its final logits (Gemma 2: c tanh(l / c)) the effects decompose the logit difference
  *before* the softcap; tanh is monotone, so the sign and the model's preference are unchanged.
* Attention: the head's attention weight from the last position to the IO token and to the two S
  tokens (summed), read from the model's own eager attention in the same forward pass.

Where each family keeps these norms, and whether its RMSNorm scales by 1 + w, is the family's
(`foundation.adapters.Family`: `final_norm`, `attn_out_norm`, `norm_unit_offset`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mapslib.behaviour.ioi import Located
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights, TensorSource
from mapslib.foundation.hooks import capture_last


# -- norms -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Norm:
    """A LayerNorm or RMSNorm as the direct effect needs it: centring, eps, effective weight, bias."""

    centre: bool  # LayerNorm subtracts the mean
    eps: float
    weight: Tensor  # (d,), the factor applied after dividing by the scale (1 + w in Gemma)
    bias: Tensor | None

    def scale(self, x: Tensor) -> Tensor:
        """The per-row divisor for inputs x (rows, d): sqrt(var + eps) or sqrt(mean(x^2) + eps)."""
        x = x.double()
        if self.centre:
            return (x.var(-1, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1) + self.eps).sqrt()

    def __call__(self, x: Tensor) -> Tensor:
        """The norm applied to x (rows, d), in float64: for checks."""
        x = x.double()
        c = x - x.mean(-1, keepdim=True) if self.centre else x
        out = c / self.scale(x)[:, None] * self.weight.double()
        return out + self.bias.double() if self.bias is not None else out


def norm_of(module: nn.Module, unit_offset: bool, tensors: TensorSource, path: str) -> Norm:
    """Read a norm module: nn.LayerNorm (centred, with bias) or an RMSNorm (w, or 1 + w); its weight
    and bias from `tensors` at `path` (the model's own, or the checkpoint's when it is offloaded)."""
    weight, bias = tensors.get(f"{path}.weight"), tensors.get(f"{path}.bias")
    if isinstance(module, nn.LayerNorm):
        return Norm(True, float(module.eps), weight, bias)
    eps = getattr(module, "variance_epsilon", None)
    eps = getattr(module, "eps", None) if eps is None else eps
    if eps is None or weight is None:
        raise BadArgument(f"cannot read the norm {type(module).__name__}: no weight or eps")
    return Norm(False, float(eps), 1.0 + weight if unit_offset else weight, None)


def final_norm(hw: HeadWeights) -> Norm:
    """The final norm of the model's family."""
    path = hw.family.final_norm
    return norm_of(hw.final_norm_module(), hw.family.norm_unit_offset, hw.source, path)


def attention_out_norm(hw: HeadWeights, layer: int) -> Norm | None:
    """The attention-output norm of `layer` as a Norm, or None."""
    module = hw.attention_out_norm_module(layer)
    if module is None:
        return None
    path = f"{hw.block_path(layer)}.{hw.family.attn_out_norm}"
    return norm_of(module, hw.family.norm_unit_offset, hw.source, path)


def final_softcap(hw: HeadWeights) -> float | None:
    """The final logit softcap c (logits = c tanh(l / c)), or None."""
    return getattr(hw.model.config, "final_logit_softcapping", None)


# -- the forward pass ------------------------------------------------------------------------------
@dataclass
class IOIStates:
    """What the forward passes leave at each prompt's last position, prompts in `located` order."""

    located: list[Located]
    z: Tensor  # (L, P, H, d_head)
    attn_io: Tensor  # (L, P, H)
    attn_s: Tensor  # (L, P, H), both S tokens summed
    final_in: Tensor  # (P, d): the final norm's input
    attn_out: Tensor | None  # (L, P, d): the attention-output norm's input (Gemma 2/3), else None
    logit_diff: Tensor  # (P,): logit(IO) - logit(S) before any final softcap

    @property
    def io_ids(self) -> list[int]:
        return [x.prompt.io_id for x in self.located]

    @property
    def s_ids(self) -> list[int]:
        return [x.prompt.s_id for x in self.located]


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention (which returns its weights) inside the context."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@contextmanager
def capture_ioi_extras(hw: HeadWeights) -> Iterator[dict[str, Any]]:
    """Record per forward: the last query's attention weights per layer (rows, H, T), the final
    norm's input and the attention-output norms' inputs at the last position, and the lm_head's
    output there (before any softcap)."""
    seen: dict[str, Any] = {"attn": defaultdict(list), "attn_out": defaultdict(list)}
    seen |= {"final_in": [], "logits": []}
    handles = []
    for layer in range(hw.n_layers):

        def grab_a(_m: nn.Module, _a: tuple, out: Any, layer: int = layer) -> None:
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if weights is None:
                raise BadArgument("the attention module returned no weights (not eager attention)")
            seen["attn"][layer].append(weights[:, :, -1].detach().clone())

        handles.append(hw.attention(layer).register_forward_hook(grab_a))
        module = hw.attention_out_norm_module(layer)
        if module is not None:

            def grab_o(_m: nn.Module, args: tuple, layer: int = layer) -> None:
                seen["attn_out"][layer].append(args[0][:, -1].detach().clone())

            handles.append(module.register_forward_pre_hook(grab_o))

    def grab_f(_m: nn.Module, args: tuple) -> None:
        seen["final_in"].append(args[0][:, -1].detach().clone())

    def grab_l(_m: nn.Module, _a: tuple, out: Tensor) -> None:
        seen["logits"].append(out[:, -1].detach().clone())

    handles.append(hw.final_norm_module().register_forward_pre_hook(grab_f))
    handles.append(hw.model.get_output_embeddings().register_forward_hook(grab_l))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def ioi_states(
    hw: HeadWeights, located: list[Located], batch_rows: int = 64, progress: bool = False
) -> IOIStates:
    """One forward per batch of equal-length prompts (no padding), eager attention, hooks on every
    layer: z, attention to IO and S, the norm inputs and logit(IO) - logit(S) at the last position."""
    if not located:
        raise BadArgument("no IOI prompt left to run")
    device = hw.device
    L, H, P = hw.n_layers, hw.n_heads, len(located)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, x in enumerate(located):
        by_len[len(x.ids)].append(i)
    batches = [
        rows[r : r + batch_rows]
        for rows in by_len.values()
        for r in range(0, len(rows), batch_rows)
    ]
    dtype = hw.dtype
    z = torch.empty(L, P, H, hw.d_head, dtype=dtype)
    attn_io, attn_s = torch.empty(L, P, H, dtype=dtype), torch.empty(L, P, H, dtype=dtype)
    final_in, logit_diff = torch.empty(P, hw.d_model, dtype=dtype), torch.empty(P, dtype=dtype)
    has_out = hw.attention_out_norm_module(0) is not None
    attn_out = torch.empty(L, P, hw.d_model, dtype=dtype) if has_out else None
    with torch.inference_mode(), eager_attention(hw.model):
        for rows in tqdm(batches, desc="IOI batches", disable=not progress):
            ids = torch.tensor([located[i].ids for i in rows], device=device)
            with capture_last(hw) as last, capture_ioi_extras(hw) as extra:
                hw.model(input_ids=ids, logits_to_keep=1)
            where = torch.tensor(rows)
            r = torch.arange(len(rows))
            io_pos = torch.tensor([located[i].io_pos for i in rows])
            s_pos = torch.tensor([located[i].s_pos for i in rows])
            io_id = torch.tensor([located[i].prompt.io_id for i in rows], device=device)
            s_id = torch.tensor([located[i].prompt.s_id for i in rows], device=device)
            for layer in range(L):
                z[layer, where] = last.heads_z(layer).cpu()
                a = extra["attn"][layer][0].cpu()  # (rows, H, T)
                attn_io[layer, where] = a[r, :, io_pos]
                attn_s[layer, where] = a[r, :, s_pos[:, 0]] + a[r, :, s_pos[:, 1]]
                if attn_out is not None:
                    attn_out[layer, where] = extra["attn_out"][layer][0].cpu()
            final_in[where] = extra["final_in"][0].cpu()
            logits = extra["logits"][0]
            row = torch.arange(len(rows), device=device)
            logit_diff[where] = (logits[row, io_id] - logits[row, s_id]).cpu()
    return IOIStates(located, z, attn_io, attn_s, final_in, attn_out, logit_diff)


# -- direct effects --------------------------------------------------------------------------------
def logit_direction(hw: HeadWeights, states: IOIStates) -> Tensor:
    """Per prompt, the vector g (P, d) with direct effect = (residual part) . g: U[:, IO] - U[:, S]
    times the final norm's weight over its scale, centred for LayerNorm; float64."""
    U = hw.unembedding()
    du = (U[:, states.io_ids] - U[:, states.s_ids]).T.double().cpu()  # (P, d)
    norm = final_norm(hw)
    g = du * norm.weight.double().cpu() / norm.scale(states.final_in)[:, None]
    return g - g.mean(-1, keepdim=True) if norm.centre else g


def direct_effects(hw: HeadWeights, states: IOIStates) -> Tensor:
    """Direct effect of every head on logit(IO) - logit(S), per prompt: (P, L, H), float64."""
    g = logit_direction(hw, states)
    out = torch.empty(len(states.located), hw.n_layers, hw.n_heads, dtype=torch.float64)
    for layer in range(hw.n_layers):
        gl = g
        norm = attention_out_norm(hw, layer)
        if norm is not None:  # y enters the residual as norm(sum of heads): frozen scale, weight
            gl = g * norm.weight.double().cpu() / norm.scale(states.attn_out[layer])[:, None]
            gl = gl - gl.mean(-1, keepdim=True) if norm.centre else gl
        w_o = hw.W_O(layer).double().cpu()  # (H, d_head, d)
        out[:, layer] = torch.einsum("phe,hed,pd->ph", states.z[layer].double(), w_o, gl)
    return out
