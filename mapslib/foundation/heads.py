"""Every head's OV circuit in factored form, the one place the product (E_in W_V)(W_O U) is set up.

A head's rows of M = E_in W_VO U for source tokens are `a @ w_o @ U` with the left factor
`a = x @ W_V[kv(h)]` (n x d_head) and `w_o = W_O[h]` (d_head x d); d_head << d, so nothing d x d or
|V| x |V| is ever formed (TransformerLens' FactoredMatrix idea). `a` is computed once per kv head
and shared by the query heads of its group. What happens to the product (counts against a target,
top-k, argmax, norms) is the caller's: the kernels module holds those.

Biases (not in the paper, which omits them; default off): `value` adds b_V to the left factor,
a = x W_V + b_V, what the head writes when it attends to the source alone. `value+output` also adds
the layer's b_O, which the layer writes once whatever its heads do, by one more rank in the
factors: a' = [a, 1], w_o' = [W_O[h]; b_O], so a' w_o' = a W_O[h] + b_O and nothing grows to d x d.

Also here: how heads are named (`LAYER.HEAD`) and parsed, and how a layer list is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.settings import BIASES

Head = tuple[int, int]  # (layer, head)


@dataclass(frozen=True)
class HeadFactors:
    """One head's factors: its rows of M are `a @ w_o @ U`."""

    layer: int
    head: int
    a: Tensor  # (n, d_head): x W_V[kv(h)] (+ b_V when asked), rows of the sources
    w_o: Tensor  # (d_head, d): W_O[h]

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)

    def rows(self) -> Tensor:
        """Rows of x W_VO (n x d): cheap, since d_head is small."""
        return self.a @ self.w_o


def value_factors(hw: HeadWeights, layer: int, x: Tensor, value_bias: bool = False) -> Tensor:
    """x @ W_V of every kv head of `layer`, (+ b_V): (n_kv_heads, n, d_head)."""
    a = torch.einsum("nd,gde->gne", x, hw.W_V(layer))
    return a + hw.b_V(layer)[:, None, :] if value_bias else a


def check_bias(bias: str) -> str:
    """`bias` if it is one of BIASES, else an error naming them."""
    if bias not in BIASES:
        raise BadArgument(f"unknown bias {bias!r}; choose one of {', '.join(BIASES)}")
    return bias


def head_factors(
    hw: HeadWeights,
    layers: Iterable[int],
    inputs: Callable[[int], Tensor],
    *,
    heads: Callable[[int], Iterable[int]] | None = None,
    bias: str = "none",
    progress: bool = False,
) -> Iterator[HeadFactors]:
    """Factors of every head (or `heads(layer)`) of `layers`; `inputs(layer)` gives x, (n, d).

    The value product is computed once per layer and kv head; each query head gets a view of its kv
    head's rows, so grouped-query heads share the work. `bias` (BIASES) folds b_V, and b_O, into the
    factors.
    """
    layers = list(layers)
    check_bias(bias)
    chosen = {la: list(heads(la)) if heads else list(range(hw.n_heads)) for la in layers}
    bar = tqdm(
        total=sum(map(len, chosen.values())), desc="heads", unit="head", disable=not progress
    )
    for layer in layers:
        a_kv = value_factors(hw, layer, inputs(layer), value_bias=bias != "none")
        w_o = hw.W_O(layer)
        if bias == "value+output":
            ones = a_kv.new_ones(*a_kv.shape[:2], 1)
            a_kv = torch.cat([a_kv, ones], dim=2)
            b_o = hw.b_O(layer).expand(w_o.shape[0], 1, -1)
            w_o = torch.cat([w_o, b_o], dim=1)
        for head in chosen[layer]:
            yield HeadFactors(layer, head, a_kv[hw.kv_head(head)], w_o[head])
            bar.update(1)
    bar.close()


def head_name(layer: int, head: int) -> str:
    """Heads are written `layer.head`, as in the paper and the CLI's --heads."""
    return f"{layer}.{head}"


def parse_head(spec: str, hw: HeadWeights | None = None) -> Head:
    """`23.2` -> (23, 2), checked against the model when `hw` is given."""
    try:
        layer, head = (int(x) for x in spec.strip().split("."))
    except ValueError:
        raise BadArgument(f"a head is written LAYER.HEAD, e.g. 23.2; got {spec!r}") from None
    if hw is not None and not (0 <= layer < hw.n_layers and 0 <= head < hw.n_heads):
        raise BadArgument(
            f"head {spec} does not exist: this model has layers 0..{hw.n_layers - 1}, "
            f"heads 0..{hw.n_heads - 1}"
        )
    return layer, head


def parse_layers(spec: str | list[int] | None, n_layers: int) -> list[int]:
    """Parse `0,5,12` (or None / `all` for every layer), checking each against the model's depth."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    items = spec if isinstance(spec, list) else str(spec).split(",")
    try:
        layers = [int(x) for x in items if str(x).strip() != ""]
    except ValueError:
        raise BadArgument(
            f"--layers expects comma-separated integers like 0,5,12, got {spec!r}"
        ) from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise BadArgument(
            f"layers {bad or spec} out of range: this model has layers 0..{n_layers - 1}"
        )
    return sorted(set(layers))


def all_heads(hw: HeadWeights, layers: Iterable[int] | None = None) -> list[Head]:
    """Every (layer, head) of `layers` (default: the whole model), in order."""
    layers = range(hw.n_layers) if layers is None else layers
    return [(layer, h) for layer in layers for h in range(hw.n_heads)]
