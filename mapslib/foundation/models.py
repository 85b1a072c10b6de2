"""Loading a causal LM for MAPS: an alias, a .gguf file, a local folder, or a hub id.

GGUF files are dequantised to float32 by transformers, which is slow (about 16 s for SmolLM2, 45 s for
Gemma-3). The dequantised weights are cached once per file hash under `$MAPSLIB_CACHE` (default
`~/.cache/mapslib`), so later loads take well under a second and give bit-identical weights.
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
from mapslib.foundation.adapters import FAMILIES, HeadWeights
from mapslib.foundation.io import sha256_file
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

    @cached_property
    def hw(self) -> HeadWeights:
        """The model's weights in MAPS's layout (views, no copy)."""
        return HeadWeights(self.model)

    @property
    def name(self) -> str:
        """A short name for titles and folder names."""
        return model_slug(self.spec)

    def info(self) -> dict[str, Any]:
        """What identifies the weights, for the JSON beside a result."""
        return {
            "spec": self.spec,
            "source": self.source,
            "location": self.location,
            "revision": self.revision,
            "quantization": self.quantization,
            "model_type": self.model.config.model_type,
            **self.extra,
        }


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


def cache_root() -> Path:
    """Where mapslib caches dequantised models and LLM answers."""
    return Path(os.environ.get("MAPSLIB_CACHE", Path.home() / ".cache" / "mapslib"))


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    use_cache: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in float32, in eval mode, on `device`."""
    source, location = _resolve(spec)
    if source in ("alias", "gguf"):
        known = ALIASES[spec].sha256 if source == "alias" else None
        loaded = _load_gguf(spec, source, Path(location), attn_implementation, use_cache, known)
    else:
        loaded = _load_pretrained(spec, source, location, trust_remote_code, attn_implementation)
    check_supported(loaded.model)
    loaded.model.eval().requires_grad_(False)
    loaded.model.to(resolve_device(device))
    return loaded


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

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}."))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_pretrained(
    spec: str, source: str, location: str, trust_remote_code: bool, attn_implementation: str | None
) -> LoadedModel:
    """Load a transformers model from a folder or the hub, checking the architecture first."""
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
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
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
