"""Relation scores against a brute-force M = E_in W_VO U on tiny models of every architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from mapslib.errors import BadArgument, TooFewPairs
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import embedding_kind
from mapslib.foundation.heads import parse_layers
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.relations import Relation, TokenizedRelation
from mapslib.relation_map.scores import SCORE_COLUMNS, default_k, relation_scores, scores_by_k


def synthetic_relation(
    name: str, vocab: int, n: int, seed: int, copying: bool = False
) -> TokenizedRelation:
    """A relation over random token ids (tiny models have no real words)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (n,), generator=g).tolist()
    dst = src if copying else torch.randint(3, vocab, (n,), generator=g).tolist()
    pairs = tuple((str(s), str(t)) for s, t in zip(src, dst, strict=True))
    rel = Relation(name, pairs, "custom", name, copying, "<synthetic>", "0")
    return TokenizedRelation(rel, pairs, tuple(src), tuple(dst))


def brute_force(
    hw: HeadWeights,
    rel: TokenizedRelation,
    layer: int,
    head: int,
    k: int,
    mode: str,
    embedding: str,
    bias: str = "none",
) -> float:
    """phi_R by building M's rows with the d x d W_VO (and the biases) and calling torch.topk."""
    E = hw.embedding()
    kind = embedding_kind(embedding, layer)
    e_in = {"raw": E, "mlp0": hw.mlp0(E), "mlp0-residual": E + hw.mlp0(E)}[kind]
    x = e_in[list(rel.src_ids)]
    y = x @ hw.W_VO(layer, head)
    if bias != "none":
        y = y + hw.b_V(layer)[hw.kv_head(head)] @ hw.W_O(layer)[head]
    if bias == "value+output":
        y = y + hw.b_O(layer)
    M = y @ hw.unembedding()
    top = torch.topk(M if mode == "promote" else -M, k, dim=1).indices
    return (top == torch.tensor(rel.dst_ids)[:, None]).any(1).double().mean().item()


@pytest.mark.parametrize("embedding", ["paper", "raw", "mlp0-residual"])
def test_scores_match_brute_force(hw: HeadWeights, embedding: str) -> None:
    rels = [
        synthetic_relation("copy", hw.vocab_size, 40, 0, copying=True),
        synthetic_relation("random", hw.vocab_size, 35, 1),
    ]
    df = relation_scores(hw, rels, settings=MapSettings(embedding=embedding), sample_stride=4)
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == hw.n_layers * hw.n_heads * 2 * len(rels)
    for row in df.itertuples():
        rel = rels[0] if row.relation == "copy" else rels[1]
        want = brute_force(hw, rel, row.layer, row.head, row.k, row.mode, embedding)
        assert row.score == pytest.approx(want, abs=1e-6), row


@pytest.mark.parametrize("bias", ["value", "value+output"])
def test_scores_with_biases_match_brute_force(bias: str) -> None:
    """The bias option against the brute force, on families with b_V and b_O."""
    for name in ("gpt2", "qwen2"):
        hw = HeadWeights(tiny_model(name))
        rel = synthetic_relation("random", hw.vocab_size, 35, 1)
        df = relation_scores(hw, [rel], settings=MapSettings(k=5, bias=bias), sample_stride=4)
        plain = relation_scores(hw, [rel], settings=MapSettings(k=5), sample_stride=4)
        for row in df.itertuples():
            want = brute_force(hw, rel, row.layer, row.head, 5, row.mode, "paper", bias)
            assert row.score == pytest.approx(want, abs=1e-6), (name, row)
        assert (df["score"] != plain["score"]).any()  # the biases change some score


def test_k_rule_and_override() -> None:
    assert (default_k(49152, True), default_k(49152, False)) == (1, 10)
    assert (default_k(128256, True), default_k(262144, False)) == (3, 25)
    from tiny_models import tiny_model

    hw = HeadWeights(tiny_model("llama"))
    rels = [
        synthetic_relation("copy", hw.vocab_size, 30, 0, copying=True),
        synthetic_relation("r", hw.vocab_size, 30, 1),
    ]
    df = relation_scores(hw, rels)
    assert set(df.loc[df.relation == "copy", "k"]) == {1} and set(
        df.loc[df.relation == "r", "k"]
    ) == {10}
    df = relation_scores(hw, rels, settings=MapSettings(k=5), layers=[1])
    assert set(df["k"]) == {5} and set(df["layer"]) == {1}
    with pytest.raises(BadArgument):
        relation_scores(hw, rels, settings=MapSettings(k=0))


def test_larger_k_never_lowers_a_score() -> None:
    from tiny_models import tiny_model

    hw = HeadWeights(tiny_model("gpt2"))
    rels = [synthetic_relation("r", hw.vocab_size, 50, 2)]
    scores = [
        relation_scores(hw, rels, settings=MapSettings(k=k))["score"].to_numpy()
        for k in (1, 5, 20, hw.vocab_size)
    ]
    for lo, hi in zip(scores, scores[1:], strict=False):
        assert (hi >= lo).all()
    assert (scores[-1] == 1.0).all()  # k = |V|: every target is in the "top k"


@pytest.mark.parametrize("norms", ["ignore", "fold"])
def test_scores_by_k_in_one_pass_equal_one_map_per_k(norms: str) -> None:
    """One kernel pass counting up to the largest k gives, at every k, exactly the map computed
    with that k alone (counts below the cap are exact)."""
    hw = HeadWeights(tiny_model("qwen2"))
    rels = [
        synthetic_relation("copy", hw.vocab_size, 30, 0, copying=True),
        synthetic_relation("r", hw.vocab_size, 30, 1),
    ]
    settings = MapSettings(norms=norms)
    ks = [1, 3, 10, 25]
    by_k = scores_by_k(hw, rels, [0, 1], ks, settings)
    for k in ks:
        one = relation_scores(hw, rels, layers=[0, 1], settings=settings.but(k=k))
        got = by_k[by_k["k"] == k].reset_index(drop=True)
        assert got[SCORE_COLUMNS].equals(one[SCORE_COLUMNS])
    assert by_k.groupby("k")["score"].mean().is_monotonic_increasing


def test_parse_layers() -> None:
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers("3,0,3", 4) == [0, 3]
    for bad in ("0,4", "a,b", "-1", ""):
        with pytest.raises(BadArgument):
            parse_layers(bad, 4)


def test_no_relations_is_a_clear_error() -> None:
    from tiny_models import tiny_model

    with pytest.raises(TooFewPairs):
        relation_scores(HeadWeights(tiny_model("llama")), [])


@pytest.mark.slow
def test_smollm2_scores_match_naive_topk(smollm2, smollm2_hw: HeadWeights) -> None:
    """On the real model: every head of two layers, every scored relation, against rows built naively."""
    from mapslib.foundation.embeddings import InputEmbeddings
    from mapslib.relation_map.relations import load_relations, scorable
    from mapslib.relation_map.scores import relation_k

    hw = smollm2_hw
    rels = scorable(load_relations(), smollm2.tokenizer, log=lambda _: None)
    df = relation_scores(hw, rels, layers=[0, 23]).set_index(["layer", "head", "relation", "mode"])[
        "score"
    ]
    U = hw.unembedding()
    for layer in (0, 23):
        e_in = InputEmbeddings(hw, None, "paper").for_layer(layer)
        for head in range(hw.n_heads):
            w_vo = hw.W_VO(layer, head)
            for r in rels:
                M = e_in[list(r.src_ids)] @ w_vo @ U
                k = relation_k(r, hw.vocab_size)
                for mode, sign in (("promote", 1), ("suppress", -1)):
                    top = torch.topk(sign * M, k, dim=1).indices
                    want = (top == torch.tensor(r.dst_ids)[:, None]).any(1).float().mean().item()
                    assert df[(layer, head, r.name, mode)] == pytest.approx(want, abs=1e-6), (
                        layer,
                        head,
                        r.name,
                        mode,
                    )


def test_run_relation_map_caches_each_bias_the_model_has(tmp_path) -> None:
    """maps_by_bias: the plain map and one per bias the family has, each cached with its params."""
    from helpers import WordTokenizer

    from mapslib.foundation.models import LoadedModel
    from mapslib.relation_map.relations import load_relation
    from mapslib.relation_map.scores import maps_by_bias

    rel_file = tmp_path / "pairs.csv"
    rel_file.write_text("src,dst\n" + "".join(f"w{i},w{(i * 7) % 120 + 3}\n" for i in range(3, 43)))
    rel = load_relation(rel_file)
    for name, expected in (("qwen2", ["none", "value"]), ("gemma3", ["none"])):
        lm = LoadedModel(tiny_model(name), WordTokenizer(), name, "local", "-", "r0")
        maps = maps_by_bias(lm, [rel], tmp_path / name, settings=MapSettings(k=3))
        assert list(maps) == expected
        files = sorted(p.name for p in (tmp_path / name).glob("*.csv"))
        assert len(files) == len(expected)  # one table per bias, named by its parameters
        again = maps_by_bias(
            lm, [rel], tmp_path / name, settings=MapSettings(k=3)
        )  # read back, not recomputed
        for b in expected:
            assert again[b].attrs["sidecar"] == maps[b].attrs["sidecar"]
            assert again[b]["score"].tolist() == maps[b]["score"].tolist()
    assert (maps_by_bias(lm, [rel], None, settings=MapSettings(k=3))["none"]["n_pairs"] == 40).all()


def test_committed_maps_keep_their_names() -> None:
    """A map made with other settings is named by a hash of its parameters: the committed tables
    must be found under the names they were written with (or every chapter recomputes them)."""
    from mapslib.relation_map.relations import REGISTRY, load_relations
    from mapslib.relation_map.scores import _table_name

    data = Path(__file__).parents[2] / "book" / "models" / "smollm2-135m" / "data"
    relations = load_relations(list(REGISTRY))
    for path in sorted(data.glob("relation_scores*.csv")):
        params = json.loads(path.with_name(path.name + ".json").read_text())["params"]
        settings = MapSettings.from_parameters(
            **{k: params.get(k) for k in ("embedding", "k", "min_pairs", "bias", "norms")}
        )
        assert _table_name(params, relations, 30, settings) == path.name
