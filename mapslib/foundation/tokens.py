"""Token text: stored raw (with the ids), turned into visible glyphs only when shown.

`token_raw` is what a token decodes to on its own; bytes that are not valid UTF-8 on their own (a
piece of a multi-byte character) are kept as `\\xNN` escapes, since no string holds them. `shown`
makes a raw text readable: spaces as '␣', newlines as '\\n', control characters escaped. Tables
store raw text; rules (the labeller) read raw text; tables for readers and LLM prompts use `shown`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

VISIBLE_SPACE = "␣"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character -> raw byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_raw(tokenizer: Any, token_id: int) -> str:
    """A token's own text (' Paris'); bytes of a partial UTF-8 character as literal \\xNN escapes."""
    try:
        text = tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)
    except Exception:  # some tokenizers raise on special or unused ids
        text = "\ufffd"
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    decoder = _byte_decoder()
    if piece and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece).decode("utf-8", errors="backslashreplace")
    return piece or f"<{token_id}>"


def shown(text: str) -> str:
    """Raw token text made visible: ' ' -> '␣', newline -> '\\n', tab -> '\\t', controls escaped.

    U+FFFD is escaped too: a token that *is* the replacement character must not look like a failed
    decode.
    """
    out = []
    for ch in text:
        if ch == " ":
            out.append(VISIBLE_SPACE)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a reader sees it: '␣Paris' for ' Paris'."""
    return shown(token_raw(tokenizer, token_id))


def token_texts(tokenizer: Any, token_ids: Iterable[int]) -> list[str]:
    """`token_text` for several ids."""
    return [token_text(tokenizer, t) for t in token_ids]
