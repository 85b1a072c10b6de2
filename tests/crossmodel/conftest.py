"""Fixtures of the cross-model chapter's tests: synthetic book folders, and the book's real parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_book import REAL, SMALL, ablation_csv, correlations_csv, make_part, write

from mapslib.crossmodel.parts import ModelPart, model_folders, model_parts


@pytest.fixture
def small_book(tmp_path: Path) -> Path:
    """A book with one part: tiny-135m, 4 layers of 4 heads in 2 kv groups, scored as SMALL."""
    make_part(tmp_path, "tiny-135m", 4, 4, SMALL, n_kv=2)
    return tmp_path


@pytest.fixture
def behaviour_book(small_book: Path) -> Path:
    """small_book with tiny-135m's correlations and ablations, and other-1.5b with a map only."""
    data = small_book / "models" / "tiny-135m" / "data"
    corr = correlations_csv(
        {
            "name_copying": (0.9, 0.85),
            "country_to_capital_wikidata": (0.8, 0.5),
            "adj_antonym": (0.75, 0.74),
            "verb_past_tense": (0.2, np.nan),
        },
        {"name_copying": 0.8, "country_to_capital_wikidata": 0.5, "adj_antonym": 0.05}
        | {"verb_past_tense": 0.1},
    )
    write(data / "correlations.csv", corr, {})
    write(data / "ablation.csv", ablation_csv(), {})
    make_part(small_book, "other-1.5b", 3, 2, {(2, 1, "name_copying", "promote"): 0.9})
    return small_book


@pytest.fixture(scope="module")
def real_parts() -> list[ModelPart]:
    """The book's SmolLM2-135M and Gemma-3-270M parts (skipped when they are not there)."""
    present = {f.name for f in model_folders()}
    if not set(REAL) <= present:
        pytest.skip("the book's SmolLM2 and Gemma parts are not there")
    return model_parts(None, REAL)
