"""Known heads by behaviour (IOI): the role rule, the recognition and agreement tables, the
published GPT-2 small heads, and the cached entry point."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import WordTokenizer, static_table
from ioi_cases import NAMES, ioi_data
from scipy.stats import rankdata
from tiny_models import tiny_model

from mapslib.behaviour import known_heads as kh
from mapslib.behaviour.direct_effect import direct_effects
from mapslib.behaviour.ioi import ioi_prompts, locate, single_token_names
from mapslib.behaviour.known_heads import (
    HEAD_COLUMNS,
    NO_ROLE,
    agreement,
    assign_roles,
    known_table,
    missed_by_behaviour,
    movers,
    recognition,
    robust_z,
    run_known_heads,
)
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.models import LoadedModel


# -- roles and readings ----------------------------------------------------------------------------
def test_roles_follow_the_rule():
    """Large = beyond 3 robust sd and >= 10% of the largest |effect|; then the attended name decides."""
    noise = np.linspace(-0.01, 0.01, 24)
    special = [2.0, -1.5, 1.0, -0.8, 0.9, 0.15, 0.5]
    io = [0.6, 0.5, 0.05, 0.1, 0.05, 0.6, 0.09]
    s = [0.1, 0.2, 0.7, 0.3, 0.05, 0.1, 0.01]
    effect = np.concatenate([special, noise])
    z = robust_z(effect)
    roles = assign_roles(effect, z, np.array(io + [0.3] * 24), np.array(s + [0.1] * 24))
    assert roles[:7] == [
        "name mover",
        "negative name mover",
        "S suppressor",
        "S mover",
        "other large effect",
        NO_ROLE,  # 0.15 < 10% of 2.0
        "other large effect",  # attends to the IO, but less than MIN_ATTENTION
    ]
    assert set(roles[7:]) == {NO_ROLE}
    assert np.isnan(robust_z(np.array([1.0, 1.0, 1.0, 2.0]))).all()  # MAD 0: z undefined
    assert assign_roles(np.zeros(3), np.zeros(3), np.ones(3), np.zeros(3)) == [NO_ROLE] * 3


def _table() -> pd.DataFrame:
    """Six heads of two layers with roles, static scores and MAPS's verdict at tau = 0.15."""
    rows = [
        (0, 0, 1.0, "name mover", 0.8, 0.0),
        (0, 1, 0.7, "name mover", 0.1, 0.0),
        (0, 2, -0.9, "negative name mover", 0.0, 0.6),
        (1, 0, -0.5, "S mover", 0.3, 0.0),
        (1, 1, 0.01, NO_ROLE, 0.5, 0.2),
        (1, 2, -0.02, NO_ROLE, 0.0, 0.05),
    ]
    df = pd.DataFrame(
        rows, columns=["layer", "head", "direct_effect", "role", "promote", "suppress"]
    )
    df["maps_promote"] = df["promote"] >= 0.15
    df["maps_suppress"] = df["suppress"] >= 0.15
    return df.assign(robust_z=df["direct_effect"] * 10, attn_io=0.5, attn_s=0.2)


def test_recognition_and_missed_heads():
    """MAPS recognises a role on its side; heads over tau without a role on that side are missed."""
    t = _table()
    m = movers(t)
    assert list(m.index) == ["0.0", "0.2", "0.1", "1.0"]  # by |effect|
    assert m["maps recognises"].tolist() == [True, True, False, True]
    assert list(movers(t, ("negative name mover",)).index) == ["0.2"]
    rec = recognition(t)
    assert rec.loc["name mover", "found by behaviour"] == 2
    assert rec.loc["name mover", "MAPS over tau among them"] == 1
    assert rec.loc["S mover", "MAPS over tau among them"] == 1
    assert rec.loc["negative name mover", "MAPS over tau on that side, all heads"] == 2
    missed = missed_by_behaviour(t)
    assert (
        list(missed.index) == ["1.1"] and missed.loc["1.1", "MAPS says"] == "promote and suppress"
    )
    known = known_table(t, {"name mover": [(0, 1), (1, 1)], "negative name mover": [(0, 2)]})
    assert known["maps recognises"].tolist() == [False, True, True]
    assert known.loc["1.1", "role found"] == NO_ROLE


def test_agreement_is_spearman_on_each_side():
    """rho of positive effects with promote, of -negative effects with suppress: Pearson of ranks."""
    t = _table()
    a = agreement(t)
    pos, neg = t[t["direct_effect"] > 0], t[t["direct_effect"] < 0]
    for mode, part, sign in (("promote", pos, 1), ("suppress", neg, -1)):
        r = np.corrcoef(rankdata(sign * part["direct_effect"]), rankdata(part[mode]))[0, 1]
        assert a.loc[mode, "heads"] == len(part)
        assert a.loc[mode, "spearman rho"] == pytest.approx(r, abs=1e-12)  # float64, 3 points
    flat = t.assign(promote=0.0)
    assert np.isnan(agreement(flat).loc["promote", "spearman rho"])


def test_gpt2_small_gets_the_published_heads_and_others_none():
    """The IOI paper's lists for GPT-2 small only; heads parse and are checked against the model."""
    small = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(model_type="gpt2")))
    small.n_layers, small.n_heads, small.d_model = 12, 12, 768
    assert kh.default_known_heads(small) == kh.IOI_GPT2_SMALL
    assert kh.IOI_GPT2_SMALL["name mover"] == ["9.9", "10.0", "9.6"]
    assert kh.IOI_GPT2_SMALL["negative name mover"] == ["10.7", "11.10"]
    hw = HeadWeights(tiny_model("gpt2"))
    assert kh.default_known_heads(hw) is None
    assert kh.parse_known_heads({"x": ["1.3", "0.0"]}, hw) == {"x": [(1, 3), (0, 0)]}
    with pytest.raises(BadArgument):
        kh.parse_known_heads({"x": ["9.9"]}, hw)


# -- the cached entry point ------------------------------------------------------------------------
def test_run_known_heads_caches_and_recomputes(tmp_path, monkeypatch):
    """The table has one row per head with the static scores beside it; a second call reads it back;
    recompute, other parameters or other static scores compute again; no name_copying is an error."""
    model = tiny_model("llama")
    lm = LoadedModel(model, WordTokenizer(), "llama", "local", "-", "r0")
    static = static_table({"name_copying": [(1, 2), (0, 3)]}, 2, 4)
    calls = []
    real = kh.ioi_states
    monkeypatch.setattr(kh, "ioi_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    df = run_known_heads(lm, static, tmp_path, n_prompts=8, data=ioi_data())
    assert list(df.columns) == HEAD_COLUMNS and len(df) == 8 and len(calls) == 1
    assert (tmp_path / "known_heads.csv").is_file()
    side = df.attrs["sidecar"]
    assert side["summary"]["prompts"] == 8 and side["protocol"] == kh.PROTOCOL
    assert df.set_index(["layer", "head"]).loc[(1, 2), "promote"] == pytest.approx(0.9)
    assert df["maps_promote"].sum() == 2 and df["maps_suppress"].all()  # suppress 0.5 everywhere
    hw = HeadWeights(model)
    located, _ = locate(
        lm.tokenizer, ioi_prompts(ioi_data(), single_token_names(lm.tokenizer, NAMES), 8, 0)
    )
    mean = direct_effects(hw, real(hw, located)).mean(0).reshape(-1).numpy()
    np.testing.assert_allclose(df["direct_effect"], mean, rtol=0, atol=1e-12)  # same path, float64

    again = run_known_heads(lm, static, tmp_path, n_prompts=8, data=ioi_data())
    assert len(calls) == 1  # read back
    pd.testing.assert_frame_equal(again, df, check_exact=False, rtol=1e-12)  # through CSV text
    assert set(again["role"]) <= {NO_ROLE, *kh.PREDICTED_SIDE}  # no NaN from the CSV
    run_known_heads(lm, static, tmp_path, n_prompts=8, data=ioi_data(), recompute=True)
    run_known_heads(lm, static, tmp_path, n_prompts=6, data=ioi_data())
    other = static_table({"name_copying": [(0, 0)]}, 2, 4)
    run_known_heads(lm, other, tmp_path, n_prompts=6, data=ioi_data())
    assert len(calls) == 4
    with pytest.raises(BadArgument, match="name_copying"):
        run_known_heads(lm, static_table({"adj_antonym": [(0, 0)]}, 2, 4), None, data=ioi_data())
