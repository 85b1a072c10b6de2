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
# # Mapping predefined relations across every head
#
# Given a relation as token pairs (country → capital, verb → past tense, name → the same name, ...),
# MAPS scores every head of the model on it: the fraction of pairs whose target is in the top $k$
# of the source's row of the head's $M = E_\text{in} W_{VO} U$, and, for suppression, in the top $k$
# of $-M$. A head *implements* the relation when the score reaches $\tau = 0.15$.
#
# This chapter runs that map for the 20 shipped relations on one model: which pairs survive the
# model's tokenizer, the score of every head on every relation, where in depth each category of
# function sits, the strongest heads per relation, heads that carry several relations, and whether
# heads that share a $W_V$ (grouped-query attention) share relations.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
out_dir = "data"
relations = None  # None: the 20 shipped relations; or names / .json / .csv files
layers = None  # None: all layers; or "0,5,12"
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it
weights_only = False  # True: read only the weights used, a layer at a time (large models)

# %%
# NBVAL_IGNORE_OUTPUT
from mapslib.book.display import open_chapter
from mapslib.foundation.heads import parse_layers
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map import summary
from mapslib.relation_map.relations import load_relations, surviving_pairs
from mapslib.relation_map.scores import maps_by_embedding, run_relation_map
from mapslib.report import plots
from mapslib.report.reference import (
    PAPER_MULTI_CATEGORY_SHARE,
    PAPER_SUPPRESSION_SHARE,
    SURVIVING_PAIRS,
)
from mapslib.report.tables import known_scores

lm, hw, name = open_chapter(model, device, weights_only)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## Which pairs survive the tokenizer
#
# MAPS reads single rows of $M$, so both sides of a pair must be one token. Following the
# protocol, `" " + src` and `" " + dst` are tokenised without special tokens and a pair is kept only
# when both are one token; a relation with fewer than 30 kept pairs is not scored for this model.

# %%
rels = load_relations(relations)
table = surviving_pairs(rels, lm.tokenizer, settings.min_pairs)
print(f"{int(table['scored'].sum())} of {len(table)} relations are scored for {name}")
table

# %% [markdown]
# The protocol records the counts it saw for some models with real tokenizers; where it has numbers
# for this model they are shown beside ours (they must match exactly: the filter is deterministic).

# %%
recorded = SURVIVING_PAIRS.get(name, {})
table[table["relation"].isin(recorded)].assign(recorded=lambda d: d["relation"].map(recorded))

# %% [markdown]
# ## Scores of every head on every relation
#
# One table, one row per layer, head, relation and mode (`promote` or `suppress`). It is written
# with the parameters that made it (`data/relation_scores.csv` and its `.json`), and reused when a
# rerun asks for the same thing.

# %%
layer_list = parse_layers(layers, hw.n_layers)
scores = run_relation_map(
    lm,
    rels,
    out_dir,
    layers=layer_list,
    settings=settings,
    recompute=recompute,
    log=print,
)
print(
    f"{len(scores)} rows: {scores['layer'].nunique()} layers x {scores['head'].nunique()} heads x "
    f"{scores['relation'].nunique()} relations x 2 modes"
)
scores.head()

# %% [markdown]
# Each panel is one relation: layers bottom to top, heads left to right, colour the score. The panel
# title counts the heads at or above $\tau$.

# %%
fig = plots.relation_heatmaps(scores, "promote", name, settings.tau)
# %%
fig = plots.relation_heatmaps(scores, "suppress", name, settings.tau)
# %% [markdown]
# ## Function distribution: heads per category
#
# As in the paper's function-distribution figure, a head is marked with a category when it
# implements at least one of that category's relations or their suppression; dark cells carry
# relations of several categories.

# %%
fig = plots.category_map(scores, hw.n_layers, hw.n_heads, name, settings.tau)
# %%
counts = summary.category_counts(scores, settings.tau)
fig = plots.category_layer_lines(counts, name)
# %% [markdown]
# ## Relation heads per relation
#
# For each relation and mode: the number of heads over $\tau$, the highest score any head reaches,
# and the head that reaches it. Where no head gets near $\tau$, the model does not implement the
# relation in its OV circuits as single-token mappings (or implements it in a way the vocabulary
# projection does not show).

# %%
rel_heads = summary.relation_overview(scores, settings.tau)
rel_heads

# %%
fig = plots.relation_head_bars(rel_heads, name)
# %%
fig = plots.max_score_bars(rel_heads, name, settings.tau)
# %% [markdown]
# ## Heads with several relations
#
# The paper finds that heads often implement several relations, and that the share of heads whose
# relations span several categories falls with model size (38% in GPT-2 xl down to 11% in
# Llama-3.1 70B); 20-36% of its classified heads implement at least one suppression. The same
# numbers for this model:

# %%
heads = summary.head_table(scores, settings.tau)
overview = summary.overview(scores, hw.n_layers * hw.n_heads, settings.tau)
print(f"heads: {overview['heads']}, classified (>= 1 relation): {overview['classified_heads']}")
print(f"classified share:                {overview['classified_share']:.3f}")
print(f"share with several categories:   {overview['multi_category_share']:.3f}")
print(f"share with several relations:    {overview['multi_relation_share']:.3f}")
print(f"share with a suppression:        {overview['suppression_share']:.3f}")
print("paper, several categories:", PAPER_MULTI_CATEGORY_SHARE)
print("paper, with a suppression: {:.2f}-{:.2f}".format(*PAPER_SUPPRESSION_SHARE))

# %%
heads.sort_values(["n_relations", "layer", "head"], ascending=[False, True, True]).head(15)

# %% [markdown]
# ## Grouped heads sharing relations
#
# With grouped-query attention, heads of one kv group read the same $W_V$ and differ only in $W_O$
# (and their attention patterns). The paper observed, in Llama-3.1, that grouped heads often
# implement the same relation or its suppression. Here: for every head that implements a relation,
# how often another head of its layer implements the same relation and mode, split by whether that
# other head shares its kv group. A higher same-group rate means grouping carries function.

# %%
print(f"{hw.n_heads} heads per layer in {hw.n_kv_heads} kv groups of {hw.n_heads // hw.n_kv_heads}")
summary.group_sharing(scores, hw.n_heads, hw.n_kv_heads, settings.tau)

# %%
groups = summary.group_members(scores, hw.n_heads, hw.n_kv_heads, settings.tau)
print(f"{len(groups)} (layer, kv group, relation, mode) with two or more heads implementing it")
groups.head(20)

# %% [markdown]
# ## How much the map depends on $E_\text{in}$
#
# The same map under the three embedding choices of chapter 1 (`paper`, the default, reads
# $\text{MLP}_0(\text{LN}_0(E))$ after layer 0; `raw` reads $E$; `mlp0-residual` reads their sum).
# For each relation and mode: the heads at or above $\tau$ and the best score; the last row counts
# heads implementing anything. The paper used `paper` for five models and `raw` for Llama-3.1-70B. A
# large gap between the columns says that, for this model, which token representation the later heads
# are assumed to read decides what the static map shows; the behaviour chapters (4 to 6) are the
# check on which reading the model's own forward pass agrees with.

# %%
maps = maps_by_embedding(lm, rels, out_dir, settings=settings, layers=layer_list)
summary.compare_maps(maps, settings.tau).round(3)

# %% [markdown]
# ## Checks against recorded numbers
#
# Scores recorded for this model with the same protocol (MODELS.md), beside the ones computed above.
# The model is a 4-bit GGUF dequantised to float32; a different quantisation of the same model
# can move scores by a few pairs.

# %%
known_scores(scores, name)
