"""The hooks read and remove exactly what they claim, checked by hand on tiny random models (float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import attention_io, hand_z
from tiny_models import (
    PATHS_FLOAT64,
    VOCAB,
    paths_float32_tol,
    softmax_in_model_dtype,
    token_ids,
)
from torch.testing import assert_close

from mapslib.behaviour.correlation import no_context_z
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.hooks import (
    ablate_last,
    capture_last,
    common_prefix,
    extend,
    keep_masks,
    prefill,
    removal_tensor,
    select_rows,
)

# One forward path read two ways (hooks against the hand computation from the same forward's
# attention weights): the same float64 numbers in another summation order, so 1e-9 is ample.
TOL = dict(rtol=1e-9, atol=1e-10)


def test_captured_head_outputs_equal_hand_computation(model, hw: HeadWeights):
    """x and z captured at the last position equal the attention input and sum_j A (X W_V + b_V)."""
    ids = token_ids()
    with capture_last(hw) as seen:
        xs, _, attentions, _ = attention_io(model, hw, ids)
    for layer in range(hw.n_layers):
        assert_close(seen.inputs(layer), xs[layer][:, -1], **TOL)
        z = hand_z(hw, layer, xs[layer], attentions[layer])[:, :, -1]  # (batch, head, d_head)
        assert_close(seen.heads_z(layer), z, **TOL)
        y = torch.einsum("bhe,hed->bhd", seen.heads_z(layer), hw.W_O(layer))
        assert y.abs().max() > 1e-3  # head outputs are not trivially zero


def test_hooks_are_removed(model, hw: HeadWeights):
    """After the context (also after an exception) no hook of ours is left on the model."""
    before = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError), capture_last(hw):
        raise RuntimeError("boom")
    with ablate_last(hw, keep_masks(removal_tensor(hw, [[(0, 0)]]))):
        assert sum(len(m._forward_pre_hooks) for m in model.modules()) > before
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == before


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_no_context_z_is_the_positions_own_value(name: str):
    """x W_V + b_V equals the value the model's own projection computes at that position."""
    from tiny_models import tiny_model

    model = tiny_model(name)
    hw = HeadWeights(model)
    ids = token_ids()
    with capture_last(hw) as seen:
        model(ids)
    for layer in range(hw.n_layers):
        x = seen.inputs(layer)
        attn = hw.attention(layer)
        if name == "gpt2":
            v = attn.c_attn(x)[:, 2 * hw.d_model :]
        else:
            v = attn.v_proj(x)
        expected = v.view(x.shape[0], hw.n_kv_heads, hw.d_head).transpose(0, 1)
        assert_close(no_context_z(hw, layer, x), expected, **TOL)
        assert hw.b_V(layer).abs().min() > 1e-4  # the tiny models' value biases are non-zero


def test_ablation_removes_exactly_the_heads_contribution_at_the_last_position(
    model, hw: HeadWeights
):
    """Zeroing head h changes its attention layer's output by -z_h W_O[h] at the last position only."""
    ids = token_ids()
    layer, head = hw.n_layers - 1, 1
    xs, clean, attentions, _ = attention_io(model, hw, ids)
    keep = keep_masks(removal_tensor(hw, [[(layer, head)]] * ids.shape[0]))
    _, ablated, _, _ = attention_io(model, hw, ids, keep)
    z = hand_z(hw, layer, xs[layer], attentions[layer])[:, head, -1]
    contribution = z @ hw.W_O(layer)[head]
    diff = ablated[layer] - clean[layer]
    assert_close(diff[:, -1], -contribution, **TOL)
    assert_close(diff[:, :-1], torch.zeros_like(diff[:, :-1]), rtol=0, atol=0)
    for other in range(layer):  # earlier layers are untouched
        assert_close(ablated[other], clean[other], rtol=0, atol=0)


def test_ablation_in_an_early_layer_leaves_earlier_positions_of_later_layers(
    model, hw: HeadWeights
):
    """A last-position ablation cannot reach other positions (causal attention) in any layer."""
    ids = token_ids()
    _, clean, _, logits = attention_io(model, hw, ids)
    _, ablated, _, logits_ab = attention_io(model, hw, ids, {0: torch.zeros(hw.n_heads)})
    for layer in range(hw.n_layers):
        assert_close(ablated[layer][:, :-1], clean[layer][:, :-1], rtol=0, atol=0)
    assert (logits_ab[:, -1] - logits[:, -1]).abs().max() > 1e-6
    assert_close(logits_ab[:, :-1], logits[:, :-1], rtol=0, atol=0)


def _cached_against_full(model, hw: HeadWeights):
    """Logits of prefill + extend on the last token and of full forwards, clean and ablated per row."""
    ids = token_ids(batch=3)
    removed = [[], [(0, 1)], [(0, 1), (hw.n_layers - 1, 2)]]
    with torch.inference_mode():
        cache = prefill(model, ids[:, :-1])
        full = model(ids).logits[:, -1]
        with ablate_last(hw, keep_masks(removal_tensor(hw, removed))):
            full_ablated = model(ids).logits[:, -1]
        index = torch.tensor([0, 1, 2, 0, 1, 2])  # every prompt twice: clean, then ablated
        rows = [[]] * 3 + removed
        with ablate_last(hw, keep_masks(removal_tensor(hw, rows))):
            cached = extend(model, ids[index, -1:], select_rows(cache, index), logits=True)
        again = extend(model, ids[:, -1:], select_rows(cache, torch.arange(3)), logits=True)
    assert (full_ablated[1:] - full[1:]).abs().max() > 1e-6  # the ablation changes something
    expected = torch.cat([full, full_ablated, full])
    return torch.cat([cached, again]), expected  # `again`: the prefix cache was not mutated


def test_cached_last_token_equals_full_forward(model, hw: HeadWeights):
    """prefill + extend gives the full forward's logits to float64 rounding (softmax in float64)."""
    with softmax_in_model_dtype():
        got, expected = _cached_against_full(model, hw)
    assert_close(got, expected, **PATHS_FLOAT64)


def test_cached_last_token_equals_full_forward_float32_softmax(model, hw: HeadWeights):
    """With transformers' own float32 softmax the paths agree to float32 rounding."""
    got, expected = _cached_against_full(model, hw)
    assert_close(got, expected, **paths_float32_tol(expected))


def _prefix_against_full(model, hw: HeadWeights):
    """Captures after a one-row prefix expanded to four rows, and those of one full forward."""
    ids = token_ids(batch=4)
    ids[:, :5] = ids[0, :5]  # a shared 5-token prefix, different last 4 tokens
    c = common_prefix(ids)
    assert c == 5
    with torch.inference_mode():
        with capture_last(hw) as full:
            model(ids)
        cache = prefill(model, ids[:1, :c])
        with capture_last(hw) as cached:
            extend(model, ids[:, c:], select_rows(cache, torch.zeros(4, dtype=torch.long)))
    layers = range(hw.n_layers)
    got = [t for la in layers for t in (cached.inputs(la), cached.heads_z(la))]
    expected = [t for la in layers for t in (full.inputs(la), full.heads_z(la))]
    return got, expected


def test_shared_prefix_then_suffix_equals_full_forward(model, hw: HeadWeights):
    """Captures through a shared prefix cache equal a full forward's to float64 rounding."""
    with softmax_in_model_dtype():
        got, expected = _prefix_against_full(model, hw)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, **PATHS_FLOAT64)


def test_shared_prefix_then_suffix_float32_softmax(model, hw: HeadWeights):
    """With transformers' own float32 softmax the captures agree to float32 rounding."""
    got, expected = _prefix_against_full(model, hw)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, **paths_float32_tol(e))


def test_common_prefix_and_keep_masks(hw: HeadWeights):
    """Prefix length stops before the last column; masks zero exactly the listed heads per row."""
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert common_prefix(same) == 2
    assert common_prefix(torch.tensor([[1, 2], [3, 2]])) == 0
    masks = keep_masks(removal_tensor(hw, [[(0, 1)], [], [(0, 1), (0, 2), (1, 0)]]))
    assert set(masks) == {0, 1}
    assert masks[0].tolist()[0] == [1.0, 0.0, 1.0, 1.0][: hw.n_heads]
    assert masks[0][1].eq(1).all() and masks[0][2, 1:3].eq(0).all() and masks[1][2, 0] == 0
    assert VOCAB > 0
