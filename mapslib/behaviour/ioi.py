"""The indirect object identification (IOI) dataset: templates, single-token names, prompts.

"When Mary and John went to the store, John gave a drink to" -> " Mary": the next token is the
indirect object (IO), not the repeated subject (S). Templates and names are shipped in
`mapslib/data/ioi/` (README there). A template has {A} and {B} (the two names of the first clause)
and {S} (the subject, repeated); half of the prompts put the IO first (ABBA), half the subject
(BABA). The answer is " " + IO. Names are kept when " " + name is one token; a prompt is kept when
the IO's token occurs once in it and the subject's token twice (so the positions read at the last
position are unambiguous).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapslib.errors import BadArgument, TooFewNames
from mapslib.foundation.io import sha256_file, sha256_text
from mapslib.relation_map.relations import single_token_ids

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "ioi"
MIN_NAMES = 10  # fewer single-token names give too few distinct (IO, S) pairs


@dataclass(frozen=True)
class IOIData:
    """Templates ({A}, {B}, {S}) and candidate names, with a hash of both for the sidecar."""

    templates: tuple[str, ...]
    names: tuple[str, ...]
    sha256: str


def load_ioi_data(folder: str | Path = DATA_DIR) -> IOIData:
    """The shipped templates (`templates.json`) and names (`names.txt`, one a line)."""
    folder = Path(folder)
    templates = tuple(json.loads((folder / "templates.json").read_text()))
    names = tuple(n.strip() for n in (folder / "names.txt").read_text().splitlines() if n.strip())
    digest = sha256_text(sha256_file(folder / "templates.json") + sha256_file(folder / "names.txt"))
    return make_ioi_data(templates, names, digest)


def make_ioi_data(templates: tuple[str, ...], names: tuple[str, ...], sha256: str) -> IOIData:
    """IOIData after checking every template holds {A}, {B} and {S} once each."""
    for t in templates:
        if any(t.count(slot) != 1 for slot in ("{A}", "{B}", "{S}")):
            raise BadArgument(f"an IOI template needs {{A}}, {{B}} and {{S}} once each: {t!r}")
    if len(set(names)) != len(names):
        raise BadArgument("IOI names must be distinct")
    return IOIData(tuple(templates), tuple(names), sha256)


def single_token_names(tokenizer: Any, names: tuple[str, ...], minimum: int = MIN_NAMES) -> dict:
    """Name -> token id of " " + name, for the names that are one token; too few is an error."""
    ids = single_token_ids(tokenizer, list(names))
    kept = {n: i for n, i in zip(names, ids, strict=True) if i is not None}
    if len(set(kept.values())) != len(kept):
        raise BadArgument("two IOI names share a token; the IO and S could not be told apart")
    if len(kept) < minimum:
        raise TooFewNames(
            f"only {len(kept)} of {len(names)} IOI names are a single token (' ' + name) for this "
            f"tokenizer; at least {minimum} are needed: add names that are one token with a "
            "leading space to names.txt (in mapslib/data/ioi/, or the folder given to load_ioi_data)"
        )
    return kept


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt: its text, template, names and their tokens, and the order of the first clause."""

    text: str
    template: int
    io: str
    s: str
    io_id: int
    s_id: int
    order: str  # ABBA: the IO is named first; BABA: the subject is


def fill(template: str, io: str, s: str, io_first: bool) -> str:
    """The template with the IO and S in the first clause (IO first or second) and S repeated."""
    a, b = (io, s) if io_first else (s, io)
    return template.replace("{A}", a).replace("{B}", b).replace("{S}", s)


def ioi_prompts(data: IOIData, names: dict[str, int], n: int, seed: int) -> list[IOIPrompt]:
    """`n` prompts drawn from `seed`: a template, two distinct names; ABBA and BABA alternate."""
    if n < 1:
        raise BadArgument(f"n_prompts must be at least 1; got {n}")
    rng = np.random.default_rng(seed)
    pool = sorted(names)
    out = []
    for i in range(n):
        t = int(rng.integers(len(data.templates)))
        io, s = (pool[j] for j in rng.choice(len(pool), size=2, replace=False))
        text = fill(data.templates[t], io, s, io_first=i % 2 == 0)
        out.append(IOIPrompt(text, t, io, s, names[io], names[s], "ABBA" if i % 2 == 0 else "BABA"))
    return out


@dataclass(frozen=True)
class Located:
    """A prompt's token ids with the positions of the IO token and of the two S tokens."""

    prompt: IOIPrompt
    ids: tuple[int, ...]
    io_pos: int
    s_pos: tuple[int, int]


def locate(tokenizer: Any, prompts: list[IOIPrompt]) -> tuple[list[Located], int]:
    """Token ids and name positions of each prompt (the tokenizer's default special tokens); prompts
    whose IO token is not there exactly once or whose S token not exactly twice are dropped
    (returned: the kept ones and how many were dropped)."""
    ids = tokenizer([p.text for p in prompts])["input_ids"]
    kept = []
    for p, seq in zip(prompts, ids, strict=True):
        io = [i for i, t in enumerate(seq) if t == p.io_id]
        s = [i for i, t in enumerate(seq) if t == p.s_id]
        if len(io) == 1 and len(s) == 2 and max(io + s) < len(seq) - 1:
            kept.append(Located(p, tuple(seq), io[0], (s[0], s[1])))
    return kept, len(prompts) - len(kept)
