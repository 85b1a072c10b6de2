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
# # Known heads, found by behaviour: name movers
#
# The paper's comparison with known head functionalities (section 4.4, "Analysis", and its
# appendix "Comparison to Head Operations Identified in Prior Works") starts from heads that circuit
# analyses found by running a model on a task. Wang et al. (2022) studied **indirect object
# identification** (IOI) in GPT-2 small: in "When Mary and John went to the store, John gave a drink
# to", the next token should be the indirect object (IO) " Mary", not the repeated subject (S)
# " John". At the last position, **name mover** heads attend to the IO and copy it into the output;
# **negative name movers** attend to it too and write against it; **backup name movers** take over
# when the name movers are removed.
# MAPS, from the weights alone, classified all three name movers of GPT-2 small as implementing
# `name copying` and both negative name movers as implementing its suppression.
#
# This chapter repeats that comparison on the book's model, where no published circuit exists: it
# finds the heads by behaviour, the way the IOI paper's first step did, then asks what MAPS says
# about them.
#
# **Prompts.** Sixteen templates in the style of the IOI dataset and 113 common English first names,
# shipped in `mapslib/data/ioi/` (written for this project, CC0; the README there says so). A name
# is used when `" " + name` is one token; two different names fill each prompt, the IO first in half
# of the prompts (ABBA) and the subject first in the other half (BABA).
#
# **Direct effect.** At the last position, head $h$ writes $y_h = z_h W_O[h]$ (its attention-weighted
# values through its slice of $W_O$; $b_O$ belongs to no head). Its direct effect on the logit
# difference is $y_h$ carried straight to the logits: through the final norm with that norm's
# scale frozen at its value in this forward pass (LayerNorm: centred and divided by
# $\sqrt{\mathrm{var}+\epsilon}$; RMSNorm: divided by $\sqrt{\mathrm{mean}(x^2)+\epsilon}$;
# times the norm's weight, $1+w$ in Gemma), and in Gemma 2/3 also through the norm each block
# applies to its attention output (frozen the same way), then onto $U_{IO} - U_S$. Summed over all
# heads, $b_O$, embeddings and MLPs (plus the norm's bias and $b_U$) this is exactly the model's
# logit difference; `tests/behaviour/test_direct_effect.py` checks that on a tiny random model of
# every supported family, and checks each head's effect against a hand computation from a separate
# forward pass. Where a model softcaps its final logits (Gemma 2), the effects decompose the
# difference *before* the cap (the cap is monotone, so the preferred name is the same).
#
# **Attention.** Each head's attention weight from the last position to the IO token and to the two
# S tokens (summed), from the model's own attention in the same forward pass.
#
# **Roles** (the rule in `known_heads.PROTOCOL`, printed below). A head's effect is *large* when it
# is more than 3 robust standard deviations (1.4826 × MAD over all heads) from the median *and* at
# least 10% of the largest effect of any head; it *attends to* a name when its mean weight there is
# at least 0.1 and larger than on the other name. Large and positive while attending to the IO: a
# name mover; large and negative while attending to the IO: a negative name mover. Heads can also
# act on the subject: a head that attends to S and copies it lowers the difference (an **S mover**),
# one that attends to S and suppresses it raises the difference (an **S suppressor**, the
# copy-suppression behaviour McDougall et al. 2023 described). A copying head should score on MAPS's
# promote side and a suppressing head on its suppress side, so the role says which static score
# should pass $\tau$.

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
n_prompts = 300  # IOI prompts, drawn with `seed`
seed = 0
known_heads = None  # None: the IOI paper's heads for GPT-2 small, else the heads found here; or a
# dict such as {"name mover": ["9.9", "10.0"], "negative name mover": ["10.7"]}
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it

# %%
# NBVAL_IGNORE_OUTPUT
import json

from mapslib.behaviour.ioi import ioi_prompts, load_ioi_data, locate, single_token_names
from mapslib.behaviour.known_heads import (
    PROTOCOL,
    agreement,
    default_known_heads,
    findings,
    known_findings,
    known_table,
    missed_by_behaviour,
    movers,
    parse_known_heads,
    recognition,
    run_known_heads,
)
from mapslib.book.display import open_chapter
from mapslib.foundation.settings import MapSettings
from mapslib.foundation.tokens import token_texts
from mapslib.relation_map.relations import load_relations
from mapslib.relation_map.scores import run_relation_map
from mapslib.report import plots_known_heads

lm, hw, name = open_chapter(model, device)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## Prompts
#
# The names this tokenizer keeps (one token with a leading space), and a few prompts with the IO
# and S each prompt uses. The prompt stops where the IO should come next.

# %%
data = load_ioi_data()
names = single_token_names(lm.tokenizer, data.names)
dropped = sorted(set(data.names) - set(names))
print(
    f"{len(names)} of {len(data.names)} names are one token; dropped: {', '.join(dropped) or 'none'}"
)
examples, _ = locate(lm.tokenizer, ioi_prompts(data, names, 4, seed))
for x in examples:
    print(f"{x.prompt.order}  {x.prompt.text!r} -> {x.prompt.io!r} (S: {x.prompt.s!r})")
print(" | ".join(token_texts(lm.tokenizer, examples[0].ids)))

# %% [markdown]
# ## Static scores
#
# MAPS's name-copying scores come from chapter 02's relation map (the same call and parameters, so
# the table in `data/` is shared). A head implements name copying when its score is at least
# $\tau$. Where no head reaches $\tau$, MAPS (under this reading of $E_\text{in}$) sees no
# name-copying head at all, and the comparison below can only record that; the `map_settings`
# parameter (e.g. `{"embedding": "raw"}`) re-reads the map with another $E_\text{in}$ (chapter 02 compares them, chapter 04 asks
# which one the forward pass agrees with).

# %%
static = run_relation_map(lm, load_relations(), out_dir, settings=settings, recompute=recompute)
nc = static[static["relation"] == "name_copying"]
for mode in ("promote", "suppress"):
    d = nc[nc["mode"] == mode]
    top = d.loc[d["score"].idxmax()]
    print(
        f"name copying, {mode}: {int((d['score'] >= settings.tau).sum())} heads with score >= tau = {settings.tau}; "
        f"highest {top['score']:.3f} ({int(top['layer'])}.{int(top['head'])})"
    )

# %% [markdown]
# ## The experiment
#
# One forward pass per batch of prompts of equal token length, hooks on every layer; the table has
# one row per head: its mean direct effect (and standard deviation over prompts), robust z, mean
# attention to IO and S, the role the rule gives it, and its static name-copying scores.

# %%
table = run_known_heads(
    lm, static, out_dir, n_prompts=n_prompts, seed=seed, settings=settings, recompute=recompute
)
sidecar = table.attrs["sidecar"]
print(json.dumps(PROTOCOL["roles"], indent=1))
print(json.dumps(sidecar["summary"], indent=1))
print("final logit softcapping:", sidecar["final_logit_softcapping"])

# %% [markdown]
# ## The heads behaviour finds
#
# Every head with a role, largest effect first; `MAPS side` is the static score the role says should
# pass $\tau$, and `maps recognises` whether it does.

# %%
found = movers(table)
found.drop(columns=["layer", "head"]).round(3)

# %% [markdown]
# Each head's direct effect against MAPS's promote (left) and suppress (right) score for name
# copying. Name movers and S movers should sit above the dashed line on the left, negative name
# movers and S suppressors on the right. Ringed: the known heads of the section below (for GPT-2
# small the IOI paper's; for other models the name movers and negative name movers found here, or
# the heads given as `known_heads`).

# %%
given = known_heads if known_heads is not None else default_known_heads(hw)
if given is None:
    print(f"no published IOI heads for {name}: the heads found by behaviour are the known heads")
    given = {
        r: list(found[found["role"] == r].index) for r in ("name mover", "negative name mover")
    }
given_heads = parse_known_heads(given, hw)
fig = plots_known_heads.effect_vs_static(table, name, settings.tau, given_heads)

# %%
fig = plots_known_heads.effect_grid(table, name)

# %% [markdown]
# ## Agreement with MAPS
#
# Per role: how many heads behaviour finds and how many of them MAPS puts over $\tau$ on the role's
# side; and how many heads MAPS puts over $\tau$ on that side in all.

# %%
recognition(table)

# %% [markdown]
# The heads MAPS puts over $\tau$ for name copying that behaviour gives no role on that side. A
# static score says what a head *would* do to a name it reads; on these prompts a head may not read
# a name at the last position (little attention to IO or S), or its effect may be real but small
# next to the largest heads'.

# %%
missed_by_behaviour(table).drop(columns=["layer", "head"]).round(3)

# %% [markdown]
# Over all heads: Spearman's rank correlation between the direct effect and the static score,
# heads with a positive effect against the promote score and heads with a negative one (as
# $-$effect) against the suppress score. Most heads write almost nothing here, so these ranks are
# dominated by many near-zero effects; the role table above is the sharper comparison.

# %%
agreement(table).round(4)

# %% [markdown]
# ## Published heads
#
# For GPT-2 small, `known_heads` defaults to the heads of the IOI circuit that act at the last
# position, as listed by Wang et al. (2022, "Interpretability in the Wild", section 3 and figure 2):
# name movers 9.9, 10.0, 9.6; negative name movers 10.7, 11.10; backup name movers 10.10, 10.6,
# 10.2, 10.1, 11.2, 9.7, 9.0, 11.9. The paper (appendix) reports that MAPS classifies all the name
# movers as name copying and both negative name movers as its suppression, and 6 of the backup heads
# among its 21 further name-copying heads. Run this chapter with `-p model gpt2` (where the hub is
# reachable) to reproduce that comparison. For other models the heads found above stand in for the
# published ones; a dict given as `known_heads` is compared the same way (a role whose name starts
# with "negative" is checked against the suppress score, any other against promote).

# %%
known = known_table(table, given_heads)
known.round(3)

# %%
print("\n".join(known_findings(known)))

# %% [markdown]
# ## What this run shows
#
# Printed from the tables above, for this model and these prompts.

# %%
print("\n".join(findings(table, sidecar["summary"], settings.tau)))

# %% [markdown]
# ## Reading the results
#
# * A direct effect is the head's *own* write to the logits at the last position. Heads that act
#   through other heads (the IOI circuit's duplicate-token, induction and S-inhibition heads, whose
#   outputs steer where the name movers attend rather than the logits) have little direct effect and
#   are not meant to appear here; nor are backup name movers, which act mainly when the name movers
#   are removed (finding them needs ablation, chapter 05's tool, not a clean run).
# * Attention decides the sign a copying head gives: a head that copies whatever name it reads helps
#   when it reads the IO and hurts when it reads S. This is why the role uses attention and why the
#   S movers and S suppressors are kept apart from the name movers: MAPS describes the head's OV
#   circuit (what it writes for a name it reads), not where it looks.
# * The static score is a property of the weights over a whole relation's pairs; the direct effect
#   depends on these prompts and on the rest of the model (the frozen norm scales and the heads'
#   inputs). Where MAPS agrees on the heads with a clear role while the rank correlation over all
#   heads is weak, the difference lies in the many heads whose effect on these prompts is near zero:
#   their ranks are mostly noise, whatever their static scores.
# * The weights of the book's models are dequantised from 4-bit GGUF files; the IOI prompts and
#   names are this project's own, not Wang et al.'s dataset.
