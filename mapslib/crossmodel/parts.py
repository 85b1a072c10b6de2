"""Each model's part of the book, read back: its tables, their sidecars, its shape and its maps.

No model is loaded. Each model's part of the book (`book/models/<model>/data/`) holds the tables its
chapters wrote, each with a JSON sidecar. `model_parts` reads them with the model's shape (layers,
heads, kv heads, size; `model_info` says where each came from). A part's relation maps are named by
their reading of E_in (`map_label`); `best_reading` picks the one that tracks the head outputs best.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from mapslib.behaviour.correlation import CLEAR_MARGIN, correlations_by_map
from mapslib.errors import BadArgument
from mapslib.foundation.settings import EMBEDDINGS

T = TypeVar("T")
BOOK = Path(__file__).resolve().parents[2] / "book"
DEFAULT_READING = "paper"  # the map each model's chapter 02 writes as relation_scores.csv
TABLES = {  # the tables the cross-model chapter reads, and the chapter of a part that writes each
    "relation_scores.csv": "02 relation map",
    "baseline_random_scores.csv": "03 random baseline",
    "dynamic_scores.csv": "04 correlation",
    "correlations.csv": "04 correlation",
    "ablation.csv": "05 causal ablation",
}


def map_label(embedding: str, bias: str | None) -> str:
    """The name of a relation map in these tables: its embedding, `+ bias value` when biased."""
    return embedding if bias in (None, "none") else f"{embedding} + bias {bias}"


@dataclass
class ModelPart:
    """One model's part of the book: its tables, read on demand, and its shape."""

    name: str
    data: Path
    n_layers: int
    n_heads: int
    n_kv_heads: int | None
    parameters: float | None
    model_type: str
    quantization: str
    vocabulary: int | None
    shape_source: str
    size_source: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def heads(self) -> int:
        """Heads in all layers."""
        return self.n_layers * self.n_heads

    @property
    def attention(self) -> str:
        """multi-head, grouped-query or multi-query attention (unknown without the kv heads)."""
        if self.n_kv_heads is None:
            return "unknown"
        if self.n_kv_heads == self.n_heads:
            return "multi-head"
        return "multi-query" if self.n_kv_heads == 1 else "grouped-query"

    def cached(self, key: str, make: Callable[[], T]) -> T:
        """The value stored under `key`, made once by `make()` (tables, maps, derived tables)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def has(self, name: str) -> bool:
        """Whether the part has written the table `name`."""
        return (self.data / name).is_file()

    def table(self, name: str) -> pd.DataFrame | None:
        """A table of the part (read once), or None when the part has not written it."""
        path = self.data / name
        return self.cached(name, lambda: pd.read_csv(path) if path.is_file() else None)

    def sidecar(self, name: str) -> dict[str, Any] | None:
        """The JSON written beside a table, or None."""
        key = name + ".json"
        path = self.data / key
        return self.cached(key, lambda: json.loads(path.read_text()) if path.is_file() else None)

    def maps(self) -> dict[str, pd.DataFrame]:
        """Every full relation map of the part (all layers, the default relations, k and minimum
        pairs), by reading: the embedding (`paper`, `raw`, `mlp0-residual`), `+ bias ...` when the
        map adds biases. `paper` (relation_scores.csv) first."""
        return self.cached("maps", self._find_maps)

    def _find_maps(self) -> dict[str, pd.DataFrame]:
        default = (self.sidecar("relation_scores.csv") or {}).get("params", {})
        found: dict[str, pd.DataFrame] = {}
        for path in sorted(self.data.glob("relation_scores*.csv")):
            p = (self.sidecar(path.name) or {}).get("params", {})
            same = all(p.get(key) == default.get(key) for key in ("layers", "relations"))
            if not same or p.get("k") is not None or p.get("min_pairs") != default.get("min_pairs"):
                continue
            if p.get("norms", "ignore") != "ignore":  # the paper's convention only (see readings)
                continue
            label = map_label(p.get("embedding", DEFAULT_READING), p.get("bias"))
            found.setdefault(label, self.table(path.name))
        order = [map_label(e, None) for e in EMBEDDINGS]
        labels = sorted(found, key=lambda m: (m != DEFAULT_READING, m not in order, m))
        return {m: found[m] for m in labels}

    def scores(self, reading: str = DEFAULT_READING) -> pd.DataFrame:
        """The relation map under `reading` (a label of `maps`)."""
        maps = self.maps()
        if reading not in maps:
            raise BadArgument(
                f"{self.name} has no relation map read as {reading!r}; it has: {', '.join(maps)}"
            )
        return maps[reading]

    def baseline_reading(self) -> str:
        """The reading chapter 03's random baseline was made with (from its sidecar)."""
        side = self.sidecar("baseline_random_scores.csv") or {}
        return map_label(side.get("params", {}).get("embedding", DEFAULT_READING), None)

    def k_range(self, reading: str = DEFAULT_READING) -> tuple[int, int]:
        """The smallest and largest k of the map's relations (copying / other relations)."""
        k = self.scores(reading).groupby("relation")["k"].first()
        return int(k.min()), int(k.max())


# -- the E_in reading each part is read with -------------------------------------------------------
def reading_correlations(part: ModelPart) -> pd.DataFrame | None:
    """correlations_by_map for every full map of the part against its dynamic scores (chapter 04's
    comparison, re-derived from the tables), or None without dynamic scores."""

    def make() -> pd.DataFrame | None:
        dynamic = part.table("dynamic_scores.csv")
        return None if dynamic is None else correlations_by_map(part.maps(), dynamic)

    return part.cached("by_map", make)


def median_r(part: ModelPart, setting: str = "no_context") -> pd.Series | None:
    """The median promotion r of each map in `setting` (maps without one left out), or None."""
    by_map = reading_correlations(part)
    if by_map is None:
        return None
    return by_map.loc["median"].xs(setting, level="setting").dropna()


def best_reading(part: ModelPart, setting: str = "no_context") -> str:
    """The map that tracks the head outputs best: the highest median r in `setting`, unless the
    paper's map is within CLEAR_MARGIN of it (then the paper's); the paper's when nothing can tell."""
    med = median_r(part, setting)
    if med is None or med.empty:
        return DEFAULT_READING
    if DEFAULT_READING in med and med.max() - med[DEFAULT_READING] <= CLEAR_MARGIN:
        return DEFAULT_READING
    return str(med.idxmax())


def readings_for(parts: list[ModelPart], reading: str | dict[str, str]) -> dict[str, str]:
    """`reading` per model: one label for all, `best` (each model's best-tracking map) or a dict."""
    if isinstance(reading, dict):
        return {p.name: reading.get(p.name, DEFAULT_READING) for p in parts}
    if reading == "best":
        return {p.name: best_reading(p) for p in parts}
    return {p.name: reading for p in parts}


# -- a part's model: shape and size ----------------------------------------------------------------
def _data_sidecars(data: Path) -> list[Path]:
    """The sidecars of a data folder (not the JSON tables themselves, which can be large)."""
    return sorted(p for p in data.iterdir() if p.name.endswith((".csv.json", ".json.json")))


def _architecture_in_sidecars(data: Path) -> dict[str, Any] | None:
    """An `architecture` record (HeadWeights.describe() keys) in any sidecar of the part."""
    for path in _data_sidecars(data):
        side = json.loads(path.read_text())
        for where in (side, side.get("model") or {}):
            if isinstance(where, dict) and isinstance(where.get("architecture"), dict):
                return where["architecture"]
    return None


def _architecture_in_chapter(folder: Path) -> dict[str, Any] | None:
    """The `hw.describe()` output of the part's executed chapter 01, if it is there."""
    path = folder / "01_methods.ipynb"
    if not path.is_file():
        return None
    for cell in json.loads(path.read_text()).get("cells", []):
        if cell.get("cell_type") != "code" or "describe()" not in "".join(cell.get("source", [])):
            continue
        for out in cell.get("outputs", []):
            text = "".join(out.get("data", {}).get("text/plain", []))
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, dict) and "layers" in value:
                return value
    return None


_SIZE = re.compile(r"(?:^|[-_ ])(\d+(?:\.\d+)?)([mb])(?=$|[-_ ,)])", re.IGNORECASE)


def nominal_parameters(name: str) -> float | None:
    """The size a model's name states (`smollm2-135m` -> 1.35e8, `...-0.5b` -> 5e8), or None."""
    found = _SIZE.findall(name)
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1e6 if unit.lower() == "m" else 1e9)


def size_text(parameters: float | None) -> str:
    """135M, 1.5B, ..."""
    if parameters is None or not np.isfinite(parameters):
        return "?"
    if parameters >= 1e9:
        return f"{parameters / 1e9:g}B"
    return f"{parameters / 1e6:g}M"


def model_info(folder: Path) -> dict[str, Any]:
    """A part's model: shape and size, each with where it came from.

    Layers and heads per layer come from an `architecture` record in a sidecar when one holds it,
    else from the executed chapter 01 (`hw.describe()`), else from relation_scores.csv (the default
    map covers every layer and head); kv heads from the first two only. The size is the
    architecture's `parameters` when recorded, else the size in the model's name.
    """
    data = folder / "data"
    side = json.loads((data / "relation_scores.csv.json").read_text())
    model = side.get("model", {})
    arch, source = _architecture_in_sidecars(data), "sidecar architecture"
    if arch is None:
        arch, source = _architecture_in_chapter(folder), "chapter 01 (hw.describe())"
    scores = pd.read_csv(data / "relation_scores.csv", usecols=["layer", "head"])
    n_layers, n_heads = (
        len(side.get("layers") or scores["layer"].unique()),
        scores["head"].nunique(),
    )
    if arch is None:
        arch, source = {}, "relation_scores.csv (no kv heads)"
    n_layers, n_heads = int(arch.get("layers", n_layers)), int(arch.get("heads per layer", n_heads))
    kv = arch.get("kv heads per layer")
    parameters, size_source = arch.get("parameters"), "sidecar architecture"
    if parameters is None:
        parameters = nominal_parameters(folder.name) or nominal_parameters(model.get("spec", ""))
        size_source = "the model's name" if parameters is not None else "unknown"
    return {
        "name": folder.name,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": None if kv is None else int(kv),
        "parameters": None if parameters is None else float(parameters),
        "model_type": str(arch.get("model_type", model.get("model_type", "?"))),
        "quantization": str(model.get("quantization", "?")),
        "vocabulary": None if arch.get("vocabulary") is None else int(arch["vocabulary"]),
        "shape_source": source,
        "size_source": size_source,
    }


# -- the book's parts ------------------------------------------------------------------------------
def model_folders(book_dir: str | Path | None = None) -> list[Path]:
    """Model folders of the book that hold a relation map (book/models/<model>/data/relation_scores.csv)."""
    root = Path(book_dir) if book_dir is not None else BOOK
    return sorted(p.parents[1] for p in (root / "models").glob("*/data/relation_scores.csv"))


def model_parts(
    book_dir: str | Path | None = None, models: list[str] | str | None = None
) -> list[ModelPart]:
    """The models' parts of the book (all with a relation map, or those named, as a list or a
    comma-separated string), smallest first."""
    folders = {f.name: f for f in model_folders(book_dir)}
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if models:
        unknown = [m for m in models if m not in folders]
        if unknown:
            raise BadArgument(
                f"no relation map in the book for {', '.join(unknown)}; models with one: "
                f"{', '.join(folders) or 'none'}"
            )
        folders = {m: folders[m] for m in models}
    parts = [ModelPart(data=f / "data", **model_info(f)) for f in folders.values()]
    return sorted(parts, key=lambda p: (p.parameters is None, p.parameters or 0.0, p.name))


def inventory(parts: list[ModelPart]) -> pd.DataFrame:
    """Which of the tables the chapter reads each part has written (and the chapter writing it)."""
    table = pd.DataFrame(
        {p.name: [p.has(t) for t in TABLES] for p in parts},
        index=pd.Index(list(TABLES), name="table"),
    )
    table.insert(0, "written by chapter", list(TABLES.values()))
    return table


def models_table(parts: list[ModelPart]) -> pd.DataFrame:
    """One row per model: size, shape, attention, vocabulary, k, relations scored, weights."""
    rows = []
    for p in parts:
        k_low, k_high = p.k_range()
        rows.append(
            {
                "model": p.name,
                "parameters": size_text(p.parameters),
                "model type": p.model_type,
                "layers": p.n_layers,
                "heads per layer": p.n_heads,
                "kv heads per layer": p.n_kv_heads,
                "attention": p.attention,
                "heads": p.heads,
                "vocabulary": p.vocabulary,
                "k (copying / other)": f"{k_low} / {k_high}",
                "relations scored": p.scores()["relation"].nunique(),
                "weights": p.quantization,
                "shape from": p.shape_source,
                "size from": p.size_source,
            }
        )
    return pd.DataFrame(rows).set_index("model").astype({"kv heads per layer": "Int64"})


def sources(parts: list[ModelPart]) -> dict[str, Any]:
    """What the cross-model tables were made from, for their sidecars: per model, the weights'
    revision and the tables read."""
    out = {}
    for p in parts:
        side = p.sidecar("relation_scores.csv") or {}
        out[p.name] = {
            "revision": side.get("model", {}).get("revision"),
            "tables": [t for t in TABLES if p.has(t)] + [f"maps: {', '.join(p.maps())}"],
        }
    return out
