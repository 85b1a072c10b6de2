"""The paper's claims checked on the book's models: on synthetic parts and on the committed
SmolLM2-135M and Gemma-3-270M parts, the verdicts as tables and text, and the chapter's tables
written with the rules in their sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mapslib.crossmodel import claims
from mapslib.crossmodel.claim_rules import (
    CLAIM_ORDER,
    CLAIM_RULES,
    MIXED,
    NOT_SUPPORTED,
    NOT_TESTABLE,
    SUPPORTED,
)
from mapslib.crossmodel.parts import ModelPart, model_parts
from mapslib.crossmodel.universality import depth_table
from mapslib.foundation.settings import DEFAULTS

VERDICTS = {SUPPORTED, NOT_SUPPORTED, MIXED, NOT_TESTABLE}


def test_rules_table_with_the_papers_numbers() -> None:
    rules = claims.rules_table()
    assert list(rules.index) == CLAIM_ORDER
    assert rules.loc["depth", "rule"] == CLAIM_RULES["depth"][1]
    assert rules.loc["correlation", "the paper's quoted numbers"].startswith(
        "Llama-3.1 8B: 16 of 19"
    )


def test_claims_on_synthetic_parts(behaviour_book: Path) -> None:
    parts = model_parts(behaviour_book)
    checks = claims.claim_checks(parts, permutations=200)
    assert set(checks["verdict"]) <= VERDICTS
    v = checks.set_index(["claim", "model"])["verdict"]
    assert v[("correlation", "tiny-135m")] == SUPPORTED  # 3 of 4 strong
    assert v[("context", "tiny-135m")] == MIXED  # 2 of 3 hold
    assert v[("low_max", "tiny-135m")] == SUPPORTED  # 0.85 > 0.475
    assert v[("correlation", "other-1.5b")] == NOT_TESTABLE  # no table
    assert v[("correlation", "all models")] == SUPPORTED
    assert v[("causal", "tiny-135m")] == MIXED  # 1 of 2
    assert v[("control", "tiny-135m")] == SUPPORTED  # 1.0 > 0.1
    assert v[("depth", "tiny-135m")] == NOT_TESTABLE  # 3 classified heads < MIN_CLASSIFIED
    assert v[("grouped", "other-1.5b")] == NOT_TESTABLE  # multi-head attention
    assert v[("grouped", "tiny-135m")] == NOT_TESTABLE  # 2 kv groups, but 3 classified heads
    # max vs GPT-2 xl: name copying 0.8 vs 0.92 similar, capital 0.5 vs 0.98 not, suppression 0 vs 0.97
    assert v[("max_scores", "tiny-135m")] == NOT_SUPPORTED
    # across the book: name copying promote (0.8, 0.9) is similar, capital promote (0.5, 0)
    # and antonym suppress (0.25, 0) are not
    book = checks.set_index(["claim", "model"]).loc[("max_scores_book", "all models")]
    assert book["verdict"] == NOT_SUPPORTED and book["evidence"].startswith("1 of 3")
    table = claims.claims_table(checks)
    assert list(table.columns) == [
        "claim (title)",
        "paper",
        "tiny-135m",
        "other-1.5b",
        "all models",
    ]
    assert list(table.index) == CLAIM_ORDER
    text = claims.claims_markdown(checks)
    assert "Supported" in text and "tiny-135m: supported" in text


def test_verdict_changes_lists_only_changed_rows(behaviour_book: Path) -> None:
    checks = claims.claim_checks(model_parts(behaviour_book), permutations=50)
    assert claims.verdict_changes(checks, checks).empty
    after = checks.copy()
    after.loc[0, "verdict"] = "changed"
    changed = claims.verdict_changes(checks, after)
    assert changed[["claim", "model"]].values.tolist() == [
        checks.loc[0, ["claim", "model"]].tolist()
    ]


def test_write_tables_with_the_rules_in_the_sidecar(small_book: Path, tmp_path: Path) -> None:
    (part,) = model_parts(small_book)
    written = claims.write_tables(
        tmp_path / "out", {"depth": depth_table([part])}, [part], tau=DEFAULTS.tau
    )
    assert [p.name for p in written] == ["depth.csv"]
    side = json.loads((tmp_path / "out" / "depth.csv.json").read_text())
    assert side["params"]["models"] == ["tiny-135m"] and "claims" in side["protocol"]


# -- the committed tables of the book ---------------------------------------------------------------
def test_real_claims_are_all_judged(real_parts: list[ModelPart]) -> None:
    checks = claims.claim_checks(real_parts, permutations=200)
    assert set(checks["verdict"]) <= VERDICTS
    per_model = len(CLAIM_ORDER) - 2  # the two book-level claims have only an overall row
    assert len(checks) == per_model * (len(real_parts) + 1) + 2
    v = checks.set_index(["claim", "model"])["verdict"]
    assert v[("grouped", "gemma3-270m")] == NOT_TESTABLE  # one kv head per layer


def test_reasons_given_where_a_claim_is_not_supported(behaviour_book: Path) -> None:
    checks = claims.claim_checks(model_parts(behaviour_book), permutations=50)
    why = checks.set_index(["claim", "model"])["why"]
    assert why[("multi_category", "tiny-135m")] == (
        "tiny-135m: only 3 of 16 heads reach tau under the paper reading; "
        "tiny-135m: 135M parameters, below the paper's smallest model (1.5B)"
    )
    assert why[("causal", "tiny-135m")] == (
        "tiny-135m: 5 random draws, so p_random >= 0.17 and the 2-std margin decides; "
        "tiny-135m: 2 of 2 relations ran with fewer than 5 relation heads (heads with a positive "
        "static score)"
    )
    assert why[("correlation", "tiny-135m")] == ""  # supported: nothing to explain


def test_known_heads_claim_reads_chapter_10_roles_against_the_map(behaviour_book: Path) -> None:
    """Name movers (promote side) and negative name movers (suppress side) of chapter 10's table,
    each recognised when its name-copying score on that side reaches tau; other roles are left out."""
    data = behaviour_book / "models" / "tiny-135m" / "data"
    rows = [  # (layer, head, role): SMALL gives name copying promote 0.8 at 2.0, 0.3 at 2.1, else 0
        (2, 0, "name mover"),
        (2, 1, "name mover"),
        (3, 2, "negative name mover"),
        (0, 0, "S mover"),
        (1, 1, "-"),
    ]
    pd.DataFrame(rows, columns=["layer", "head", "role"]).to_csv(data / "known_heads.csv")
    checks = claims.claim_checks(model_parts(behaviour_book), permutations=50)
    row = checks.set_index(["claim", "model"]).loc[("known_heads", "tiny-135m")]
    assert row["verdict"] == MIXED  # 2 of 3: between REJECT_SHARE and SUPPORT_SHARE
    assert row["evidence"] == (
        "2 of 3 (67%) over tau on their side (name movers 2 of 2, negative name movers 0 of 1)"
    )
    other = checks.set_index(["claim", "model"]).loc[("known_heads", "other-1.5b")]
    assert other["verdict"] == NOT_TESTABLE and other["evidence"] == "no chapter 10 table"
