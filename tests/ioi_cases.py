"""IOI prompts for the tests of mapslib.behaviour (ioi, direct_effect, known_heads): names and
templates in WordTokenizer's words, so every name is one token and the positions are known."""

from __future__ import annotations

from helpers import WordTokenizer

from mapslib.behaviour.ioi import (
    IOIData,
    Located,
    ioi_prompts,
    locate,
    make_ioi_data,
    single_token_names,
)

# Names w20..w39 are single tokens of WordTokenizer; template words use other ids. The first
# template is 8 tokens, the second 7, so prompts form two length groups.
NAMES = tuple(f"w{i}" for i in range(20, 40))
TEMPLATES = ("w3 {A} w4 {B} w5 w6 {S} w7 w8", "w9 w10 {A} w11 {B} {S} w12")


def ioi_data(templates: tuple[str, ...] = TEMPLATES) -> IOIData:
    """The test names with `templates`."""
    return make_ioi_data(templates, NAMES, "test")


def located_prompts(n: int, templates: tuple[str, ...] = TEMPLATES, seed: int = 0) -> list[Located]:
    """`n` prompts drawn from `seed`, tokenized and located; none is dropped."""
    tok = WordTokenizer()
    data = ioi_data(templates)
    kept, dropped = locate(tok, ioi_prompts(data, single_token_names(tok, data.names), n, seed))
    assert dropped == 0
    return kept
