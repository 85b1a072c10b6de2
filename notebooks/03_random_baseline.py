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
# # A random baseline for the threshold
#
# A head *implements* a relation when its score is at least $\tau = 0.15$: at least 15% of the
# relation's pairs have their target among the top $k$ of the source's row of $M$. Is that a low
# bar? Token embeddings are not random: similar tokens have similar embeddings and unembeddings, so
# some pairs could land in the top $k$ for reasons that have nothing to do with the head.
#
# The paper (appendix A.3) answers with random matrices: for every layer, draw as many random
# $d \times d$ matrices as the layer has heads, with i.i.d. normal entries whose mean and standard
# deviation are those of the layer's real $W_{VO}$ entries, and score them on the relations exactly
# like heads. Random matrices see the same $E_\text{in}$ and $U$, so whatever they reach comes from
# the embeddings alone. In the paper no random matrix passes $\tau$ in five of six models, and 5 of
# 1200 do in GPT-2 xl, against 250 real relation heads.

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
layers = None  # None: every layer; or "0,5,12"
relations = None  # None: the shipped relations
seed = 0  # seed of the random matrices (each layer draws from its own generator)
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it
weights_only = False  # True: read only the weights used, a layer at a time (large models)

# %%
# NBVAL_IGNORE_OUTPUT
from mapslib.book.display import open_chapter
from mapslib.foundation.heads import parse_layers
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.baseline import (
    baseline_table,
    layer_stats_table,
    max_random_scores,
    run_random_baseline,
)
from mapslib.relation_map.relations import load_relations
from mapslib.relation_map.scores import run_relation_map
from mapslib.report import plots_salient
from mapslib.report.tables import random_baseline_beside_paper

lm, hw, name = open_chapter(model, device, weights_only)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## The distribution each layer's random matrices come from
#
# Mean and standard deviation of the entries of all $W_{VO}$ of a layer, computed from the factors
# ($\sum W_{VO} = (1^\top W_V)(W_O 1)$, $\lVert W_{VO}\rVert_F^2 =
# \sum (W_V^\top W_V) \odot (W_O W_O^\top)$), so no $d \times d$ matrix is formed for them.

# %%
layer_list = parse_layers(layers, hw.n_layers)
print(f"{len(layer_list)} layers: {layer_list}")
stats = layer_stats_table(hw, layer_list)
stats.map(lambda v: f"{v:.2e}")

# %% [markdown]
# ## Scores, real and random
#
# The real heads are scored with `relation_scores`; the random matrices with `random_scores`, the
# same kernel and the same $k$. A random matrix is full rank, so its rows of $M$ cost
# $d^2$ rather than $d \cdot d_\text{head}$ per source token; the kernel's exact column-sample test
# still decides almost every row early, so every layer is compared (about 20 s for SmolLM2's 270
# random matrices on 2 CPU cores).

# %%
rels = load_relations(relations)
common = dict(layers=layer_list, settings=settings, recompute=recompute)
real = run_relation_map(lm, rels, out_dir, log=print, **common)
random = run_random_baseline(lm, rels, out_dir, seed=seed, **common)
print(
    f"{random['relation'].nunique()} relations; {real.groupby(['layer', 'head']).ngroups} real heads and "
    f"{random.groupby(['layer', 'head']).ngroups} random matrices scored"
)

# %% [markdown]
# ## Heads over $\tau$
#
# A head (or random matrix) counts when at least one relation, promoted or suppressed, reaches
# $\tau$.

# %%
table = baseline_table(real, random, settings.tau)
total = table.loc["total"]
print(f"real heads over tau: {int(total['real_over_tau'])} of {int(total['heads'])}")
print(
    f"random matrices over tau: {int(total['random_over_tau'])} of {int(total['random_matrices'])}"
)
table

# %%
fig = plots_salient.baseline_bars(table, name)

# %% [markdown]
# How far below $\tau$ random matrices stay: each head's best score over all relations and both
# modes, real against random. Then the highest score any random matrix reached, per relation.

# %%
fig = plots_salient.max_score_distribution(real, random, name)

# %%
max_random_scores(random).round(3)

# %% [markdown]
# Random matrices come closest on relations with few distinct targets (a handful of pronouns, 26
# letters): a random row ranks some target high by chance, and few targets make a hit more likely.

# %% [markdown]
# ## Beside the paper
#
# The paper's counts, for its models (random matrices over $\tau$, real relation heads where it
# gives them, all heads). This model is much smaller than any of them and, like every shipped model,
# is read from a 4-bit GGUF file dequantised to float32 (the format is printed under the first
# cell), so its weights carry quantisation noise that the paper's did not.

# %%
random_baseline_beside_paper(table, f"{name} ({len(layer_list)} of {hw.n_layers} layers)")
