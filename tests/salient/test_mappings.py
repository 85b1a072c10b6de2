"""Saliency in factored form against the d x d brute force, and the salient-mapping table, on tiny models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model
from torch.testing import assert_close

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.settings import MapSettings
from mapslib.foundation.tokens import shown
from mapslib.salient.mappings import SALIENT_COLUMNS, mapping_lines, mapping_table, salient_mappings
from mapslib.salient.saliency import saliency_scores, top_salient

ARCHS = ["llama", "gpt2", "gemma3", "gpt_neox"]  # GQA, Conv1D, scaled embeddings + MQA, fused qkv


class StubTokenizer:
    """Decodes id i to a string with the awkward cases: leading spaces, newlines, broken bytes."""

    def decode(self, ids, clean_up_tokenization_spaces=False):
        i = int(ids[0])
        if i % 7 == 0:
            return "\ufffd"  # half of a multi-byte character
        if i % 5 == 0:
            return f"\n{i}"
        return f" t{i}" if i % 2 else f"t{i}"

    def convert_ids_to_tokens(self, i):
        return "Ã" if i % 14 == 0 else None  # 0xC3 alone: not valid UTF-8


def brute_saliency(
    hw: HeadWeights, layer: int, head: int, embedding: str = "paper"
) -> torch.Tensor:
    """||e_t W_VO|| / ||e_t|| with the explicit d x d W_VO."""
    x = InputEmbeddings(hw, None, embedding).for_layer(layer)
    return torch.linalg.vector_norm(x @ hw.W_VO(layer, head), dim=1) / torch.linalg.vector_norm(
        x, dim=1
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("embedding", ["paper", "raw"])
def test_saliency_matches_brute_force(arch: str, embedding: str) -> None:
    hw = HeadWeights(tiny_model(arch))
    sal = saliency_scores(
        hw, settings=MapSettings(embedding=embedding), chunk=37
    )  # a chunk that does not divide |V|
    assert sal.shape == (hw.n_layers, hw.n_heads, hw.vocab_size)
    for layer in range(hw.n_layers):
        for head in range(hw.n_heads):
            assert_close(
                sal[layer, head].double(),
                brute_saliency(hw, layer, head, embedding).float().double(),
                rtol=1e-5,
                atol=1e-6,
            )


def test_saliency_layers_subset_and_order() -> None:
    hw = HeadWeights(tiny_model("llama"))
    full = saliency_scores(hw)
    assert_close(saliency_scores(hw, [1, 0]), full[[1, 0]])


def test_saliency_is_not_uniform_across_heads() -> None:
    """A wrong kv-head mapping would give grouped heads identical saliencies; W_O differs per head."""
    hw = HeadWeights(tiny_model("llama"))
    sal = saliency_scores(hw, [1])[0]
    assert not torch.allclose(sal[0], sal[1])


def test_top_salient_orders_highest_first() -> None:
    sal = torch.tensor([[0.1, 3.0, 2.0, 5.0]])
    v, i = top_salient(sal, 2)
    assert i.tolist() == [[3, 1]] and v.tolist() == [[5.0, 3.0]]
    assert top_salient(sal, 10)[1].shape == (1, 4)


@pytest.mark.parametrize("suppress", [False, True])
def test_salient_mappings_match_brute_force(suppress: bool) -> None:
    hw = HeadWeights(tiny_model("llama"))
    tok = StubTokenizer()
    heads = [(1, 3), (0, 1), (1, 0)]
    df = salient_mappings(hw, tok, heads, top_tokens=6, top_mappings=4, suppress=suppress)
    assert list(df.columns) == SALIENT_COLUMNS
    assert len(df) == len(heads) * 6 * 4
    U = hw.unembedding()
    for layer, head in heads:
        sel = df[(df["layer"] == layer) & (df["head"] == head)]
        sal = brute_saliency(hw, layer, head)
        want_src = torch.topk(sal, 6).indices.tolist()
        got_src = sel.drop_duplicates("salient_rank")["source_id"].tolist()
        assert got_src == want_src
        x = InputEmbeddings(hw, None).for_layer(layer)
        rows = x[want_src] @ hw.W_VO(layer, head) @ U
        want = torch.topk(rows, 4, dim=1, largest=not suppress)
        assert sel["target_id"].tolist() == want.indices.flatten().tolist()
        assert_close(
            torch.tensor(sel["score"].tolist(), dtype=torch.float64),
            want.values.flatten(),
            rtol=1e-5,
            atol=1e-5,
        )


def test_tokens_are_stored_raw_and_shown_visibly() -> None:
    """The table holds raw token text; mapping_table shows it with glyphs; nothing crashes."""
    hw = HeadWeights(tiny_model("llama"))
    df = salient_mappings(hw, StubTokenizer(), [(1, 2)], top_tokens=hw.vocab_size, top_mappings=2)
    texts = dict(zip(df["source_id"], df["source"], strict=False))
    assert texts[3] == " t3" and texts[10] == "\n10"
    assert texts[14] == "\\xc3"  # a partial UTF-8 byte has no string: kept as an escape
    shown_sources = set(mapping_table(df, 1, 2)["source"])
    assert {"␣t3", "\\n10", "\\xc3"} <= shown_sources
    assert all(isinstance(t, str) and t for t in df["target"])


def test_mapping_lines_and_table() -> None:
    hw = HeadWeights(tiny_model("llama"))
    df = salient_mappings(hw, StubTokenizer(), [(1, 1)], top_tokens=3, top_mappings=2)
    lines = mapping_lines(df, 1, 1)
    assert len(lines) == 3
    first = df[df["salient_rank"] == 1]
    assert (
        lines[0] == f"{shown(first['source'].iloc[0])} -> {', '.join(map(shown, first['target']))}"
    )
    tab = mapping_table(df, 1, 1)
    assert list(tab.columns) == ["source", "saliency", "targets"]
    assert tab["saliency"].is_monotonic_decreasing


def test_zero_norm_token_has_zero_saliency() -> None:
    from tiny_models import build, tiny_config

    model = build(tiny_config("llama"))
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = 0.0
    hw = HeadWeights(model)
    sal = saliency_scores(hw, [0], settings=MapSettings(embedding="raw"))
    assert sal[0, :, 5].eq(0).all() and torch.isfinite(sal).all()


@pytest.mark.slow
def test_smollm2_name_copying_head_copies() -> None:
    """Head 23.2 of SmolLM2 copies names (MODELS.md): most salient tokens map to themselves."""
    from mapslib.foundation.models import load_model

    lm = load_model("smollm2-135m")
    hw = HeadWeights(lm.model)
    df = salient_mappings(hw, lm.tokenizer, [(23, 2)], top_tokens=30, top_mappings=5)
    copied = df.groupby("salient_rank").apply(
        lambda g: g["source_id"].iloc[0] in set(g["target_id"])
    )
    assert copied.mean() > 0.5
    assert df["source"].str.startswith(" ").mean() > 0.5  # raw text keeps its leading spaces
    assert mapping_table(df, 23, 2)["source"].str.startswith("␣").mean() > 0.5  # shown visibly


def test_salient_mappings_reuse_precomputed_saliency() -> None:
    hw = HeadWeights(tiny_model("llama"))
    heads = [(0, 1), (1, 2)]
    a = salient_mappings(hw, StubTokenizer(), heads, top_tokens=4, top_mappings=2)
    b = salient_mappings(
        hw, StubTokenizer(), heads, top_tokens=4, top_mappings=2, saliency=saliency_scores(hw)
    )
    assert a.equals(b)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heads", "23.x", "--out", "x.json"], "LAYER.HEAD"),
        (["--heads", "23.2", "--out", "x.txt"], "--out must end in"),
        (["--heads", "23.2", "--top-tokens", "0", "--out", "x.json"], "--top-tokens"),
    ],
)
def test_cli_rejects_bad_arguments_before_loading(
    argv: list[str], message: str, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    from mapslib.cli import main

    argv = [a if not a.startswith("x.") else str(tmp_path / a) for a in argv]
    assert main(["salient", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_salient_writes_table_and_parameters(tmp_path) -> None:
    import json

    import pandas as pd

    from mapslib.cli import main

    out = tmp_path / "salient.json"
    argv = ["salient", "--heads", "23.2,23.3", "--top-tokens", "4", "--top-mappings", "3"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    df = pd.read_json(out, dtype=False)
    assert list(df.columns) == SALIENT_COLUMNS and len(df) == 2 * 4 * 3
    params = json.loads((tmp_path / "salient.json.json").read_text())
    assert params["heads"] == ["23.2", "23.3"] and params["top_tokens"] == 4
    assert "Q4_1" in params["model"]["quantization"]
