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
# # Salient operations: what does this head do?
#
# Predefined relations only find what we thought of asking. The complementary question is what a
# head does *most prominently*, read from its weights without a hypothesis. MAPS answers it in three
# steps (paper, section 5):
#
# 1. **Saliency.** For every token $t$ of the vocabulary, how strongly the head acts on it:
#    $\sigma_t = \lVert e_t W_{VO} \rVert / \lVert e_t \rVert$, with $e_t$ the row of
#    $E_\text{in}$ the head reads. Dividing by $\lVert e_t\rVert$ keeps tokens with large embeddings
#    from dominating. The library computes it without any $d \times d$ product:
#    $\lVert e_t W_V W_O \rVert = \lVert (e_t W_V) R^\top \rVert$ with $W_O^\top = QR$, one
#    $d_\text{head} \times d_\text{head}$ product per token.
# 2. **Salient mappings.** The 30 most salient tokens, each with the 5 tokens its row of
#    $M = E_\text{in} W_{VO} U$ scores highest.
# 3. **A description.** An LLM (GPT-4o in the paper) is asked whether the mappings show a pattern,
#    answering in JSON, or "Unclear". This chapter adds an offline alternative: rule-based detectors
#    for operations that can be checked on token strings, which need no API and cross-check the LLM.

# %% tags=["parameters"]
model = "smollm2-135m"  # alias, .gguf path, local folder or hub id
device = "cpu"  # cpu, cuda or auto
out_dir = "data"  # where tables are written (relative to the executed notebook)
heads = None  # heads whose mappings are shown, e.g. ["23.2", "28.2"]; None: chosen from the labels
suppressor = (
    None  # a head read from the bottom of its rows; None: the strongest suppressor of chapter 2
)
top_tokens = 30  # salient tokens per head (paper: 30)
top_mappings = 5  # mapped tokens per salient token (paper: 5)
show = 15  # salient tokens printed per head
# the describer: a local model's answers (python -m mapslib salient --describe --llm local) are read
# from the committed cache; an API model ("gpt-4o") is asked when OPENAI_API_KEY is set
llm_model = "qwen2.5-coder-1.5b-instruct.Q4_K_M@llama-cpp"
# the judge: a GGUF model alias or file, scored in-process by llama.cpp (make setup-llm); needed
# only when data/judgements.csv is missing or was made from other questions or descriptions
judge_model = "qwen2.5-coder-0.5b"
judge_heads = (
    None  # None: judge every head; N: N heads, every evidence category then spread over depth
)
temperature = 0.0
seed = 0
held_out = 5  # salient tokens after the described ones, kept back to score descriptions
options = 4  # lists per held-out question (chance: 1 / options)
threshold = 0.5  # share of salient tokens an offline detector must explain
map_settings = {}  # map choices to change, e.g. {"embedding": "raw", "k": 5}; {}: MapSettings' defaults
recompute = False  # True: compute every table again even when data/ has it
weights_only = False  # True: read only the weights used, a layer at a time (large models)

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd
from IPython.display import display

from mapslib.book.display import open_chapter
from mapslib.foundation.heads import all_heads, parse_head
from mapslib.foundation.settings import MapSettings
from mapslib.llm.client import speed_summary
from mapslib.relation_map.relations import load_relations
from mapslib.relation_map.scores import run_relation_map
from mapslib.relation_map.summary import strongest_head
from mapslib.report import plots_salient
from mapslib.salient.assess import (
    assessment_verdict,
    evidence_table,
    judge_contexts,
    judged_by_category,
    judged_part,
    own_p_values,
    side_by_side,
    spread_heads,
    try_assessment,
)
from mapslib.salient.describe import (
    answer_records,
    availability_note,
    replay_describer,
    run_descriptions,
)
from mapslib.salient.judge import JudgeSetup, described_part, judge_items
from mapslib.salient.labeller import (
    compare_with_llm,
    example_heads,
    identified_share_by_layer,
    label_counts_by_layer,
    label_heads,
)
from mapslib.salient.likelihood import group_accuracy
from mapslib.salient.mappings import mapping_table, run_salient, salient_mappings
from mapslib.salient.overlap_judge import reference_summary
from mapslib.salient.saliency import saliency_scores

lm, hw, name = open_chapter(model, device, weights_only)
settings = MapSettings.from_parameters(**map_settings)

# %% [markdown]
# ## Saliency of every token, for every head
#
# One number per head and vocabulary token: the whole tensor, every head of every layer over the
# whole vocabulary, takes seconds.

# %%
sal = saliency_scores(hw, settings=settings)
print(f"saliency: {sal.shape[0]} layers x {sal.shape[1]} heads x {sal.shape[2]} tokens")

# %% [markdown]
# ## Salient mappings of every head
#
# The table has one row per head, salient token and mapped token, with the token ids and their raw
# text; printed, tokens are made visible (`␣` is a leading space, `\n` a newline, `\xNN` a raw
# byte). It is written to
# `data/salient_mappings.json.gz` (gzipped JSON, committed: the atlas reads it) with the parameters
# beside it; it holds `held_out` more salient tokens
# per head than the 30 the pipeline reads, kept back to score the descriptions (below). Below, the first salient tokens of a
# few heads, most salient first, with their top mappings. Unless the `heads` parameter names them,
# the heads shown are the best example of each operation the offline labeller (below) finds, then
# heads it leaves unlabelled, spread over depth.

# %%
setup = JudgeSetup(described=top_tokens, held_out=held_out, options=options, seed=seed)
salient_all = run_salient(
    lm,
    all_heads(hw),
    out_dir,
    top_tokens=top_tokens + held_out,
    top_mappings=top_mappings,
    settings=settings,
    saliency=sal,
    recompute=recompute,
)
salient = described_part(salient_all, setup)  # the 30 tokens per head the pipeline reads
print(f"{len(salient)} rows for {salient.groupby(['layer', 'head']).ngroups} heads")

# %%
shown = heads or example_heads(label_heads(salient, threshold), 4)
print("heads shown:", ", ".join(shown))

# %% [markdown]
# The saliency of the first of them over the whole vocabulary, sorted: a head acts strongly on a
# small set of tokens and weakly on the rest; the 30 tokens the pipeline reads sit at the far left.

# %%
layer, h = parse_head(shown[0], hw)
fig = plots_salient.saliency_profile(sal[layer, h].numpy(), shown[0], name, top_tokens)

# %%
for spec in shown:
    la, hh = parse_head(spec, hw)
    print(f"head {spec}")
    print(mapping_table(salient, la, hh).head(show).to_string())
    print()

# %% [markdown]
# A head can also be read from the other end of its rows: the tokens it pushes *down* when it attends
# to a salient token (parameter `suppressor`; by default the head with the highest suppression score
# in chapter 2's relation map, whose table is reused). Its salient tokens and their most suppressed
# targets:

# %%
if suppressor is None:
    suppressor = strongest_head(
        run_relation_map(lm, load_relations(), out_dir, settings=settings), "suppress"
    )
s_layer, s_head = parse_head(suppressor, hw)
suppressed = salient_mappings(
    hw,
    lm.tokenizer,
    [(s_layer, s_head)],
    top_tokens=top_tokens,
    top_mappings=top_mappings,
    suppress=True,
    settings=settings,
    saliency=sal,
)
print(f"head {suppressor}, most suppressed targets")
print(mapping_table(suppressed, s_layer, s_head).head(show).to_string())

# %% [markdown]
# ## What the mappings show, before any LLM
#
# Before anything is described, each head's 30 lines are read by rules (`mapslib.salient.evidence`):
# the share of lines whose top target is the source (copying) or a word form of it; which of the
# shipped relations the head scores over $\tau$ on in chapter 2's map; targets that recur in many
# lines (a fixed output set, whatever the source); and the token classes of sources and targets
# (numbers, capitalised words, sub-word pieces, punctuation and code, non-Latin scripts). From these
# facts alone a category (`CATEGORIES`: copying, named relation, morphology, fixed output set, token
# class, no pattern) and a one-sentence *template description* that quotes example tokens. The
# template is the baseline any LLM describer must beat on the judge below.

# %%
relation_map = run_relation_map(lm, load_relations(), out_dir, settings=settings)
evidence = evidence_table(salient, relation_map, settings.tau)
print(evidence["category"].value_counts().to_string())

# %%
evidence[
    [
        "name",
        "category",
        "copy_share",
        "recurring_coverage",
        "source_class",
        "target_class",
        "template",
    ]
].head(12)

# %% [markdown]
# ## Describing heads with an LLM, given the evidence
#
# Each head's 30 lines and its facts go to the LLM (`mapslib.salient.describe.EVIDENCE_TEMPLATE`;
# the instructions every head shares first, the head's lines last, so a local server reuses the
# shared prefix). It must first pick one category from the same fixed list, then write one
# sentence that quotes example tokens, as a JSON object the server's grammar enforces. "No pattern"
# is that category, never a substring of the reply (the paper's rule, an answer containing "clear"
# anywhere, counted "There is a clear pattern" as no pattern).
#
# The paper used GPT-4o. The answers here come from **Qwen2.5-Coder-1.5B-Instruct** (GGUF Q4_K_M),
# served on this project's 2-core CPU machine by llama-cpp-python's server, which the project starts
# and stops itself:
#
# ```
# python -m mapslib salient --model smollm2-135m --out data/s.json --describe --judge \
#     --llm local --llm-cache mapslib/data/llm_answers
# ```
#
# Its answers are committed in `mapslib/data/llm_answers/` (keyed by model, exact prompt,
# temperature and seed), so this chapter replays them offline with no server and no key. Heads
# without an answer yet are counted as unavailable; the same command resumes and asks only for them.
# Any OpenAI-compatible endpoint runs the same protocol (`--llm openai --llm-model NAME`, with
# `OPENAI_BASE_URL` and `OPENAI_API_KEY`; in this chapter, `llm_model="NAME"`).

# %%
describer = replay_describer(llm_model, temperature, seed)
descriptions = run_descriptions(
    salient,
    f"{out_dir}/descriptions.csv",
    describer=describer,
    cache_only=True,
    evidence=evidence,
    progress=False,
)
print(availability_note(descriptions))
print(descriptions["status"].value_counts().to_string())
print(descriptions["category"].value_counts().to_string())

# %% [markdown]
# What the server spent per answer (one request at a time, on 2 CPU cores; the seconds include
# prompt processing):

# %%
speed_summary(answer_records(describer, salient, evidence=evidence))

# %% [markdown]
# ## An offline labeller
#
# Rule-based detectors check, for each salient token, whether any of its top targets is an instance
# of an operation that can be decided on token strings: **copying** (the same word up to case and
# leading space), **capitalisation**, **first letter**, **last letter**, **numeric successor**,
# **sub-word completion** (`inhib` → `␣inhibition`) and the inflections **plural**, **past tense**
# and **comparative**. A head gets every label whose detector explains at least half of its salient
# tokens (`threshold`); its main label is the one that explains most. The detectors cannot see
# semantic or factual operations, so they find fewer patterns than an LLM would; what they find is
# checkable.

# %%
labels = label_heads(salient, threshold)
found = labels[labels["label"] != "none"]
print(f"{len(found)} of {len(labels)} heads get an offline label")
print(labels["label"].value_counts().to_string())

# %%
found[["name", "label", "share", "labels"]].reset_index(drop=True)

# %% [markdown]
# Labels per layer, for the layers where the labeller finds any. The paper found patterns mostly in
# middle and upper layers; compare with the relation map of chapter 2, where the heads that score on
# name copying are.

# %%
label_counts_by_layer(labels, labelled_only=True)

# %% [markdown]
# ## The share of heads with an identified pattern, per layer
#
# The paper's Figure 5 plots, per layer, the share of heads where GPT-4o described a pattern: 60-96%
# in the middle and upper layers of GPT-2 xl and Pythia 6.9B, 20-60% in the early and last ones. Here
# the same share by the offline labeller, by the evidence's category (anything but "no pattern") and
# by the local LLM's category, over every head it has an answer for.

# %%
share = identified_share_by_layer(labels, descriptions, evidence)
fig = plots_salient.identification_rate(share, name)

# %% [markdown]
# ## Where the labeller and the LLM agree
#
# Per head: both find no pattern; both find one and the LLM's sentence names the labeller's
# operation; both find one but a different one; or only one of them finds a pattern. Heads without
# an LLM answer are counted apart.

# %%
comparison = compare_with_llm(labels, descriptions)
print(comparison["agreement"].value_counts().to_string())

# %%
comparison[comparison["label"] != "none"][["name", "label", "status", "pattern", "agreement"]]

# %% [markdown]
# ## Scoring the descriptions with a judge that is shown to work
#
# The paper checked descriptions with a human study. This check is automatic and reproducible
# (`mapslib.salient.likelihood`, `mapslib.salient.assess`). For each head, its next 5 salient
# tokens (ranks 31-35) were never shown to the describer. For each of them the judge must pick the
# head's real top-5 mappings of that token among 4 lists: the real one and the same token's top-5
# under 3 other heads of the model (none starting with the same top target). Every option starts
# from the same source, so only a description that says what *this* head does can help. Chance is
# 1/4, and the real list's position cycles over the questions, so it is balanced.
#
# The judge does not answer a letter. It is a language model (`judge_model`, Qwen2.5-Coder-0.5B-
# Instruct at 4 bits, in-process with llama.cpp) scoring each option by the log-likelihood of the
# list after "what the head does: <description>", minus the log-likelihood of the same list after
# no description (domain-conditional PMI, Holtzman et al. 2021; the multiple-choice scoring of
# lm-evaluation-harness), and picking the highest. Each option is scored alone, so no answer
# position can be favoured; the calibration removes how likely a list is anyway. Before it judges
# anything, the judge must pass its controls, all on the same questions:
#
# - **positive control**: the 30 lines the describer saw, as the description, must score far above
#   chance (the word-overlap judge below shows the test is answerable from them);
# - **negative controls**: another head's description (a seeded derangement), and an empty one (PMI 0
#   for every option: chance by construction), must not;
# - **the baseline**: the evidence template, written with no LLM.
#
# The judge's scores are cached per context, and the book's are committed
# (`mapslib/data/judge_scores/`, written by `make judge-scores`), so this cell replays them with no
# llama.cpp and no judge model; scores missing from both are computed in one single-threaded
# llama.cpp process per core (`mapslib.salient.parallel_judge`; `MAPSLIB_JUDGE_WORKERS` sets how
# many).

# %%
# NBVAL_IGNORE_OUTPUT
# (the judge needs llama.cpp, which CI does not build: tests/salient check it with scripted scorers)
asked = judged_part(salient_all, evidence, judge_heads)
print(f"judging {asked.groupby(['layer', 'head']).ngroups} heads")
items = judge_items(hw, lm.tokenizer, asked, setup, settings)
contexts = judge_contexts(asked, setup, evidence, descriptions)
judged = try_assessment(
    items,
    contexts,
    judge_model,
    f"{out_dir}/judgements.csv",
    setup,
    describer={"llm": llm_model, "prompt": "category, with the evidence"},
    recompute=recompute,
    progress=False,  # a bar would be stored in the page; the CLI shows it (salient --judge)
)
if judged is not None:
    accuracy = group_accuracy(judged)
    print(assessment_verdict(accuracy, *own_p_values(judged)))

# %%
# NBVAL_IGNORE_OUTPUT
# (the judge needs llama.cpp, which CI does not build: tests/salient check it with scripted scorers)
if judged is not None:
    columns = ["heads", "questions", "accuracy", "ci low", "ci high", "p (binomial, > chance)"]
    display(accuracy.set_index("group")[columns + ["accuracy uncalibrated"]].round(3))

# %% [markdown]
# The raw answers, for a degenerate pattern: the share of each position among the judge's picks
# (calibrated and not) and among the true answers, per group. A judge that always picked one
# position would show 1.0 in one column.

# %%
# NBVAL_IGNORE_OUTPUT
# (the judge needs llama.cpp, which CI does not build: tests/salient check it with scripted scorers)
if judged is not None:
    positions = [c for c in accuracy.columns if c.startswith(("picked", "answer "))]
    display(accuracy.set_index("group")[positions].round(2))

# %% [markdown]
# Per category (the evidence's, and the LLM's own) and group: the mean accuracy, then the number
# of questions behind it.

# %%
# NBVAL_IGNORE_OUTPUT
# (the judge needs llama.cpp, which CI does not build: tests/salient check it with scripted scorers)
if judged is not None:
    by_category = judged_by_category(judged, evidence, descriptions)
    for column in ("evidence category", "LLM category"):
        if column in by_category:
            display(
                by_category.pivot_table(
                    index=column, columns="group", values="correct", aggfunc=["mean", "size"]
                ).round(2)
            )

# %% [markdown]
# The word-overlap judges (`mapslib.salient.overlap_judge`, no model at all) answer the same
# questions by picking the option that shares the most words with the seen lines, with the LLM's
# description, or with another head's description:

# %%
reference_summary(items, asked, descriptions.assign(inputs=""), setup)

# %% [markdown]
# ## Twenty heads side by side
#
# Mappings (the first 3 of the 30 lines), the evidence's category and template sentence, the LLM's
# category and sentence, and the judge's accuracy on the 5 held-out questions with each (and with
# the seen lines), so that a reader can judge the judge. Heads: every evidence category, then spread
# over depth, among the heads judged.

# %%
# NBVAL_IGNORE_OUTPUT
# (the judge needs llama.cpp, which CI does not build: tests/salient check it with scripted scorers)
if judged is not None:
    judged_evidence = evidence[evidence["name"].isin(set(judged["name"]))]
    with pd.option_context("display.max_colwidth", 120):
        display(
            side_by_side(salient, evidence, descriptions, judged, spread_heads(judged_evidence, 20))
        )

# %% [markdown]
# ## What the judge's numbers mean
#
# The verdict printed under the judge's table is computed, not written: it says whether the judge
# passes its positive control, where the negative controls fall, and whether the 1.5B describer's
# sentences carry more about the held-out mappings than another head's sentence or the
# no-LLM template. Where the LLM's interval overlaps the template's, a local 1.5B model adds
# nothing the rules did not already find; where the template beats it, the LLM loses information
# the facts held (it was given them). The side-by-side table shows why in each case: a sentence
# that names a category but quotes tokens that are not in the lines, or a generic sentence where
# the template quotes the head's own recurring targets.
#
# Cost, measured (the judge table's sidecar holds the judge's speed; `benchmarks/bench_judge.py`
# times it): one description of about 1100 prompt and 70 answer tokens takes 15-25 s on the 2-core
# machine; the judge evaluates prompts only, one group of one head's 5 questions in a few seconds.

# %%
# NBVAL_IGNORE_OUTPUT
None if judged is None else judged.attrs.get("sidecar", {}).get("speed")

# %% [markdown]
# The shipped models' weights come from 4-bit GGUF files dequantised to float32 (the format is
# printed under the first cell): quantisation noise is in every saliency and mapping above. The next chapter uses the same saliencies to ask how *global*
# each head's operation is.
