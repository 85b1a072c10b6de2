"""Global versus specific heads: input skewness and output-space size (paper, appendix F).

* Input skewness: the skewness (scipy.stats.skew, biased) of a head's saliency over the whole
  vocabulary. A head that acts strongly on few tokens has a long right tail.
* Output-space size: for every source s, its argmax target t(s) = argmax_t M[s, t] with U's columns
  normalised to unit norm; the size is |{t(s)}| / |V|, the share of the vocabulary the head outputs.

Exact output-space size costs |V|^2 d_head multiply-adds per head (150 G for SmolLM2, about 17 s on
this project's 2-core CPU, 77 min for all 270 heads): done on a GPU or when |V| <= 8192. Otherwise a
seeded uniform sample of n source tokens (without replacement) is scored against every target.
Estimating the number D of distinct targets of all |V| sources from n of them is the ill-posed
"distinct values from a sample" problem: a target reached by one source is seen with probability
n/|V|. The sampled distinct count d always undercounts D and d / n overcounts D / |V| for any head
that is not injective. Two numbers are reported, never one silently standing for the other:

* `size_sample` = d / n: the paper's definition applied to the sampled sources as the input set. It
  depends on n, so it compares heads and the reference heads *on the same sample* (the figure does).
* `size` = D_hat / |V| with Shlosser's estimator for sampling without replacement,
  D_hat = d + f1 * sum_i (1-q)^i f_i / sum_i i q (1-q)^(i-1) f_i, q = n / |V|, f_i the targets reached
  i times in the sample (Haas et al., VLDB 1995, found it best on skewed data). Checked against the
  exact size of five SmolLM2 heads (benchmarks/bench_salient.py --validate, 20 samples each):
  at n = 1024 it overestimates by 1.2-2.0x (23.2: 0.286 vs 0.140; 23.6: 0.025 vs 0.020), at n = 4096
  by 1.0-1.3x, and keeps the heads' order; it fails for the global reference head (0.44 vs 0.20),
  whose one huge class of all non-capitalisable tokens it cannot see past. Chao-Lin's lower bound and
  the GEE estimator were tried and undercount these heads 2-4x.

The sampling error of both is a delete-a-group jackknife over `groups` random groups of the sample
(no extra model compute); on the same heads it was 0.8 to 1.9 times the standard deviation over 20
independent samples (mostly larger, so conservative). It measures variance only, not the bias.

Reference heads (paper): a *specific* head maps every token to one token (size 1/|V|); a *global*
head maps every token to its capitalised-with-leading-space form when that is a token, and all others
to one token (size (|C|+1)/|V|, C the capitalised-with-leading-space tokens). Both are evaluated on the
model's own vocabulary, exactly and on the same sampled sources as the heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch
from torch import Tensor

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import run_cached
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.heads import head_factors
from mapslib.foundation.kernels import Blocks
from mapslib.foundation.models import LoadedModel
from mapslib.foundation.settings import DEFAULTS, MapSettings

SPACE_COLUMNS = [
    "layer",
    "head",
    "n_sources",
    "exact",
    "distinct",
    "size_sample",
    "size_sample_se",
    "size",
    "size_se",
]


def input_skewness(sal: Tensor) -> np.ndarray:
    """Skewness of each saliency distribution along the last axis (the vocabulary)."""
    return scipy.stats.skew(sal.double().cpu().numpy(), axis=-1, bias=True)


def normalized_unembedding_rows(U: Tensor) -> Tensor:
    """U's columns scaled to unit norm, as rows (|V| x d); a zero column stays zero."""
    rows = U.T
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-30)


def argmax_targets(a: Tensor, w_o: Tensor, u_rows: Tensor, blocks: Blocks | None = None) -> Tensor:
    """argmax over columns of each row of a @ w_o @ u_rows.T, in tiles; the cheaper association is used."""
    blocks = blocks or Blocks.for_device(a.device)
    (n, r), d, V = a.shape, w_o.shape[1], u_rows.shape[0]
    factored = r * d + n * r < n * d
    x = a if factored else a @ w_o
    best = torch.full((n,), -torch.inf, dtype=a.dtype, device=a.device)
    arg = torch.zeros(n, dtype=torch.long, device=a.device)
    step = blocks.cols * 2
    for c0 in range(0, V, step):
        cols = u_rows[c0 : c0 + step].T
        cols = w_o @ cols if factored else cols
        for r0 in range(0, n, blocks.rows):
            vals, idx = (x[r0 : r0 + blocks.rows] @ cols).max(1)
            upd = vals > best[r0 : r0 + blocks.rows]  # first maximum wins ties, as torch.argmax
            best[r0 : r0 + blocks.rows] = torch.where(upd, vals, best[r0 : r0 + blocks.rows])
            arg[r0 : r0 + blocks.rows] = torch.where(upd, idx + c0, arg[r0 : r0 + blocks.rows])
    return arg


def shlosser(labels: np.ndarray, population: int) -> float:
    """Shlosser's estimate of the distinct labels of a population of `population` from a sample without replacement."""
    n = len(labels)
    if n == 0:
        return 0.0
    counts = np.unique(labels, return_counts=True)[1]
    d = len(counts)
    if n >= population:
        return float(d)
    q = n / population
    f = np.bincount(counts)  # f[i]: labels seen exactly i times
    i = np.arange(len(f))
    num = float((((1 - q) ** i) * f)[1:].sum())
    den = float((i * q * (1 - q) ** (i - 1) * f)[1:].sum())
    return float(min(d + f[1] * num / den, population - (n - d)))


def _size_stats(labels: np.ndarray, population: int) -> tuple[float, float]:
    """(distinct / n, Shlosser estimate / population) of one sample of labels."""
    n = len(labels)
    return len(np.unique(labels)) / n, shlosser(labels, population) / population


def jackknife_se(labels: np.ndarray, population: int, groups: int = 8) -> tuple[float, float]:
    """Delete-a-group jackknife standard errors of (size_sample, size); the sample order must be random."""
    n = len(labels)
    if n >= population or groups < 2 or n < 2 * groups:
        return 0.0, 0.0
    parts = np.array_split(np.arange(n), groups)
    reps = np.array([_size_stats(np.delete(labels, p), population) for p in parts])
    dev = reps - reps.mean(0)
    dev[np.abs(dev) < 1e-12] = 0.0  # equal replicates: exactly zero, not rounding noise
    var = (groups - 1) / groups * (dev**2).sum(0)
    return float(np.sqrt(var[0])), float(np.sqrt(var[1]))


def space_stats(labels: np.ndarray, population: int, groups: int = 8) -> dict[str, Any]:
    """Output-space statistics of one head from the argmax targets of its (sampled) sources."""
    labels = np.asarray(labels)
    n = len(labels)
    size_sample, size = _size_stats(labels, population)
    se_sample, se = jackknife_se(labels, population, groups)
    return {
        "n_sources": n,
        "exact": n >= population,
        "distinct": int(len(np.unique(labels))),
        "size_sample": size_sample,
        "size_sample_se": se_sample,
        "size": size,
        "size_se": se,
    }


def sample_sources(vocab_size: int, sample: int | None, seed: int = 0) -> Tensor:
    """Source tokens for the output-space size: all of them (sorted) or a seeded uniform sample in random order."""
    if sample is None or sample >= vocab_size:
        return torch.arange(vocab_size)
    if sample < 16:
        raise BadArgument(f"the output-space sample needs at least 16 sources, got {sample}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(vocab_size, generator=gen)[:sample]


def default_sample(hw: HeadWeights, cpu_sample: int = 1024) -> int | None:
    """Exact (None) on a GPU or for vocabularies up to 8192 tokens, else `cpu_sample` sampled sources."""
    on_gpu = hw.device.type == "cuda"
    return None if on_gpu or hw.vocab_size <= 8192 else cpu_sample


def head_targets(
    hw: HeadWeights,
    layers: Iterable[int] | None = None,
    sources: Tensor | None = None,
    *,
    settings: MapSettings = DEFAULTS,
    progress: bool = False,
) -> Tensor:
    """argmax_t M[s, t] (U's columns normalised) for every head of `layers` and source s: (L, H, n)."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    hw = hw.with_norms(settings.norms)
    device = hw.device
    sources = torch.arange(hw.vocab_size) if sources is None else sources
    inputs = InputEmbeddings(hw, sources.to(device), settings.embedding).prepare(layers)
    u_rows = normalized_unembedding_rows(hw.unembedding())
    blocks = Blocks.for_device(device)
    out = torch.empty(len(layers), hw.n_heads, len(sources), dtype=torch.long)
    row = {layer: i for i, layer in enumerate(layers)}
    for f in head_factors(hw, layers, inputs.for_layer, bias=settings.bias, progress=progress):
        out[row[f.layer], f.head] = argmax_targets(f.a, f.w_o, u_rows, blocks).cpu()
    return out


def output_space(
    hw: HeadWeights,
    layers: Iterable[int] | None = None,
    *,
    sample: int | None | str = "auto",
    seed: int = 0,
    groups: int = 8,
    settings: MapSettings = DEFAULTS,
    progress: bool = False,
) -> pd.DataFrame:
    """Output-space size of every head of `layers`, exact or from `sample` seeded sources: SPACE_COLUMNS."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    n = default_sample(hw) if sample == "auto" else sample
    sources = sample_sources(hw.vocab_size, n, seed)
    targets = head_targets(hw, layers, sources, settings=settings, progress=progress).numpy()
    rows = [
        {"layer": layer, "head": h, **space_stats(targets[li, h], hw.vocab_size, groups)}
        for li, layer in enumerate(layers)
        for h in range(hw.n_heads)
    ]
    return pd.DataFrame(rows, columns=SPACE_COLUMNS)


def run_output_space(
    lm: LoadedModel,
    out: str | Path | None,
    *,
    layers: list[int] | None = None,
    sample: int | None | str = "auto",
    seed: int = 0,
    groups: int = 8,
    settings: MapSettings = DEFAULTS,
    recompute: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """`output_space` of every head of `layers`, cached at `out` (.csv or a folder; None: not written)."""
    n = default_sample(lm.hw) if sample == "auto" else sample
    params = {"sample": n, "seed": seed, "groups": groups, "layers": layers}
    params |= settings.params("embedding")
    protocol = {
        "output_space": "argmax_t M[s, t] with U's columns at unit norm; size = distinct targets / |V|",
        "estimator": "exact when every source is scored, else Shlosser's estimate (size) beside "
        "distinct / sampled (size_sample), with delete-a-group jackknife standard errors",
    }
    return run_cached(
        lm,
        out,
        "output_space.csv",
        params,
        lambda: output_space(
            lm.hw, layers, sample=n, seed=seed, groups=groups, settings=settings, progress=progress
        ),
        settings=settings,
        recompute=recompute,
        protocol=protocol,
    )


def head_globality(
    hw: HeadWeights,
    sal: Tensor,
    space: pd.DataFrame,
    layers: Iterable[int] | None = None,
) -> pd.DataFrame:
    """One row per head: input skewness (from saliency `sal`, (L, H, |V|)) beside its output-space size."""
    layers = list(range(hw.n_layers)) if layers is None else list(layers)
    skew = input_skewness(sal)
    sk = pd.DataFrame(
        [
            {"layer": layer, "head": h, "input_skewness": float(skew[li, h])}
            for li, layer in enumerate(layers)
            for h in range(hw.n_heads)
        ]
    )
    return sk.merge(space, on=["layer", "head"], how="left")


# --- reference heads -------------------------------------------------------------------------------


def vocabulary_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Every token decoded on its own (no clean-up), for rules over token strings."""
    texts = tokenizer.batch_decode(
        [[i] for i in range(vocab_size)], clean_up_tokenization_spaces=False
    )
    return [t if isinstance(t, str) else "" for t in texts]


def is_capitalised_with_space(text: str) -> bool:
    """A token like ' Paris': one leading space, then an upper-case letter."""
    return len(text) >= 2 and text[0] == " " and text[1] != " " and text[1].isupper()


def capitalised_form(text: str) -> str | None:
    """' paris', 'paris', ' Paris' -> ' Paris'; None when the token does not start with a letter."""
    word = text[1:] if text.startswith(" ") else text
    if not word or not word[0].isalpha() or word[0].upper() == word[0].lower():
        return None
    return " " + word[0].upper() + word[1:]


def global_head_targets(texts: list[str], fallback: int = 0) -> np.ndarray:
    """The paper's global reference head: each token to its capitalised-with-leading-space form, else `fallback`."""
    index = {}
    for i, t in enumerate(texts):
        index.setdefault(t, i)
    out = np.full(len(texts), fallback, dtype=np.int64)
    for i, t in enumerate(texts):
        cap = capitalised_form(t)
        if cap is not None and cap in index and is_capitalised_with_space(cap):
            out[i] = index[cap]
    return out


def reference_heads(
    texts: list[str], sources: Tensor | np.ndarray, groups: int = 8, fallback: int = 0
) -> pd.DataFrame:
    """The specific and global reference heads: exact size on the vocabulary, and the statistics on `sources`."""
    V = len(texts)
    idx = np.asarray(sources)
    glob = global_head_targets(texts, fallback)
    spec = np.full(V, fallback, dtype=np.int64)
    rows = []
    for name, targets in (("specific head", spec), ("global head", glob)):
        rows.append(
            {
                "reference": name,
                "size_exact": len(np.unique(targets)) / V,
                **space_stats(targets[idx], V, groups),
            }
        )
    n_cap = sum(is_capitalised_with_space(t) for t in texts)
    out = pd.DataFrame(rows)
    out.attrs["capitalised_share"] = n_cap / V
    return out
