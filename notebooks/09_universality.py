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
# # Across models: what carries over, and what does not
#
# The chapters before this one are run once per model, each in its own part of the book. This
# chapter is run once for the whole book, after them: it loads no model, and reads back the tables
# every model's part wrote (`book/models/<model>/data/`, each with the JSON of the parameters, model
# revision and versions that made it) to set the models side by side, and beside the paper's numbers
# (quoted in `mapslib.report.reference`, never computed).
#
# The paper draws two kinds of conclusions across its six models (GPT-2 xl, Phi-2, Pythia 6.9B and
# 12B, Llama-3.1 8B and 70B). Under *function distribution*: relation heads sit mostly in the middle
# and upper layers, heads of one kv group often share relations, the share of heads spanning several
# categories falls with model size, and 20-36% of classified heads suppress. Under *function
# universality*: the highest score per relation is similar across models, and a relation's scores are
# spread over many heads at varying degrees. Its evaluation adds that static scores correlate with
# head outputs and that removing relation heads hurts their task more than removing random heads.
#
# Each of those is checked below on this book's models, by a rule written out in
# `mapslib.crossmodel.claim_rules.CLAIM_RULES` and applied to the numbers. The verdicts at the end of the
# chapter are computed from the tables, so they change when the models or their tables do.

# %% tags=["parameters"]
book_dir = None  # None: this repository's book/; or the path of another book folder
models = None  # None: every model whose part has a relation map; or a list of model folder names
out_dir = "data"  # where this chapter's tables are written (relative to the executed notebook)
reading = "paper"  # the relation map each model is read with: paper | raw | mlp0-residual | best
tau = None  # the score at which a head implements a relation; None: MapSettings' default
permutations = 2000  # random placements in the kv-group test
seed = 0

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Markdown

from mapslib.book.display import notebook_setup
from mapslib.crossmodel import claims, plots
from mapslib.crossmodel import parts as bp
from mapslib.crossmodel import universality as u
from mapslib.crossmodel import universality_behaviour as ub
from mapslib.foundation.settings import MapSettings

notebook_setup()
tau = MapSettings.from_parameters(tau=tau).tau
parts = bp.model_parts(book_dir, models)
names = [p.name for p in parts]
print(f"{len(parts)} models: {', '.join(names)}")

# %% [markdown]
# ## The models and what their parts hold
#
# Each model's shape comes from its own part of the book (`parts.model_info` says from
# where: a sidecar's architecture record, chapter 01's `hw.describe()` output, or the relation map
# itself); the size is the one in the model's name. A model whose part lacks a table is left out of
# the sections that need it.

# %%
bp.models_table(parts).T

# %%
bp.inventory(parts)

# %% [markdown]
# ## Relation scores across models
#
# The paper's universality figure: for a relation, every head's score in each model. Its first
# reading is that "models encode relations in their heads to similar degrees", judged by the highest
# score per relation; its second that the scores are "diverse", spread over many heads rather than
# held by a few. The table gives the highest score per relation and model (the number chapter 02
# reports per model), with GPT-2 xl's quoted maxima where the protocol records them. All models are
# read with the map named by `reading`; the section on $E_\text{in}$ below asks whether that is the
# right reading for each.

# %%
readings = bp.readings_for(parts, reading)
print("reading per model:", readings)
u.labelled(u.max_scores(parts, "promote", readings, tau)).round(3)

# %%
u.labelled(u.max_scores(parts, "suppress", readings, tau)).round(3)

# %%
scores = u.score_table(parts, readings)
fig = plots.score_distributions(scores, names, "promote", tau=tau)

# %%
fig = plots.score_distributions(scores, names, "suppress", tau=tau)

# %% [markdown]
# How the scores spread over heads: for each relation and mode some head implements, the heads at
# or above $\tau$ and those above chance but below it (chance: the highest score any random matrix
# of chapter 03 reached on that relation and mode).

# %%
spread = u.score_spread(parts, readings, tau)
spread[spread["implemented"]].pivot_table(
    index=["relation", "mode"],
    columns="model",
    values=["heads_over_tau", "heads_above_chance_below_tau"],
)

# %% [markdown]
# ## Where relation heads sit
#
# Models of different depth are put on one axis by the relative depth of a layer,
# $(\text{layer} + 0.5) / n_\text{layers}$: the centre of the layer's share of the depth, so the
# first and last layers of a 30-layer model sit at 0.017 and 0.983, and the thirds of the depth split
# the layers evenly when their number is a multiple of 3. A head is *classified* when it implements
# at least one relation or its suppression. The binomial p asks whether more classified heads lie in
# the upper two thirds than the share of all heads there.

# %%
print(u.DEPTH_RULE)
u.depth_table(parts, readings, tau).T

# %%
fig = plots.depth_profile(u.depth_profile(parts, readings, tau), names)

# %%
u.depth_by_category(parts, readings, tau).round(3)

# %% [markdown]
# ## Heads with several categories, heads that suppress
#
# The paper's shares of classified heads: those implementing relations of several categories (38%
# in GPT-2 xl down to 11% in Llama-3.1 70B, "generally decreasing in model size") and those
# implementing at least one suppression (20-36% over its models; it quotes only the range). This
# book's rows are chapter 02's numbers for each model; the paper's rows are quoted.

# %%
shares = u.head_shares(parts, readings, tau)
shares.assign(parameters=shares["parameters"].map(bp.size_text)).round(3)

# %%
fig = plots.shares_by_size(shares)

# %% [markdown]
# ## Grouped heads sharing relations
#
# With grouped-query attention the heads of one kv group read the same $W_V$; the paper saw
# grouped heads in Llama-3.1 "often implement the same relations or their suppressive variants".
# For every model whose heads share kv heads: the rate at which a relation head's same-group
# neighbours implement the same relation and mode (chapter 02's `group_sharing`), the rate with
# heads of other groups, and the same-group rate expected if each relation's heads were placed at
# random among the layer's heads, with its permutation p. With a single kv head per layer
# (multi-query attention) every neighbour is in the group, so there is nothing to compare.

# %%
u.group_sharing_table(parts, readings, tau, permutations, seed).T

# %% [markdown]
# ## Random baseline
#
# Chapter 03's random matrices, drawn with each layer's $W_{VO}$ statistics, over $\tau$, against the
# real heads over $\tau$ in the map made with the same reading; the paper's counts below (quoted).

# %%
u.random_baseline_table(parts, tau)

# %% [markdown]
# ## Correlation with head outputs
#
# Chapter 04's Pearson $r$ between static and dynamic scores, per relation, for every model, with
# the paper's Llama-3.1-8B (its Table 1, quoted). Below, the counts the claims use: relations with
# $r \ge 0.7$ without context, and how many of those keep $r$ within 0.1 with context; the paper's
# row applies the same counts to its quoted table.

# %%
corr = ub.correlation_side_by_side(parts, "promote")
corr.round(2)

# %%
fig = plots.correlation_by_model(corr, names, "no_context")

# %%
fig = plots.correlation_by_model(corr, names, "context")

# %%
ub.correlation_summary(parts, readings, tau).T.round(3)

# %% [markdown]
# ## Causal effect of removing relation heads
#
# Chapter 05's ablations, summarised again from each model's raw `ablation.csv` with
# `ablation_summary`: base accuracy on a relation's task, with its relation heads removed, with as
# many random heads removed (mean over the draws), and on control tasks; the paper's Pythia 12B
# (its Table 2, quoted) last. Relations that did not run (base accuracy below 0.1, or no head with a
# positive score) are counted in the second table.

# %%
ub.causal_side_by_side(parts).T.round(3)

# %%
ub.causal_status(parts)

# %% [markdown]
# The random control, per relation: all the random draws (mean and sample standard deviation, and
# the empirical p, the share of draws that hurt the task at least as much as the relation heads,
# $(1 + \#) / (1 + \text{draws})$), beside the first five draws summarised the paper's way (mean
# and population standard deviation over 5). With 5 draws p cannot fall below 1/6; the claims then
# fall back on a margin of two standard deviations.

# %%
ub.random_control_table(parts).round(3)

# %%
effects = ub.causal_effects(parts)
fig = plots.causal_drops(effects, names, ub.paper_causal_drops())

# %% [markdown]
# ## Which reading of $E_\text{in}$ tracks behaviour, per model
#
# Chapter 02 maps each model under three readings of the token representations heads act on
# (`paper`: $\text{MLP}_0(\text{LN}(E))$ after layer 0; `raw`: $E$; `mlp0-residual`: their sum), and
# chapter 04 correlates each map with the same dynamic scores. Here that comparison is re-derived
# from each model's tables: the median promotion $r$ per map and setting, the map with the highest
# median, and the reading kept as each model's best (`reading = "best"` in this chapter's parameters):
# the paper's, unless another map's median without context is higher by more than 0.05.

# %%
reads = ub.reading_table(parts)
reads.T

# %%
fig = plots.reading_bars(reads, "no_context")

# %% [markdown]
# The highest score per relation under each model's best reading, for comparison with the table at
# the top of the chapter:

# %%
best = bp.readings_for(parts, "best")
u.labelled(u.max_scores(parts, "promote", best, tau)).round(3)

# %% [markdown]
# ## The paper's claims, checked
#
# Each claim with the paper's sentence, the rule applied to every model, and the verdict per model
# and overall (supported when every model that can test it supports it, not supported when none
# does, mixed otherwise). The rules and what the paper's own quoted numbers give under them:

# %%
claims.rules_table()

# %%
checks = claims.claim_checks(parts, readings, tau, permutations, seed)
claims.claims_table(checks).drop(columns="paper")

# %% [markdown]
# The same verdicts as text, generated from the numbers, with each model's evidence and, where a
# model does not support a claim, the facts in its tables that may explain it:

# %%
Markdown(claims.claims_markdown(checks))

# %% [markdown]
# ### Under each model's best reading
#
# The checks again with every model read through the map that tracks its own head outputs best
# (the paper's unless another is clearly better). The verdicts that change, then all of them as
# text: a claim whose verdict changes depends on the choice of $E_\text{in}$ as much as on the model.

# %%
checks_best = claims.claim_checks(parts, "best", tau, permutations, seed)
claims.verdict_changes(checks, checks_best)

# %%
Markdown(claims.claims_markdown(checks_best))

# %% [markdown]
# ## Caveats that hold for every comparison here
#
# Every model in this book is far smaller than the paper's smallest (GPT-2 xl, 1.5B parameters)
# and is read from a 4-bit GGUF file dequantised to float32, so quantisation noise is in every
# weight; the paper's numbers come from full-precision weights. The relation datasets are the shipped
# ones after each tokenizer's single-token filter, so the relations scored differ between models
# (the tables above leave a relation empty where a model does not score it), and $k$ follows the
# vocabulary size (1 / 10 below 100k tokens, 3 / 25 above). A verdict of "not testable" means the
# tables cannot decide, not that the claim fails.

# %%
# NBVAL_IGNORE_OUTPUT
written = claims.write_tables(
    out_dir,
    {
        "models": bp.models_table(parts),
        "max_scores_promote": u.max_scores(parts, "promote", readings, tau),
        "max_scores_suppress": u.max_scores(parts, "suppress", readings, tau),
        "depth": u.depth_table(parts, readings, tau),
        "head_shares": shares,
        "group_sharing": u.group_sharing_table(parts, readings, tau, permutations, seed),
        "random_baseline": u.random_baseline_table(parts, tau),
        "correlation_summary": ub.correlation_summary(parts, readings, tau),
        "causal_effects": effects,
        "reading": reads,
        "claims": checks,
        "claims_best_reading": checks_best,
    },
    parts,
    reading=reading,
    tau=tau,
    permutations=permutations,
    seed=seed,
)
print("\n".join(str(p) for p in written))
