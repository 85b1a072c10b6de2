"""One cached entry point per experiment: reuse a table when what made it is unchanged.

Every experiment writes its table atomically with a JSON beside it (`scores.csv` ->
`scores.csv.json`) holding:
* `params`: what decides the numbers (the model's weights by hash, data by hash, the choices); a
  rerun with equal `params` reads the table instead of computing it, unless `recompute` is passed;
* `protocol`: the rules and defaults the experiment applied, in words and numbers;
* what the run found on the way (pairs kept per relation, kernel work, ...), the environment, the
  timings, the process's peak memory so far (`memory`), and for the command line its command and
  arguments.
The sidecar of a returned table is also in `table.attrs["sidecar"]`. Tables holding token text
should use a `.json` path (`.json.gz` for large ones that are committed): CSV readers turn tokens such as "NA" or "null" into missing values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.foundation.io import environment, is_table, read_table, sidecar_path, write_table

Computed = tuple[pd.DataFrame, dict[str, Any]]  # the table, and what the run found on the way
Found = dict[str, Any] | Callable[[pd.DataFrame], dict[str, Any]]  # or how to read it off the table


def normalise(params: dict[str, Any]) -> Any:
    """JSON round-trip so tuples, paths and numpy scalars compare like what was stored."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def params_key(params: dict[str, Any]) -> Any:
    """What decides a result: `params` without where the model file happens to lie on this machine
    (its SHA-256, under `revision`, identifies the weights), so caches and names hold across clones,
    and without how the weights were read (`loader`: whole model or weights only give the same
    weights, bit for bit, hence the same table)."""
    key = normalise(params)
    if isinstance(key.get("model"), dict):
        key["model"].pop("location", None)
        key["model"].pop("loader", None)
    return key


def peak_memory() -> dict[str, float]:
    """This process's peak memory so far, in GiB: resident set (ru_maxrss: loading included) and,
    when CUDA was used, the largest total of CUDA tensors."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_gib": round(rss / (2**30 if sys.platform == "darwin" else 2**20), 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def table_path(out: str | Path, default_name: str) -> Path:
    """`out` itself when it names a table file (.csv, .json, gzipped or not), else
    `out/default_name` (a folder)."""
    out = Path(out)
    return out if is_table(out) else out / default_name


def read_cached(path: Path, params: dict[str, Any]) -> pd.DataFrame | None:
    """The table at `path` if its sidecar records the same `params`, else None."""
    side = sidecar_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    stored = json.loads(side.read_text())
    if params_key(stored.get("params", {})) != params_key(params):
        return None
    df = read_table(path)
    df.attrs["sidecar"] = stored
    return df


def cached_table(
    path: str | Path | None,
    params: dict[str, Any],
    compute: Callable[[], Computed],
    *,
    recompute: bool = False,
    protocol: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    step: str = "compute",
) -> pd.DataFrame:
    """Read `path` if it was made with `params` (and `recompute` is False), else compute and write it.

    `header` (the command line's command, arguments and earlier timings) goes into the sidecar too;
    the compute time is recorded under `timings_s[step]`. With `path` None nothing is written.
    """
    path = None if path is None else Path(path)
    if path is not None and not recompute:
        df = read_cached(path, params)
        if df is not None:
            return df
    t0 = time.perf_counter()
    df, found = compute()
    header = dict(header or {})
    timings = {**header.pop("timings_s", {}), step: round(time.perf_counter() - t0, 3)}
    timings["total"] = round(sum(timings.values()), 3)
    meta = {
        **header,
        "params": normalise(params),
        "protocol": protocol or {},
        **normalise(found),
        "environment": environment(),
        "timings_s": timings,
        "memory": peak_memory(),
    }
    if path is not None:
        write_table(path, df, meta)
    df.attrs["sidecar"] = meta
    return df


def run_cached(
    lm: Any,
    out: str | Path | None,
    name: str,
    params: dict[str, Any],
    compute: Callable[[], pd.DataFrame],
    *,
    found: Found | None = None,
    settings: Any = None,
    recompute: bool = False,
    protocol: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    step: str = "compute",
) -> pd.DataFrame:
    """Every experiment's one way to run: the table at `out` (a .csv/.json file, or a folder for
    `name`; None: not written) when the model `lm` and `params` made it, else `compute()` written
    with its sidecar. The sidecar records the model, the map settings in full (`settings`, a
    foundation.settings.MapSettings) and `found` (a dict, or a function of the new table, called
    after computing: for summaries of it and counters that `compute` fills)."""
    key = {"model": lm.info(), **params}

    def run() -> Computed:
        df = compute()
        extra = found(df) if callable(found) else dict(found or {})
        record = {} if settings is None else {"settings": settings.record()}
        return df, {"model": lm.info(), **record, **extra}

    path = None if out is None else table_path(out, name)
    return cached_table(
        path, key, run, recompute=recompute, protocol=protocol, header=header, step=step
    )
