"""Writing results safely: atomic files, a JSON of parameters beside every table, content hashes."""

from __future__ import annotations

import gzip
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


# gzip with no file name or time in its header (gzip.compress writes neither), so the same table
# always gives the same bytes: a re-executed chapter leaves a committed .gz table unchanged in git
GZIP_LEVEL = 9


def is_json(path: str | Path) -> bool:
    """True for the JSON tables (`.json`, or `.json.gz` for large ones that are committed)."""
    return Path(path).name.lower().endswith((".json", ".json.gz"))


TABLE_SUFFIXES = (".csv", ".csv.gz", ".json", ".json.gz")  # what write_table writes


def is_table(path: str | Path) -> bool:
    """True for a path `write_table` can write (a file name, not a folder)."""
    return Path(path).name.lower().endswith(TABLE_SUFFIXES)


def read_table(path: str | Path) -> pd.DataFrame:
    """A table `write_table` wrote; JSON cells stay text (tokens such as "null" or "1e5")."""
    path = Path(path)
    return pd.read_json(path, orient="records", dtype=False) if is_json(path) else pd.read_csv(path)


def write_table(path: str | Path, df: pd.DataFrame, params: dict[str, Any]) -> Path:
    """Atomically write `df` as CSV (JSON for .json; .gz: gzipped, for large committed tables) and
    its parameters beside it."""
    path = Path(path)
    if is_json(path):
        text = df.to_json(
            orient="records", indent=None if path.suffix == ".gz" else 1, force_ascii=False
        )
    else:
        text = df.to_csv(index=False)
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    atomic_write(path, lambda p: p.write_bytes(data))
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
