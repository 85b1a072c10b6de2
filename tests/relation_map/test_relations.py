"""Relation datasets: the shipped registry, user files, clear errors, and the single-token filter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mapslib.errors import RelationFileError, UnknownRelation
from mapslib.relation_map.relations import (
    CATEGORIES,
    DATA_DIR,
    REGISTRY,
    load_relation,
    load_relations,
    scorable,
    shipped_relations,
    surviving_pairs,
    tokenize_relation,
)


class WordTokenizer:
    """A stand-in tokenizer: each space-separated word is one token, unknown words split per letter."""

    def __init__(self, vocab: list[str]):
        self.ids = {w: i for i, w in enumerate(vocab)}

    def __call__(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> dict[str, list[list[int]]]:
        out = []
        for text in texts:
            ids = []
            for word in text.split():
                ids.extend([self.ids[word]] if word in self.ids else [1000 + ord(c) for c in word])
            out.append(ids)
        return {"input_ids": out}


def test_registry_has_the_twenty_relations_with_provenance() -> None:
    assert len(shipped_relations()) == 20
    assert {info.category for info in REGISTRY.values()} == set(CATEGORIES)
    counts = {c: sum(i.category == c for i in REGISTRY.values()) for c in CATEGORIES}
    assert counts == {"algorithmic": 5, "knowledge": 5, "linguistic": 8, "translation": 2}
    assert {n for n, i in REGISTRY.items() if i.copying} == {
        "general_copying_english_500",
        "name_copying",
    }
    for name in shipped_relations():
        folder = DATA_DIR / name
        assert (folder / f"{name}.json").is_file() and (folder / "data_source.txt").is_file(), name
    assert (DATA_DIR / "LICENSE-linearity-of-relation-decoding").is_file()
    assert "MIT License" in (DATA_DIR / "LICENSE-linearity-of-relation-decoding").read_text()


def test_every_shipped_relation_loads() -> None:
    rels = load_relations()
    assert [r.name for r in rels] == shipped_relations()
    sizes = {r.name: len(r) for r in rels}
    assert sizes["year_to_following"] == 700 and sizes["name_copying"] == 156
    assert all(len(r.sha256) == 64 for r in rels)


def test_aliases_resolve_to_registry_names() -> None:
    assert load_relation("capital").name == "country_to_capital_wikidata"
    assert load_relation("names").name == "name_copying"
    with pytest.raises(UnknownRelation, match="not a shipped relation"):
        load_relation("capitals_of_mars")


def test_user_json_and_csv(tmp_path: Path) -> None:
    j = tmp_path / "animal_sound.json"
    j.write_text(json.dumps([["dog", "bark"], ["cat", " meow "]]))
    rel = load_relation(j)
    assert (
        rel.name == "animal_sound"
        and rel.category == "custom"
        and rel.pairs == (("dog", "bark"), ("cat", "meow"))
    )
    c = tmp_path / "opposites.csv"
    c.write_text("src,dst,note\nhot,cold,x\nup,down,\n")
    rel = load_relation(c)
    assert rel.name == "opposites" and rel.pairs == (("hot", "cold"), ("up", "down"))


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("bad.json", '[["a", "b"], ["c"', "not valid JSON (line 1"),
        ("bad.json", '{"a": "b"}', "expected a JSON list"),
        ("bad.json", '[["a", "b"], ["c"]]', "row 1 is"),
        ("bad.json", '[["a", "b"], ["c", 3]]', "row 1 is"),
        ("bad.json", '[["a", "b"], ["", "x"]]', "row 1 is"),
        ("bad.json", "[]", "has no pairs"),
        ("bad.csv", "source,target\na,b\n", "columns src,dst"),
        ("bad.csv", "src,dst\na,b\nc,\n", "line 3 is"),
    ],
)
def test_malformed_files_name_the_file_and_row(
    tmp_path: Path, filename: str, content: str, message: str
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(RelationFileError, match=re.escape(message)) as err:
        load_relation(path)
    assert str(path) in str(err.value)


def test_missing_file_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(RelationFileError, match="not found"):
        load_relation(tmp_path / "nope.json")
    with pytest.raises(RelationFileError, match="given twice"):
        load_relations(["capital", "country_to_capital_wikidata"])


def test_single_token_filter_keeps_only_one_token_pairs(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps([["dog", "bark"], ["cat", "meow"], ["elephant", "trumpet"], ["dog", "woof"]])
    )
    tok = WordTokenizer(["dog", "bark", "cat", "woof", "trumpet"])
    t = tokenize_relation(load_relation(path), tok)
    assert t.pairs == (("dog", "bark"), ("dog", "woof"))  # meow and elephant are several tokens
    assert t.src_ids == (0, 0) and t.dst_ids == (1, 3)
    messages: list[str] = []
    assert scorable([load_relation(path)], tok, min_pairs=3, log=messages.append) == []
    assert "skipping relation r: 2 of 4 pairs" in messages[0]
    table = surviving_pairs([load_relation(path)], tok, min_pairs=2)
    assert table.to_dict("records") == [
        {"relation": "r", "category": "custom", "pairs": 4, "single_token_pairs": 2, "scored": True}
    ]


@pytest.mark.slow
def test_surviving_pairs_for_smollm2_match_the_protocol(smollm2) -> None:
    """PROTOCOL.md: SmolLM2-135M keeps 16 relations (name copying 99, capital 39, copying 440)."""
    table = surviving_pairs(load_relations(), smollm2.tokenizer).set_index("relation")
    assert int(table["scored"].sum()) == 16
    assert table.loc["name_copying", "single_token_pairs"] == 99
    assert table.loc["country_to_capital_wikidata", "single_token_pairs"] == 39
    assert table.loc["general_copying_english_500", "single_token_pairs"] == 440
    assert set(table.index[~table["scored"]]) == {
        "year_to_following",
        "product_by_company",
        "english_to_french",
        "english_to_spanish",
    }
