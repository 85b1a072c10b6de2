"""Published numbers to compare against: the MAPS paper and the project's PROTOCOL.md.

These are quoted, never computed: chapters show them beside the numbers this library computes, with
the model, quantisation and data each comes from.
"""

from __future__ import annotations

# Single-token pairs that survive the filter (PROTOCOL.md, "Relation datasets").
SURVIVING_PAIRS: dict[str, dict[str, int]] = {
    "smollm2-135m": {
        "name_copying": 99,
        "country_to_capital_wikidata": 39,
        "general_copying_english_500": 440,
    },
}
SCORED_RELATIONS: dict[str, int] = {"smollm2-135m": 16, "gpt2": 18, "llama-3.1": 19}

# Head scores seen with PROTOCOL.md's choices (MODELS.md): (relation, mode, layer, head, score).
KNOWN_SCORES: dict[str, list[tuple[str, str, int, int, float]]] = {
    "smollm2-135m": [
        ("name_copying", "promote", 23, 2, 0.84),
        ("name_copying", "suppress", 23, 3, 0.87),
    ],
}

# Share of classified heads that implement relations of several categories (paper, "Function distribution").
PAPER_MULTI_CATEGORY_SHARE: dict[str, float] = {
    "GPT-2 xl": 0.38,
    "Phi-2": 0.29,
    "Pythia 6.9B": 0.20,
    "Pythia 12B": 0.20,
    "Llama-3.1 8B": 0.11,
    "Llama-3.1 70B": 0.11,
}
PAPER_SUPPRESSION_SHARE = (0.20, 0.36)  # range over the paper's six models

# Random baseline (paper, appendix "Random Baselines"): random heads over tau, real relation heads, all heads.
PAPER_RANDOM_BASELINE: dict[str, tuple[int, int | None, int]] = {
    "GPT-2 xl": (5, 250, 1200),
    "Phi-2": (0, None, 1024),
    "Pythia 6.9B": (0, None, 1024),
    "Pythia 12B": (0, None, 1600),
    "Llama-3.1 8B": (0, None, 1024),
    "Llama-3.1 70B": (0, None, 5120),
}

# Correlation of static and dynamic scores, Llama-3.1 8B, (without context, with context) (paper, Table 1).
PAPER_CORRELATION_LLAMA31_8B: dict[str, tuple[float, float]] = {
    "general_copying_english_500": (0.75, 0.79),
    "name_copying": (0.95, 0.94),
    "word_first_letter": (0.89, 0.72),
    "word_last_letter": (0.67, 0.37),
    "country_to_capital_wikidata": (0.81, 0.84),
    "country_to_official_language_wikidata": (0.74, 0.63),
    "object_superclass": (0.74, 0.66),
    "product_by_company": (0.44, 0.52),
    "work_location": (0.45, 0.45),
    "adj_antonym": (0.90, 0.90),
    "adj_comparative": (0.87, 0.91),
    "adj_superlative": (0.87, 0.89),
    "entity_to_pronoun": (0.89, 0.79),
    "verb_past_tense": (0.91, 0.89),
    "word_to_compound": (0.76, 0.55),
    "word_to_homophone": (0.84, 0.77),
    "word_to_synonym": (0.79, 0.79),
    "english_to_french": (0.71, 0.71),
    "english_to_spanish": (0.82, 0.81),
}

# Causal ablation, Pythia 12B (paper, Table 2): base, minus relation heads, minus random heads,
# control base, control minus relation heads (None: no control task).
PAPER_CAUSAL_PYTHIA12B: dict[str, tuple[float, float, float, float | None, float | None]] = {
    "adj_comparative": (0.91, 0.20, 0.82, 0.92, 0.63),
    "general_copying_english_500": (0.65, 0.34, 0.79, None, None),
    "country_to_capital_wikidata": (0.97, 0.00, 0.95, 0.89, 0.90),
    "country_to_official_language_wikidata": (1.00, 0.08, 0.96, 0.89, 0.89),
    "name_copying": (1.00, 0.24, 1.00, 0.90, 0.92),
    "entity_to_pronoun": (0.88, 0.46, 0.86, 0.92, 0.91),
    "object_superclass": (0.78, 0.39, 0.68, 0.90, 0.87),
    "verb_past_tense": (0.22, 0.04, 0.26, 0.03, 0.02),
    "word_first_letter": (0.91, 0.34, 0.87, 0.91, 0.74),
    "year_to_following": (0.92, 0.00, 0.87, 0.83, 0.79),
}

# Known heads from circuit work (PROTOCOL.md, "Published results").
GPT2_SMALL_NAME_MOVERS = ["9.9", "9.6", "10.0"]
GPT2_SMALL_NEGATIVE_NAME_MOVERS = ["10.7", "11.10"]
GPT2_SMALL_BACKUP_NAME_MOVERS = ["10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0", "11.9"]
GPT2_XL_MAX_SCORES = {
    ("name_copying", "promote"): 0.92,
    ("country_to_capital_wikidata", "promote"): 0.98,
    ("year_to_following", "promote"): 0.95,
    ("general_copying_english_500", "promote"): 0.52,
    ("name_copying", "suppress"): 0.97,
}

# --- the cross-model chapter (09_universality) -------------------------------------------------------
# Nominal sizes of the paper's models, from their names (GPT-2 xl: 1.5B and Phi-2: 2.7B, as their
# model cards give them); used only to place them on a size axis beside this book's models.
PAPER_MODEL_PARAMS: dict[str, float] = {
    "GPT-2 xl": 1.5e9,
    "Phi-2": 2.7e9,
    "Pythia 6.9B": 6.9e9,
    "Pythia 12B": 12e9,
    "Llama-3.1 8B": 8e9,
    "Llama-3.1 70B": 70e9,
}
# Correlation without context, Llama-3.1 8B (paper, 4.2 Results): "strong to very strong correlation
# of 0.71-0.95" for "the vast majority of relations".
PAPER_CORRELATION_RANGE = (0.71, 0.95)
# Causal experiment, Pythia 12B (paper, 4.2 Results): removing relation heads drops accuracy by > 48%
# (relative to the base accuracy), removing random heads by < 13%; control tasks drop by at most 32%.
PAPER_CAUSAL_RELATIVE_DROPS = {"relation heads": 0.48, "random heads": 0.13, "control tasks": 0.32}
# Llama-3.1: drops larger than the random and control baselines "in 9 out of 11 relations".
PAPER_CAUSAL_LLAMA_WINS = (9, 11)

# The paper's sentences each cross-model claim checks (quoted).
PAPER_CLAIMS: dict[str, str] = {
    "depth": "classified heads mostly being located in the middle and upper layers",
    "grouped": "grouped heads often implement the same relations or their suppressive variants",
    "multi_category": "The portion of multi-category heads (out of all classified heads) generally "
    "decreases in model size: 38% in GPT-2 xl, 29% in Phi-2, 20% in Pythia 6.9B, Pythia 12B and "
    "11% in Llama-3.1 70B",
    "suppression": "20%-36% of the classified heads implement at least one suppression relation",
    "random_baseline": "For models Phi-2, Pythia 6.9B, Pythia 12B, Llama-3.1 8B and Llama-3.1 70B "
    "no random matrices were classified as relation heads. For GPT-2 xl, 5 matrices were classified "
    "as such, compared to 250 relation heads in the trained model",
    "max_scores": "models encode relations in their heads to similar degrees, as observed by the "
    "similar highest scores per relation",
    "graded": "the scores for a given relation are diverse, with different heads implementing the "
    "relation at varying degrees, as opposed to having a small set of heads with high relation scores",
    "correlation": "For the vast majority of relations, we observe a strong to very strong "
    "correlation of 0.71-0.95 when the query's subject is not contextualized",
    "context": "This high correlation often remains or even increases when considering the head's "
    "outputs for contextualized inputs",
    "low_max": "some of the lower correlations are demonstrated for relations that are not fully "
    "implemented by the model's attention heads, as indicated by the small maximum relation scores",
    "causal": "removing the relation heads identified by MAPS causes a major accuracy drop of >48% "
    "compared to <13% when removing random heads",
    "control": "while the accuracy drop for the control tasks is sometimes considerable (at most "
    "32%), it is significantly smaller than the relative drop on the target relation task",
    "known_heads": "we classified all three name-mover heads as implementing the `name copying` "
    "relation, and the two negative name-mover heads as implementing the suppression variant of "
    "`name copying`",
    "reading": "For every model except Llama-3.1 70B [...] we first applied the model's first MLP "
    "to the tokens embeddings [...] Regarding Llama-3.1 70B, we observed better results when not "
    "applying the first MLP",
}

# --- the readings chapter (11_norm_conventions): the paper's numbers for scale ----------------------
# (model, what, value, where in the paper); the paper reads every model with norms ignored.
PAPER_READING_SCALE: list[tuple[str, str, str, str]] = [
    (
        "GPT-2 xl",
        "relation heads (promote or suppress) over tau",
        "250 of 1200",
        "appendix, Random Baselines",
    ),
    (
        "GPT-2 xl, Pythia 6.9B / 12B, Phi-2, Llama-3.1",
        "random matrices over tau",
        "5 / 0 / 0 / 0 / 0",
        "appendix, Random Baselines",
    ),
    ("Llama-3.1 8B", "static-dynamic r, no context, most relations", "0.71-0.95", "4.2, Table 1"),
    (
        "Pythia, GPT-2 xl",
        "static-dynamic r",
        "similar, larger drops in context",
        "4.2, appendix tables",
    ),
    (
        "GPT-2 small",
        "IOI name movers / negative name movers recognised",
        "3 of 3 / 2 of 2",
        "appendix, known heads",
    ),
    (
        "Pythia 12B",
        "accuracy drop removing relation heads vs random heads",
        "> 48% vs < 13%",
        "4.2, Table 2",
    ),
]
