"""Reverse search (`heads`): target ranks against a brute-force M = E_in W_VO U on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tiny_models import build, tiny_config, tiny_model

from mapslib.cli import main
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import embedding_kind
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.reverse import COLUMNS, run_heads, target_ranks, token_id


def brute_force_map(hw: HeadWeights, layer: int, head: int, settings: MapSettings) -> torch.Tensor:
    """A head's whole |V| x |V| map, with the d x d W_VO: for tiny models only."""
    hw = hw.with_norms(settings.norms)
    E = hw.embedding()
    kind = embedding_kind(settings.embedding, layer)
    e_in = {"raw": E, "mlp0": hw.mlp0(E), "mlp0-residual": E + hw.mlp0(E)}[kind]
    y = e_in @ hw.W_VO(layer, head)
    if settings.bias != "none":
        y = y + hw.b_V(layer)[hw.kv_head(head)] @ hw.W_O(layer)[head]
    if settings.bias == "value+output":
        y = y + hw.b_O(layer)
    return y @ hw.unembedding()


def brute_force_rank(M: torch.Tensor, s: int, t: int, suppress: bool) -> int:
    """1 + the entries of row s strictly beyond the target's (float64: no ties to break)."""
    row = -M[s] if suppress else M[s]
    return 1 + int((row > row[t]).sum())


def check_against_brute_force(
    hw: HeadWeights, pairs: list[tuple[int, int]], settings: MapSettings, suppress: bool
) -> pd.DataFrame:
    """target_ranks on `pairs` equals the brute force, pair by pair, and their mean."""
    df = target_ranks(hw, [s for s, _ in pairs], [t for _, t in pairs], settings, suppress)
    assert list(df.columns[:5]) == COLUMNS and len(df) == hw.n_layers * hw.n_heads
    assert df["target_rank"].is_monotonic_increasing
    for row in df.itertuples():
        M = brute_force_map(hw, row.layer, row.head, settings)
        ranks = [brute_force_rank(M, s, t, suppress) for s, t in pairs]
        entries = [float(M[s, t]) for s, t in pairs]
        got = [getattr(row, f"rank_{i + 1}") for i in range(len(pairs))]
        assert got == ranks, (row.name, got, ranks)
        assert row.target_rank == pytest.approx(sum(ranks) / len(ranks))
        assert row.score == pytest.approx(sum(entries) / len(entries), abs=1e-5)
        assert row.score_1 == pytest.approx(entries[0], abs=1e-5)
    return df


@pytest.mark.parametrize("suppress", [False, True])
@pytest.mark.parametrize("embedding", ["paper", "raw", "mlp0-residual"])
def test_ranks_match_brute_force(hw: HeadWeights, embedding: str, suppress: bool) -> None:
    """Three pairs (two share a source) on every architecture: each pair's rank and the mean."""
    pairs = [(5, 17), (40, 3), (5, 99)]
    df = check_against_brute_force(hw, pairs, MapSettings(embedding=embedding), suppress)
    assert df["target_rank"].nunique() > 1  # the heads differ


def test_one_pair_gives_integer_ranks(hw: HeadWeights) -> None:
    df = check_against_brute_force(hw, [(7, 8)], MapSettings(), suppress=False)
    assert df["target_rank"].dtype.kind == "i" and (df["target_rank"] == df["rank_1"]).all()


def test_each_heads_own_top_target_ranks_first(hw: HeadWeights) -> None:
    """The argmax (argmin under --suppress) of a head's row is that head's rank-1 target: one pair
    per head, all asked at once, head i's own target in pair i."""
    settings, s = MapSettings(), 11
    heads = [(layer, head) for layer in range(hw.n_layers) for head in range(hw.n_heads)]
    rows = [brute_force_map(hw, layer, head, settings)[s] for layer, head in heads]
    for suppress in (False, True):
        own = [int(r.argmin() if suppress else r.argmax()) for r in rows]
        df = target_ranks(hw, [s] * len(own), own, settings, suppress)
        df = df.set_index(["layer", "head"])
        for i, head in enumerate(heads):
            assert df.loc[head, f"rank_{i + 1}"] == 1, (head, suppress)


@pytest.mark.parametrize("bias", ["value", "value+output"])
def test_a_bias_setting_changes_the_ranks_where_the_model_has_biases(bias: str) -> None:
    for name in ("gpt2", "qwen2"):  # families with b_V (and GPT-2 with b_O)
        hw = HeadWeights(tiny_model(name))
        pairs = [(5, 17), (40, 3)]
        with_bias = check_against_brute_force(hw, pairs, MapSettings(bias=bias), False)
        plain = target_ranks(hw, [5, 40], [17, 3])
        merged = with_bias.merge(plain, on=["layer", "head"], suffixes=("", "_plain"))
        assert (merged["rank_1"] != merged["rank_1_plain"]).any(), name


def test_folded_norms_match_brute_force() -> None:
    """norms=fold: the map of the norm-folded weights, on a LayerNorm and an RMSNorm family."""
    for name in ("gpt2", "gemma2"):
        hw = HeadWeights(tiny_model(name))
        folded = check_against_brute_force(hw, [(5, 17)], MapSettings(norms="fold"), False)
        plain = target_ranks(hw, [5], [17])
        assert not folded["score"].equals(plain["score"])


def test_tokens_with_equal_entries_are_ties_in_the_targets_favour() -> None:
    """Two tokens with the same column of U: each ranks as if the other were not above it, in
    float32, whatever rounding the product makes on the two columns."""
    model = build(tiny_config("llama"), torch.float32)
    t, twin = 17, 90
    with torch.no_grad():
        model.lm_head.weight[twin] = model.lm_head.weight[t]
    hw = HeadWeights(model)
    for suppress in (False, True):
        a = target_ranks(hw, [5], [t], suppress=suppress).set_index("name")
        b = target_ranks(hw, [5], [twin], suppress=suppress).set_index("name")
        assert (a["target_rank"] == b.loc[a.index, "target_rank"]).all()
        for row in a.itertuples():
            M = brute_force_map(hw, row.layer, row.head, MapSettings()).double()
            beyond = -M[5] if suppress else M[5]
            others = torch.cat([beyond[:t], beyond[t + 1 : twin], beyond[twin + 1 :]])
            gap = others - beyond[t]
            assert (gap.abs() > 1e-5).all()  # no other near-tie: the count is well defined
            assert row.target_rank == 1 + int((gap > 0).sum())


def test_unpaired_or_out_of_range_ids_are_one_line() -> None:
    hw = HeadWeights(tiny_model("llama"))
    for sources, targets in (([1, 2], [3]), ([], []), ([1], [hw.vocab_size])):
        with pytest.raises(BadArgument) as e:
            target_ranks(hw, sources, targets)
        assert "\n" not in str(e.value)


# --- tokens and the written table -------------------------------------------------------------------


class PieceTokenizer:
    """A stand-in tokenizer: greedy longest match over a few pieces, else one token per character."""

    PIECES = [" France", " Paris", "Fr", "ance", " Par", "is"]

    def __init__(self) -> None:
        self.vocab = self.PIECES + [chr(c) for c in range(32, 127)]  # 101 ids: fits a tiny model

    def _encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            piece = max((p for p in self.vocab if text.startswith(p, i)), key=len)
            ids.append(self.vocab.index(piece))
            i += len(piece)
        return ids

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": [self._encode(t) for t in texts]}

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids)


def tiny_lm(name: str = "llama") -> SimpleNamespace:
    """What run_heads reads of a loaded model: weights, tokenizer, provenance."""
    return SimpleNamespace(
        hw=HeadWeights(tiny_model(name)), tokenizer=PieceTokenizer(), info=lambda: {"spec": name}
    )


def test_a_token_must_be_one_token_and_the_error_shows_the_split() -> None:
    tok = PieceTokenizer()
    assert token_id(tok, " France") == 0 and token_id(tok, "x") == tok.vocab.index("x")
    with pytest.raises(BadArgument) as e:
        token_id(tok, "France", "source")
    msg = str(e.value)
    assert "source 'France'" in msg and "'Fr' + 'ance'" in msg and "' France' is one token" in msg
    with pytest.raises(BadArgument) as e:
        token_id(tok, " Parisx", "target")
    msg = str(e.value)
    assert "' Paris' + 'x'" in msg and "must each be one token" in msg and "\n" not in msg
    with pytest.raises(BadArgument, match="' France' is one token"):
        run_heads(tiny_lm(), [(" France", " Paris"), ("France", " Paris")], None)


def test_run_heads_writes_the_table_and_its_sidecar(tmp_path: Path) -> None:
    lm, out = tiny_lm("gpt2"), tmp_path / "heads.csv"
    settings = MapSettings(embedding="raw", bias="value")
    pairs = [(" France", " Paris"), (" Paris", " France")]
    df = run_heads(lm, pairs, out, settings=settings, suppress=True)
    written = pd.read_csv(out, dtype={"name": str})
    assert written.equals(df) and len(df) == 8
    assert list(df.columns) == COLUMNS + ["rank_1", "score_1", "rank_2", "score_2"]
    direct = target_ranks(lm.hw, [0, 1], [1, 0], settings, suppress=True)
    assert df.equals(direct)
    side = json.loads(out.with_name("heads.csv.json").read_text())
    assert side["settings"] == settings.record() and side["mode"] == "suppress"
    assert side["pairs"][1] == {
        "pair": 2,
        "source": " Paris",
        "target": " France",
        "source_id": 1,
        "target_id": 0,
    }
    assert side["params"]["bias"] == "value" and "heads" in side["timings_s"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_unequal_source_and_target_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["heads", "--model", "no-such-model", "--source", " France", "--source", " Italy"]
    code = main([*argv, "--target", " Paris", "--out", str(tmp_path / "h.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "got 2 --source and 1 --target" in err


# --- the real default model --------------------------------------------------------------------------


@pytest.mark.slow
def test_heads_end_to_end_on_smollm2(tmp_path: Path) -> None:
    """` France` -> ` Paris` on SmolLM2-135M: 270 heads sorted by rank, the settings recorded."""
    out = tmp_path / "heads.csv"
    cmd = [sys.executable, "-m", "mapslib", "heads", "--model", "smollm2-135m", "--device", "cpu"]
    cmd += ["--source", " France", "--target", " Paris", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, dtype={"name": str})
    assert len(df) == 270 and df["target_rank"].is_monotonic_increasing
    assert df.groupby(["layer", "head"]).size().max() == 1
    assert df["target_rank"].between(1, 49152).all()
    assert df.loc[0, "layer"] == 23  # a layer-23 head ranks ` Paris` near the top
    assert proc.stdout.startswith("top 10 of 270 heads, promote, ' France' -> ' Paris'")
    assert len(proc.stdout.strip().splitlines()) == 12  # title, header, 10 heads
    side = json.loads(out.with_name("heads.csv.json").read_text())
    assert side["settings"] == MapSettings().record()
    assert side["pairs"] == [
        {"pair": 1, "source": " France", "target": " Paris", "source_id": 4649, "target_id": 7042}
    ]


@pytest.mark.slow
def test_a_multi_token_word_is_one_line_on_smollm2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["heads", "--model", "smollm2-135m", "--weights-only", "--device", "cpu"]
    argv += ["--source", " Kyrgyzstan", "--target", " Bishkek", "--out", str(tmp_path / "h.csv")]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: source ' Kyrgyzstan' is not one token")
    assert "' Kyrgyz' + 'stan'" in err[-1]
    assert not (tmp_path / "h.csv").exists()
