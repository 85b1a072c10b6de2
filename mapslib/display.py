"""Showing tokens and tables to a reader: visible spaces, escaped bytes, quiet deterministic notebooks."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any


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


def _escape(text: str) -> str:
    """Make whitespace and control characters visible: spaces as '␣', newlines as '\\n', others escaped.

    U+FFFD is escaped too: a token that *is* the replacement character must not look like a failed decode.
    """
    out = []
    for ch in text:
        if ch == " ":
            out.append("␣")
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
    """A token as a reader should see it: '␣Paris' for ' Paris', raw bytes as \\xNN when not valid UTF-8."""
    try:
        text = tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)
    except Exception:  # some tokenizers raise on special or unused ids
        text = "\ufffd"
    if "\ufffd" in text:  # part of a multi-byte character: show the bytes
        piece = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
        decoder = _byte_decoder()
        if piece and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)
            return _escape(raw.decode("utf-8", errors="backslashreplace"))
        return _escape(piece) if piece else f"<{token_id}>"
    return _escape(text)


def token_texts(tokenizer: Any, token_ids: Iterable[int]) -> list[str]:
    """`token_text` for several ids."""
    return [token_text(tokenizer, t) for t in token_ids]


def notebook_setup(precision: int = 3) -> None:
    """Quiet, deterministic notebook output: no progress bars or library warnings, fixed float precision."""
    import warnings

    # first: importing transformers can warn (e.g. tqdm without widgets)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import matplotlib
    import pandas as pd
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pd.set_option("display.precision", precision)
    pd.set_option("display.max_rows", 60)
    pd.set_option("display.width", 120)
    matplotlib.rcParams.update(
        {"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 11, "figure.figsize": (8, 4)}
    )
    torch.manual_seed(0)
