"""E_in: the token representations a head's W_VO is read on.

The settings' `embedding` (foundation.settings.MapSettings; PROTOCOL.md) picks one of:
* `paper`: layer 0 reads raw E; layers >= 1 read MLP_0(LN2_0(E)), the first block's MLP applied to the
  normed embeddings, without the residual. (The paper's authors found this closer to what later
  layers see; Llama-3.1-70B was analysed with `raw`.)
* `raw`: E in every layer.
* `mlp0-residual`: layer 0 reads E; layers >= 1 read E + MLP_0(LN2_0(E)), the residual stream
  after the first MLP if attention 0 wrote nothing.

Layer-0 heads always read raw E: the first attention layer precedes the first MLP. "MLP_0" is what the
first MLP writes to the residual stream: in Gemma 2/3 that includes the norm Gemma applies to the MLP's
output (`post_feedforward_layernorm`); other families have no such norm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.settings import DEFAULTS, EMBEDDINGS

EMBEDDING_RULE = (
    "layer 0 reads E; layers >= 1 read MLP_0(norm(E)) (paper), E (raw) or E + MLP_0(norm(E)) "
    "(mlp0-residual); E includes the forward pass's embedding scale"
)


def embedding_kind(embedding: str, layer: int) -> str:
    """Which representation heads of `layer` read under `embedding`: `raw`, `mlp0` or
    `mlp0-residual`."""
    if embedding not in EMBEDDINGS:
        raise BadArgument(f"unknown embedding {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
    if layer == 0 or embedding == "raw":
        return "raw"
    return "mlp0" if embedding == "paper" else "mlp0-residual"


class InputEmbeddings:
    """E_in rows for a fixed set of tokens, computed once per kind and shared by all layers."""

    def __init__(
        self,
        hw: HeadWeights,
        token_ids: Tensor | None,
        embedding: str = DEFAULTS.embedding,
        chunk: int = 8192,
    ):
        embedding_kind(embedding, 1)  # validate early
        self.hw, self.embedding, self.chunk = hw, embedding, chunk
        self.token_ids = token_ids  # None: the whole vocabulary
        self._cache: dict[str, Tensor] = {}

    def raw(self) -> Tensor:
        """Rows of E (scaled as in the forward pass)."""
        if "raw" not in self._cache:
            ids = self.token_ids
            self._cache["raw"] = self.hw.embedding() if ids is None else self.hw.embed(ids)
        return self._cache["raw"]

    def kind(self, kind: str) -> Tensor:
        """Rows for one representation kind; the MLP runs in chunks to bound memory."""
        if kind == "raw":
            return self.raw()
        if "mlp0" not in self._cache:
            raw = self.raw()
            mlp0 = self.hw.mlp0_function()  # a weights-only source builds the MLP once, here
            parts = [mlp0(raw[i : i + self.chunk]) for i in range(0, raw.shape[0], self.chunk)]
            self._cache["mlp0"] = torch.cat(parts)
        if kind == "mlp0-residual" and kind not in self._cache:
            self._cache[kind] = self.raw() + self._cache["mlp0"]
        return self._cache[kind]

    def prepare(self, layers: list[int]) -> InputEmbeddings:
        """Compute now every representation heads of `layers` read. Callers do this before reading U,
        so that a weights-only source has dropped the first block's MLP by then."""
        for kind in {embedding_kind(self.embedding, layer) for layer in layers}:
            self.kind(kind)
        return self

    def for_layer(self, layer: int) -> Tensor:
        """E_in rows for heads of `layer` under this embedding."""
        return self.kind(embedding_kind(self.embedding, layer))
