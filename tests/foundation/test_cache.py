"""Atomic writes, sidecars, and reuse of results whose parameters match."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from mapslib.foundation.cache import cached_table, params_key
from mapslib.foundation.io import atomic_write, read_table, sidecar_path, write_table


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_atomic_write_gives_the_umask_permissions(tmp_path: Path) -> None:
    """Results are readable like any file the user writes, not 0600 as mkstemp leaves them."""
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "t.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_table_csv_and_json_with_sidecar(tmp_path: Path) -> None:
    df = pd.DataFrame({"token": ["NA", "␣null"], "x": [1, 2]})
    write_table(tmp_path / "t.csv", df, {"k": 1})
    write_table(tmp_path / "t.json", df, {"k": 2})
    assert json.loads(sidecar_path(tmp_path / "t.csv").read_text()) == {"k": 1}
    assert pd.read_json(tmp_path / "t.json")["token"].tolist() == ["NA", "␣null"]


@pytest.mark.parametrize("name", ["t.csv.gz", "t.json.gz"])
def test_gzipped_tables_round_trip_and_repeat_byte_for_byte(tmp_path: Path, name: str) -> None:
    """A committed .gz table must not change in git when a chapter rewrites the same numbers: no
    file name or time in the gzip header (atomic_write's temporary name differs every time)."""
    df = pd.DataFrame({"layer": [0, 1], "token": ["null", " Paris"], "score": [0.5, 0.25]})
    first = write_table(tmp_path / name, df, {"a": 1}).read_bytes()
    second = write_table(tmp_path / name, df, {"a": 1}).read_bytes()
    assert first == second and first[:2] == b"\x1f\x8b"  # gzip magic
    back = read_table(tmp_path / name)
    assert back["score"].tolist() == [0.5, 0.25]
    if name.endswith(".json.gz"):
        assert back["token"].tolist() == ["null", " Paris"]  # JSON keeps tokens as text


def test_cached_table_reuses_only_matching_parameters(
    tmp_path: Path,
) -> None:
    calls = []

    def compute() -> tuple[pd.DataFrame, dict]:
        calls.append(1)
        return pd.DataFrame({"v": [len(calls)]}), {"found": len(calls)}

    path = tmp_path / "r.csv"
    assert cached_table(path, {"a": 1, "b": (1, 2)}, compute)["v"].tolist() == [1]
    assert cached_table(path, {"a": 1, "b": [1, 2]}, compute)["v"].tolist() == [
        1
    ]  # same params: reused
    assert cached_table(path, {"a": 2, "b": [1, 2]}, compute)["v"].tolist() == [
        2
    ]  # changed: recomputed
    forced = cached_table(path, {"a": 2, "b": [1, 2]}, compute, recompute=True, protocol={"r": 1})
    assert forced["v"].tolist() == [3]
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["params"] == {"a": 2, "b": [1, 2]} and "mapslib" in meta["environment"]
    assert meta["protocol"] == {"r": 1} and meta["found"] == 3 and forced.attrs["sidecar"] == meta
    reread = cached_table(path, {"a": 2, "b": [1, 2]}, compute)
    assert reread["v"].tolist() == [3] and reread.attrs["sidecar"] == meta  # read, not computed


def test_cached_table_ignores_where_the_model_file_lies(tmp_path: Path) -> None:
    """A clone elsewhere (same weights, other path) reuses the table; other weights do not."""
    calls = []

    def compute() -> tuple[pd.DataFrame, dict]:
        calls.append(1)
        return pd.DataFrame({"v": [len(calls)]}), {"found": len(calls)}

    here = {"model": {"location": "/a/m.gguf", "revision": "abc"}, "k": 1}
    there = {"model": {"location": "/b/m.gguf", "revision": "abc"}, "k": 1}
    other = {"model": {"location": "/a/m.gguf", "revision": "def"}, "k": 1}
    path = tmp_path / "r.csv"
    assert cached_table(path, here, compute)["v"].tolist() == [1]
    assert cached_table(path, there, compute)["v"].tolist() == [1]
    assert params_key(here) == params_key(there) != params_key(other)
    assert cached_table(path, other, compute)["v"].tolist() == [2]
    assert json.loads(sidecar_path(path).read_text())["params"]["model"]["location"] == "/a/m.gguf"
