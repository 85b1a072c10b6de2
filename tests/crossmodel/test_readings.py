"""The readings chapter's summaries on hand-made maps: counts, k rules, noise, known heads, verdict."""

from __future__ import annotations

import pandas as pd
import pytest

from mapslib.crossmodel import readings as rd
from mapslib.foundation.settings import DEFAULTS

TAU = 0.15


def scores(entries: dict[tuple[int, int, str, str], float], heads: int = 4) -> pd.DataFrame:
    """A full map of `heads` heads in one layer over two relations; `entries` set some scores."""
    rows = [
        (0, h, rel, mode, entries.get((0, h, rel, mode), 0.0))
        for h in range(heads)
        for rel in ("name_copying", "adj_antonym")
        for mode in ("promote", "suppress")
    ]
    return pd.DataFrame(rows, columns=["layer", "head", "relation", "mode", "score"])


def tagged(
    df: pd.DataFrame, kind: str, norms: str = "ignore", draw: int = -1, **cols
) -> pd.DataFrame:
    s = DEFAULTS.but(norms=norms)
    return rd._tagged(df.assign(**cols), kind, s, draw)


def test_readings_cross_norms_with_embeddings_and_the_value_bias() -> None:
    plain, biased = rd.readings(False), rd.readings(True)
    assert len(plain) == 6 and len(biased) == 8
    labels = [rd.reading_label(s) for s in biased]
    assert labels[0] == "ignore · paper" and "fold · paper + bias value" in labels


def test_heads_over_tau_counts_heads_not_entries() -> None:
    m = scores({(0, 1, "name_copying", "promote"): 0.5, (0, 1, "adj_antonym", "promote"): 0.2,
                (0, 2, "adj_antonym", "suppress"): 0.15, (0, 3, "adj_antonym", "promote"): 0.149})  # fmt: skip
    assert rd.heads_over_tau(m, TAU) == {"promote": 1, "suppress": 1}


def test_k_rules_read_copying_relations_at_the_small_k() -> None:
    """Head 1 copies only at k >= 3 and head 2's antonyms are found only at k = 25: the 1 / 10
    rule sees neither, the 3 / 25 rule both."""
    frames = []
    for k in rd.KS:
        entries = {}
        if k >= 3:
            entries[(0, 1, "name_copying", "promote")] = 0.9
        if k >= 25:
            entries[(0, 2, "adj_antonym", "promote")] = 0.9
        frames.append(tagged(scores(entries), "k", k=k))
    table = pd.concat(frames, ignore_index=True)
    row = rd.k_summary(table, TAU).iloc[0]
    assert (row["k = 1"], row["k = 3"], row["k = 25"]) == (0, 1, 2)
    assert row["rule 1 / 10 (|V| ~ 50k)"] == 0 and row["rule 3 / 25 (|V| >= 100k)"] == 2


def test_noise_summary_counts_entries_that_cross_tau() -> None:
    exact = scores({(0, 1, "name_copying", "promote"): 0.16, (0, 2, "adj_antonym", "promote"): 0.5})
    draw0 = scores({(0, 1, "name_copying", "promote"): 0.14, (0, 2, "adj_antonym", "promote"): 0.5})
    draw1 = scores({(0, 1, "name_copying", "promote"): 0.17, (0, 2, "adj_antonym", "promote"): 0.5})
    table = pd.concat(
        [tagged(exact, "reading"), tagged(draw0, "noise", draw=0), tagged(draw1, "noise", draw=1)]
    )
    out = rd.noise_summary(table, TAU)
    assert out["draws"] == 2 and out["entries over tau"] == 2 and out["entries crossing tau"] == 1
    assert out["largest change"] == pytest.approx(0.02)
    assert out["heads over tau (promote), noisy draws"] == "1, 2"


def test_known_heads_are_recognised_on_their_side_only() -> None:
    m = scores({(0, 0, "name_copying", "promote"): 0.8, (0, 1, "name_copying", "promote"): 0.8})
    known = pd.DataFrame(
        {"layer": [0, 0, 0, 0], "head": [0, 1, 2, 3],
         "role": ["name mover", "negative name mover", "-", "other large effect"]}
    )  # fmt: skip
    assert rd.known_recognised(m, known, TAU) == (1, 2)  # 1.1 promotes where it should suppress


def test_verdict_names_the_best_reading_and_whether_its_lead_is_clear() -> None:
    summary = pd.DataFrame(
        {"model": "m", "reading": ["ignore · paper", "fold · paper"],
         "median r, no context": [0.10, 0.40], "known share": [0.0, 0.5],
         "known heads recognised": ["0 of 2", "1 of 2"]}
    )  # fmt: skip
    text = rd.verdict(summary)
    assert "`fold · paper` (0.40; paper's reading 0.10: a clear lead)" in text
    assert "`fold · paper` recognises 1 of 2 (paper's reading 0 of 2)" in text
    close = summary.assign(**{"median r, no context": [0.40, 0.42]})
    assert "within the margin" in rd.verdict(close)
