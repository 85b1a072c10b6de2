"""MapSettings: one object for every map choice, its defaults defined once, checked when made."""

from __future__ import annotations

import re

import pytest

from mapslib.errors import BadArgument
from mapslib.foundation.settings import DEFAULTS, MapSettings


def test_defaults_are_the_papers() -> None:
    assert DEFAULTS == MapSettings(
        embedding="paper", k=None, bias="none", min_pairs=30, tau=0.15, norms="ignore"
    )


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"embedding": "nope"}, "paper, raw, mlp0-residual"),
        ({"bias": "both"}, "none, value, value+output"),
        ({"norms": "apply"}, "ignore, fold"),
        ({"k": 0}, "positive integer"),
        ({"k": 2.5}, "positive integer"),
        ({"min_pairs": 0}, "positive integer"),
        ({"tau": 0}, "(0, 1]"),
        ({"tau": 1.5}, "(0, 1]"),
    ],
)
def test_bad_values_name_what_is_allowed(bad: dict, words: str) -> None:
    with pytest.raises(BadArgument, match=re.escape(words)):
        MapSettings(**bad)


def test_from_parameters_takes_none_as_the_default_and_refuses_unknown_names() -> None:
    assert MapSettings.from_parameters(embedding=None, k=None, tau=0.3) == DEFAULTS.but(tau=0.3)
    with pytest.raises(BadArgument, match="unknown map setting embeding"):
        MapSettings.from_parameters(embeding="raw")


def test_cache_keys_keep_old_tables_valid_and_never_reuse_a_different_map() -> None:
    # at the defaults, a key holds only what the experiment names (as before the settings existed)
    assert DEFAULTS.params("k", "embedding", "min_pairs") == {
        "k": None,
        "embedding": "paper",
        "min_pairs": 30,
    }
    # any other choice that differs joins the key, so a table made otherwise is not reused;
    # tau reads tables and makes none, so it never does
    changed = MapSettings(bias="value", norms="fold", tau=0.3).params("embedding")
    assert changed == {"embedding": "paper", "bias": "value", "norms": "fold"}
    assert MapSettings(k=5, norms="fold").changed("k", "min_pairs") == {"k": 5}
    assert DEFAULTS.changed("k", "min_pairs") == {}


def test_record_holds_every_choice() -> None:
    assert MapSettings(k=3).record() == {
        "embedding": "paper",
        "k": 3,
        "bias": "none",
        "min_pairs": 30,
        "tau": 0.15,
        "norms": "ignore",
    }
