"""An offline labeller: rule-based detectors over a head's salient mappings, no API needed.

Each detector decides, for one source token and one of its top targets, whether the pair is an
instance of an operation: copying (same word up to case and leading space), capitalisation, first or
last letter, numeric successor, sub-word completion, and the inflections plural, past tense and
comparative. A source *shows* an operation when any of its top targets does; a head's share for the
operation is the fraction of its salient sources that show it. A head is labelled with every
operation whose share reaches `threshold` (default 0.5: "most mappings", the bar the LLM is given),
and its primary label is the one with the highest share (ties go to the more specific operation).

The labeller sees only what the LLM sees, so it cross-checks the descriptions: `compare_with_llm`
says per head whether the two agree that there is a pattern and, when both find one, whether the
LLM's sentence names the labeller's operation.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd


def _word(text: str) -> str:
    """The token without surrounding whitespace."""
    return text.strip()


def is_copy(src: str, tgt: str) -> bool:
    """Same word up to case and leading space: ' John' -> 'John', ' JOHN', ' john'."""
    s, t = _word(src), _word(tgt)
    return bool(s) and s.lower() == t.lower()


def is_capitalisation(src: str, tgt: str) -> bool:
    """A lower-case word to its capitalised or upper-case form: 'water' -> ' Water'."""
    s, t = _word(src), _word(tgt)
    if len(s) < 2 or not s[0].isalpha() or not s[0].islower():
        return False
    return t in (s[0].upper() + s[1:], s.upper())


def is_first_letter(src: str, tgt: str) -> bool:
    """A word to its first letter: ' word' -> 'w' (any case, with or without space)."""
    s, t = _word(src), _word(tgt)
    return len(s) >= 2 and len(t) == 1 and s[0].isalpha() and t.lower() == s[0].lower()


def is_last_letter(src: str, tgt: str) -> bool:
    """A word to its last letter: ' word' -> 'd'."""
    s, t = _word(src), _word(tgt)
    return len(s) >= 2 and len(t) == 1 and s[-1].isalpha() and t.lower() == s[-1].lower()


def is_successor(src: str, tgt: str) -> bool:
    """A number to the next one: ' 1999' -> ' 2000', '7' -> '8'."""
    s, t = _word(src), _word(tgt)
    return s.isdigit() and t.isdigit() and int(t) == int(s) + 1


def is_completion(src: str, tgt: str) -> bool:
    """A word piece to a longer word that starts with it: 'inhib' -> ' inhibition'."""
    s, t = _word(src).lower(), _word(tgt).lower()
    return len(s) >= 2 and s.isalpha() and len(t) >= len(s) + 2 and t.startswith(s)


def _stem_variants(s: str, suffix: str) -> set[str]:
    """Regular English forms of `s` + suffix: plain, e-dropping, y -> i, doubled final consonant."""
    out = {s + suffix}
    if s.endswith("e") and suffix.startswith("e"):
        out.add(s + suffix[1:])
    if s.endswith("y") and len(s) > 2 and s[-2] not in "aeiou":
        out.add(s[:-1] + "i" + suffix)
    if len(s) >= 3 and s[-1] not in "aeiouwxy" and s[-2] in "aeiou" and s[-3] not in "aeiou":
        out.add(s + s[-1] + suffix)
    return out


def _inflects(src: str, tgt: str, suffixes: tuple[str, ...]) -> bool:
    s, t = _word(src).lower(), _word(tgt).lower()
    if len(s) < 2 or not s.isalpha() or t == s:
        return False
    return any(t in _stem_variants(s, suffix) for suffix in suffixes)


def is_plural(src: str, tgt: str) -> bool:
    """A noun to its regular plural: ' cat' -> ' cats', ' box' -> ' boxes', ' city' -> ' cities'."""
    s, t = _word(src).lower(), _word(tgt).lower()
    if s.endswith("y") and len(s) > 2 and s[-2] not in "aeiou":
        return t == s[:-1] + "ies"
    return len(s) >= 2 and s.isalpha() and t in (s + "s", s + "es")


def is_past_tense(src: str, tgt: str) -> bool:
    """A verb to its regular past tense: ' walk' -> ' walked', ' hike' -> ' hiked', ' stop' -> ' stopped'."""
    return _inflects(src, tgt, ("ed",))


def is_comparative(src: str, tgt: str) -> bool:
    """An adjective to its comparative: ' big' -> ' bigger', ' edgy' -> ' edgier', ' nice' -> ' nicer'."""
    return _inflects(src, tgt, ("er",))


# Most specific first: the order breaks ties between equal shares.
DETECTORS: dict[str, Callable[[str, str], bool]] = {
    "numeric successor": is_successor,
    "first letter": is_first_letter,
    "last letter": is_last_letter,
    "capitalisation": is_capitalisation,
    "plural": is_plural,
    "past tense": is_past_tense,
    "comparative": is_comparative,
    "sub-word completion": is_completion,
    "copying": is_copy,
}

# Words that show an LLM sentence names the operation (lower case, matched as substrings).
KEYWORDS: dict[str, tuple[str, ...]] = {
    "copying": ("copy", "copies", "itself", "same token", "identical", "identity", "repeat"),
    "capitalisation": ("capital", "upper"),
    "first letter": ("first letter", "initial"),
    "last letter": ("last letter", "final letter"),
    "numeric successor": ("next number", "successor", "increment", "following number", "+1"),
    "sub-word completion": ("complet", "longer word", "full word", "extend", "prefix"),
    "plural": ("plural",),
    "past tense": ("past",),
    "comparative": ("comparative",),
}


def source_hits(source: str, targets: list[str]) -> dict[str, bool]:
    """For one salient source (raw token text): which operations any of its targets shows."""
    return {name: any(rule(source, t) for t in targets) for name, rule in DETECTORS.items()}


def label_heads(salient: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One row per head of a `salient_mappings` table: the share of sources per operation, and labels."""
    rows = []
    for (layer, head), g in salient.groupby(["layer", "head"], sort=True):
        per_source = [
            source_hits(s["source"].iloc[0], list(s.sort_values("rank")["target"]))
            for _, s in g.groupby("salient_rank", sort=True)
        ]
        shares = {name: sum(h[name] for h in per_source) / len(per_source) for name in DETECTORS}
        found = [n for n in DETECTORS if shares[n] >= threshold]
        primary = max(found, key=lambda n: shares[n]) if found else "none"  # first max: specific
        rows.append(
            {
                "layer": int(layer),
                "head": int(head),
                "name": f"{layer}.{head}",
                "label": primary,
                "share": shares[primary] if found else max(shares.values()),
                "labels": ", ".join(sorted(found, key=lambda n: -shares[n])),
                **{f"share {n}": shares[n] for n in DETECTORS},
            }
        )
    return pd.DataFrame(rows)


def names_operation(text: str, label: str) -> bool:
    """Whether an LLM's sentence names the labeller's operation (keyword match)."""
    text = text.lower()
    if label == "sub-word completion":
        return any(k in text for k in KEYWORDS[label]) or bool(re.search(r"sub-?word", text))
    return any(k in text for k in KEYWORDS.get(label, ()))


def compare_with_llm(labels: pd.DataFrame, descriptions: pd.DataFrame) -> pd.DataFrame:
    """Per head: labeller label, LLM status and pattern, and whether they agree."""
    merged = labels[["layer", "head", "name", "label", "labels", "share"]].merge(
        descriptions[["layer", "head", "status", "pattern"]], on=["layer", "head"], how="left"
    )
    merged["status"] = merged["status"].fillna("unavailable")
    merged["pattern"] = merged["pattern"].fillna("")

    def verdict(row: pd.Series) -> str:
        if row["status"] in ("unavailable", "failed"):
            return "no LLM answer"
        llm = row["status"] == "pattern"
        rule = row["label"] != "none"
        if llm and rule:
            ops = [x for x in row["labels"].split(", ") if x]
            text = f"{row['pattern']}"
            same = any(names_operation(text, op) for op in ops)
            return "agree: same operation" if same else "both find a pattern, different ones"
        if not llm and not rule:
            return "agree: no pattern"
        return "only the LLM finds a pattern" if llm else "only the labeller finds a pattern"

    merged["agreement"] = merged.apply(verdict, axis=1)
    return merged


def label_counts_by_layer(labels: pd.DataFrame, labelled_only: bool = False) -> pd.DataFrame:
    """Heads per layer and primary label (including 'none'); optionally only layers with a label."""
    counts = labels.pivot_table(
        index="layer", columns="label", values="head", aggfunc="count", fill_value=0
    )
    if labelled_only:
        counts = counts[counts.drop(columns="none", errors="ignore").sum(axis=1) > 0]
    return counts


def example_heads(labels: pd.DataFrame, n: int = 4) -> list[str]:
    """Heads worth showing: the best head of each offline label, then unlabelled heads spread over depth."""
    found = labels[labels["label"] != "none"].sort_values(
        ["share", "layer", "head"], ascending=[False, True, True]
    )
    picks = list(found.drop_duplicates("label")["name"])[:n]
    rest = labels[labels["label"] == "none"].sort_values(["layer", "head"])
    if len(picks) < n and len(rest):
        step = len(rest) / (n - len(picks) + 1)
        picks += [rest["name"].iloc[int(step * (i + 1))] for i in range(n - len(picks))]
    return picks


def identified_share_by_layer(
    labels: pd.DataFrame,
    descriptions: pd.DataFrame | None = None,
    evidence: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per layer: the share of heads with an identified pattern, by the labeller, (if given) the
    evidence's category and the LLM."""
    out = pd.DataFrame(
        {
            "labeller": labels.assign(found=labels["label"] != "none")
            .groupby("layer")["found"]
            .mean()
        }
    )
    if evidence is not None:
        out["evidence"] = (
            evidence.assign(found=evidence["category"] != "no pattern")
            .groupby("layer")["found"]
            .mean()
        )
    if descriptions is not None:
        answered = descriptions[descriptions["status"].isin(["pattern", "no pattern"])]
        if len(answered):
            out["LLM"] = (
                answered.assign(found=answered["status"] == "pattern")
                .groupby("layer")["found"]
                .mean()
            )
    return out
