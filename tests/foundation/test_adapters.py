"""The adapters read the weights the forward pass really uses, checked on tiny random models.

Every check compares the adapter's weights with what the model computes in its own forward pass
(hooks on the attention, output projection, blocks and lm_head), in float64 at tight tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import PARALLEL, build, tiny_config, token_ids, unsupported_model
from torch.testing import assert_close
from transformers.models.llama.modeling_llama import repeat_kv

from mapslib.errors import BadArgument, UnsupportedArchitecture
from mapslib.foundation.adapters import FAMILIES, HeadWeights
from mapslib.foundation.models import check_supported

TOL = dict(rtol=1e-9, atol=1e-10)
# Families whose value projection has a bias; the tiny models give it random non-zero values.
V_BIAS = {"gpt2", "gpt_neox", "gpt_neox_sequential", "phi", "qwen2", "llama"}
# n_kv_heads of each tiny model (all have 4 query heads; absent here: 4): grouped- and multi-query.
KV_HEADS = {"phi": 2, "llama": 2, "mistral": 2, "qwen2": 2, "qwen3": 2, "gemma2": 1, "gemma3": 1}


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-states input of a module call, passed by position or as a keyword."""
    return args[0] if args else kwargs["hidden_states"]


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _run_hooked(model, hw: HeadWeights, ids: torch.Tensor):
    """Forward pass recording, per layer: attention input X, z, out_proj output, and patterns A."""
    xs, zs, outs = {}, {}, {}
    handles = []
    for layer in range(hw.n_layers):
        attn, proj = hw.attention(layer), hw.out_proj(layer)

        def grab_x(_m, args, kwargs, layer=layer):
            xs[layer] = _hidden(args, kwargs)

        def grab_z(_m, args, layer=layer):
            zs[layer] = args[0]

        def grab_out(_m, _args, out, layer=layer):
            outs[layer] = out

        handles.append(attn.register_forward_pre_hook(grab_x, with_kwargs=True))
        handles.append(proj.register_forward_pre_hook(grab_z))
        handles.append(proj.register_forward_hook(grab_out))
    try:
        result = model(ids, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    assert len(result.attentions) == hw.n_layers
    return xs, zs, outs, result.attentions


# -- 1. per-head contributions -------------------------------------------------------------------------
def test_head_contributions_match_forward_pass(arch: str, model, hw: HeadWeights):
    """sum_j A[h,i,j] (X_j W_V + b_V) W_O[h] is head h's real share of out_proj, for every head."""
    ids = token_ids()
    xs, zs, outs, attentions = _run_hooked(model, hw, ids)
    n, dh, d = hw.n_heads, hw.d_head, hw.d_model
    kv = [hw.kv_head(h) for h in range(n)]
    for layer in range(hw.n_layers):
        W_V, b_V, W_O = hw.W_V(layer), hw.b_V(layer), hw.W_O(layer)
        assert W_V.shape == (hw.n_kv_heads, d, dh) and b_V.shape == (hw.n_kv_heads, dh)
        assert W_O.shape == (n, dh, d)
        if arch in V_BIAS:
            assert b_V.abs().min() > 1e-4  # the bias is really exercised
        X, z, A, proj = xs[layer], zs[layer], attentions[layer], hw.out_proj(layer)
        assert A.shape == (ids.shape[0], n, ids.shape[1], ids.shape[1])
        values = torch.einsum("btd,kde->bkte", X, W_V) + b_V[None, :, None, :]
        z_adapter = A @ values[:, kv]  # (batch, head, pos, d_head)
        contrib = torch.einsum("bhte,hed->bhtd", z_adapter, W_O)
        zero_out = proj(torch.zeros_like(z))
        for h in range(n):
            cols = slice(h * dh, (h + 1) * dh)
            assert_close(z[..., cols], z_adapter[:, h], **TOL, msg=f"z of {layer}.{h}")
            z_only_h = torch.zeros_like(z)
            z_only_h[..., cols] = z[..., cols]
            real = proj(z_only_h) - zero_out  # head h alone through the model's own module
            assert real.abs().max() > 1e-3
            assert_close(contrib[:, h], real, **TOL, msg=f"contribution of {layer}.{h}")
        bias = proj.bias if getattr(proj, "bias", None) is not None else torch.zeros(d).double()
        assert_close(contrib.sum(1) + bias, outs[layer], **TOL)
        assert_close(zero_out, bias.expand_as(zero_out), **TOL)


def test_w_vo_is_w_v_times_w_o(hw: HeadWeights):
    """W_VO(l, h) is the d x d product W_V[kv(h)] @ W_O[h]."""
    for layer in range(hw.n_layers):
        for h in range(hw.n_heads):
            w_vo = hw.W_VO(layer, h)
            assert w_vo.shape == (hw.d_model, hw.d_model)
            expected = hw.W_V(layer)[hw.kv_head(h)] @ hw.W_O(layer)[h]
            assert_close(w_vo, expected, **TOL)


# -- 2. embedding and unembedding ----------------------------------------------------------------------
def test_embedding_is_what_the_first_block_reads(arch: str, model, hw: HeadWeights):
    """E (with Gemma's sqrt(d)) gives the first block's input; GPT-2 adds its position rows."""
    ids = token_ids()
    seen = {}

    def grab(_m, args, kwargs):
        seen["x"] = _hidden(args, kwargs)

    handle = hw.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(ids)
    finally:
        handle.remove()
    E = hw.embedding()
    assert E.shape == (hw.vocab_size, hw.d_model) and hw.vocab_size == model.config.vocab_size
    expected = E[ids]
    if arch == "gpt2":  # absolute positions are added in the forward pass, not part of E
        expected = expected + model.transformer.wpe.weight[: ids.shape[1]]
    assert_close(seen["x"], expected, **TOL)
    assert_close(hw.embed(ids), E[ids], rtol=0, atol=0)
    scale = math.sqrt(hw.d_model) if arch.startswith("gemma") else 1.0
    assert_close(hw.embed_scale, scale, rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemma_embedding_scale_is_rounded_like_the_forward_pass(name: str, dtype: torch.dtype):
    """In half precision E is scaled by sqrt(d) rounded to the weights' dtype, bit for bit."""
    model = build(tiny_config(name), dtype)
    hw, ids = HeadWeights(model), token_ids()
    seen = {}

    def grab(_m, args, kwargs):
        seen["x"] = _hidden(args, kwargs)

    handle = hw.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(ids)
    finally:
        handle.remove()
    assert hw.embedding().dtype == dtype
    assert_close(hw.embed(ids), seen["x"], rtol=0, atol=0)
    assert_close(hw.embedding()[ids], seen["x"], rtol=0, atol=0)


def test_unembedding_gives_the_logits(model, hw: HeadWeights):
    """logits == final_norm(h) @ U (+ lm_head bias, Gemma-2's softcap); tied models share E."""
    ids = token_ids()
    lm_head = model.get_output_embeddings()
    seen = {}

    def grab(_m, args):
        seen["h"] = args[0]

    handle = lm_head.register_forward_pre_hook(grab)
    try:
        logits = model(ids).logits
    finally:
        handle.remove()
    U = hw.unembedding()
    assert U.shape == (hw.d_model, hw.vocab_size)
    expected = seen["h"] @ U
    if lm_head.bias is not None:
        expected = expected + lm_head.bias
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        expected = torch.tanh(expected / cap) * cap
    assert_close(logits, expected, **TOL)
    raw_E = hw.embedding_module.weight
    if model.config.tie_word_embeddings:
        assert U.data_ptr() == raw_E.data_ptr()
    else:
        assert not torch.allclose(U, raw_E.T)


# -- 3. the first block's MLP --------------------------------------------------------------------------
def test_mlp0_is_what_the_first_mlp_writes(arch: str, model, hw: HeadWeights):
    """mlp0(x) is the first MLP's write to the residual stream, x the residual stream it reads."""
    block = hw.layers[0]
    seen = {}

    def grab_in(_m, args, kwargs):
        seen["block_in"] = _hidden(args, kwargs)

    def grab_out(_m, _args, out):
        seen["block_out"] = _output(out)

    def grab_attn(_m, _args, out):
        seen["attn_out"] = _output(out)

    def grab_mlp_norm_in(_m, args):
        seen["mlp_norm_in"] = args[0]

    handles = [
        block.register_forward_pre_hook(grab_in, with_kwargs=True),
        block.register_forward_hook(grab_out),
        hw.attention(0).register_forward_hook(grab_attn),
        getattr(block, hw.family.mlp_norm).register_forward_pre_hook(grab_mlp_norm_in),
    ]
    try:
        model(token_ids())
    finally:
        for handle in handles:
            handle.remove()
    if arch in PARALLEL:  # the MLP reads the block input, beside attention
        x = seen["block_in"]
        mlp_write = seen["block_out"] - x - seen["attn_out"]
    else:  # the MLP reads the residual stream after attention was added
        x = seen["mlp_norm_in"]
        assert not torch.allclose(x, seen["block_in"])
        mlp_write = seen["block_out"] - x
    assert mlp_write.abs().max() > 1e-3
    assert_close(hw.mlp0(x), mlp_write, **TOL)
    # On E: rows do not interact, and the result is a plain (no-grad) tensor.
    ids = torch.tensor([5, 0, 77, 5])
    out = hw.mlp0(hw.embedding())
    assert out.shape == (hw.vocab_size, hw.d_model) and not out.requires_grad
    assert_close(out[ids], hw.mlp0(hw.embed(ids)), **TOL)


# -- 4. grouped-query mapping --------------------------------------------------------------------------
def test_kv_head_follows_repeat_interleave(arch: str, hw: HeadWeights):
    """Query head h reads the kv head that transformers' repeat_kv puts at position h."""
    assert hw.n_heads == 4 and hw.n_kv_heads == KV_HEADS.get(arch, 4)
    values = torch.arange(hw.n_kv_heads).double().reshape(1, hw.n_kv_heads, 1, 1)
    repeated = repeat_kv(values, hw.n_heads // hw.n_kv_heads).flatten().long().tolist()
    assert [hw.kv_head(h) for h in range(hw.n_heads)] == repeated
    if hw.n_kv_heads == 2:
        assert repeated == [0, 0, 1, 1]


# -- 5. unsupported architectures ----------------------------------------------------------------------
def test_unsupported_architecture_is_refused():
    """A model of a family with no adapter fails with a message that lists the supported types."""
    model = unsupported_model()
    assert model.config.model_type == "opt"
    for call in (HeadWeights, check_supported):
        with pytest.raises(UnsupportedArchitecture) as info:
            call(model)
        message = str(info.value)
        assert "'opt'" in message
        for model_type in FAMILIES:
            assert model_type in message


# -- 6. offloaded models -----------------------------------------------------------------------------
def test_offloaded_model_is_refused_with_the_fix():
    """accelerate's offloading leaves meta tensors where the weights were: a clear refusal, not a
    torch error from a meta view (the offloaded model itself still runs forward)."""
    from accelerate import cpu_offload

    model = cpu_offload(build(tiny_config("llama"), torch.float32), execution_device="cpu")
    assert model(token_ids(1, 5)).logits.isfinite().all()
    with pytest.raises(BadArgument, match="offloading.*--weights-only"):
        HeadWeights(model)
