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
# # Which reading of the weights predicts behaviour? Norm weights, k and 4-bit noise
#
# The paper reads a head as $M = E_\text{in} W_V W_O U$ with no norm weights: its code loads
# TransformerLens' `from_pretrained_no_processing`, so neither the layer's input-norm weight before
# $W_V$ nor the final-norm weight before $U$ is applied, and this book's Gemma path also skips
# Gemma's norm on the attention output. The scale a norm divides by is a positive number per row
# and changes no top-k; its *weights* are one number per dimension and change every row of $M$.
# The forward pass always applies them. The parts of this book show where the paper's reading
# struggles: few heads over $\tau$ and a median static-dynamic r near 0 for Gemma-3-270M and
# Qwen2.5-Coder-1.5B. Is that the models, or the reading?
#
# This chapter maps every model of the book under each reading and holds each against what the
# book measured of the model's behaviour, from the tables its part already holds:
#
# - **readings**: norms `ignore` (the paper's) or `fold` (every norm weight on the path applied as
#   the forward pass applies it; `mapslib.foundation.adapters.NormFolded`), crossed with the three
#   readings of $E_\text{in}$ (chapter 01) and, for models with a value bias, with $b_V$;
# - **behaviour**: the median over relations of Pearson r between static scores and chapter 04's
#   dynamic scores (the head's output read through the same kernel during inference); how many of
#   the heads chapter 10 found by their IOI direct effect the map puts over $\tau$ for name copying
#   on their side; and how many of the heads chapter 05 ablated (the paper reading's top heads per
#   relation) the reading would pick too, so whether that causal result carries over to it;
# - **two more suspects**: the top-k rule for large vocabularies, and the 4-bit quantisation every
#   model here went through.
#
# Everything is computed by `mapslib.crossmodel.readings`; each model's maps are one committed table
# (`data/readings/<model>.csv.gz`, with the parameters beside it). The model is loaded only for maps
# its part does not already hold, and only when that table is missing.

# %% tags=["parameters"]
book_dir = None  # None: this repository's book/; or the path of another book folder
models = None  # None: every model whose part has a relation map; or a list of model folder names
out_dir = "data"  # where this chapter's tables are written (relative to the executed notebook)
tau = None  # the score at which a head implements a relation; None: MapSettings' default

# %%
# NBVAL_IGNORE_OUTPUT
import time

import pandas as pd

from mapslib.book.display import notebook_setup
from mapslib.crossmodel import parts as bp
from mapslib.crossmodel import plots
from mapslib.crossmodel import readings as rd
from mapslib.foundation.quant_noise import NOISE_RULE
from mapslib.foundation.settings import MapSettings
from mapslib.report.reference import PAPER_READING_SCALE

notebook_setup()
started = time.perf_counter()
tau = MapSettings.from_parameters(tau=tau).tau
parts = bp.model_parts(book_dir, models)
tables = rd.load_tables(parts, f"{out_dir}/readings")
print(f"{len(parts)} models: {', '.join(tables)}; tau = {tau}")

# %% [markdown]
# ## Every reading against behaviour
#
# One row per model and reading. The paper's reading is `ignore · paper`. "known heads recognised"
# counts chapter 10's heads with a role found by behaviour (name movers should promote names,
# negative name movers suppress them) that the map puts over $\tau$ on that side. "ablated heads
# kept" is 1.0 for the paper's reading by construction.

# %%
summary = rd.summary_table(parts, tables, tau)
summary.set_index(["model", "reading"]).round(3)

# %%
fig = plots.readings_by_model(summary, "median r, no context")

# %%
fig = plots.readings_by_model(summary, "median r, in context")

# %% [markdown]
# One caveat belongs beside the correlations. Chapter 04's dynamic score reads the head's real
# input (the forward pass applied the input norm, weights included) but projects its output with
# $W_O U$ alone, as the paper does: no Gemma post-attention norm, no final norm. So on the output
# side the dynamic score shares the paper's convention, and `fold` is held against a target that
# ignores the final norm's weights. The known-heads column does not have this bias: chapter 10's
# direct effects go through the model's own final norm.
#
# ## Why folding moves a model's map, or does not
#
# Folding multiplies each dimension by its norm weight. Where a norm's weights are nearly one number
# (coefficient of variation near 0) folding only rescales rows and no top-k changes; the larger the
# spread, the more it can move.

# %%
rd.norm_table(tables).round(3)

# %% [markdown]
# ## The top-k rule for large vocabularies
#
# PROTOCOL.md scores copying relations with k = 1 and the others with k = 10 for vocabularies of
# about 50k tokens, and 3 / 25 for 100k or more (as the paper does for Llama-3.1). Gemma (262k) and
# Qwen (152k) are read with 3 / 25 in their parts. How the number of heads over $\tau$ (promoting)
# moves with k, one k for every relation, and under each rule, for both norm conventions: all from
# one pass of the kernel per convention, counted exactly up to k = 25.

# %%
rd.k_table(tables, tau)

# %% [markdown]
# ## 4-bit quantisation noise
#
# Every model here is a GGUF file rounded to 4-6 bits per weight (8 for some tensors); the rounding
# error cannot be undone, but how much the map depends on it can be measured: add to the
# dequantised $W_V$ and $W_O$ a fresh error of the size the quantiser leaves, map each draw, and see
# how far the scores move. The noise model:

# %%
print(NOISE_RULE)
rd.noise_table(tables, tau)

# %% [markdown]
# Read as an error bar: "score sd" is the typical spread of a non-zero score over the exact map and
# the noisy draws, and "entries crossing tau" counts (head, relation, mode) entries that are over
# $\tau$ in some draws and under it in others: the classifications quantisation alone could flip.
#
# ## The verdict per model
#
# Computed from the table above: the reading with the highest median r without context and its
# lead over the paper's (a lead under 0.05 is within the margin chapter 04 uses), and the reading
# that recognises most known heads.

# %%
for model, text in rd.verdicts(summary).items():
    print(f"{model}: {text}")

# %% [markdown]
# ## What the tables say
#
# (The numbers below are read off the tables above, two decimals.)
#
# - **Folding the norm weights rescues no model.** Where the paper's reading already agrees with
#   behaviour (median r without context: SmolLM2 0.83, Qwen2.5-Coder-0.5B 0.89), folding lowers it
#   a little (0.81, 0.84), recognises the same known heads (7 of 7, 8 of 14) and changes about a
#   quarter of the heads chapter 05 ablated (73% and 80% of them kept). One combination gains:
#   Qwen2.5-Coder-0.5B read with its value bias goes from 0.76 to 0.84 and from 3 to 7 of 14 known
#   heads when folded. The bias is added after the input norm, so without the norm's weights the
#   token's share of each value is mis-scaled against it.
# - **Gemma-3-270M is not explained by the norms.** Its norm weights are far from one number (mean
#   coefficient of variation 1.05 for the input norms, 1.62 after attention, 1.79 for the final norm,
#   against 0.13-0.43 in the other models), yet no reading of its weights tracks its head outputs:
#   median r at most 0.18 under all six readings, at most 1 of 4 known heads. Folding moves which
#   heads pass $\tau$ (`fold · mlp0-residual`: 11 heads against 3) without agreement following.
#   The caveat above weighs most here: chapter 04's dynamic scores leave Gemma's post-attention and
#   final norms out, as the paper's reading does, so a dynamic score read through the folded output
#   side is the next measurement for this model.
# - **Qwen2.5-Coder-1.5B is not explained by them either.** The paper's reading (0.31) is the best
#   of its eight; folding lowers it to 0.16, and no reading recognises any of its 16 known heads.
# - **k.** SmolLM2 and Qwen2.5-Coder-0.5B move with the rule (SmolLM2 14 heads under 1 / 10, 20 under
#   3 / 25; Qwen2.5-Coder-0.5B 25 under its 3 / 25, 19 under 1 / 10), but Gemma keeps 1 head and
#   Qwen2.5-Coder-1.5B at most 2 at every k up to 25: a looser k does not rescue them.
# - **4-bit noise.** A fresh error of the quantiser's size moves a non-zero score by 0.002-0.004 (sd),
#   at most 0.05; 1 to 8 of the (head, relation, mode) entries over $\tau$ cross it in some draw,
#   and heads over $\tau$ change by at most 2 (Qwen2.5-Coder-1.5B's two heads sit at the threshold).
#   Quantisation is not what separates the models.
#
# So the paper's reading stays this book's default: on three of the four models no other reading
# agrees clearly better with what the heads do, and on Gemma every reading is poor. What makes
# Gemma-3-270M and Qwen2.5-Coder-1.5B hard to read from their weights remains open after this
# chapter; the norm weights, k and quantisation are ruled out as the main cause, within the caveat
# on Gemma's dynamic scores.

# %% [markdown]
# The paper's numbers, for scale (quoted from the paper, not computed here; every one of them was
# made with norms ignored):

# %%
pd.DataFrame(PAPER_READING_SCALE, columns=["model", "what", "paper", "where"]).set_index("model")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter executed in {time.perf_counter() - started:.0f} s (from the committed tables)")
