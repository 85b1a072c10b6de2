"""Quantisation noise on W_V and W_O: how far a map moves when the 4-bit rounding is drawn again.

Every model in this book is a GGUF file whose weights were rounded to a few bits per number (Q4_K,
Q5_0, Q6_K, Q8_0, ...), then dequantised here. The rounding error is gone from view: the original
weights are not in the file. What can be measured is how much the map depends on it: add to the
dequantised W_V and W_O an error of the size the quantiser leaves, draw it afresh a few times, and
map each draw. The spread of a score over draws is its error bar from quantisation.

The error model, per GGUF tensor type: the quantiser splits each row into blocks of 32 numbers
(the input dimension, contiguous in the file), keeps per block a minimum and a step, and rounds each
number to one of 2^bits levels. Rounding to a grid of step s leaves an error spread evenly over
(-s/2, s/2); with the block's range r = max - min, s = r / (2^bits - 1). The noise added here is
that: uniform on (-s/2, s/2), s from each block's own range. Symmetric schemes (Q8_0, Q6_K) and
the K-quants' nested scales give steps within a small factor of this; bits are the type's nominal
ones (Q4_K: 4). Tensors kept in 16 or 32 bits get no noise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights, TensorSource

BLOCK = 32  # numbers per quantisation block (ggml's QK4_0 ... QK8_0; the K-quants' sub-blocks)
BITS = {"Q2_K": 2, "Q3_K": 3, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5}
BITS |= {"Q6_K": 6, "Q8_0": 8, "Q8_1": 8, "Q8_K": 8}  # other types (F16, BF16, F32): no noise
NOISE_RULE = (
    "uniform on (-s/2, s/2) per number, s = (block max - block min) / (2^bits - 1) over blocks of "
    f"{BLOCK} along the input dimension, bits from the tensor's GGUF type; W_V and W_O only"
)


def gguf_bits(path: str | Path) -> dict[str, int]:
    """Bits per number of each quantised tensor of a GGUF file, by its GGUF name."""
    from gguf import GGUFReader

    reader = GGUFReader(Path(path))
    return {t.name: BITS[t.tensor_type.name] for t in reader.tensors if t.tensor_type.name in BITS}


def ov_bits(hw: HeadWeights, path: str | Path) -> dict[str, int]:
    """Bits of every layer's value and output weights, keyed by the transformers path HeadWeights
    reads them from (GGUF names `blk.N.attn_v.weight`, `blk.N.attn_output.weight`)."""
    if Path(path).suffix != ".gguf":
        raise BadArgument(
            f"quantisation noise needs the model's GGUF file (its tensor types); {path} is not one"
        )
    bits = gguf_bits(path)
    out = {}
    for layer in range(hw.n_layers):
        for gguf_name, path_of in (("attn_v", hw.value_path), ("attn_output", hw.out_proj_path)):
            b = bits.get(f"blk.{layer}.{gguf_name}.weight")
            if b is not None:
                out[f"{path_of(layer)}.weight"] = b
    return out


def block_noise(w: Tensor, bits: int, generator: torch.Generator) -> Tensor:
    """Rounding noise for `w` (out, in): uniform on +-half the step of each block of BLOCK numbers
    along `in`, the step from the block's range and `bits`."""
    rows, cols = w.shape
    if cols % BLOCK:
        raise BadArgument(f"a weight with {cols} inputs does not split into blocks of {BLOCK}")
    blocks = w.detach().reshape(rows, cols // BLOCK, BLOCK).float()
    step = (blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / (2**bits - 1)
    u = torch.rand(blocks.shape, generator=generator, dtype=torch.float32) - 0.5
    return (u * step).reshape(rows, cols).to(w.dtype)


class NoisySource(TensorSource):
    """A tensor source whose W_V and W_O come back with one draw of quantisation noise (the same
    draw every time a tensor is asked for: the generator is seeded by `seed` and the tensor's path)."""

    def __init__(self, inner: TensorSource, bits: dict[str, int], seed: int):
        self.inner, self.bits, self.seed = inner, bits, seed
        self.config = inner.config
        self._noisy: dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.inner.dtype

    @property
    def model(self) -> nn.Module | None:
        return None  # the noisy weights are not the live model's: no hooks, no forward passes

    def get(self, path: str, *, stored: bool = False, keep: bool = False) -> Tensor | None:
        if path not in self.bits:
            return self.inner.get(path, stored=stored, keep=keep)
        if path not in self._noisy:
            w = self.inner.get(path)
            digest = hashlib.sha256(f"{self.seed}:{path}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._noisy[path] = w + block_noise(w, self.bits[path], gen).to(w.device)
        return self._noisy[path]

    def rows(self, path: str, ids: Tensor) -> Tensor:
        return self.inner.rows(path, ids)

    def shape(self, path: str) -> tuple[int, ...]:
        return self.inner.shape(path)

    def module(self, path: str) -> nn.Module:
        return self.inner.module(path)

    def scalar(self, path: str) -> float | None:
        return self.inner.scalar(path)


def with_quant_noise(hw: HeadWeights, bits: dict[str, int], seed: int) -> HeadWeights:
    """`hw` with one seeded draw of quantisation noise on every W_V and W_O named in `bits`."""
    if hw.family.qkv in ("gpt2", "neox"):
        raise BadArgument(
            "quantisation noise is written for separate q/k/v projections (Llama, Qwen, Gemma); "
            f"{hw.config.model_type} fuses them"
        )
    return HeadWeights(NoisySource(hw.source, bits, seed))


def noise_record(bits: dict[str, int]) -> dict[str, Any]:
    """What the noise was, for a sidecar: the rule and the count of tensors per bit width."""
    counts: dict[str, int] = {}
    for b in bits.values():
        counts[f"{b} bits"] = counts.get(f"{b} bits", 0) + 1
    return {"rule": NOISE_RULE, "tensors": counts}
