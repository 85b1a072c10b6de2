"""MapSettings: every choice that decides a head's map, named once, with its default, in one place.

A map is M = E_in W_V W_O U read on a relation's pairs or a head's salient tokens. What it holds
depends on five choices, and every experiment, chapter and command takes them as one object:

* `embedding`: what heads read, E_in (foundation.embeddings): `paper` (layer 0 reads E, later layers
  read MLP_0(norm(E))), `raw` (E everywhere) or `mlp0-residual` (E + MLP_0(norm(E))).
* `k`: a relation's pair counts when its target is in the top-k of the source's row; None is
  PROTOCOL.md's rule by vocabulary size (1 for copying / 10; 3 / 25 at 100k tokens or more).
* `bias`: `none` (the paper's), `value` (b_V added) or `value+output` (b_V and b_O).
* `min_pairs`: a relation is scored when at least this many of its pairs are single tokens.
* `tau`: a head implements a relation when its score reaches tau (it reads a table; it makes none).
* `norms`: `ignore` (the paper's: no norm weights in the map) or `fold` (every norm weight on the
  path applied as the forward pass applies it).

To change a default for everyone, change it here: nothing else in mapslib writes one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mapslib.errors import BadArgument

EMBEDDINGS = ("paper", "raw", "mlp0-residual")
BIASES = ("none", "value", "value+output")
NORMS = ("ignore", "fold")


@dataclass(frozen=True)
class MapSettings:
    """The choices that decide a map; checked when made, so a bad value fails before any work."""

    embedding: str = "paper"
    k: int | None = None
    bias: str = "none"
    min_pairs: int = 30
    tau: float = 0.15
    norms: str = "ignore"

    def __post_init__(self) -> None:
        for name, allowed in (("embedding", EMBEDDINGS), ("bias", BIASES), ("norms", NORMS)):
            value = getattr(self, name)
            if value not in allowed:
                raise BadArgument(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        for name in ("k", "min_pairs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadArgument(f"{name} must be a positive integer, got {value!r}")
        if self.k is not None and self.k < 1:
            raise BadArgument(
                f"k must be a positive integer (or None: PROTOCOL.md's rule), got {self.k}"
            )
        if self.min_pairs < 1:
            raise BadArgument(f"min_pairs must be a positive integer, got {self.min_pairs}")
        if not 0 < self.tau <= 1:
            raise BadArgument(f"tau must lie in (0, 1], got {self.tau}")

    @classmethod
    def from_parameters(cls, **values: Any) -> MapSettings:
        """Settings from a chapter's papermill parameters: None (or absent) means the default."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise BadArgument(
                f"unknown map setting {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        return cls(**{name: v for name, v in values.items() if v is not None})

    def but(self, **changes: Any) -> MapSettings:
        """A copy with some choices changed (checked like a new one)."""
        return replace(self, **changes)

    def params(self, *names: str) -> dict[str, Any]:
        """The named choices, and every other one that is not its default, as part of a cache key:
        a table is reused only when every choice that could change it agrees, and tables made
        before a choice existed (at its default) stay valid. `tau` reads tables and makes none."""
        changed = [
            f.name for f in fields(self) if getattr(self, f.name) != getattr(DEFAULTS, f.name)
        ]
        keep = [*names, *(n for n in changed if n not in names and n != "tau")]
        return {name: getattr(self, name) for name in keep}

    def changed(self, *names: str) -> dict[str, Any]:
        """Those of the named choices that are not their default: the cache key of an experiment
        that only these choices reach (so a table made at the defaults stays valid)."""
        return {n: getattr(self, n) for n in names if getattr(self, n) != getattr(DEFAULTS, n)}

    def record(self) -> dict[str, Any]:
        """Every choice, for a sidecar: what the run was made with, defaults included."""
        return asdict(self)


DEFAULTS = MapSettings()
