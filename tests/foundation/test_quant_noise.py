"""Quantisation noise: the size of each block's noise, one fixed draw per seed, only W_V and W_O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.quant_noise import (
    BLOCK,
    block_noise,
    gguf_bits,
    ov_bits,
    with_quant_noise,
)


def test_block_noise_stays_within_half_a_step_of_each_block() -> None:
    """Each number moves by at most half its block's step, range / (2^bits - 1), and the spread is
    that of a uniform error (sd = step / sqrt(12), within sampling error of 2048 draws)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 4 * BLOCK, dtype=torch.float64)
    for bits in (4, 8):
        noise = block_noise(w, bits, gen)
        blocks = w.reshape(64, 4, BLOCK)
        step = (blocks.amax(-1) - blocks.amin(-1)) / (2**bits - 1)
        scaled = noise.reshape(64, 4, BLOCK) / step[..., None]
        assert scaled.abs().max() <= 0.5 + 1e-6
        # a uniform(-1/2, 1/2) has sd 0.2887; 8192 samples give a standard error near 0.002
        assert abs(float(scaled.std()) - 12**-0.5) < 0.01


def test_a_tensor_not_in_whole_blocks_is_a_clear_error() -> None:
    with pytest.raises(BadArgument, match="blocks of"):
        block_noise(torch.zeros(2, BLOCK + 1), 4, torch.Generator())


def test_noisy_weights_change_only_w_v_and_w_o_and_repeat_per_seed() -> None:
    hw = HeadWeights(tiny_model("llama"))
    bits = {f"{hw.value_path(0)}.weight": 4, f"{hw.out_proj_path(1)}.weight": 4}
    a, b, c = (with_quant_noise(hw, bits, seed) for seed in (0, 0, 1))
    assert torch.equal(a.W_V(0), b.W_V(0)) and not torch.equal(a.W_V(0), c.W_V(0))
    assert not torch.equal(a.W_V(0), hw.W_V(0)) and torch.equal(a.W_V(1), hw.W_V(1))
    assert not torch.equal(a.W_O(1), hw.W_O(1)) and torch.equal(a.W_O(0), hw.W_O(0))
    assert torch.equal(a.unembedding(), hw.unembedding())
    assert a.source.model is None  # no forward passes on weights that are not the model's


def test_fused_qkv_families_are_refused() -> None:
    with pytest.raises(BadArgument, match="fuses them"):
        with_quant_noise(HeadWeights(tiny_model("gpt2")), {}, 0)


def test_bits_come_from_the_gguf_tensor_types(tmp_path: Path) -> None:
    """A GGUF file written here with a Q4_0 value weight, a Q8_0 output weight and an F32 norm:
    the norm gets no noise, the others their type's bits, keyed by the transformers path."""
    import gguf
    from gguf.quants import quantize

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    T = gguf.GGMLQuantizationType
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    for name, qtype in (("blk.0.attn_v.weight", T.Q4_0), ("blk.0.attn_output.weight", T.Q8_0)):
        writer.add_tensor(
            name, quantize(w, qtype), raw_shape=quantize(w, qtype).shape, raw_dtype=qtype
        )
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_bits(path) == {"blk.0.attn_v.weight": 4, "blk.0.attn_output.weight": 8}
    hw = HeadWeights(tiny_model("llama"))
    bits = ov_bits(hw, path)
    assert bits == {f"{hw.value_path(0)}.weight": 4, f"{hw.out_proj_path(0)}.weight": 8}
    with pytest.raises(BadArgument, match="GGUF"):
        ov_bits(hw, tmp_path / "model.safetensors")
