"""The rules the paper's claims are judged by, and the verdicts they give.

`CLAIM_RULES` states every claim's rule as `claims.claim_checks` applies it to each model;
`share_verdict`, `range_verdict` and `direction_verdict` turn a model's counts into a verdict, and
`combine` the models' verdicts into one (`COMBINE_RULE`). Nothing here reads a table.
"""

from __future__ import annotations

import numpy as np

from mapslib.behaviour.correlation import CLEAR_MARGIN
from mapslib.crossmodel.universality_behaviour import (
    ALPHA,
    CONTEXT_DROP,
    MIN_DRAWS_FOR_P,
    STRONG_R,
)
from mapslib.report.reference import (
    PAPER_MODEL_PARAMS,
    PAPER_MULTI_CATEGORY_SHARE,
    PAPER_SUPPRESSION_SHARE,
)

# -- the rules the claims are judged by --------------------------------------------------------------
SUPPORT_SHARE = 0.75  # a per-item rule holding for at least this share of items supports a claim
REJECT_SHARE = 0.5  # ... for less than this share contradicts it; in between the verdict is mixed
MIN_CLASSIFIED = 5  # fewer classified heads than this: shares of classified heads are not judged
SIMILAR_MAX = 0.2  # two highest scores of a relation are "similar" within this
SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
NOT_TESTABLE = "not testable"
_SHARE_RULE = (
    f"supported when it holds for >= {SUPPORT_SHARE:.0%} of them, not supported below "
    f"{REJECT_SHARE:.0%}, mixed in between"
)
_RANGE_RULE = (
    f"supported when the share lies in the range, not supported when its 95% Wilson interval misses "
    f"the range, mixed otherwise; fewer than {MIN_CLASSIFIED} classified heads: not testable"
)
CLAIM_RULES: dict[str, tuple[str, str]] = {  # id -> (title, the rule applied to each model)
    "depth": (
        "Relation heads sit in the middle and upper layers",
        "share of classified heads (>= 1 relation at tau, either mode) with relative depth >= 1/3, "
        "against the share of all heads there (a one-sided binomial test): supported when higher "
        f"with p < {ALPHA}, mixed when higher without, not supported when not higher; fewer than "
        f"{MIN_CLASSIFIED} classified heads: not testable",
    ),
    "grouped": (
        "Heads of one kv group share relations",
        "for every head implementing a (relation, mode), the rate at which another head of its kv "
        "group implements it too, against the same rate when each (layer, relation, mode)'s heads are "
        "placed at random among the layer's heads (permutation test): supported when higher with "
        f"p < {ALPHA}, mixed when higher without, not supported when not higher; only models with "
        "2 or more kv groups per layer and at least one group of heads can be tested",
    ),
    "multi_category": (
        "Multi-category heads: a share falling with model size",
        "share of classified heads with relations of 2+ categories, against the range the paper's "
        "models of neighbouring size give (from the paper's next larger model's share to its next "
        f"smaller model's, or 100% below GPT-2 xl); {_RANGE_RULE}",
    ),
    "multi_category_trend": (
        "... and falling with size across this book's models",
        "for every pair of this book's models with known size and enough classified heads, whether "
        "the larger one has the lower multi-category share: supported when every pair agrees, not "
        "supported when none does, mixed otherwise (fewer than 2 models: not testable)",
    ),
    "suppression": (
        "20-36% of classified heads suppress",
        f"share of classified heads with at least one suppression relation, against the paper's "
        f"{PAPER_SUPPRESSION_SHARE[0]:.0%}-{PAPER_SUPPRESSION_SHARE[1]:.0%}; {_RANGE_RULE}",
    ),
    "random_baseline": (
        "Random matrices (almost) never reach tau",
        "random matrices over tau per random matrix, against the paper's worst case (GPT-2 xl, "
        "5 of 1200): supported when no higher, not supported when at least half the real heads' rate "
        "(tau does not separate trained from random heads), mixed in between. Real heads are read "
        "from the map made with the baseline's reading, whatever the reading here",
    ),
    "max_scores": (
        "Highest score per relation similar to GPT-2 xl's",
        f"for each (relation, mode) whose GPT-2 xl maximum is quoted and that the model scores: "
        f"similar when the two maxima differ by at most {SIMILAR_MAX}; {_SHARE_RULE}",
    ),
    "max_scores_book": (
        "... and similar across this book's models",
        f"for each (relation, mode) every model scores and some model implements (max >= tau): "
        f"similar when the models' highest scores span at most {SIMILAR_MAX}; {_SHARE_RULE} (fewer "
        "than 2 models: not testable)",
    ),
    "graded": (
        "Scores are graded over many heads, not held by a few",
        "for each (relation, mode) some head implements (max >= tau): graded when the heads above "
        "chance but below tau are at least as many as those at or above tau (chance: the highest "
        "random-matrix score on that relation and mode, chapter 03; 0 where the baseline was made "
        f"with another reading); {_SHARE_RULE}",
    ),
    "correlation": (
        "Static scores correlate strongly with head outputs (no context)",
        f"for each relation with a defined r (promotion, without context): strong when r >= "
        f"{STRONG_R}; {_SHARE_RULE}",
    ),
    "context": (
        "The correlation holds with context",
        f"for each relation with a strong r without context (>= {STRONG_R}, promotion) and an r "
        f"with context: holds when r with context >= r without - {CONTEXT_DROP}; {_SHARE_RULE}",
    ),
    "low_max": (
        "Low correlations come with relations no head implements",
        "median r without context (promotion) of relations some head implements (max static >= "
        "tau) against that of relations none does: supported when higher, not supported otherwise; "
        "not testable when either group is empty",
    ),
    "causal": (
        "Removing relation heads hurts more than removing random heads",
        f"for each relation run (base >= 0.1, a head with a positive score): with >= "
        f"{MIN_DRAWS_FOR_P} random draws, p_random < {ALPHA}; with fewer, the accuracy drop with "
        f"relation heads exceeds the mean random drop by more than 2 random std; {_SHARE_RULE}. The "
        "relation heads are those chapter 05 chose from its own map, whatever the reading here",
    ),
    "control": (
        "... and hurts the relation's task more than control tasks",
        "for each relation run with control tasks: the relative accuracy drop on its task exceeds "
        f"the mean relative drop on its controls; {_SHARE_RULE}",
    ),
    "known_heads": (
        "Name movers found by behaviour are name-copying heads",
        "for each name mover (negative name mover) chapter 10 found by its direct effect on IOI "
        "prompts: recognised when its name-copying promote (suppress) score is >= tau under the "
        f"model's reading; {_SHARE_RULE}; no chapter 10 table or no such head: not testable",
    ),
    "reading": (
        "The paper's E_in (MLP_0 of the embeddings) tracks behaviour",
        f"the paper map's median r without context (chapter 04, promotion) is within "
        f"{CLEAR_MARGIN} of the best map's: supported; otherwise not supported; one map or no "
        "dynamic scores: not testable",
    ),
}
COMBINE_RULE = (
    "overall: supported when every model that can be tested supports it, not supported when none "
    "does, mixed otherwise; not testable when no model can be tested"
)
CLAIM_ORDER = [  # the claims in the order the chapter gives them
    "depth",
    "grouped",
    "multi_category",
    "multi_category_trend",
    "suppression",
    "random_baseline",
    "max_scores",
    "max_scores_book",
    "graded",
    "correlation",
    "context",
    "low_max",
    "causal",
    "control",
    "known_heads",
    "reading",
]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share k / n."""
    if n == 0:
        return (np.nan, np.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def multi_category_range(parameters: float | None) -> tuple[float, float] | None:
    """The multi-category share the paper's trend gives a model of this size: from the share of the
    paper's smallest model at least this large to that of its largest model smaller than it (100%
    below all of them). None when the size is unknown."""
    if parameters is None:
        return None
    sized = [(PAPER_MODEL_PARAMS[m], s) for m, s in PAPER_MULTI_CATEGORY_SHARE.items()]
    larger = [s for size, s in sorted(sized) if size >= parameters]
    smaller = [s for size, s in sorted(sized) if size < parameters]
    lo = larger[0] if larger else 0.0
    hi = smaller[-1] if smaller else 1.0
    return (min(lo, hi), max(lo, hi))


# -- verdicts ---------------------------------------------------------------------------------------
def share_verdict(k: int, n: int) -> str:
    """SUPPORT_SHARE / REJECT_SHARE on k of n items (n = 0: not testable)."""
    if n == 0:
        return NOT_TESTABLE
    share = k / n
    return SUPPORTED if share >= SUPPORT_SHARE else NOT_SUPPORTED if share < REJECT_SHARE else MIXED


def range_verdict(k: int, n: int, lo: float, hi: float) -> str:
    """k of n against a range: inside, interval missing it, or in between (n < MIN_CLASSIFIED:
    not testable)."""
    if n < MIN_CLASSIFIED:
        return NOT_TESTABLE
    if lo <= k / n <= hi:
        return SUPPORTED
    low, high = wilson(k, n)
    return NOT_SUPPORTED if high < lo or low > hi else MIXED


def direction_verdict(effect: float, p: float) -> str:
    """A directional test: not supported when the effect is not positive, else by p."""
    if not np.isfinite(effect):
        return NOT_TESTABLE
    if effect <= 0:
        return NOT_SUPPORTED
    return SUPPORTED if p < ALPHA else MIXED


def combine(verdicts: list[str]) -> str:
    """COMBINE_RULE."""
    tested = [v for v in verdicts if v != NOT_TESTABLE]
    if not tested:
        return NOT_TESTABLE
    if all(v == SUPPORTED for v in tested):
        return SUPPORTED
    if all(v == NOT_SUPPORTED for v in tested):
        return NOT_SUPPORTED
    return MIXED
