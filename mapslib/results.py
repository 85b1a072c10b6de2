"""Reuse a result when the parameters that made it are unchanged; otherwise compute and write it.

Every table is written atomically with a JSON beside it whose `params` key holds what made it. A
rerun with the same parameters reads the table instead of recomputing; set `MAPSLIB_RECOMPUTE=1`
to force recomputation (the notebook regression tests do). Tables holding token text should use a
`.json` path: CSV readers turn tokens such as "NA" or "null" into missing values.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.io import environment, sidecar_path, write_table


def _normalise(params: dict[str, Any]) -> Any:
    """JSON round-trip so tuples, paths and numpy scalars compare like what was stored."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def cache_key(params: dict[str, Any]) -> Any:
    """What decides a result: `params` without where the model file happens to lie on this machine
    (its SHA-256, under `revision`, identifies the weights), so caches and names hold across clones."""
    key = _normalise(params)
    if isinstance(key.get("model"), dict):
        key["model"].pop("location", None)
    return key


def cached_table(
    path: str | Path, params: dict[str, Any], compute: Callable[[], pd.DataFrame]
) -> pd.DataFrame:
    """Load `path` if its sidecar records the same `params` (and no recompute is forced), else compute it."""
    path = Path(path)
    side = sidecar_path(path)
    if path.is_file() and side.is_file() and os.environ.get("MAPSLIB_RECOMPUTE", "0") in ("0", ""):
        stored = json.loads(side.read_text())
        if cache_key(stored.get("params", {})) == cache_key(params):
            return pd.read_json(path) if path.suffix == ".json" else pd.read_csv(path)
    t0 = time.perf_counter()
    df = compute()
    meta = {
        "params": _normalise(params),
        "environment": environment(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_table(path, df, meta)
    return df
