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
# # Methods: an attention head as a token-to-token matrix
#
# MAPS reads what an attention head does from its weights alone. An attention head writes
# $Y = \tilde X W_{VO}$ to the residual stream, where $\tilde X$ is the attention-weighted mix of
# the hidden states it reads and $W_{VO} = W_V W_O$ is a $d \times d$ matrix of rank at most
# $d_\text{head}$. Projecting both sides into the vocabulary gives
#
# $$M = E_\text{in}\, W_{VO}\, U \in \mathbb{R}^{|V| \times |V|},$$
#
# whose entry $M[s, t]$ scores how strongly the head promotes token $t$ in its output when it
# attends to token $s$. Row $s$ of $M$ is everything the head does to $s$. The library never builds
# $M$: it keeps the product factored, $M[S, :] = (E_\text{in}[S] W_V)(W_O U)$, and computes only
# the rows it is asked for, a block of columns at a time.
#
# This chapter shows the objects for one model: the head's dimensions, the top mappings of a few
# tokens for one head, how the choice of $E_\text{in}$ changes them, and what the two constants of
# the relation score, $k$ and $\tau$, mean. Every number below comes from the calls shown; the code
# behind each call is in `mapslib` (one hop: the module is named in the call).

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
head = None  # the head whose mappings we read, LAYER.HEAD; None: the strongest on `relations`
suppressor = None  # a head read the other way (bottom of its rows); None: the strongest suppressor
relations = [
    "names",
    "capital",
    "comparative",
    "past_tense",
]  # scored here to pick and explain heads
words = ["John", "Mary", "France", "Paris", "cat", "big", "walk"]
top_k = 5
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
weights_only = False  # True: read only the weights used, a layer at a time (large models)

# %%
# NBVAL_IGNORE_OUTPUT
from mapslib.book.display import open_chapter
from mapslib.foundation.heads import parse_head
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.relations import load_relations, scorable
from mapslib.relation_map.scores import relation_k, relation_scores, scores_by_k
from mapslib.relation_map.summary import strongest_head
from mapslib.salient.mappings import (
    mapping_strings,
    mappings_by_embedding,
    ov_summary,
    single_tokens,
    top_mappings,
)

lm, hw, name = open_chapter(model, device, weights_only)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## The model's dimensions
#
# `HeadWeights` is the architecture adapter: it finds $W_V$, $W_O$, $E$, $U$ and the first MLP in
# any supported family (GPT-2, GPT-NeoX/Pythia, Phi-2, Llama/Mistral/Qwen2/Qwen3/SmolLM,
# Gemma 2/3). With grouped-query attention several query heads share one $W_V$ (query head $h$
# reads kv head $h \,/\!/\, (H / H_{kv})$), so $E_\text{in} W_V$ is computed once per group.
# The weights come from `lm.quantization` below: a 4-bit GGUF file is dequantised to float32, so
# every number in this book carries that quantisation noise.

# %%
print(lm.quantization)
hw.describe()

# %% [markdown]
# Which head to look at? Unless the parameters name one, this chapter scores every head on a few
# relations (the relation score is defined below; chapter 2 maps all of them) and reads the head
# that promotes one of them most strongly, and the one that suppresses one most strongly.

# %%
tokenized = scorable(load_relations(relations), lm.tokenizer, settings.min_pairs)
scores = relation_scores(hw, tokenized, settings=settings)
head = head or strongest_head(scores, "promote")
suppressor = suppressor or strongest_head(scores, "suppress")
print(f"head {head}, suppressor {suppressor}")

# %% [markdown]
# Why $M$ is never built: for this vocabulary one head's $M$ alone would take the memory shown
# below, yet it has rank at most $d_\text{head}$.

# %%
layer, h = parse_head(head, hw)
ov_summary(hw, layer, h)

# %% [markdown]
# ## Top mappings of a few tokens
#
# For each source word (with its leading space, as MAPS tokenises it) the five target tokens with the
# largest entries in its row of $M$. Tokens are shown with `␣` for a leading space. Words that are
# not a single token are dropped and listed.

# %%
ids, dropped = single_tokens(lm.tokenizer, words)
print("not single tokens:", dropped)
mapping_strings(top_mappings(hw, lm.tokenizer, layer, h, ids, top_k, settings=settings)).to_frame(
    f"top {top_k} of head {head}"
)

# %% [markdown]
# A suppressive head is read from the other end of its rows: the targets with the most negative
# entries are the tokens it pushes down when it attends to the source.

# %%
s_layer, s_head = parse_head(suppressor, hw)
mapping_strings(
    top_mappings(hw, lm.tokenizer, s_layer, s_head, ids, top_k, suppress=True, settings=settings)
).to_frame(f"bottom {top_k} of head {suppressor}")

# %% [markdown]
# ## Which embeddings the head reads: $E_\text{in}$
#
# Heads after the first layer do not read raw token embeddings: the first block has already mixed
# them. MAPS's default (`paper`, as in the authors' code) uses $\text{MLP}_0(\text{LN}_0(E))$, the
# first MLP applied to the normed embeddings without the residual, for every layer after 0; layer 0
# reads $E$. `raw` uses $E$ everywhere; `mlp0-residual` uses $E + \text{MLP}_0(\text{LN}_0(E))$.
# The same head under the three choices:

# %%
mappings_by_embedding(hw, lm.tokenizer, layer, h, ids, k=3, settings=settings)

# %% [markdown]
# ## The relation score, $k$ and $\tau$
#
# For a relation $R$ given as token pairs $(s, t)$, the head's score is the fraction of pairs whose
# $t$ is among the top $k$ entries of row $s$ of $M$:
# $\phi_R = \frac{1}{|D_R|}\sum_{(s,t)} \mathbb 1[t \in \text{top}_k(M[s,:])]$. Suppression uses the
# top $k$ of $-M[s,:]$. The kernel answers both with one pass: $t$ is in the top $k$ iff fewer than
# $k$ entries of its row exceed $M[s,t]$.
#
# $k$ sets how strict the test is. PROTOCOL.md fixes it by vocabulary size: $k=1$ for the two
# copying relations and $k=10$ for the others with vocabularies of about 50k tokens, $3$ and $25$
# from 100k tokens on. Here the head's scores on a few relations as $k$ grows:

# %%
print({r.name: relation_k(r, hw.vocab_size, settings.k) for r in tokenized})
by_k = scores_by_k(hw, tokenized, [layer], [1, 3, 10, 25], settings)
by_k = by_k[(by_k["head"] == h)].pivot_table(
    index=["relation", "mode"], columns="k", values="score"
)
by_k.round(3)

# %% [markdown]
# $\tau$ turns scores into a classification: a head *implements* $R$ when $\phi_R \ge \tau = 0.15$,
# a value the paper checked against random matrices with the same statistics (chapter 3 repeats
# that check for this model). A head belongs to a category (algorithmic, knowledge, linguistic,
# translation) when it implements one of its relations or their suppression. The next chapter maps
# every relation over every head.

# %%
print("tau =", settings.tau)
mine = scores[(scores["layer"] == layer) & (scores["head"] == h)]
mine.assign(implements=lambda d: d["score"] >= settings.tau)
