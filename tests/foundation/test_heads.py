"""The factored head iterator gives every head's rows of x W_VO, with and without biases."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model
from torch.testing import assert_close

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.heads import (
    all_heads,
    check_bias,
    head_factors,
    head_name,
    parse_head,
    parse_layers,
)

# Same float64 numbers, another summation order: 1e-9 is ample.
TOL = dict(rtol=1e-9, atol=1e-10)


def _x(hw: HeadWeights, n: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, hw.d_model, generator=gen, dtype=torch.float64)


def test_rows_are_x_times_w_vo_for_every_head(hw: HeadWeights):
    x = _x(hw)
    seen = []
    for f in head_factors(hw, range(hw.n_layers), lambda _: x):
        assert f.a.shape == (len(x), hw.d_head) and f.w_o.shape == (hw.d_head, hw.d_model)
        assert_close(f.rows(), x @ hw.W_VO(f.layer, f.head), **TOL)
        seen.append((f.layer, f.head))
    assert seen == all_heads(hw)


def test_grouped_heads_share_one_value_product():
    """Query heads of one kv group read the same rows of x W_V: views of one tensor, not copies."""
    hw = HeadWeights(tiny_model("llama"))  # 4 heads, 2 kv heads
    factors = list(head_factors(hw, [0], lambda _: _x(hw)))
    ptr = [f.a.data_ptr() for f in factors]
    assert ptr[0] == ptr[1] != ptr[2] == ptr[3]


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2", "phi"])
def test_biases_are_what_the_modules_add(name: str):
    """value: (x W_V + b_V) W_O[h]; value+output: the model's own out_proj on that head's z alone."""
    hw = HeadWeights(tiny_model(name))
    x = _x(hw)
    layer = hw.n_layers - 1
    proj = hw.out_proj(layer)
    for f in head_factors(hw, [layer], lambda _: x, bias="value"):
        z_h = x @ hw.W_V(layer)[hw.kv_head(f.head)] + hw.b_V(layer)[hw.kv_head(f.head)]
        assert_close(f.rows(), z_h @ hw.W_O(layer)[f.head], **TOL)
    for f in head_factors(hw, [layer], lambda _: x, bias="value+output"):
        z = torch.zeros(len(x), hw.n_heads * hw.d_head, dtype=x.dtype)
        kv = hw.kv_head(f.head)
        cols = slice(f.head * hw.d_head, (f.head + 1) * hw.d_head)
        z[:, cols] = x @ hw.W_V(layer)[kv] + hw.b_V(layer)[kv]
        assert_close(f.rows(), proj(z), **TOL)  # Conv1D (GPT-2) or Linear, with its bias
        assert f.a.shape[1] == hw.d_head + 1  # one more rank, still factored


def test_biases_matter_where_the_model_has_them():
    hw = HeadWeights(tiny_model("gpt2"))  # b_V and b_O
    x = _x(hw)
    plain, value, both = (
        next(head_factors(hw, [0], lambda _: x, bias=b)).rows()
        for b in ("none", "value", "value+output")
    )
    assert (plain - value).abs().max() > 1e-3 and (value - both).abs().max() > 1e-3


def test_names_and_parsing(hw: HeadWeights):
    assert head_name(23, 2) == "23.2" and parse_head("23.2") == (23, 2)
    assert parse_layers(None, 3) == [0, 1, 2] and parse_layers("2,0,2", 3) == [0, 2]
    with pytest.raises(BadArgument, match="LAYER.HEAD"):
        parse_head("23")
    with pytest.raises(BadArgument, match="does not exist"):
        parse_head(f"{hw.n_layers}.0", hw)
    with pytest.raises(BadArgument, match="out of range"):
        parse_layers("0,9", 3)
    with pytest.raises(BadArgument, match="value\\+output"):
        check_bias("output")


def test_biases_present_are_reported():
    assert HeadWeights(tiny_model("gpt2")).biases() == ["value", "output"]
    assert HeadWeights(tiny_model("qwen2")).biases() == ["value"]
    assert HeadWeights(tiny_model("gemma3")).biases() == []
