"""Weights only: the static analyses read a checkpoint tensor by tensor, never building the model.

The relation map, saliency, salient mappings, globality and the random baseline need E, U, the first
block's MLP and its norms (for E_in), and per layer W_V, b_V, W_O, b_O; with `norms="fold"`
(adapters.NormFolded) also the weights (and LayerNorm biases) of the norms on a head's path: each
layer's input norm, Gemma's post-attention norm and the final norm, one d-vector each, read once.
`CheckpointSource` is a `TensorSource` (adapters.py) that reads exactly these from disk when
HeadWeights asks for them:

* safetensors checkpoints, one file or sharded (`model.safetensors.index.json`), through
  `safetensors.safe_open`, one tensor (or a block of rows) per read;
* GGUF files: the tensor table from `gguf.GGUFReader`, the bytes of one tensor (or block of rows)
  read from the file and dequantised with `gguf.quants.dequantize`, then given transformers' own
  per-architecture fix-ups (its GGUF `TensorProcessor`: Gemma's norms stored as 1 + w, so every
  norm weight comes back as the w transformers' modules hold; GPT-2's transposed matrices; Llama's
  q/k permutation does not touch V and O).

No knowledge of where a family keeps its weights lives here: HeadWeights names tensors by the
Family's module paths (`model.layers.3.self_attn.v_proj` + `.weight`), which are the model's
parameter names. Those are turned into checkpoint names the way transformers does when it loads the
same checkpoint: its key renamings and base-model prefix (safetensors), its GGUF name map
(`blk.3.attn_v.weight`), and its weight tying, all read off the model built on the meta device
(no memory). The first block's MLP and norms are those modules of the meta model, given real
storage and only their own tensors, so E_in is computed by transformers' code as in the full model.

Numbers: every tensor is read in its stored dtype and converted to the compute dtype (float32) as
it is read; bf16 and fp16 convert to float32 exactly, and GGUF tensors dequantise to the float32
values transformers gives them, so every weight equals the full model's (loaded in float32)
bit for bit, and so do the scores computed from them.

Memory: one layer's W_V and W_O at a time, and E_in (the rows the analysis needs) in float32. U is
the largest tensor kept; with `stored=True` (the kernels' callers) it stays in a bf16/fp16
checkpoint's dtype and the kernels upcast it one column block at a time (kernels.py; its tests
check a bf16 U gives the float32 U's counts). Large tensors are read in blocks of rows,
so no full-size temporary copy is made. The first block's MLP is built for E_in and dropped after.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mapslib.errors import UnknownModel, UnsupportedArchitecture
from mapslib.foundation.adapters import TensorSource

# Large tensors are read, and converted, this many bytes of rows at a time.
READ_BLOCK_BYTES = 64 << 20

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# --- safetensors ---------------------------------------------------------------------------------


class SafetensorsStore:
    """The tensors of a safetensors checkpoint (one file, or shards listed in the index)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            raise UnknownModel(
                f"{self.folder} has no safetensors weights (model.safetensors or an index of shards); "
                "weights-only reading needs them (convert .bin checkpoints with save_pretrained)"
            )
        self.entries: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # name -> file, dtype, shape
        for name in files:
            for key, (dtype, shape) in _safetensors_header(self.folder / name).items():
                self.entries[key] = (name, dtype, shape)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][2]

    def dtype(self, key: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES[self.entries[key][1]]

    def rows_readable(self, key: str) -> bool:
        return True

    def read(self, key: str) -> Tensor:
        """The whole tensor in its stored dtype, on the CPU: memory-mapped, its pages read when first
        touched and released with the tensor (callers convert it and drop it)."""
        from safetensors import safe_open

        with safe_open(self.folder / self.entries[key][0], framework="pt") as f:
            return f.get_tensor(key)

    def read_rows(self, key: str, r0: int, r1: int) -> Tensor:
        """Rows r0:r1 (first dimension) in the stored dtype; only these bytes are read."""
        from safetensors import safe_open

        with safe_open(self.folder / self.entries[key][0], framework="pt") as f:
            return f.get_slice(key)[r0:r1]

    def name_map(self, meta: nn.Module, config: Any) -> dict[str, str]:
        """Model parameter name -> checkpoint key, by transformers' own loading rules (key renamings
        such as GPT-NeoX's `embed_out` -> `lm_head`, and adding or removing the base-model prefix)."""
        state = meta.state_dict()
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import (
                WeightConverter,
                WeightRenaming,
                rename_source_key,
            )
        except ImportError:  # another transformers: exact names and the base-model prefix only
            return _prefix_map(self.keys(), state, meta.base_model_prefix)
        mapping = get_model_conversion_mapping(meta)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        prefix = meta.base_model_prefix
        out: dict[str, str] = {}
        for key in self.keys():
            renamed, converter = rename_source_key(key, renamings, converters, prefix, state)
            if renamed not in state and key in state:
                renamed, converter = rename_source_key(key, [], [], prefix, state)
            if renamed in state and converter is None:  # merged tensors (MoE experts) are not read
                out.setdefault(renamed, key)
        return out


def _safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's header, without touching its data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}


def _prefix_map(keys: Iterable[str], state: dict[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in keys:
        for name in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")):
            if name in state:
                out.setdefault(name, key)
                break
    return out


# --- GGUF ----------------------------------------------------------------------------------------


class _GGUFTensor(NamedTuple):
    """Where a GGUF tensor lies: its quantisation type, logical shape, byte offset in the file, and
    the shape and dtype of its stored items (blocks of bytes for quantised types)."""

    qtype: Any
    shape: tuple[int, ...]
    offset: int
    raw_shape: tuple[int, ...]
    raw_dtype: np.dtype


class GGUFStore:
    """The tensors of a GGUF file: dequantised to float32 one tensor (or block of rows) at a time."""

    EMBEDDINGS = ("token_embd.weight", "output.weight")  # no TensorProcessor changes these

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        reader = GGUFReader(self.path)  # parses the header; the data stay unread
        if reader.byte_order != "I":
            raise UnknownModel(f"{self.path}: big-endian GGUF files are not supported")
        # Keep where each tensor lies, and drop the reader: its parsed metadata (the vocabulary as
        # numpy views) takes about 3 KB per token.
        self.tensors = {
            t.name: _GGUFTensor(
                t.tensor_type,
                tuple(int(x) for x in reversed(t.shape.tolist())),
                t.data_offset,
                t.data.shape,
                t.data.dtype,
            )
            for t in reader.tensors
        }
        field = reader.fields["general.architecture"]
        self.arch = bytes(field.parts[field.data[0]]).decode()
        self.processor: Any = None

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape as stored (reversed ggml dimensions): the model's, except for tensors GPT-2's
        processor transposes (HeadWeights asks only the embedding's)."""
        return self.tensors[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return torch.float32  # what dequantisation gives, whatever the quantisation type

    def rows_readable(self, key: str) -> bool:
        """Rows can be read alone when no processor touches the tensor (rows hold whole blocks)."""
        from transformers.modeling_gguf_pytorch_utils import TensorProcessor

        return key in self.EMBEDDINGS or type(self.processor) is TensorProcessor

    def _raw(self, key: str, r0: int | None = None, r1: int | None = None) -> np.ndarray:
        """The stored bytes of rows r0:r1, read from the file (not from the memory map, so the
        process does not keep the pages)."""
        t = self.tensors[key]
        shape, dtype = t.raw_shape, t.raw_dtype
        r0, r1 = (0, shape[0]) if r0 is None else (r0, r1)
        row_items = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        with open(self.path, "rb") as f:
            f.seek(t.offset + r0 * row_items * dtype.itemsize)
            raw = np.fromfile(f, dtype=dtype, count=(r1 - r0) * row_items)
        return raw.reshape((r1 - r0, *shape[1:]))

    def read(self, key: str) -> Tensor:
        """The whole tensor, dequantised to float32 and given transformers' fix-ups, on the CPU."""
        from gguf import dequantize

        weights = dequantize(self._raw(key), self.tensors[key].qtype)
        parsed: dict[str, dict[str, Any]] = {"tensors": {}}
        result = self.processor.process(
            weights=weights, name=key, tensor_key_mapping={}, parsed_parameters=parsed
        )
        if result.name is None:  # GPT-2's processor files `output.weight` itself
            (out,) = parsed["tensors"].values()
            return out.contiguous()
        return torch.from_numpy(np.ascontiguousarray(result.weights))

    def read_rows(self, key: str, r0: int, r1: int) -> Tensor:
        from gguf import dequantize

        return torch.from_numpy(dequantize(self._raw(key, r0, r1), self.tensors[key].qtype))

    def name_map(self, meta: nn.Module, config: Any) -> dict[str, str]:
        """Model parameter name -> GGUF tensor name, by gguf's name map as transformers uses it
        (`get_gguf_hf_weights_map`: the full name, else the name inside the base model), built once
        rather than once per submodule."""
        from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.processor = TENSOR_PROCESSORS.get(self.arch, TensorProcessor)(config=config.to_dict())
        arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == self.arch), None)
        if arch is None:
            raise UnsupportedArchitecture(f"{self.path}: unknown GGUF architecture {self.arch!r}")
        names = get_tensor_name_map(arch, config.num_hidden_layers)
        prefix = f"{meta.base_model_prefix}."
        out: dict[str, str] = {}
        for hf in meta.state_dict():
            module, _, suffix = self.processor.preprocess_name(hf).rpartition(".")
            for candidate in (module, module.removeprefix(prefix)):
                name = names.get_name(candidate)
                if name is not None and f"{name}.{suffix}" in self.tensors:
                    out[hf] = f"{name}.{suffix}"
                    break
        return out


# --- the source ----------------------------------------------------------------------------------


def meta_model(config: Any, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM of `config` on the meta device: module tree, names and tying, no storage."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype)


class CheckpointSource(TensorSource):
    """A checkpoint on disk as a TensorSource: tensors read when asked, in the compute dtype."""

    def __init__(
        self,
        store: SafetensorsStore | GGUFStore,
        config: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.store, self.config = store, config
        self.device, self.dtype = torch.device(device), dtype
        self.meta = meta_model(config, dtype)
        self.names = store.name_map(self.meta, config)
        self.params = dict(self.meta.named_parameters(remove_duplicate=False))
        tied: dict[int, list[str]] = {}
        for name, p in self.params.items():
            tied.setdefault(id(p), []).append(name)
        self.tied = {name: group for group in tied.values() for name in group}
        self._kept: dict[str, Tensor] = {}

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        config: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
    ) -> CheckpointSource:
        """A safetensors folder or a .gguf file; `config` defaults to the one it holds."""
        from transformers import AutoConfig

        path = Path(path)
        if path.suffix == ".gguf":
            config = config or AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            return cls(GGUFStore(path), config, device=device, dtype=dtype)
        config = config or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(SafetensorsStore(path), config, device=device, dtype=dtype)

    @property
    def location(self) -> str:
        return str(getattr(self.store, "folder", None) or self.store.path)

    # -- names --------------------------------------------------------------------------------------
    def key(self, path: str) -> str | None:
        """The checkpoint's name for the model's tensor `path`; None if the model has no such tensor
        (a bias the architecture lacks). A tied tensor is found under any of its names."""
        for name in self.tied.get(path, [path]):
            if name in self.names:
                return self.names[name]
        if path not in self.params:
            return None
        sample = ", ".join(self.store.keys()[:4])
        raise UnknownModel(
            f"the checkpoint {self.location} has no tensor for {path} (it holds e.g. {sample}); "
            "is it a complete checkpoint of this architecture?"
        )

    def _narrow(self, key: str) -> bool:
        """Stored in a narrower float type than the compute dtype (bf16 or fp16 for float32)."""
        stored = self.store.dtype(key)
        return stored.is_floating_point and stored.itemsize < self.dtype.itemsize

    # -- reading ------------------------------------------------------------------------------------
    def _block_rows(self, key: str) -> int:
        shape = self.store.shape(key)
        return max(1, READ_BLOCK_BYTES // max(1, int(np.prod(shape[1:])) * 4))

    def _read(self, key: str, dtype: torch.dtype) -> Tensor:
        """The tensor in `dtype` on the device; large ones in blocks of rows, converted block by block."""
        shape = self.store.shape(key)
        big = len(shape) == 2 and int(np.prod(shape)) * 4 > READ_BLOCK_BYTES
        if not (big and self.store.rows_readable(key)):
            return self.store.read(key).to(device=self.device, dtype=dtype)
        out = torch.empty(shape, dtype=dtype, device=self.device)
        step = self._block_rows(key)
        for r0 in range(0, shape[0], step):
            r1 = min(r0 + step, shape[0])
            out[r0:r1].copy_(self.store.read_rows(key, r0, r1))
        return out

    def get(self, path: str, *, stored: bool = False, keep: bool = False) -> Tensor | None:
        key = self.key(path)
        if key is None:
            return None
        t = self._kept.get(key)
        if t is None:
            narrow = stored and self._narrow(key)
            t = self._read(key, self.store.dtype(key) if narrow else self.dtype)
            if keep:
                self._kept[key] = t
        return t if stored or t.dtype == self.dtype else t.to(self.dtype)

    def rows(self, path: str, ids: Tensor) -> Tensor:
        key = self.key(path)
        kept = self._kept.get(key)
        if kept is not None:
            return kept[ids.to(kept.device)].to(self.dtype)
        if not self.store.rows_readable(key):
            return self.get(path)[ids.to(self.device)]
        shape = self.store.shape(key)
        ids = ids.cpu()
        out = torch.empty(len(ids), *shape[1:], dtype=self.dtype, device=self.device)
        step = self._block_rows(key)
        for r0 in range(0, shape[0], step):
            r1 = min(r0 + step, shape[0])
            sel = ((ids >= r0) & (ids < r1)).nonzero().squeeze(1)
            if sel.numel():
                block = self.store.read_rows(key, r0, r1)[ids[sel] - r0]
                out[sel.to(self.device)] = block.to(device=self.device, dtype=self.dtype)
        return out

    def shape(self, path: str) -> tuple[int, ...]:
        return self.store.shape(self.key(path))

    def module(self, path: str) -> nn.Module:
        """The meta model's module at `path`, given storage on the device and its tensors read."""
        from mapslib.foundation.adapters import _get

        module = copy.deepcopy(_get(self.meta, path)).to_empty(device=self.device).to(self.dtype)
        buffers = [name for name, _ in module.named_buffers()]
        if buffers:
            raise UnsupportedArchitecture(
                f"{path} has buffers ({', '.join(buffers)}) that weights-only reading cannot restore; "
                "load the whole model (without --weights-only)"
            )
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.get(f"{path}.{name}"))
        return module.eval().requires_grad_(False)

    def stored_dtype(self, path: str) -> torch.dtype:
        """The dtype the checkpoint holds the tensor in (float32 for GGUF: dequantised)."""
        return self.store.dtype(self.key(path))

    def describe(self, unembed_path: str) -> dict[str, str]:
        """How the weights are read, for the sidecar: the checkpoint's format and dtype (U's), the
        compute dtype, and the dtype U is held in for the kernels."""
        stored = self.stored_dtype(unembed_path)
        narrow = self._narrow(self.key(unembed_path))
        return {
            "kind": "weights-only (checkpoint read tensor by tensor)",
            "format": "gguf" if isinstance(self.store, GGUFStore) else "safetensors",
            "checkpoint_dtype": _name(stored) if not isinstance(self.store, GGUFStore) else "gguf",
            "compute_dtype": _name(self.dtype),
            "unembedding_dtype": _name(stored if narrow else self.dtype),
        }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_checkpoint(
    folder: str | Path,
    tensors: Iterable[tuple[str, Tensor]],
    config: Any = None,
    *,
    max_shard_bytes: int = 2 << 30,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `tensors` (name, tensor), converted to `dtype`, as safetensors shards of at most
    `max_shard_bytes` with `model.safetensors.index.json`, and `config` as config.json.

    Tensors are consumed one at a time: at most one shard is held in memory, so a checkpoint larger
    than memory can be written from a generator. Used for tests and benchmarks."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    weight_bytes = 0
    shard: dict[str, Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            save_file(
                shard, str(folder / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"}
            )
            shards.append(list(shard))
            shard, size = {}, 0

    for name, t in tensors:
        t = (t.to(dtype) if dtype is not None else t).detach().cpu().contiguous()
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = t
        size += nbytes
        weight_bytes += nbytes
    flush()
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(folder / f"shard-{i:05d}.tmp", folder / final)
        weight_map |= dict.fromkeys(names, final)
    index = {"metadata": {"total_size": weight_bytes}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if config is not None:
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)
        if dtype is not None:
            config_dict["dtype"] = str(dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(config_dict, indent=2))
    return folder


def model_tensors(model: nn.Module) -> Iterable[tuple[str, Tensor]]:
    """A model's state dict without the second name of tied tensors (as save_pretrained writes it)."""
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        yield name, t
