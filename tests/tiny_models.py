"""Tiny randomly initialised causal LMs, one per supported architecture, built from configs only.

Every parameter is redrawn from a fixed seed: matrices at a scale that gives non-uniform attention,
1-D parameters (biases, norm weights) shifted away from their init, so that biases are non-zero and
no two norms of a block compute the same function. Models are eager-attention, eval mode, and
cached per (name, dtype): treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PhiConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 128
SEQ_LEN = 9
_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
_COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, **_IDS)
_ROPE = dict(max_position_embeddings=64, intermediate_size=80, **_COMMON)


def _configs() -> dict[str, PretrainedConfig]:
    sliding = ["sliding_attention", "full_attention"]  # window 4 < SEQ_LEN: the mask is exercised
    return {
        "gpt2": GPT2Config(
            vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, n_positions=64, n_inner=64, **_IDS
        ),
        "gpt_neox": GPTNeoXConfig(
            hidden_size=32, use_parallel_residual=True, tie_word_embeddings=False, **_ROPE
        ),
        "gpt_neox_sequential": GPTNeoXConfig(
            hidden_size=32, use_parallel_residual=False, tie_word_embeddings=False, **_ROPE
        ),
        "phi": PhiConfig(hidden_size=32, num_key_value_heads=2, **_ROPE),
        "llama": LlamaConfig(
            hidden_size=32, head_dim=8, num_key_value_heads=2, attention_bias=True, **_ROPE
        ),
        "mistral": MistralConfig(
            hidden_size=32, head_dim=8, num_key_value_heads=2, sliding_window=4, **_ROPE
        ),
        "qwen2": Qwen2Config(hidden_size=32, num_key_value_heads=2, **_ROPE),
        "qwen3": Qwen3Config(hidden_size=48, head_dim=16, num_key_value_heads=2, **_ROPE),
        "gemma2": Gemma2Config(
            hidden_size=48,
            head_dim=16,
            num_key_value_heads=1,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=sliding,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            **_ROPE,
        ),
        "gemma3": Gemma3TextConfig(
            hidden_size=48,
            head_dim=16,
            num_key_value_heads=1,
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=sliding,
            **_ROPE,
        ),
    }


ARCHS: tuple[str, ...] = tuple(_configs())
# Blocks whose MLP reads the block input (through its own norm) in parallel with attention.
PARALLEL: frozenset[str] = frozenset({"gpt_neox", "phi"})


def tiny_config(name: str) -> PretrainedConfig:
    """A fresh config of the tiny model `name` (one of ARCHS), eager attention."""
    cfg = _configs()[name]
    cfg._attn_implementation = "eager"
    return cfg


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter in place: matrices N(0, 0.25^2), 1-D tensors init + N(0, 0.3^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if p.ndim >= 2:
                p.copy_(0.25 * noise)
            else:
                p.add_(0.3 * noise)
    return model


def build(config: PretrainedConfig, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A causal LM from `config`, randomised from `seed`, in `dtype`, eval mode, no grad."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = randomize_(model.to(dtype), seed)
    return model.eval().requires_grad_(False)


@cache
def tiny_model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """The tiny model `name` (one of ARCHS); cached, so do not modify it."""
    return build(tiny_config(name), dtype, seed)


def unsupported_model():
    """A tiny model of a family with no adapter (OPT)."""
    cfg = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
        **_IDS,
    )
    return build(cfg, torch.float32)


def token_ids(batch: int = 2, seq_len: int = SEQ_LEN, seed: int = 0) -> torch.Tensor:
    """Random token ids (batch, seq_len) from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq_len), generator=gen)


@contextmanager
def softmax_in_model_dtype() -> Iterator[None]:
    """Let eager attention's softmax run in float64 for float64 models, for exact path comparisons.

    transformers' eager attention (every family here but GPT-2) calls
    `softmax(scores, dtype=torch.float32)`: for a float64 model that rounds every attention weight to
    float32. Two paths whose float64 scores differ only by summation order (1e-16; a prefix cache
    versus a full forward, different batch shapes) can then round a weight to neighbouring float32
    values, and that 2^-24 relative step reaches the outputs. Inside this context the softmax keeps
    float64, so such paths must agree to float64 rounding; outside it they agree to float32 rounding.
    """
    original = torch.nn.functional.softmax

    def softmax(x, dim=None, _stacklevel=3, dtype=None):
        if dtype is torch.float32 and x.dtype == torch.float64:
            dtype = None
        return original(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = original


# Agreement of two forward paths over the same float64 model.
# Softmax in float64 (`softmax_in_model_dtype`): only summation order differs, each step adds a few
# float64 ulps (1e-16) relative to the values' scale; 1e-9 leaves six orders of magnitude of margin.
PATHS_FLOAT64 = dict(rtol=1e-9, atol=1e-9)


def paths_float32_tol(expected: torch.Tensor) -> dict[str, float]:
    """Tolerance for two paths through transformers' own float32 softmax (see above).

    One weight may round to the neighbouring float32 value (relative 2^-24 = 6e-8); a row's weights
    sum to 1, so z moves by at most ~2^-24 * max|v| per layer, and the tiny models' two layers and
    their norms amplify that little (measured on AMD EPYC, 1 and 2 threads: at most 2.3 ulps of the output's
    scale). Bound: 256 float32 ulps of the largest |expected| entry, absolute; no relative part,
    because entries near zero carry the same absolute error.
    """
    scale = float(expected.abs().max())
    return dict(rtol=0.0, atol=256 * torch.finfo(torch.float32).eps * scale)
