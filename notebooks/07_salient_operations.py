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
from mapslib.book.display import open_chapter
from mapslib.foundation.heads import all_heads, parse_head
from mapslib.foundation.settings import MapSettings
from mapslib.llm.client import speed_summary
from mapslib.relation_map.relations import load_relations
from mapslib.relation_map.scores import run_relation_map
from mapslib.relation_map.summary import strongest_head
from mapslib.report import plots_salient
from mapslib.salient.describe import (
    answer_records,
    availability_note,
    describe_heads,
    replay_describer,
)
from mapslib.salient.judge import (
    JudgeSetup,
    accuracy_by_layer,
    accuracy_summary,
    described_part,
    judge_items,
    judge_verdict,
    per_head_accuracy,
    question_text,
    run_judgement,
    with_descriptions,
)
from mapslib.salient.labeller import (
    compare_with_llm,
    example_heads,
    identified_share_by_layer,
    label_counts_by_layer,
    label_heads,
)
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
# ## Describing heads with an LLM
#
# Each head's 30 lines go to the LLM with this project's prompt (`mapslib.salient.describe.USER_TEMPLATE`;
# the instructions every head shares come first, the head's lines last, so a local server reuses the
# shared prefix): it asks for a JSON object with a short reasoning, one sentence on the inputs and
# one on the pattern, or "Unclear". As in the paper, an answer that contains "clear" anywhere
# counts as no pattern.
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

# %%
describer = replay_describer(llm_model, temperature, seed)
descriptions = describe_heads(salient, describer=describer)
print(availability_note(descriptions))
print(descriptions["status"].value_counts().to_string())

# %% [markdown]
# What the server spent per answer (one request at a time, on 2 CPU cores; the seconds include
# prompt processing, which dominates):

# %%
speed_summary(answer_records(describer, salient))

# %% [markdown]
# Every described head, with the LLM's sentences:

# %%
described = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
described[["name", "status", "pattern", "inputs"]].reset_index(drop=True)

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
# the same share by the offline labeller and by the local LLM, over every head it has an answer for
# (all of SmolLM2's; the count is printed at the top of the LLM section).

# %%
share = identified_share_by_layer(labels, descriptions)
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
# ## Scoring the descriptions without people
#
# The paper checked descriptions with a human study (GPT-4o right about the presence of a pattern in
# 80% of cases). This check is automatic and reproducible (`mapslib.salient.judge`). For each
# described head, its next 5 salient tokens (ranks 31-35) were never shown to the describer. For
# each of them, a judge (the same local LLM, another prompt) reads *only* the description's inputs
# and pattern sentences and must pick the head's real top-5 mappings of that token among 4 lists:
# the real one and the same token's top-5 under 3 other heads of the model drawn at random (none
# starting with the same top target). Every option starts from the same source token, so only a
# description that says what this head does to such tokens can help. Chance is 1/4. Two controls:
# heads the describer called "Unclear", and every head judged with another head's description (a
# seeded derangement).

# %%
items = judge_items(
    hw, lm.tokenizer, with_descriptions(salient_all, descriptions), setup, settings
)
judged = run_judgement(items, descriptions, describer, f"{out_dir}/judgements.csv", setup=setup)
summary = accuracy_summary(judged, setup)
print(judge_verdict(summary))
summary

# %% [markdown]
# Is the test answerable at all, and do the descriptions hold what it asks? Three judges without an
# LLM (`mapslib.salient.overlap_judge`) answer the same questions by word overlap, picking the
# option that shares the most words (a tie is a fair guess, so no overlap scores chance exactly):
# with the 30 lines the describer was shown; with the description's own words (a word found in more
# than a fifth of the descriptions dropped as boilerplate); and with another head's description (the
# same derangement as the LLM judge's control).

# %%
reference_summary(items, salient_all, descriptions, setup)

# %%
fig = plots_salient.judge_scores(per_head_accuracy(judged), setup.chance, name)

# %% [markdown]
# Accuracy per layer with each head's own description (questions pooled over the heads of a layer):

# %%
accuracy_by_layer(judged)

# %% [markdown]
# One question as the judge saw it, for the first described head:

# %%
print(question_text(items))

# %% [markdown]
# ## What a 1.5B local describer costs
#
# Qwen2.5-Coder-1.5B-Instruct at 4 bits is not GPT-4o. The held-out score makes its cost
# measurable instead of anecdotal: the sentence under the judge's table says whether this model's
# descriptions beat chance and the shuffled control, and the word-overlap table says why. On the
# default model (SmolLM2, the first part of this book; all 270 heads described and judged):
#
# - **The test is answerable.** Picking the option that shares the most words with the 30 lines the
#   describer was shown is right 0.83 of the time (chance 0.25): most SmolLM2 heads push a
#   recognisable set of targets whatever the source (head 0.0: `␣strugg, ␣affili, ␣enthus`,
#   ...), so a description that named those targets would pass.
# - **The descriptions keep a little of it.** Word overlap with the description alone scores 0.32,
#   with another head's description 0.26: the sentences sometimes quote tokens that recur in the
#   head's held-out lists. Most do not: 194 of 270 pattern sentences are some form of "promoting
#   synonyms or related words", a sentence that fits any head.
# - **The 1.5B judge uses none of it.** Given the same descriptions, it scores 0.25, the control
#   0.26, and its picks lean to the first letter (A in 31% of answers).
# - **It almost never says "Unclear"**: 17 of 270 heads, where GPT-4o did for a third of GPT-2 xl's
#   and Pythia's heads. So its identification rate per layer (the figure above, on SmolLM2) is flat
#   near 1 and says nothing about depth, unlike the paper's Figure 5.
# - **It rarely names the operation the labeller checks.** Of the 9 heads the offline labeller
#   calls copying heads (layers 22-24), its sentence names copying for 3 (23.1, 23.2, 24.5) and calls
#   the others synonyms or single-token processing.
#
# So, on this machine, the local pipeline runs end to end, covers every head and is reproducible,
# but the offline labeller and the relation map remain the reliable readings, and the word-overlap
# judges bound what a better describer or judge could show on the same test. The same chapter with
# `llm_model="gpt-4o"` and a key (or a larger local model, `--llm-model FILE.gguf`) scores a
# stronger describer by the same rule.
#
# Cost: one SmolLM2 description took 22 s on average on 2 CPU cores (about 1000 prompt and 140
# answer tokens; the llama-cpp server runs on every core, its own default of half of them
# was 1.6x slower), and judging a head is two requests more of about 7 s each. The server answers
# one request at a time (a second request in flight: 0.94x in `benchmarks/bench_describe.py`), so
# describing and judging the 270 heads costs about 2.7 hours of server time (270 x 22 s + 540 x 7 s),
# here spread over several resumed runs.
#
# The committed answers also cover every head of Gemma-3-270M (72 heads in 42 min: 18.7 s per
# description, 7.6 s per judge request), whose part of this book repeats the readings: the LLM
# judge at 0.254 with the heads' own descriptions and 0.247 with another head's, word overlap with
# the seen mappings at 0.84 and with the description at 0.31 (another head's: 0.25). The
# Qwen2.5-Coder models are not described yet (336 heads each, about 3.2 hours each at these
# rates). The command above (or `make describe MODEL=...`) resumes from the cache and asks only for
# the heads without an answer.

# %% [markdown]
# The shipped models' weights come from 4-bit GGUF files dequantised to float32 (the format is
# printed under the first cell): quantisation noise is in every saliency and mapping above. The next chapter uses the same saliencies to ask how *global*
# each head's operation is.
