"""Relation datasets: the 20 shipped with MAPS, user files, and the single-token filter.

A relation is a list of (src, dst) strings. Shipped ones live in `mapslib/data/relations/<name>/`
with their provenance (`data_source.txt`) and licence. A user relation is a JSON list of
`[src, dst]` pairs or a CSV with `src,dst` columns; its name is the file stem.

Tokenisation (PROTOCOL.md): `" " + src` and `" " + dst` without special tokens; a pair is kept only
when both sides are exactly one token. A relation with fewer than 30 kept pairs is not scored.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mapslib.errors import RelationFileError, UnknownRelation
from mapslib.foundation.io import sha256_file
from mapslib.foundation.settings import DEFAULTS

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "relations"
CATEGORIES = ("algorithmic", "knowledge", "linguistic", "translation")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelationInfo:
    """Registry entry of a shipped relation."""

    category: str
    label: str  # the paper's name for it
    alias: str  # a short name accepted on the command line
    copying: bool = False  # copying relations use the smaller k


REGISTRY: dict[str, RelationInfo] = {
    "general_copying_english_500": RelationInfo("algorithmic", "Copying", "copying", copying=True),
    "name_copying": RelationInfo("algorithmic", "Name copying", "names", copying=True),
    "word_first_letter": RelationInfo("algorithmic", "Word to first letter", "first_letter"),
    "word_last_letter": RelationInfo("algorithmic", "Word to last letter", "last_letter"),
    "year_to_following": RelationInfo("algorithmic", "Year to following", "year"),
    "country_to_capital_wikidata": RelationInfo("knowledge", "Country to capital", "capital"),
    "country_to_official_language_wikidata": RelationInfo(
        "knowledge", "Country to language", "language"
    ),
    "object_superclass": RelationInfo("knowledge", "Object to superclass", "superclass"),
    "product_by_company": RelationInfo("knowledge", "Product by company", "company"),
    "work_location": RelationInfo("knowledge", "Work to location", "location"),
    "adj_antonym": RelationInfo("linguistic", "Word to antonym", "antonym"),
    "adj_comparative": RelationInfo("linguistic", "Adj to comparative", "comparative"),
    "adj_superlative": RelationInfo("linguistic", "Adj to superlative", "superlative"),
    "verb_past_tense": RelationInfo("linguistic", "Verb to past tense", "past_tense"),
    "entity_to_pronoun": RelationInfo("linguistic", "Noun to pronoun", "pronoun"),
    "word_to_synonym": RelationInfo("linguistic", "Word to synonym", "synonym"),
    "word_to_homophone": RelationInfo("linguistic", "Word to homophone", "homophone"),
    "word_to_compound": RelationInfo("linguistic", "Word to compound", "compound"),
    "english_to_french": RelationInfo("translation", "English to French", "french"),
    "english_to_spanish": RelationInfo("translation", "English to Spanish", "spanish"),
}
ALIASES = {info.alias: name for name, info in REGISTRY.items()}


@dataclass(frozen=True)
class Relation:
    """A named list of (src, dst) string pairs and where it came from."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    category: str
    label: str
    copying: bool
    path: str
    sha256: str

    def __len__(self) -> int:
        return len(self.pairs)


def shipped_relations() -> list[str]:
    """Names of the 20 shipped relations, in registry order (by category)."""
    return list(REGISTRY)


def load_relation(name_or_path: str | Path) -> Relation:
    """Load a shipped relation by name or alias, or a user relation from a .json/.csv file."""
    key = str(name_or_path)
    name = ALIASES.get(key, key)
    if name in REGISTRY:
        path = DATA_DIR / name / f"{name}.json"
        info = REGISTRY[name]
        pairs = _read_pairs(path)
        return Relation(
            name, pairs, info.category, info.label, info.copying, str(path), sha256_file(path)
        )
    path = Path(key)
    if path.suffix.lower() not in (".json", ".csv"):
        raise UnknownRelation(
            f"unknown relation {key!r}: not a shipped relation ({', '.join(REGISTRY)}; aliases "
            f"{', '.join(ALIASES)}) and not a .json or .csv file"
        )
    if not path.is_file():
        raise RelationFileError(f"relation file not found: {path}")
    pairs = _read_pairs(path)
    label = path.stem.replace("_", " ").capitalize()
    return Relation(path.stem, pairs, "custom", label, False, str(path), sha256_file(path))


def load_relations(names: list[str] | None = None) -> list[Relation]:
    """Load several relations (default: all shipped ones), rejecting duplicate names."""
    relations = [load_relation(n) for n in (names or shipped_relations())]
    seen: set[str] = set()
    for r in relations:
        if r.name in seen:
            raise RelationFileError(
                f"relation {r.name!r} was given twice (file stems name relations)"
            )
        seen.add(r.name)
    return relations


def _read_pairs(path: Path) -> tuple[tuple[str, str], ...]:
    """Parse and validate a JSON or CSV relation file, naming the file and row of any problem."""
    if path.suffix.lower() == ".csv":
        pairs = _read_csv(path)
    else:
        pairs = _read_json(path)
    if not pairs:
        raise RelationFileError(f"{path}: the relation has no pairs")
    return tuple(pairs)


def _read_json(path: Path) -> list[tuple[str, str]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RelationFileError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except UnicodeDecodeError:
        raise RelationFileError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise RelationFileError(
            f"{path}: expected a JSON list of [src, dst] pairs, got {type(data).__name__}"
        )
    return [_check_pair(path, i, row) for i, row in enumerate(data)]


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"src", "dst"} <= set(reader.fieldnames):
                raise RelationFileError(
                    f"{path}: a CSV relation needs a header with columns src,dst (found {reader.fieldnames})"
                )
            # row numbers count the header as line 1, as a spreadsheet shows them
            return [
                _check_pair(path, i, [row["src"], row["dst"]], line=i + 2)
                for i, row in enumerate(reader)
            ]
    except UnicodeDecodeError:
        raise RelationFileError(f"{path}: not UTF-8 text") from None


def _check_pair(path: Path, i: int, row: Any, line: int | None = None) -> tuple[str, str]:
    where = f"line {line}" if line is not None else f"row {i}"
    ok = (
        isinstance(row, list | tuple)
        and len(row) == 2
        and all(isinstance(x, str) and x.strip() for x in row)
    )
    if not ok:
        raise RelationFileError(
            f"{path}: {where} is {row!r}; each pair must be two non-empty strings [src, dst]"
        )
    return row[0].strip(), row[1].strip()


@dataclass(frozen=True)
class TokenizedRelation:
    """A relation's pairs that survive the single-token filter for one tokenizer."""

    relation: Relation
    pairs: tuple[tuple[str, str], ...]
    src_ids: tuple[int, ...]
    dst_ids: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.relation.name

    def __len__(self) -> int:
        return len(self.pairs)


def single_token_ids(tokenizer: Any, words: list[str]) -> list[int | None]:
    """Token id of `" " + word` when it is exactly one token, else None."""
    encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [ids[0] if len(ids) == 1 else None for ids in encoded]


def tokenize_relation(relation: Relation, tokenizer: Any) -> TokenizedRelation:
    """Keep the pairs whose src and dst are each a single token (PROTOCOL.md)."""
    src = single_token_ids(tokenizer, [s for s, _ in relation.pairs])
    dst = single_token_ids(tokenizer, [t for _, t in relation.pairs])
    kept = [
        (p, s, t)
        for p, s, t in zip(relation.pairs, src, dst, strict=True)
        if s is not None and t is not None
    ]
    return TokenizedRelation(
        relation,
        tuple(p for p, _, _ in kept),
        tuple(s for _, s, _ in kept),
        tuple(t for _, _, t in kept),
    )


def surviving_pairs(
    relations: list[Relation], tokenizer: Any, min_pairs: int = DEFAULTS.min_pairs
) -> pd.DataFrame:
    """Per relation: pairs in the dataset, pairs kept by the single-token filter, and whether it is scored."""
    rows = []
    for r in relations:
        kept = len(tokenize_relation(r, tokenizer))
        rows.append(
            {
                "relation": r.name,
                "category": r.category,
                "pairs": len(r),
                "single_token_pairs": kept,
                "scored": kept >= min_pairs,
            }
        )
    return pd.DataFrame(rows)


def keep_scorable(
    tokenized: list[TokenizedRelation],
    min_pairs: int = DEFAULTS.min_pairs,
    log: Callable[[str], None] | None = None,
) -> list[TokenizedRelation]:
    """The tokenized relations with at least `min_pairs` pairs; each dropped one is reported to
    `log` (default: this module's logger)."""
    log = log or logger.info
    out = []
    for t in tokenized:
        if len(t) < min_pairs:
            log(
                f"skipping relation {t.name}: {len(t)} of {len(t.relation)} pairs are single-token "
                f"for this tokenizer (< {min_pairs})"
            )
            continue
        out.append(t)
    return out


def scorable(
    relations: list[Relation],
    tokenizer: Any,
    min_pairs: int = DEFAULTS.min_pairs,
    log: Callable[[str], None] | None = None,
) -> list[TokenizedRelation]:
    """Tokenize relations and keep those with enough single-token pairs (see `keep_scorable`)."""
    return keep_scorable([tokenize_relation(r, tokenizer) for r in relations], min_pairs, log)


def category_of(relation: str) -> str:
    """The category of a shipped relation; `custom` for user relations."""
    return REGISTRY[relation].category if relation in REGISTRY else "custom"


def label_of(relation: str) -> str:
    """The paper's name of a shipped relation; the name itself otherwise."""
    return REGISTRY[relation].label if relation in REGISTRY else relation
