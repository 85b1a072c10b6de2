"""Direct effects on IOI prompts: each head's effect and attention against hand computations on every
tiny architecture, the decomposition of the logit difference, the norms as read, the eager switch."""

from __future__ import annotations

import pytest
import torch
from helpers import attention_io, hand_z
from ioi_cases import TEMPLATES, located_prompts
from tiny_models import (
    PATHS_FLOAT64,
    build,
    paths_float32_tol,
    softmax_in_model_dtype,
    tiny_config,
    tiny_model,
)
from torch import nn

from mapslib.behaviour.direct_effect import (
    attention_out_norm,
    direct_effects,
    final_norm,
    final_softcap,
    ioi_states,
)
from mapslib.foundation.adapters import HeadWeights

EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
# Families whose RMSNorm computes in float32 even in a float64 model (transformers' LlamaRMSNorm
# casts its input `.to(torch.float32)`, Gemma's RMSNorm calls `x.float()`): their norm outputs carry
# float32 rounding; the LayerNorm families (GPT-2, GPT-NeoX, Phi) stay float64 throughout.
FLOAT32_NORMS = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"}
GEMMA = {"gemma2", "gemma3"}  # RMSNorm scales by (1 + w); a norm on the attention output


# -- hand computations -----------------------------------------------------------------------------
def _final_norm_by_hand(model: nn.Module) -> nn.Module:
    """The final norm, found by its usual names on the base model (not through adapters' Family)."""
    for name in ("ln_f", "final_layer_norm", "final_layernorm", "norm"):
        if hasattr(model.base_model, name):
            return getattr(model.base_model, name)
    raise AssertionError("no final norm found")


def _hand_norm(module: nn.Module, x: torch.Tensor, arch: str) -> tuple[bool, torch.Tensor]:
    """(centred?, factor (d,)) of a norm frozen at input x (d,): y = centre(x) * factor (+ bias).

    nn.LayerNorm: (x - mean) / sqrt(var + eps) * w + b; Llama-style RMSNorm: x / sqrt(mean(x^2) + eps)
    * w; Gemma's RMSNorm: the same times (1 + w) (transformers' Gemma2/3RMSNorm)."""
    if isinstance(module, nn.LayerNorm):
        scale = torch.sqrt(x.var(unbiased=False) + module.eps)
        return True, module.weight / scale
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    scale = torch.sqrt((x * x).mean() + eps)
    w = 1.0 + module.weight if arch in GEMMA else module.weight
    return False, w / scale


def _parts(model, hw: HeadWeights, ids: torch.Tensor) -> dict:
    """One forward of one prompt with patterns: attention inputs and weights, the final norm's input,
    the attention-output norms' inputs (Gemma), at the last position."""
    seen: dict = {"attn_out": {}}
    handles = [
        _final_norm_by_hand(model).register_forward_pre_hook(
            lambda _m, args: seen.__setitem__("final_in", args[0][0, -1])
        )
    ]
    for layer in range(hw.n_layers):
        if hasattr(hw.layers[layer], "pre_feedforward_layernorm"):  # Gemma: a norm on attention out
            handles.append(
                hw.layers[layer].post_attention_layernorm.register_forward_pre_hook(
                    lambda _m, args, la=layer: seen["attn_out"].__setitem__(la, args[0][0, -1])
                )
            )
    try:
        xs, _, attentions, _ = attention_io(model, hw, ids)
    finally:
        for h in handles:
            h.remove()
    return seen | {"xs": xs, "attentions": attentions}


def _hand_effects(model, hw: HeadWeights, arch: str, located) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, layer and head: the direct effect by hand, and the sum of |terms| it adds up."""
    U = hw.unembedding()
    effects = torch.zeros(len(located), hw.n_layers, hw.n_heads, dtype=torch.float64)
    sizes = torch.zeros_like(effects)
    for p, loc in enumerate(located):
        seen = _parts(model, hw, torch.tensor([loc.ids]))
        du = U[:, loc.prompt.io_id] - U[:, loc.prompt.s_id]
        centre, factor = _hand_norm(_final_norm_by_hand(model), seen["final_in"], arch)
        for layer in range(hw.n_layers):
            z = hand_z(hw, layer, seen["xs"][layer], seen["attentions"][layer])[0, :, -1]
            for h in range(hw.n_heads):
                y = z[h] @ hw.W_O(layer)[h]  # the head's output at the last position
                if arch in GEMMA:  # its share of the normed attention output
                    norm = hw.layers[layer].post_attention_layernorm
                    y = y * _hand_norm(norm, seen["attn_out"][layer], arch)[1]
                if centre:
                    y = y - y.mean()
                terms = y * factor * du
                effects[p, layer, h] = terms.sum()
                sizes[p, layer, h] = terms.abs().sum()
    return effects, sizes


# -- direct effects and attention ------------------------------------------------------------------
def test_direct_effects_equal_hand_computation(arch: str, model, hw: HeadWeights):
    """z_h W_O[h] through the frozen norms onto U[IO] - U[S], from a separate one-prompt forward."""
    located = located_prompts(6)
    with softmax_in_model_dtype():  # two forward paths (batched vs one prompt)
        got = direct_effects(hw, ioi_states(hw, located, batch_rows=2))
        expected, _ = _hand_effects(model, hw, arch, located)
    # Float64 throughout: the paths differ by summation order only (see PATHS_FLOAT64). Where the
    # model's RMSNorm computes in float32, a path difference may move a norm output by a float32
    # ulp, which later layers carry: the float32 path tolerance.
    tol = paths_float32_tol(expected) if arch in FLOAT32_NORMS else PATHS_FLOAT64
    torch.testing.assert_close(got, expected, **tol)
    assert expected.abs().max() > 1e-3  # the check is not vacuous


def test_attention_readout_equals_the_models_patterns(arch: str, model, hw: HeadWeights):
    """attn_io is the last query's weight on the IO token, attn_s the sum over both S tokens."""
    located = located_prompts(6)
    with softmax_in_model_dtype():
        states = ioi_states(hw, located, batch_rows=4)
        patterns = [_parts(model, hw, torch.tensor([x.ids]))["attentions"] for x in located]
    for p, loc in enumerate(located):
        for layer in range(hw.n_layers):
            a = patterns[p][layer][0, :, -1]  # (heads, keys)
            io = a[:, loc.io_pos]
            s = a[:, loc.s_pos[0]] + a[:, loc.s_pos[1]]
            tol = paths_float32_tol(a) if arch in FLOAT32_NORMS else PATHS_FLOAT64  # as above
            torch.testing.assert_close(states.attn_io[layer, p], io, **tol)
            torch.testing.assert_close(states.attn_s[layer, p], s, **tol)
    assert states.attn_io.max() > 0.05  # some head attends to the IO


def _components(model, hw: HeadWeights, arch: str) -> tuple[dict, list]:
    """Hooks recording, at the last position, everything the residual stream adds up: the embedding
    (input of block 0), each block's attention contribution (o_proj out; Gemma: its norm's output)
    and MLP contribution (Gemma: the post-feedforward norm's output), the final norm's input and
    output, and the lm_head's output (before any softcap)."""
    seen: dict = {"attn": {}, "mlp": {}}

    def keep(key, layer=None):
        def hook(_m, _a, out):
            out = out[0] if isinstance(out, tuple) else out
            (seen if layer is None else seen[key])[key if layer is None else layer] = out[:, -1]

        return hook

    def embed_hook(_m, args, kwargs):
        seen["embed"] = (args[0] if args else kwargs["hidden_states"])[:, -1]

    handles = [hw.layers[0].register_forward_pre_hook(embed_hook, with_kwargs=True)]
    for layer in range(hw.n_layers):
        block = hw.layers[layer]
        attn = block.post_attention_layernorm if arch in GEMMA else hw.out_proj(layer)
        mlp = block.post_feedforward_layernorm if arch in GEMMA else block.mlp
        handles.append(attn.register_forward_hook(keep("attn", layer)))
        handles.append(mlp.register_forward_hook(keep("mlp", layer)))
    norm = _final_norm_by_hand(model)
    handles.append(
        norm.register_forward_pre_hook(
            lambda _m, args: seen.__setitem__("final_in", args[0][:, -1])
        )
    )
    handles.append(norm.register_forward_hook(keep("final_out")))
    handles.append(model.get_output_embeddings().register_forward_hook(keep("logits")))
    return seen, handles


def test_direct_effects_and_other_components_add_up_to_the_logit_difference(
    arch: str, model, hw: HeadWeights
):
    """Sum over heads + b_O + embedding + MLPs (each through the frozen final norm) + the norm's bias
    and b_U = the model's own logit(IO) - logit(S) before any softcap; one forward for everything."""
    located = located_prompts(6, TEMPLATES[:1])  # one length: one batch, rows in prompt order
    seen, handles = _components(model, hw, arch)
    try:
        states = ioi_states(hw, located)
        effects = direct_effects(hw, states)
    finally:
        for h in handles:
            h.remove()
    U = hw.unembedding()
    io, s = states.io_ids, states.s_ids
    norm = _final_norm_by_hand(model)
    lm_head = model.get_output_embeddings()
    b_u = lm_head.bias if getattr(lm_head, "bias", None) is not None else torch.zeros(U.shape[1])
    for p in range(len(located)):
        # the hooks saw the whole residual stream: embedding + attention + MLP = the final norm's input
        comps = [seen["embed"][p]] + [
            seen[k][la][p] for la in range(hw.n_layers) for k in ("attn", "mlp")
        ]
        total = torch.stack(comps).sum(0)
        torch.testing.assert_close(
            total,
            seen["final_in"][p],
            rtol=0,
            atol=64 * EPS64 * float(torch.stack(comps).abs().sum()),
        )  # float64 additions in another order
        du = U[:, io[p]] - U[:, s[p]]
        centre, factor = _hand_norm(norm, seen["final_in"][p], arch)

        def through_final(x: torch.Tensor, centre=centre, factor=factor, du=du) -> torch.Tensor:
            return (x - x.mean() if centre else x) * factor * du  # elementwise terms

        others = [seen["embed"][p]] + [seen["mlp"][la][p] for la in range(hw.n_layers)]
        for layer in range(hw.n_layers):  # b_O, where the model has it, is no head's
            b_o = hw.b_O(layer)
            if arch in GEMMA:
                b_o = (
                    b_o
                    * _hand_norm(
                        hw.layers[layer].post_attention_layernorm, states.attn_out[layer, p], arch
                    )[1]
                )
            others.append(b_o)
        terms = [through_final(x) for x in others]
        bias = getattr(norm, "bias", None)
        constant = (bias @ du if bias is not None else 0.0) + b_u[io[p]] - b_u[s[p]]
        got = effects[p].sum() + sum(t.sum() for t in terms) + constant
        logits = seen["logits"][p]
        expected = logits[io[p]] - logits[s[p]]
        assert float(states.logit_diff[p]) == float(expected)  # the library reads the same logits
        # Tolerance: the model's float32 norms (FLOAT32_NORMS) round each output element (cast,
        # rsqrt, multiply, cast back: <= 4 ulps) where the library uses exact frozen-scale float64;
        # that moves the result by <= 4 eps * sum of |terms| (final norm output, and Gemma's
        # attention-output norms); 16 eps leaves a factor 4. Float64 families: the same with eps64.
        sizes = sum(float(t.abs().sum()) for t in terms) + float(
            (seen["final_out"][p] * du).abs().sum()
        )
        attn_sizes = sum(
            float(through_final(seen["attn"][la][p]).abs().sum()) for la in range(hw.n_layers)
        )
        eps = EPS32 if arch in FLOAT32_NORMS else EPS64
        assert float(got) == pytest.approx(float(expected), abs=16 * eps * (sizes + attn_sizes))
    if final_softcap(hw) is not None:  # Gemma 2: the model's logits are capped; ours are not
        with torch.inference_mode():
            capped = model(torch.tensor([x.ids for x in located])).logits[:, -1]
        c = final_softcap(hw)
        row = torch.arange(len(located))
        pre = torch.stack([seen["logits"][p] for p in range(len(located))])
        # the same float64 operations as the model's (divide, tanh, multiply): a few ulps of c
        torch.testing.assert_close(capped, c * torch.tanh(pre / c), rtol=0, atol=4 * EPS64 * c)
        assert (torch.sign(capped[row, io] - capped[row, s]) == torch.sign(states.logit_diff)).all()


def test_norms_reproduce_the_models_modules(arch: str, model, hw: HeadWeights):
    """The library's reading of each norm (centring, eps, w or 1 + w, bias) gives the module's output."""
    x = torch.randn(5, hw.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert hw.final_norm_module() is _final_norm_by_hand(model)
    modules = [(hw.final_norm_module(), final_norm(hw))]
    for layer in range(hw.n_layers):
        module = hw.attention_out_norm_module(layer)
        if module is not None:
            modules.append((module, attention_out_norm(hw, layer)))
    assert (len(modules) > 1) == (arch in GEMMA)
    for module, norm in modules:
        with torch.no_grad():
            expected = module(x)
        # float32 norms: <= 4 roundings per element (cast, rsqrt, multiply, cast back) -> 8 ulps of
        # the largest output; float64 LayerNorm: a different order of the same float64 operations.
        eps = 8 * EPS32 if arch in FLOAT32_NORMS else 64 * EPS64
        torch.testing.assert_close(
            norm(x), expected, rtol=0, atol=eps * float(expected.abs().max())
        )


def test_sdpa_models_run_eager_inside_and_are_restored():
    """A model set to sdpa returns no attention weights: the experiment switches to eager for its
    forward passes, reads the same patterns as an eager model, and restores sdpa afterwards."""
    model = build(tiny_config("llama"))  # the same weights as tiny_model("llama"), not the cache
    model.set_attn_implementation("sdpa")
    located = located_prompts(4)
    got = ioi_states(HeadWeights(model), located)
    assert model.config._attn_implementation == "sdpa"
    expected = ioi_states(HeadWeights(tiny_model("llama")), located)
    # same weights, same eager code and shapes: equal up to float64 summation order (PATHS_FLOAT64)
    torch.testing.assert_close(got.attn_io, expected.attn_io, **PATHS_FLOAT64)
    torch.testing.assert_close(got.z, expected.z, **PATHS_FLOAT64)
