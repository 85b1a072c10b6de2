"""Regenerate the small-parameter executed chapters that CI's nbval checks (tests/notebooks/).

The behaviour chapters (04-06, 10) take minutes with their book parameters; these versions keep every
code path and take seconds. Run after changing one of those chapters:
    python tests/make_nbval_notebooks.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mapslib.book.build import run_chapter

MODEL = "smollm2-135m"
FOLDER = Path(__file__).resolve().parent / "notebooks" / MODEL
CI_PARAMETERS = {
    "04_correlation": {
        "relations": ["name_copying", "country_to_capital_wikidata", "entity_to_pronoun"],
        "templates": "0,1",
        "max_pairs": 30,
    },
    "05_causal_ablation": {
        "relations": [
            "country_to_capital_wikidata",
            "name_copying",
            "country_to_official_language_wikidata",
            "entity_to_pronoun",
        ],
        "max_prompts": 30,
        "random_draws": 10,
        "step": 10,
    },
    "06_multi_token": {
        "relations": ["country_to_official_language_wikidata", "entity_to_pronoun"],
        "max_pairs": 20,
    },
    "10_known_heads": {"n_prompts": 40},
}

if __name__ == "__main__":
    shutil.rmtree(FOLDER / "data", ignore_errors=True)  # every table computed on the current code
    for chapter, params in CI_PARAMETERS.items():
        print(f"{chapter} ...", flush=True)
        run_chapter(chapter, MODEL, {"device": "cpu", **params}, folder=FOLDER)
