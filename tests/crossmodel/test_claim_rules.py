"""The rules the paper's claims are judged by: the verdicts they give, checked exactly."""

from __future__ import annotations

from mapslib.crossmodel import claim_rules as cr


def test_verdict_rules() -> None:
    S, N, M, T = cr.SUPPORTED, cr.NOT_SUPPORTED, cr.MIXED, cr.NOT_TESTABLE
    assert [cr.share_verdict(k, 4) for k in (4, 3, 2, 1)] == [S, S, M, N]
    assert cr.share_verdict(0, 0) == T
    assert cr.range_verdict(4, 18, 0.2, 0.36) == S  # 22%
    assert cr.range_verdict(9, 18, 0.2, 0.36) == M  # 50%, Wilson interval reaches below 36%
    assert cr.range_verdict(18, 20, 0.2, 0.36) == N  # 90%, interval far above
    assert cr.range_verdict(2, 4, 0.2, 0.36) == T  # fewer than MIN_CLASSIFIED heads
    assert cr.direction_verdict(0.1, 0.01) == S
    assert cr.direction_verdict(0.1, 0.2) == M
    assert cr.direction_verdict(-0.1, 0.01) == N
    assert cr.direction_verdict(float("nan"), 0.01) == T
    assert cr.combine([S, T]) == S and cr.combine([S, N]) == M
    assert cr.combine([N, T]) == N and cr.combine([T, T]) == T


def test_wilson_and_paper_ranges() -> None:
    lo, hi = cr.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert cr.wilson(0, 10)[0] == 0.0
    assert cr.multi_category_range(1.35e8) == (0.38, 1.0)  # below every paper model
    assert cr.multi_category_range(2e9) == (0.29, 0.38)  # between GPT-2 xl and Phi-2
    assert cr.multi_category_range(1e11) == (0.0, 0.11)  # above Llama-3.1 70B
    assert cr.multi_category_range(None) is None


def test_every_claim_has_a_rule_and_a_place() -> None:
    assert list(cr.CLAIM_ORDER) == list(dict.fromkeys(cr.CLAIM_ORDER))
    assert set(cr.CLAIM_ORDER) == set(cr.CLAIM_RULES)
    assert all(title and rule for title, rule in cr.CLAIM_RULES.values())
