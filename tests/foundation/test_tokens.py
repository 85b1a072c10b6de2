"""Tokens as a reader sees them: visible spaces and bytes, never a crash, on a real vocabulary."""

from __future__ import annotations

import pytest

from mapslib.foundation.tokens import shown, token_raw, token_text, token_texts


def test_shown_makes_whitespace_and_controls_visible() -> None:
    assert shown(" Paris") == "␣Paris"
    assert shown("a\nb\tc") == "a\\nb\\tc"
    assert shown("\x00\x7f") == "\\x00\\x7f"
    assert shown("é中") == "é中"


@pytest.mark.slow
def test_every_smollm2_token_renders(smollm2) -> None:
    """All 49152 ids decode to visible text: no replacement characters, no exceptions."""
    tok = smollm2.tokenizer
    texts = token_texts(tok, range(len(tok)))
    assert len(texts) == len(tok)
    assert not [t for t in texts if "\ufffd" in t or t == ""]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert token_text(tok, paris) == "␣Paris" and token_raw(tok, paris) == " Paris"
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    assert token_raw(tok, newline) == "\n" and token_text(tok, newline) == "\\n"
    # byte-level pieces of multi-byte characters come out as escaped bytes
    partial = [t for t in texts if t.startswith("\\x")]
    assert partial, "SmolLM2's byte-level vocabulary has partial UTF-8 tokens"
