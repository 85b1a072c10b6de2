"""The IOI dataset: the shipped templates and names, the single-token name filter, prompts and the
positions of their names."""

from __future__ import annotations

import pytest
from helpers import WordTokenizer
from ioi_cases import NAMES, ioi_data

from mapslib.behaviour.ioi import (
    DATA_DIR,
    ioi_prompts,
    load_ioi_data,
    locate,
    make_ioi_data,
    single_token_names,
)
from mapslib.errors import BadArgument, TooFewNames


def test_shipped_data_is_well_formed():
    """Every template has {A}, {B}, {S} once, each after a space; names are distinct; provenance."""
    data = load_ioi_data()
    assert len(data.templates) >= 10 and len(data.names) >= 50
    assert len(set(data.names)) == len(data.names)
    for t in data.templates:
        for slot in ("{A}", "{B}", "{S}"):
            assert t.count(slot) == 1 and t[t.index(slot) - 1] == " ", t
        assert not t.rstrip().endswith("}")  # the answer is not in the prompt
    readme = (DATA_DIR / "README.md").read_text()
    assert "licen" in readme.lower() and "Wang" in readme


def test_too_few_single_token_names_is_a_clear_error():
    """Names that are not one token are dropped; fewer than MIN_NAMES left raises TooFewNames."""
    names = ("w20", "w21", "w22", "Anne Marie", "Mary Jane", "w23", "w24")
    with pytest.raises(TooFewNames, match=r"only 5 of 7 IOI names are a single token"):
        single_token_names(WordTokenizer(), names)
    kept = single_token_names(WordTokenizer(), names, minimum=5)
    assert kept == {"w20": 20, "w21": 21, "w22": 22, "w23": 23, "w24": 24}
    with pytest.raises(BadArgument, match="once each"):
        make_ioi_data(("w3 {A} w4 {S} w5",), NAMES, "x")


def test_prompts_alternate_orders_and_locate_the_names():
    """ABBA then BABA; IO once, S twice, in the right clause; seeded; a colliding prompt is dropped."""
    data = ioi_data()
    names = single_token_names(WordTokenizer(), data.names)
    prompts = ioi_prompts(data, names, 10, seed=3)
    assert prompts == ioi_prompts(data, names, 10, seed=3)
    assert prompts != ioi_prompts(data, names, 10, seed=4)
    assert [p.order for p in prompts[:4]] == ["ABBA", "BABA", "ABBA", "BABA"]
    located, dropped = locate(WordTokenizer(), prompts)
    assert dropped == 0
    for x in located:
        p = x.prompt
        assert p.io != p.s and x.ids[x.io_pos] == p.io_id and x.ids[x.s_pos[0]] == p.s_id
        assert x.ids[x.s_pos[1]] == p.s_id and x.s_pos[1] < len(x.ids) - 1
        first_clause = sorted([x.io_pos, x.s_pos[0]])
        assert (x.io_pos == first_clause[0]) == (p.order == "ABBA")
        assert x.s_pos[1] > max(first_clause)
    clash = make_ioi_data(("w3 {A} w4 {B} w20 {S} w5",), NAMES, "x")  # w20 is also a name
    prompts = ioi_prompts(clash, names, 40, seed=0)
    located, dropped = locate(WordTokenizer(), prompts)
    assert dropped == sum("w20" in (p.io, p.s) for p in prompts) > 0
    assert len(located) == 40 - dropped
