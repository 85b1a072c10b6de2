"""Loading a causal LM for MAPS: an alias, a .gguf file, a local folder, or a hub id.

GGUF files are dequantised to float32 by transformers, which is slow (about 16 s for SmolLM2, 45 s for
Gemma-3). The dequantised weights are cached once per file hash under `$MAPSLIB_CACHE` (default
`~/.cache/mapslib`), so later loads take well under a second and give bit-identical weights.

`load_weights` is the weights-only alternative for the static analyses: the tokenizer and config,
and a HeadWeights that reads each tensor from the checkpoint (safetensors or GGUF) when it is needed
(`foundation.checkpoint`), so a model far larger than memory can be mapped. Its weights are the
ones `load_model` gives, bit for bit, and so are the scores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from mapslib.errors import BadArgument, UnknownModel, UnsupportedArchitecture
from mapslib.foundation.adapters import FAMILIES, HeadWeights, TensorSource
from mapslib.foundation.io import cache_root, sha256_file
from mapslib.foundation.packaged import ALIASES, DEFAULT_MODEL

CACHE_FORMAT = 1  # bump when the layout of the dequantised cache changes


SUPPORTED_MODEL_TYPES = tuple(FAMILIES)  # the adapters module holds where each keeps its weights


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from (recorded beside every result)."""

    model: torch.nn.Module
    tokenizer: Any
    spec: str
    source: str  # "alias", "gguf", "local" or "hub"
    location: str
    revision: str  # file SHA-256, folder fingerprint, or hub commit
    quantization: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    weights: TensorSource | None = None  # where MAPS reads tensors when not the model (offloaded)

    @cached_property
    def hw(self) -> HeadWeights:
        """The model's weights in MAPS's layout (views, no copy; read from the checkpoint when the
        model is offloaded)."""
        return HeadWeights(self.weights or self.model)

    @property
    def name(self) -> str:
        """A short name for titles and folder names."""
        return model_slug(self.spec)

    def info(self) -> dict[str, Any]:
        """What identifies the weights, for the JSON beside a result."""
        return provenance(self, self.model.config.model_type)


def provenance(loaded: LoadedModel | LoadedWeights, model_type: str) -> dict[str, Any]:
    """Spec, source, location, revision, quantisation and extras of a loaded model or its weights."""
    return {
        "spec": loaded.spec,
        "source": loaded.source,
        "location": loaded.location,
        "revision": loaded.revision,
        "quantization": loaded.quantization,
        "model_type": model_type,
        **loaded.extra,
    }


@dataclass
class LoadedWeights:
    """A model's weights read tensor by tensor from its checkpoint, its tokenizer, and where they
    came from: what the static analyses need, without the model (`load_weights`).

    It stands in for LoadedModel in the static entry points (run_relation_map, run_salient,
    run_output_space, run_random_baseline). `info()` gives what LoadedModel's does, plus `loader`,
    which caches ignore (the weights, hence the scores, are the same)."""

    hw: HeadWeights
    tokenizer: Any
    spec: str
    source: str  # "alias", "gguf", "local" or "hub"
    location: str
    revision: str
    quantization: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.hw.model  # raises: there is no model, only its weights

    @property
    def name(self) -> str:
        return model_slug(self.spec)

    def info(self) -> dict[str, Any]:
        """LoadedModel.info, plus how the weights were read (`loader`, ignored by caches)."""
        loader = self.hw.source.describe(self.hw.unembed_path)
        return provenance(self, self.hw.config.model_type) | {"loader": loader}


def model_slug(spec: str) -> str:
    """A folder-safe name for a model spec: aliases stay, paths and hub ids are flattened."""
    if spec in ALIASES:
        return spec
    base = Path(spec).name if (spec.endswith(".gguf") or os.path.isdir(spec)) else spec
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base.removesuffix(".gguf")).strip("-").lower()


def resolve_device(device: str) -> torch.device:
    """Turn `auto|cpu|cuda` into a torch device, with a clear error if CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadArgument(
            "--device cuda was requested but no CUDA device is available; use --device cpu or auto"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BadArgument(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    use_cache: bool = True,
    max_memory: dict[int | str, str] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in float32, in eval mode, on `device`; with `max_memory`,
    placed by accelerate within it and the rest offloaded to `offload_folder` (foundation.offload)."""
    source, location = _resolve(spec)
    if max_memory is not None:
        return _load_offloaded(
            spec,
            source,
            location,
            max_memory,
            offload_folder,
            trust_remote_code,
            attn_implementation,
        )
    if source in ("alias", "gguf"):
        known = ALIASES[spec].sha256 if source == "alias" else None
        loaded = _load_gguf(spec, source, Path(location), attn_implementation, use_cache, known)
    else:
        loaded = _load_pretrained(spec, source, location, trust_remote_code, attn_implementation)
    check_supported(loaded.model)
    loaded.model.eval().requires_grad_(False)
    loaded.model.to(resolve_device(device))
    return loaded


def load_weights(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> LoadedWeights:
    """The weights the static analyses read, tensor by tensor from the checkpoint, and the tokenizer.

    `spec` as for load_model: an alias or .gguf file (tensors dequantised one at a time from the
    GGUF file; no float32 copy of the model is written), a folder of safetensors (one file or
    shards), or a hub id (its safetensors and tokenizer are fetched, where the hub is reachable).
    Tensors are computed in `dtype` (float32, as load_model) on `device`."""
    from transformers import AutoConfig, AutoTokenizer

    from mapslib.foundation.checkpoint import CheckpointSource

    source, location = _resolve(spec)
    dev = resolve_device(device)
    quantization = "none"
    if source in ("alias", "gguf"):
        path = Path(location)
        digest = (ALIASES[spec].sha256 if source == "alias" else None) or sha256_file(path)
        folder = _gguf_metadata(path, digest)
        config = AutoConfig.from_pretrained(folder)
        _check_model_type(config.model_type)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tensors = CheckpointSource.open(path, config=config, device=dev, dtype=dtype)
        revision, quantization = f"sha256:{digest}", _quantization_from_name(path)
    else:
        folder = location if source == "local" else _hub_snapshot(spec, location)
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UnknownModel(
                f"could not load model {spec!r}: {str(e).splitlines()[0]}. {_known_models()}"
            ) from None
        _check_model_type(config.model_type)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        tensors = CheckpointSource.open(folder, config=config, device=dev, dtype=dtype)
        revision = getattr(config, "_commit_hash", None) or (
            _folder_fingerprint(Path(folder)) if source == "local" else "unknown"
        )
    hw = HeadWeights(tensors)
    return LoadedWeights(hw, tokenizer, spec, source, location, revision, quantization)


def _check_model_type(model_type: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _gguf_metadata(path: Path, digest: str) -> Path:
    """A folder with the GGUF file's config and tokenizer: the float32 cache's when load_model made
    one (the same files it loads), else a small one made once from the file, beside it."""
    full = cache_root() / "models" / f"{digest[:24]}-v{CACHE_FORMAT}"
    if (full / "config.json").is_file() and (full / "tokenizer_config.json").is_file():
        return full
    meta = cache_root() / "gguf-meta" / f"{digest[:24]}-v{CACHE_FORMAT}"
    if (meta / "config.json").is_file():
        return meta
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    _check_model_type(config.model_type)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def write(tmp: Path) -> None:
        _save_config(config, tmp)
        tokenizer.save_pretrained(tmp)

    _write_folder(meta, write)
    return meta


def _hub_snapshot(spec: str, repo_id: str) -> str:
    """The local folder of a hub model's config, tokenizer and safetensors (fetched if needed)."""
    from huggingface_hub import snapshot_download

    offline = not _hub_reachable()
    if offline and not _in_hub_cache(repo_id):
        raise UnknownModel(
            f"model {spec!r} is not in the local hub cache and the hub (huggingface.co) is not reachable. "
            + _known_models()
        )
    patterns = ["*.json", "*.model", "*.txt", "*.jinja"]  # config and tokenizer
    folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    index = folder / "model.safetensors.index.json"  # then the shards it lists, nothing else
    shards = json.loads(index.read_text())["weight_map"].values() if index.is_file() else []
    files = sorted(set(shards)) or ["model.safetensors"]
    snapshot_download(repo_id, allow_patterns=files, local_files_only=offline)
    return str(folder)


def check_supported(model: torch.nn.Module) -> None:
    """Raise a clear error for an architecture that has no adapter."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} ({type(model).__name__}) is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. Add an entry to mapslib/foundation/adapters.py FAMILIES to support it."
        )


def _resolve(spec: str) -> tuple[str, str]:
    """Classify a model spec as alias, gguf file, local folder or hub id."""
    if spec in ALIASES:
        return "alias", str(ALIASES[spec].path())
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise UnknownModel(f"GGUF file not found: {spec}")
        return "gguf", os.path.abspath(spec)
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise UnknownModel(
                f"folder {spec} has no config.json; point --model at a transformers model folder"
            )
        return "local", os.path.abspath(spec)
    if os.path.exists(spec) or spec.startswith((".", "/")):
        raise UnknownModel(f"{spec!r} is neither a .gguf file nor a model folder")
    if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?", spec):
        raise UnknownModel(f"{spec!r} is not a valid model name. {_known_models()}")
    return "hub", spec


def _known_models() -> str:
    return (
        f"Known aliases: {', '.join(ALIASES)}; or pass a path to a .gguf file, a local transformers folder, "
        "or a hub id (needs the hub)."
    )


def _quantization_from_name(path: Path) -> str:
    """Read the quantisation type from a GGUF file name (e.g. Q4_1, Q4_K_M)."""
    m = re.search(r"(?i)(?:^|[._-])(q\d(?:_[0-9a-z]+)*|f16|f32|bf16)(?=\.gguf$)", path.name)
    kind = m.group(1).upper() if m else "unknown"
    return f"GGUF {kind}, dequantised to float32 at load"


def _load_gguf(
    spec: str,
    source: str,
    path: Path,
    attn_implementation: str | None,
    use_cache: bool,
    digest: str | None = None,
) -> LoadedModel:
    """Load a GGUF file through transformers, caching the dequantised weights by file hash (`digest`
    when it is already known and checked, as for assembled files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = digest or sha256_file(path)
    cache = cache_root() / "models" / f"{digest[:24]}-v{CACHE_FORMAT}"
    kwargs = {"dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if use_cache and (cache / "model.safetensors").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cache)
        model = AutoModelForCausalLM.from_pretrained(cache, **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
        if use_cache:
            _save_cache(model, tokenizer, cache)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        source=source,
        location=str(path),
        revision=f"sha256:{digest}",
        quantization=_quantization_from_name(path),
    )


def _save_cache(model: torch.nn.Module, tokenizer: Any, cache: Path) -> None:
    """Write config, float32 weights and tokenizer to `cache` atomically (a temp folder, then rename)."""
    from safetensors.torch import save_model

    def write(tmp: Path) -> None:
        _save_config(model.config, tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)

    _write_folder(cache, write)


def _save_config(config: Any, folder: Path) -> None:
    """config.json without the GGUF quantisation note (the weights are dequantised)."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(data, indent=2))


def _write_folder(folder: Path, write: Any) -> None:
    """`write(tmp)` into a temp folder beside `folder`, then rename it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_offloaded(
    spec: str,
    source: str,
    location: str,
    max_memory: dict[int | str, str],
    offload_folder: str | Path | None,
    trust_remote_code: bool,
    attn_implementation: str | None,
) -> LoadedModel:
    """A safetensors model placed by accelerate within `max_memory`, the rest on disk; MAPS reads its
    tensors from the checkpoint when some of them were offloaded (meta tensors in the model)."""
    from mapslib.foundation.checkpoint import CheckpointSource
    from mapslib.foundation.offload import OffloadedSource, offload_model, placement

    if source not in ("local", "hub"):
        raise BadArgument(
            f"offloading (--max-memory) loads a safetensors checkpoint (a folder or hub id), not "
            f"{spec!r}: a GGUF file is dequantised whole before accelerate could place it. Point "
            "--model at a safetensors copy (after one whole load, mapslib keeps one under "
            f"{cache_root() / 'models'}), or load it whole."
        )
    if offload_folder is None:
        raise BadArgument(
            "--max-memory needs --offload-folder DIR: where accelerate writes the layers that do "
            "not fit"
        )
    folder = location if source == "local" else _hub_snapshot(spec, location)
    loaded = _load_pretrained(
        spec,
        "local",  # the hub's snapshot folder, found above
        folder,
        trust_remote_code,
        attn_implementation,
        load=offload_model,
        max_memory=max_memory,
        offload_folder=offload_folder,
    )
    loaded.source, model = source, loaded.model
    check_supported(model)
    model.eval().requires_grad_(False)
    if any(p.is_meta for p in model.parameters()):
        device = torch.device("cuda", 0) if 0 in max_memory else torch.device("cpu")
        tensors = CheckpointSource.open(folder, config=model.config, device=device)
        loaded.weights = OffloadedSource(model, tensors)
    limits = {("cuda" if k == 0 else str(k)): v for k, v in max_memory.items()}
    loaded.extra["offload"] = {"max_memory": limits, "placement": placement(model)}
    return loaded


def _load_pretrained(
    spec: str,
    source: str,
    location: str,
    trust_remote_code: bool,
    attn_implementation: str | None,
    load: Any = None,
    **load_kwargs: Any,
) -> LoadedModel:
    """Load a transformers model from a folder or the hub, checking the architecture first
    (`load(location, **load_kwargs)` builds it when given: offloading)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if source == "hub" and not _hub_reachable() and not _in_hub_cache(location):
        raise UnknownModel(
            f"model {spec!r} is not in the local hub cache and the hub (huggingface.co) is not reachable. "
            + _known_models()
        )
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UnknownModel(
            f"could not load model {spec!r}: {str(e).splitlines()[0]}. {_known_models()}"
        ) from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"architecture {config.model_type!r} is not supported; supported model types: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    model = (load or AutoModelForCausalLM.from_pretrained)(location, **kwargs, **load_kwargs)
    revision = getattr(config, "_commit_hash", None) or (
        _folder_fingerprint(Path(location)) if source == "local" else "unknown"
    )
    return LoadedModel(model, tokenizer, spec, source, location, revision)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers on its port; avoids minutes of retries on an offline machine."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model's config is already in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _folder_fingerprint(folder: Path, limit_bytes: int = 2 << 30) -> str:
    """SHA-256 over a folder's weight and config files; sizes only when they exceed `limit_bytes`."""
    import hashlib

    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()
    )
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(
            sha256_file(p).encode() if total <= limit_bytes else str(p.stat().st_size).encode()
        )
    return ("sha256:" if total <= limit_bytes else "sizes-sha256:") + h.hexdigest()
