"""Random baseline (paper, appendix A.3): do random matrices with a layer's statistics pass tau?

For every layer, H random d x d matrices are drawn from a normal distribution with the mean and
standard deviation of the entries of that layer's real W_VO matrices (all heads pooled), and scored
on the relations exactly like heads. A relation score that random matrices reach would say more about
the embeddings than about the head; the paper finds (almost) none over tau = 0.15.

The layer statistics are computed without forming any W_VO: with W_VO = W_V W_O,
sum of entries = (1^T W_V)(W_O 1) and sum of squares = sum((W_V^T W_V) * (W_O W_O^T)), both
d_head x d_head work. A random W is full rank, so its rows of M are (E_in[src] @ W) @ U: the kernel
`count_outside` is given a = E_in[src] and w_o = W (r = d) and then uses the unfactored association
for its full-row pass. Random rows are almost all decided by the column sample, so a sparser sample
(stride 32) is used; the answer is exact whatever the stride.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.kernels import Blocks, KernelStats, Unembedding, count_outside_many
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings
from mapslib.relation_map.relations import Relation, TokenizedRelation, scorable
from mapslib.relation_map.scores import PairBatch, protocol, scores_frame


def layer_ov_stats(hw: HeadWeights, layer: int) -> tuple[float, float]:
    """Mean and (population) standard deviation of the entries of all W_VO(h) of `layer`, in factored form."""
    w_v, w_o = hw.W_V(layer).double(), hw.W_O(layer).double()  # (G, d, r), (H, r, d)
    total, squares = 0.0, 0.0
    for h in range(hw.n_heads):
        v, o = w_v[hw.kv_head(h)], w_o[h]
        total += float(v.sum(0) @ o.sum(1))
        squares += float(((v.T @ v) * (o @ o.T)).sum())
    n = hw.n_heads * hw.d_model**2
    mean = total / n
    return mean, max(squares / n - mean * mean, 0.0) ** 0.5


def layer_seed(seed: int, layer: int) -> int:
    """The generator seed of one layer, so a layer's random heads do not depend on which layers run."""
    return seed * 100_003 + layer


def random_ov(
    d: int, mean: float, std: float, n: int, generator: torch.Generator, dtype=torch.float32
) -> Tensor:
    """`n` random d x d matrices with i.i.d. N(mean, std^2) entries: (n, d, d)."""
    return (
        torch.randn(n, d, d, generator=generator, dtype=torch.float64)
        .mul_(std)
        .add_(mean)
        .to(dtype)
    )


def random_scores(
    hw: HeadWeights,
    relations: list[TokenizedRelation],
    *,
    layers: Iterable[int] | None = None,
    heads_per_layer: int | None = None,
    seed: int = 0,
    settings: MapSettings = DEFAULTS,
    sample_stride: int = 32,
    progress: bool = False,
    stats: KernelStats | None = None,
) -> pd.DataFrame:
    """Relation scores of random W_VO matrices, H per layer (default: as many as the model has): SCORE_COLUMNS."""
    from tqdm import tqdm

    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    n_random = heads_per_layer or hw.n_heads
    hw = hw.with_norms(settings.norms)  # E_in and U as the real map reads them
    device = hw.device
    batch = PairBatch.build(relations, hw.vocab_size, settings.k, device)
    # E_in before U: a weights-only source drops the first block's MLP before it reads U
    inputs = InputEmbeddings(hw, batch.sources, settings.embedding).prepare(layers)
    unembed = Unembedding.prepare(hw.unembedding(stored=True), sample_stride)
    blocks = Blocks.for_device(device)
    scores = torch.zeros(len(layers), n_random, 2, len(relations))
    bar = tqdm(total=len(layers) * n_random, unit="head", disable=not progress)

    def problems() -> Iterator[tuple[tuple[int, int], Tensor, Tensor, Tensor]]:
        for li, layer in enumerate(layers):
            mean, std = layer_ov_stats(hw, layer)
            gen = torch.Generator().manual_seed(layer_seed(seed, layer))
            a = inputs.for_layer(layer)[batch.inverse]
            for j in range(n_random):
                w = random_ov(hw.d_model, mean, std, 1, gen)[0].to(device, a.dtype)
                yield (li, j), a, w, batch.dst

    for (li, j), *counts in count_outside_many(problems(), unembed, batch.cap, blocks, stats):
        scores[li, j] = batch.fractions(*counts)
        bar.update(1)
    bar.close()
    return scores_frame(scores, layers, batch)


def heads_over_tau(scores: pd.DataFrame, tau: float = DEFAULTS.tau) -> pd.Series:
    """Per layer: heads with at least one relation score (either mode) >= tau."""
    best = scores.groupby(["layer", "head"])["score"].max()
    return (best >= tau).groupby(level="layer").sum().astype(int)


def baseline_table(
    real: pd.DataFrame, random: pd.DataFrame, tau: float = DEFAULTS.tau
) -> pd.DataFrame:
    """Per layer: heads, heads over tau among real heads and among random matrices, plus a total row."""
    layers = sorted(set(real["layer"]) | set(random["layer"]))
    n_real = real.groupby("layer")["head"].nunique().reindex(layers, fill_value=0)
    n_rand = random.groupby("layer")["head"].nunique().reindex(layers, fill_value=0)
    table = pd.DataFrame(
        {
            "heads": n_real.astype(int),
            "real_over_tau": heads_over_tau(real, tau).reindex(layers, fill_value=0).astype(int),
            "random_matrices": n_rand.astype(int),
            "random_over_tau": heads_over_tau(random, tau)
            .reindex(layers, fill_value=0)
            .astype(int),
        }
    )
    table.index.name = "layer"
    table.loc["total"] = table.sum()
    return table


def max_random_scores(random: pd.DataFrame) -> pd.DataFrame:
    """Per relation and mode: the highest score any random matrix reached, to show the margin below tau."""
    return (
        random.groupby(["relation", "mode"])["score"]
        .max()
        .unstack("mode")
        .rename(columns=lambda m: f"max random {m}")
    )


def layer_stats_table(hw: HeadWeights, layers: Iterable[int] | None = None) -> pd.DataFrame:
    """The mean and standard deviation each layer's random matrices are drawn with."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    rows = [dict(zip(("mean", "std"), layer_ov_stats(hw, la), strict=True)) for la in layers]
    return pd.DataFrame(rows, index=pd.Index(layers, name="layer"))


def run_random_baseline(
    lm: LoadedModel,
    relations: list[Relation],
    out: str | Path | None,
    *,
    layers: list[int] | None = None,
    seed: int = 0,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Scores of random W_VO with each layer's statistics (SCORE_COLUMNS), cached at `out`."""
    layers = list(range(lm.hw.n_layers)) if layers is None else layers
    tokenized = scorable(relations, lm.tokenizer, settings.min_pairs)
    params = {"relations": [r.sha256 for r in relations], "layers": layers, "seed": seed}
    params |= settings.params("k", "embedding")
    stats = KernelStats()
    rules = protocol(settings) | {
        "random_heads": "per layer, as many d x d matrices as heads, i.i.d. normal entries with the "
        "mean and std of the layer's W_VO entries; each layer seeded on its own",
    }
    return run_cached(
        lm,
        out,
        "baseline_random_scores.csv",
        params,
        lambda: random_scores(
            lm.hw,
            tokenized,
            layers=layers,
            seed=seed,
            settings=settings,
            progress=progress,
            stats=stats,
        ),
        found=lambda _: {"kernel": asdict(stats)},
        settings=settings,
        recompute=recompute,
        protocol=rules,
    )
