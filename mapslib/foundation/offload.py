"""The behaviour experiments on a model larger than memory, through accelerate's offloading.

`correlate`, `ablate` and `known-heads` run the model forward, so they need all of it, not only the
weights MAPS reads. accelerate can place its layers on the GPU, in CPU memory and on disk
(`device_map="auto"`, `max_memory`, `offload_folder`) and bring each offloaded layer's weights in for
its forward call. The offloaded modules then hold meta tensors where their weights were, so MAPS's
own reads (W_V, W_O, U, the norms) come from the checkpoint instead (`CheckpointSource`), one tensor
at a time: the forward pass and the hooks use the live model, the arithmetic uses the same weights
read from disk. Safetensors checkpoints only (a folder or a hub id): accelerate offloads what
transformers loads, and a GGUF file is dequantised whole first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import TensorSource, _get

SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$", re.IGNORECASE)


class OffloadedSource(TensorSource):
    """Modules from the offloaded model (hooks, forward passes); tensors from its checkpoint."""

    def __init__(self, model: nn.Module, tensors: TensorSource):
        self._model, self.tensors = model, tensors
        self.config = model.config
        self.device, self.dtype = tensors.device, tensors.dtype

    @property
    def model(self) -> nn.Module:
        return self._model

    def get(self, path: str, *, stored: bool = False, keep: bool = False) -> Tensor | None:
        return self.tensors.get(path, stored=stored, keep=keep)

    def rows(self, path: str, ids: Tensor) -> Tensor:
        return self.tensors.rows(path, ids)

    def shape(self, path: str) -> tuple[int, ...]:
        return self.tensors.shape(path)

    def module(self, path: str) -> nn.Module:
        return _get(self._model, path)

    def scalar(self, path: str) -> float | None:
        return self.tensors.scalar(path)


def parse_max_memory(spec: str) -> dict[int | str, str]:
    """`cpu=2GiB` or `cuda=20GiB,cpu=60GiB` as accelerate's max_memory (cuda is GPU 0); what the
    listed devices cannot hold goes to the offload folder on disk."""
    out: dict[int | str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        device, _, size = part.partition("=")
        if device not in ("cpu", "cuda") or not SIZE.match(size.strip()):
            raise BadArgument(
                f"--max-memory {spec!r}: expected DEVICE=SIZE pairs such as cpu=2GiB or "
                "cuda=20GiB,cpu=60GiB (devices: cpu, cuda; sizes in B, MB, GB, MiB, GiB, ...)"
            )
        out[0 if device == "cuda" else "cpu"] = size.strip()
    if not out:
        raise BadArgument("--max-memory is empty; give e.g. cpu=2GiB")
    if 0 in out and not torch.cuda.is_available():
        raise BadArgument("--max-memory names cuda, but no CUDA device is available; use cpu=SIZE")
    return out


def offload_model(
    folder: str, *, max_memory: dict[int | str, str], offload_folder: str | Path, **kwargs: Any
) -> nn.Module:
    """The model of a safetensors `folder` (from_pretrained's `kwargs`), its layers placed by
    accelerate within `max_memory` and the rest written to `offload_folder`."""
    from transformers import AutoModelForCausalLM

    Path(offload_folder).mkdir(parents=True, exist_ok=True)
    return AutoModelForCausalLM.from_pretrained(
        folder,
        device_map="auto",
        max_memory=max_memory,
        offload_folder=str(offload_folder),
        **kwargs,
    )


def placement(model: nn.Module) -> dict[str, int]:
    """How many of the model's top-level placements went to each device (for the sidecar)."""
    counts: dict[str, int] = {}
    for where in getattr(model, "hf_device_map", {}).values():
        counts[str(where)] = counts.get(str(where), 0) + 1
    return counts
