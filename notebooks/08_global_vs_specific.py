# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Global versus specific heads
#
# Some heads do one thing to everything (map any token to the end-of-sequence token); others do a
# specific thing to a specific set of inputs (countries to capitals). The paper (appendix F) measures
# where a head lies between the two with two numbers:
#
# * **Input skewness**: the skewness of the head's saliency $\sigma_t$ over the whole vocabulary.
#   A head that acts strongly on few tokens has a long right tail, hence a high skewness; a low
#   skewness means a broad input space.
# * **Output-space size**: map every source token $s$ to its highest-scoring target
#   $\arg\max_t M[s, t]$, with $U$'s columns normalised to unit norm so that large unembeddings do
#   not win by size; the size is the number of distinct targets divided by $|V|$.
#
# Two reference heads give the scale: a *specific* head sends every token to one token
# (size $1/|V|$); a *global* head sends every token to its capitalised-with-leading-space form when
# that is a token, and the rest to one token (size about the share of such tokens in the vocabulary).
# Both are computed on this model's own vocabulary.

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
sample = "auto"  # sources per head for the output space: "auto", an integer, or None (exact)
cpu_sample = 512  # what "auto" samples on a CPU for vocabularies over 8192 tokens (GPU: exact)
seed = 0  # seed of the source sample
groups = 8  # jackknife groups for the sampling error
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it
weights_only = False  # True: read only the weights used, a layer at a time (large models)

# %%
# NBVAL_IGNORE_OUTPUT
from mapslib.book.display import open_chapter
from mapslib.foundation.settings import MapSettings
from mapslib.report import plots_salient
from mapslib.salient.globality import (
    default_sample,
    head_globality,
    reference_heads,
    run_output_space,
    sample_sources,
    vocabulary_texts,
)
from mapslib.salient.saliency import saliency_scores

lm, hw, name = open_chapter(model, device, weights_only)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## Exact or sampled
#
# The exact output space needs every row of $M$: $|V|^2 d_\text{head}$ multiply-adds per head,
# about 150 billion for a 49k vocabulary, 17 s per head on a 2-core CPU. It is computed exactly on
# a GPU or for vocabularies up to 8192 tokens; otherwise over a seeded uniform sample of source
# tokens, each still scored against the whole vocabulary. From a sample, the number of distinct
# targets over all $|V|$ sources cannot be known exactly (a target reached by a single source is
# seen with probability $n/|V|$), so two numbers are reported:
#
# * `size_sample`: distinct targets divided by the sampled sources, the paper's definition with the
#   sample as input set. It depends on $n$, so heads are compared with each other and with the
#   reference heads **on the same sampled sources**: this is the number the figure plots.
# * `size`: Shlosser's estimate of the distinct targets over the whole vocabulary, divided by $|V|$.
#   Checked against the exact size of five heads of SmolLM2 (`benchmarks/bench_salient.py
#   --validate`), it overestimates by 1.2-2x at 1024 sources and keeps the heads' order; see
#   `mapslib.salient.globality` for the numbers.
#
# Both carry a delete-a-group jackknife standard error (`_se`); on those heads it was 0.8 to 1.9
# times the spread over independent samples. It measures the sampling variance, not the estimator's
# bias. This chapter samples 512 sources per head on a CPU to stay short: its `size` column is
# coarser still than at 1024; use `sample=4096` (or a GPU) for estimates within about 1.3x.

# %%
n_sources = default_sample(hw, cpu_sample) if sample == "auto" else sample
exact = n_sources is None or n_sources >= hw.vocab_size
print(
    "exact: every source token"
    if exact
    else f"sampled: {n_sources} of {hw.vocab_size} source tokens (seed {seed})"
)

# %%
sal = saliency_scores(hw, settings=settings)
space = run_output_space(
    lm,
    out_dir,
    sample=n_sources,
    seed=seed,
    groups=groups,
    settings=settings,
    recompute=recompute,
)
table = head_globality(hw, sal, space)
table.head()

# %% [markdown]
# ## The reference heads on this vocabulary
#
# `size_exact` is over the whole vocabulary; the other columns are the same statistics as for the
# heads, on the same sampled sources.

# %%
texts = vocabulary_texts(lm.tokenizer, hw.vocab_size)
refs = reference_heads(texts, sample_sources(hw.vocab_size, n_sources, seed), groups)
print(
    f"capitalised tokens with a leading space: {refs.attrs['capitalised_share']:.1%} of the vocabulary"
)
refs[["reference", "size_exact", "size_sample", "size_sample_se", "size", "size_se"]]

# %% [markdown]
# ## Per layer
#
# Input skewness and output-space size of every head (points) and their mean per layer (line),
# with the two reference heads. The paper saw, in Pythia 6.9B and GPT-2 xl, skewness rise and then
# fall sharply in the early layers, and output spaces shrink with depth, with a slight rise at the
# end.

# %%
fig = plots_salient.skewness_vs_space(table, refs, name, "size_sample")

# %%
per_layer = table.groupby("layer")[["input_skewness", "size_sample", "size"]].mean()
per_layer.round(3)

# %% [markdown]
# Every head as one point. Heads in the lower right act on many inputs and produce many outputs;
# heads with a high skewness act on few inputs.

# %%
fig = plots_salient.skewness_space_scatter(table, name, "size_sample")

# %% [markdown]
# The most specific and the most global heads by output-space size:

# %%
cols = ["layer", "head", "input_skewness", "size_sample", "size_sample_se", "size"]
ranked = table.sort_values(["size_sample", "layer", "head"])
print("smallest output spaces")
print(ranked[cols].head(5).to_string(index=False))
print("largest output spaces")
print(ranked[cols].tail(5).to_string(index=False))

# %% [markdown]
# The shipped models' weights come from 4-bit GGUF files dequantised to float32 (the format is
# printed under the first cell), so quantisation noise is part of every number here.
