"""Tokens as a reader sees them: visible spaces and bytes, never a crash, on a real vocabulary."""

from __future__ import annotations

import pytest

from mapslib.display import _escape, token_text, token_texts


def test_escape_makes_whitespace_and_controls_visible() -> None:
    assert _escape(" Paris") == "␣Paris"
    assert _escape("a\nb\tc") == "a\\nb\\tc"
    assert _escape("\x00\x7f") == "\\x00\\x7f"
    assert _escape("é中") == "é中"


@pytest.mark.slow
def test_every_smollm2_token_renders(smollm2) -> None:
    """All 49152 ids decode to visible text: no replacement characters, no exceptions."""
    tok = smollm2.tokenizer
    texts = token_texts(tok, range(len(tok)))
    assert len(texts) == len(tok)
    assert not [t for t in texts if "\ufffd" in t or t == ""]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert token_text(tok, paris) == "␣Paris"
    # byte-level pieces of multi-byte characters come out as escaped bytes
    partial = [t for t in texts if t.startswith("\\x")]
    assert partial, "SmolLM2's byte-level vocabulary has partial UTF-8 tokens"
