"""Hooks on a model's own modules: read heads at the last position, zero them there, reuse a prefix.

Everything here acts on the *last position of the current forward call*. Prompts are never padded:
callers batch prompts of equal token length, so the last position is every prompt's last token.

* `capture_last`: a forward pre-hook on each attention module records its input (the normed
  residual stream) at the last position, `x`; a forward pre-hook on its output projection records
  `z`, all heads' attention-weighted values concatenated head-major, at the last position. Head h's
  output there is `z_h @ W_O[h]` (no b_O); without context (the head attending to the last position
  alone) it is `(x @ W_V[kv(h)] + b_V[kv(h)]) @ W_O[h]`.
* `ablate_last`: a forward pre-hook on each output projection multiplies the chosen heads' slices of
  `z` at the last position by 0 (a mask per batch row, so one forward evaluates many ablations).
  Other positions of the layer are untouched.
* `prefill` / `select_rows` / `extend`: run a shared prefix once with a KV cache, then only the
  remaining tokens for many rows. A cache is mutated by a forward, so every `extend` gets its own
  shallow copy whose tensors are re-indexed, never the original.

The hooks are removed when the context exits, also on an exception.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.heads import Head


def _hidden_states(args: tuple, kwargs: dict[str, Any]) -> Tensor:
    """The hidden-states input of an attention call: by position (GPT-2) or keyword (Llama, Gemma)."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def _registered(handles: list[RemovableHandle]) -> Iterator[None]:
    """Remove every hook handle on exit, whatever happens inside."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LastPosition:
    """Per layer, what the hooks recorded at the last position, one tensor per forward call."""

    n_heads: int
    x: dict[int, list[Tensor]] = field(default_factory=dict)  # attention input (rows, d)
    z: dict[int, list[Tensor]] = field(default_factory=dict)  # z (rows, n_heads * d_head)

    def inputs(self, layer: int) -> Tensor:
        """The attention module's input at the last position: (rows, d)."""
        return torch.cat(self.x[layer])

    def heads_z(self, layer: int) -> Tensor:
        """z of every head at the last position: (rows, n_heads, d_head)."""
        z = torch.cat(self.z[layer])
        return z.view(z.shape[0], self.n_heads, -1)


@contextmanager
def capture_last(hw: HeadWeights, layers: list[int] | None = None) -> Iterator[LastPosition]:
    """Record the attention input and z at the last position of every forward, for `layers` (all)."""
    layers = list(range(hw.n_layers)) if layers is None else layers
    seen = LastPosition(hw.n_heads, {lay: [] for lay in layers}, {lay: [] for lay in layers})
    handles = []
    for layer in layers:

        def grab_x(_m: nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> None:
            seen.x[layer].append(_hidden_states(args, kwargs)[:, -1].detach().clone())

        def grab_z(_m: nn.Module, args: tuple, layer: int = layer) -> None:
            seen.z[layer].append(args[0][:, -1].detach().clone())

        handles.append(hw.attention(layer).register_forward_pre_hook(grab_x, with_kwargs=True))
        handles.append(hw.out_proj(layer).register_forward_pre_hook(grab_z))
    with _registered(handles):
        yield seen


@contextmanager
def ablate_last(hw: HeadWeights, keep: dict[int, Tensor]) -> Iterator[None]:
    """Multiply head h's z at the last position by keep[layer][..., h] (0 removes the head's output).

    `keep[layer]` is (n_heads,) for the whole batch or (rows, n_heads) per batch row; layers absent
    from `keep` are untouched.
    """
    handles = []
    for layer, mask in keep.items():

        def scale(_m: nn.Module, args: tuple, mask: Tensor = mask) -> tuple:
            z = args[0].clone()
            last = z[:, -1].view(z.shape[0], hw.n_heads, -1)
            z[:, -1] = (last * mask.to(z.dtype)[..., None]).flatten(1)
            return (z, *args[1:])

        handles.append(hw.out_proj(layer).register_forward_pre_hook(scale))
    with _registered(handles):
        yield


def removal_tensor(hw: HeadWeights, removed: list[list[Head]]) -> Tensor:
    """(sets, layers, heads) tensor, 1.0 where set i removes the head: a set of head sets at once."""
    device = hw.device
    out = torch.zeros(len(removed), hw.n_layers, hw.n_heads, device=device)
    for i, heads in enumerate(removed):
        for layer, head in heads:
            out[i, layer, head] = 1.0
    return out


def keep_masks(removed: Tensor) -> dict[int, Tensor]:
    """From a (rows, layers, heads) removal tensor: per layer that loses a head in some row, the
    (rows, n_heads) keep mask for `ablate_last`."""
    touched = removed.amax(dim=(0, 2)).nonzero().flatten().tolist()
    return {layer: 1.0 - removed[:, layer] for layer in touched}


def prefill(model: nn.Module, ids: Tensor) -> Any:
    """Run `ids` (rows, t) through the transformer (no lm_head) and return its KV cache."""
    return model.base_model(input_ids=ids, use_cache=True).past_key_values


def common_prefix(ids: Tensor) -> int:
    """Length of the longest prefix shared by all rows of `ids` (rows, t), at most t - 1."""
    same = (ids == ids[:1]).all(0).long()
    return min(int(same.cumprod(0).sum()), ids.shape[1] - 1)


def select_rows(cache: Any, index: Tensor) -> Any:
    """A new cache holding rows `index` of `cache`; `cache` itself is left as it was."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(index)
    return out


def extend(model: nn.Module, ids: Tensor, cache: Any | None = None, logits: bool = False) -> Any:
    """Run `ids` (rows, s) after `cache` (consumed: pass a `select_rows` copy); logits at the last
    position (rows, |V|) if asked, else None (the hooks collect what is needed)."""
    if not logits:
        model.base_model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
        return None
    out = model(input_ids=ids, past_key_values=cache, use_cache=cache is not None, logits_to_keep=1)
    return out.logits[:, -1]
