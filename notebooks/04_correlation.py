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
# # Does the static map predict what heads output?
#
# The relation score $\phi_R(h)$ is read from weights alone: the fraction of pairs $(s, t)$ whose
# $t$ is among the top $k$ of row $s$ of $M = E_\text{in} W_{VO} U$. Does a head with a high score
# actually promote $t$ when the model reads $s$? The paper's first check (section 4.2,
# "Correlation with head outputs") runs the model and scores each head's *output* the same way.
#
# For every relation, pair and template, the model reads a prompt that ends with $s$. At that last
# position every head's output $y = z_h W_O[h]$ (its attention-weighted values $z_h$, $b_V$
# included; no $b_O$, no final norm) is projected with $U$, and the **dynamic score**
# $\phi^*_R(h)$ is the fraction of pairs whose $t$ is in the top $k$ of $yU$, with the static
# score's $k$. Two settings:
#
# * **with context**: the normal forward pass;
# * **without context**: the head attends to the position of $s$ alone, so
#   $z_h = x W_V + b_V$ with $x$ the head's input there. At the last position this needs no
#   attention patching: the run stays clean and only this head's output is recomputed.
#
# The correlation is Pearson's $r$ between static and dynamic scores over all heads and the four
# templates of PROTOCOL.md (the static score repeated per template), per relation; suppression uses
# $-M$ and $-yU$. Templates are cut right after $s$: the model is causal, so the output at the $s$
# position does not depend on what follows it.
#
# All heads of all layers are read in one forward per batch with hooks on the model's own modules
# (`mapslib.foundation.hooks`); prompts of a template share their token prefix, which runs once with a KV
# cache. The hooks are checked against a hand computation from the weights on tiny random models
# (`tests/foundation/test_hooks.py`), and the dynamic scores against brute-force ranking of the full
# $yU$ (`tests/behaviour/test_correlation.py`).
#
# CI re-executes a small version of this chapter with
# `-p relations '["name_copying", "country_to_capital_wikidata", "entity_to_pronoun"]'
# -p templates 0,1 -p max_pairs 30`.

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
relations = None  # None: every shipped relation the tokenizer keeps; or a list of names
templates = "all"  # "all" or indices such as "0,1"
max_pairs = None  # None: every single-token pair; or pairs per relation, drawn with `seed`
seed = 0
scatter_relations = ["name_copying", "country_to_capital_wikidata", "word_last_letter"]
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it

# %%
# NBVAL_IGNORE_OUTPUT
from pathlib import Path

from mapslib.behaviour.correlation import (
    correlation_rows,
    correlations,
    correlations_by_map,
    median_r_by_reach,
    parse_templates,
    prompt_examples,
    run_dynamic_scores,
    supported_reading,
)
from mapslib.book.display import open_chapter
from mapslib.foundation.io import write_table
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.relations import load_relations, scorable
from mapslib.relation_map.scores import maps_by_bias, maps_by_embedding
from mapslib.report import plots_behaviour
from mapslib.report.tables import correlation_beside_paper, p_text

lm, hw, name = open_chapter(model, device)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## Prompts
#
# The four templates, each cut after $s$, and how one prompt is tokenised (with the tokenizer's own
# special tokens, e.g. Gemma's `<bos>`): the source is the last token, the position whose head
# outputs are read.

# %%
rels = load_relations(relations)
tokenized = scorable(rels, lm.tokenizer, settings.min_pairs, log=print)
chosen = parse_templates(templates)
rows = correlation_rows(tokenized, chosen, hw.vocab_size, max_pairs, seed, settings.k)
prompt_examples(rows, lm.tokenizer)

# %%
print(f"{rows['relation'].nunique()} relations, {len(chosen)} templates, {len(rows)} prompts-pairs")
first = rows[rows["template"] == chosen[0]]
first.groupby("relation", sort=False).agg(pairs=("target", "size"), k=("k", "first"))

# %% [markdown]
# ## Static and dynamic scores
#
# The static scores are chapter 02's (same parameters, so the table is shared when all relations
# are used). The dynamic table has one row per head, relation, template, setting and mode.

# %%
maps = maps_by_embedding(lm, rels, out_dir, settings=settings, recompute=recompute)  # chapter 02's
static = maps[settings.embedding]
dynamic = run_dynamic_scores(
    lm,
    rels,
    out_dir,
    templates=chosen,
    max_pairs=max_pairs,
    seed=seed,
    settings=settings,
    recompute=recompute,
)
dynamic.head()

# %%
corr = correlations(static, dynamic)
write_table(Path(out_dir) / "correlations.csv", corr, dynamic.attrs["sidecar"])
corr[corr["mode"] == "promote"].drop(columns="mode").assign(p=lambda d: d["p"].map(p_text)).round(3)

# %% [markdown]
# ## The paper's table, beside Llama-3.1-8B
#
# Columns under our model's name are computed here; the Llama-3.1-8B columns are quoted from the
# paper (its Table 1). The two differ in model, weights and data: our model is dequantised from a
# 4-bit GGUF file (quantisation noise is in every weight), our pairs are the shipped datasets after
# this tokenizer's single-token filter, and our $r$ pools four templates. Read the comparison as
# "same kind of evidence", not as numbers that should match. A $p$ of 0 is below the smallest
# double (shown as `< 1e-300`).

# %%
quant = lm.quantization.split(",")[0]
ours = f"{name} ({quant} -> fp32; shipped data; {len(chosen)} template(s))"
paper = "Llama-3.1-8B (paper Table 1; its data)"
table = correlation_beside_paper(corr, "promote", ours, paper)
table.round(3)

# %%
fig = plots_behaviour.correlation_bars(corr, name, paper="Llama-3.1-8B (paper)")

# %% [markdown]
# How the two settings compare over relations, and how $r$ relates to the strongest head: the
# paper notes that low correlations come with relations no head implements (a low maximum static
# score). The same split here, at $\tau$:

# %%
median_r_by_reach(corr, settings.tau).round(3)

# %% [markdown]
# ## Which $E_\text{in}$ agrees with the forward pass
#
# Chapter 2 shows the static map under the three embedding choices. The dynamic scores above do not
# depend on that choice, so they can arbitrate: the promotion $r$ of each relation, with each static
# map against the same dynamic scores, and the median over relations in the last row (an empty cell:
# no head has a non-zero static score there, so r is undefined).
#
# A static map is only as good as its guess of what the heads read. When one column's median is
# clearly higher, that reading is the better static model of this network, and the ablation and
# multi-token chapters can be rerun with it (`-p embedding '"mlp0-residual"'`, for example). Compare
# the two parts of this book: the answer differs between models.

# %%
by_map = correlations_by_map(maps, dynamic)
for setting in ("no_context", "context"):
    print(supported_reading(by_map, setting))
by_map.round(3)

# %% [markdown]
# ## Do the biases help? (beyond the paper)
#
# The paper reads $M = E_\text{in} W_V W_O U$ and omits the value and output biases, listing that
# as a limitation. Some families have them: Qwen2 has $b_V$ (its q, k and v projections carry
# biases), GPT-2, Pythia and Phi-2 have $b_V$ and $b_O$. The map can include them (`bias` of
# `run_relation_map`, `--bias` on the command line): `value` reads rows of
# $(E_\text{in} W_V + b_V) W_O U$, what the head writes when it attends to the source alone;
# `value+output` adds the layer's $b_O$. The dynamic scores above include $b_V$ (it is part of the
# head's value), so they can say which static map is closer to behaviour. The promotion $r$ per
# relation for each map the model allows, and the median in the last row:

# %%
print("biases in this model:", ", ".join(hw.biases()) or "none, so there is one map only")
bias_maps = maps_by_bias(lm, rels, out_dir, settings=settings, recompute=recompute)
by_bias = correlations_by_map(bias_maps, dynamic)
for setting in ("no_context", "context"):
    print(supported_reading(by_bias, setting))
by_bias.round(3)

# %% [markdown]
# ## Suppression
#
# The same experiment for the suppressive variant: static scores from the top $k$ of $-M$, dynamic
# ones from the top $k$ of $-yU$. The paper reports these in its appendix tables only.

# %%
correlation_beside_paper(corr, "suppress", ours).round(3)

# %% [markdown]
# ## Static against dynamic, head by head
#
# Each point is one head under one template. Points on the dotted diagonal have the same score
# statically and in the forward pass. Without context the head's input at the source position is
# the contextualised residual stream, not $E_\text{in}$, so even there the two need not agree.

# %%
shown = [r for r in scatter_relations if r in set(corr["relation"])] or list(corr["relation"])[:2]
fig = plots_behaviour.correlation_scatter(static, dynamic, corr, shown, name)

# %% [markdown]
# ## Reading the results (written from the SmolLM2-135M run)
#
# In another model's part of the book, the tables above are that model's and can disagree with these
# notes.
#
# * **Without context** the static score predicts the dynamic one well for most relations: a head
#   that maps $s$ to $t$ through $E_\text{in} W_{VO} U$ still maps the model's own hidden state at
#   $s$ to $t$. This is what MAPS assumes when it reads $M$ in place of the head's inputs. In
#   SmolLM2 most relations reach $r > 0.8$, as in the paper's Llama-3.1-8B.
# * **With context** the heads attend to other positions as well, so their outputs mix other
#   tokens' values and $r$ drops; the drop says how much of a head's output on these prompts comes
#   from the source token itself. It is larger in SmolLM2 than in the paper's Llama-3.1-8B (the
#   paper also reports larger drops for its smaller models, Pythia and GPT-2 xl).
# * Where no head reaches $\tau$ the map has little to predict: word to last letter and word to
#   homophone, whose best heads stay near 0.1 and 0.02, have the lowest $r$, as in the paper. Word
#   to synonym and word to compound are exceptions: no head reaches $\tau$, yet their many small
#   non-zero scores still line up with the dynamic ones.
# * Some suppression correlations with context are near 0 with a tiny `dynamic_nonzero`: almost no
#   head suppresses the targets in the forward pass, so there is nothing to correlate. A NaN means
#   the scores are constant over heads.
# * The model here is much smaller than the paper's and 4-bit quantised; the templates and data
#   differ. The comparison with Llama-3.1-8B is of the pattern, not of the values.
