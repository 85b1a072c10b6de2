"""Writing results safely: atomic files, a JSON of parameters beside every table, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def cache_root() -> Path:
    """Where mapslib caches dequantised models, assembled GGUF files and LLM answers."""
    return Path(os.environ.get("MAPSLIB_CACHE", Path.home() / ".cache" / "mapslib"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weights do not sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string (used to key caches and name datasets)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it over `path`.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (sorted keys, indented, non-ASCII kept readable)."""
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    )


def sidecar_path(path: str | Path) -> Path:
    """The parameters file that travels with a result: `scores.csv` -> `scores.csv.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_table(path: str | Path, df: pd.DataFrame, params: dict[str, Any]) -> Path:
    """Atomically write `df` as CSV (or JSON if the suffix says so) and its parameters beside it."""
    path = Path(path)
    if path.suffix == ".json":
        atomic_write(path, lambda p: df.to_json(p, orient="records", indent=1, force_ascii=False))
    else:
        atomic_write(path, lambda p: df.to_csv(p, index=False))
    write_json(sidecar_path(path), params)
    return path


def environment() -> dict[str, str]:
    """Versions that decide the numbers, recorded beside every result."""
    import torch
    import transformers

    from mapslib import __version__

    return {
        "mapslib": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
