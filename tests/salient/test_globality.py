"""Input skewness, output-space size (exact and sampled) and the reference heads, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from tiny_models import tiny_model

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.kernels import Blocks
from mapslib.salient.globality import (
    SPACE_COLUMNS,
    argmax_targets,
    capitalised_form,
    default_sample,
    global_head_targets,
    head_globality,
    input_skewness,
    is_capitalised_with_space,
    jackknife_se,
    normalized_unembedding_rows,
    output_space,
    reference_heads,
    sample_sources,
    shlosser,
    space_stats,
)
from mapslib.salient.saliency import saliency_scores


def brute_targets(hw: HeadWeights, layer: int, head: int) -> torch.Tensor:
    """argmax of each row of the full |V| x |V| matrix E_in W_VO U_normalised."""
    x = InputEmbeddings(hw, None).for_layer(layer)
    U = hw.unembedding()
    M = x @ hw.W_VO(layer, head) @ (U / U.norm(dim=0, keepdim=True))
    return M.argmax(1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_exact_output_space_matches_brute_force(arch: str) -> None:
    hw = HeadWeights(tiny_model(arch))
    assert default_sample(hw) is None  # tiny vocabulary: exact
    df = output_space(hw)
    assert list(df.columns) == SPACE_COLUMNS and df["exact"].all()
    for layer in range(hw.n_layers):
        for head in range(hw.n_heads):
            want = len(torch.unique(brute_targets(hw, layer, head))) / hw.vocab_size
            row = df[(df["layer"] == layer) & (df["head"] == head)].iloc[0]
            assert row["size"] == pytest.approx(want)
            assert row["size_sample"] == pytest.approx(want)
            assert row["size_se"] == 0.0


@pytest.mark.parametrize("rows", [3, 200])  # few rows: factored association; many: unfactored
def test_argmax_targets_both_associations_and_tiles(rows: int) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(rows, 4, generator=gen, dtype=torch.float64)
    w_o = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    u_rows = normalized_unembedding_rows(torch.randn(16, 300, generator=gen, dtype=torch.float64))
    got = argmax_targets(a, w_o, u_rows, Blocks(rows=7, cols=11))
    assert torch.equal(got, (a @ w_o @ u_rows.T).argmax(1))


def test_normalized_unembedding_has_unit_columns() -> None:
    U = torch.randn(8, 50, dtype=torch.float64)
    U[:, 3] = 0
    rows = normalized_unembedding_rows(U)
    norms = rows.norm(dim=1)
    assert torch.allclose(norms[torch.arange(50) != 3], torch.ones(49, dtype=torch.float64))
    assert norms[3] == 0


def test_sampled_output_space_uses_the_sampled_rows() -> None:
    hw = HeadWeights(tiny_model("llama"))
    df = output_space(hw, [1], sample=40, seed=3)
    src = sample_sources(hw.vocab_size, 40, seed=3)
    for head in range(hw.n_heads):
        labels = brute_targets(hw, 1, head)[src].numpy()
        row = df[df["head"] == head].iloc[0]
        assert not row["exact"] and row["n_sources"] == 40
        assert row["distinct"] == len(np.unique(labels))
        assert row["size_sample"] == pytest.approx(len(np.unique(labels)) / 40)
        assert row["size"] == pytest.approx(shlosser(labels, hw.vocab_size) / hw.vocab_size)


def test_sample_sources_seeded_without_replacement() -> None:
    a, b = sample_sources(1000, 100, seed=5), sample_sources(1000, 100, seed=5)
    assert torch.equal(a, b) and len(torch.unique(a)) == 100
    assert not torch.equal(a, sample_sources(1000, 100, seed=6))
    assert torch.equal(sample_sources(50, None), torch.arange(50))
    assert torch.equal(sample_sources(50, 80), torch.arange(50))
    with pytest.raises(BadArgument):
        sample_sources(1000, 3)


def test_shlosser_limits() -> None:
    rng = np.random.default_rng(0)
    N = 10_000
    assert shlosser(np.arange(N) % 7, N) == 7  # a census is exact
    assert shlosser(np.zeros(500, dtype=int), N) == 1  # one output
    injective = rng.permutation(N)[:500]
    assert shlosser(injective, N) == pytest.approx(N, rel=0.02)  # every source its own output
    assert shlosser(np.array([], dtype=int), N) == 0


def test_shlosser_beats_the_sample_ratio_on_a_skewed_population() -> None:
    """A hub of half the sources plus singletons, like real heads: the estimate is closer than d/n."""
    N = 20_000
    pop = np.concatenate([np.zeros(N // 2, dtype=int), np.arange(1, N // 2 + 1)])
    truth = len(np.unique(pop)) / N
    lab = pop[np.random.default_rng(1).permutation(N)[:1000]]
    st = space_stats(lab, N)
    assert abs(st["size"] - truth) < abs(st["size_sample"] - truth)
    assert st["size"] == pytest.approx(truth, rel=0.1)


def test_jackknife_se_is_close_to_spread_over_samples() -> None:
    N = 20_000
    rng = np.random.default_rng(2)
    pop = rng.zipf(1.6, N) % 3000
    stats = [space_stats(pop[rng.permutation(N)[:1000]], N) for _ in range(30)]
    sd = np.std([s["size_sample"] for s in stats], ddof=1)
    jk = np.mean([s["size_sample_se"] for s in stats])
    assert 0.5 * sd < jk < 2 * sd
    assert jackknife_se(pop, N) == (0.0, 0.0)  # a census has no sampling error


def test_input_skewness_matches_scipy() -> None:
    hw = HeadWeights(tiny_model("llama"))
    sal = saliency_scores(hw)
    sk = input_skewness(sal)
    assert sk.shape == (hw.n_layers, hw.n_heads)
    assert sk[1, 2] == pytest.approx(scipy.stats.skew(sal[1, 2].double().numpy()))
    table = head_globality(hw, sal, output_space(hw))
    assert len(table) == hw.n_layers * hw.n_heads
    assert {"input_skewness", "size", "size_sample"} <= set(table.columns)


def test_capitalisation_rules() -> None:
    assert capitalised_form(" paris") == " Paris"
    assert capitalised_form("paris") == " Paris"
    assert capitalised_form(" Paris") == " Paris"
    assert capitalised_form(" 1999") is None and capitalised_form("") is None
    assert is_capitalised_with_space(" Paris") and not is_capitalised_with_space("Paris")
    assert not is_capitalised_with_space(" paris") and not is_capitalised_with_space(" ")


def test_reference_heads_on_a_known_vocabulary() -> None:
    texts = ["<eos>", " cat", " Cat", "cat", " Dog", " dog", " 12", "!", " Zebra", "x"]
    targets = global_head_targets(texts, fallback=0)
    # ' cat', ' Cat', 'cat' -> ' Cat'; ' Dog', ' dog' -> ' Dog'; ' Zebra' -> itself; 'x' has no ' X'
    assert targets.tolist() == [0, 2, 2, 2, 4, 4, 0, 0, 8, 0]
    ref = reference_heads(texts, np.arange(len(texts)))
    glob = ref[ref["reference"] == "global head"].iloc[0]
    spec = ref[ref["reference"] == "specific head"].iloc[0]
    assert glob["size_exact"] == pytest.approx(4 / 10)  # the 3 capitalised tokens and the fallback
    assert spec["size_exact"] == pytest.approx(1 / 10)
    assert glob["exact"] and glob["size"] == pytest.approx(0.4)
    assert ref.attrs["capitalised_share"] == pytest.approx(3 / 10)


def test_one_output_has_exactly_zero_error() -> None:
    st = space_stats(np.zeros(512, dtype=int), 49152)
    assert st["size_sample_se"] == 0.0 and st["size_se"] == 0.0
