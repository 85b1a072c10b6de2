"""The atlas and the book as a browser shows them: Debian's chromium, headless, dumps the DOM after the
pages' scripts ran (skipped where chromium is not installed: `apt-get install -y chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
import yaml

from mapslib.book import atlas
from mapslib.book.build import ROOT
from mapslib.foundation.io import read_table

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
SMOLLM2 = ROOT / "book" / "models" / "smollm2-135m"
HEAD = "23.2"


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM once its scripts ran (a virtual-time budget lets them finish)."""
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}"]
    cmd += ["--virtual-time-budget=5000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


class Cells(HTMLParser):
    """The text of elements carrying `data-relation` and `data-mode`, and of each `data-head` item."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}  # (class, relation, mode) -> text
        self.heads: list[str] = []  # data-head of the result items, in order
        self._open: list[tuple[str, str, str] | None] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "li" and "data-head" in a:
            self.heads.append(a["data-head"])
        key = None
        if tag == "td" and "data-relation" in a:
            key = (a.get("class", "").split()[1], a["data-relation"], a["data-mode"])
            self.cells[key] = ""
        self._open.append(key)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            if key is not None:
                self.cells[key] += data


def parse(dom: str) -> Cells:
    cells = Cells()
    cells.feed(dom)
    return cells


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's atlas, written from the book's committed part."""
    if not (SMOLLM2 / "data" / "relation_scores.csv").is_file():
        pytest.skip("the book's SmolLM2 part is not there")
    out = tmp_path_factory.mktemp("atlas")
    atlas.write_atlas("smollm2-135m", out)
    return out


def test_card_shows_the_relation_table(site: Path, tmp_path: Path) -> None:
    """#23.2 opens the head's card, with its score in every relation and mode as the table has it,
    the tau mark where it reaches tau, and its rank."""
    dom = dump_dom(f"{site.as_uri()}/index.html#{HEAD}", tmp_path / "profile")
    assert f'data-head="{HEAD}"' in dom and f"Head {HEAD}" in dom
    cells = parse(dom).cells
    table = pd.read_csv(SMOLLM2 / "data" / "relation_scores.csv")
    mine = table[(table["layer"] == 23) & (table["head"] == 2)]
    assert len(mine) == 2 * table["relation"].nunique()
    for row in mine.itertuples():
        text = cells[("score", row.relation, row.mode)]
        assert text.startswith(f"{row.score:.3f}"), (row.relation, row.mode, text)
        assert text.endswith("≥τ") == (row.score >= 0.15)
        same = table[(table["relation"] == row.relation) & (table["mode"] == row.mode)]
        rank = f"{1 + int((same['score'] > row.score).sum())} / 270" if row.score > 0 else "–"
        assert cells[("rank", row.relation, row.mode)] == rank


def test_token_search_lists_the_heads_whose_mappings_hold_it(site: Path, tmp_path: Path) -> None:
    """#search=TOKEN lists the heads whose salient mappings (the 30 described tokens) hold the token
    as source or target, ignoring case and outer spaces, as Python finds them in the table."""
    path = SMOLLM2 / "data" / "salient_mappings.json.gz"
    assert path.is_file(), "chapter 07's salient mappings are committed; rerun it to restore them"
    salient = read_table(path)
    salient = salient[salient["salient_rank"] <= 30]
    token = " Paris"  # searched as the reader types it
    norm = lambda s: str(s).replace("␣", " ").strip().lower()  # noqa: E731
    sources = salient.drop_duplicates(["layer", "head", "salient_rank"])
    hits = pd.concat(  # each salient token once as a source, each of its targets once
        [sources[sources["source"].map(norm) == norm(token)],
         salient[salient["target"].map(norm) == norm(token)]]
    )  # fmt: skip
    count = hits.groupby(["layer", "head"]).size().reset_index(name="n")
    count = count.sort_values(["n", "layer", "head"], ascending=[False, True, True])
    expected = [f"{la}.{h}" for la, h in zip(count["layer"], count["head"], strict=True)]
    assert expected, "the token should be in some head's mappings"
    dom = dump_dom(f"{site.as_uri()}/index.html#search={quote(token)}", tmp_path / "profile")
    found = parse(dom).heads
    assert sorted(found) == sorted(expected)
    # the order: most mappings first; ties by position
    assert found == expected


def minimal_book(folder: Path) -> Path:
    """A one-page jupyter-book with display and inline math, configured as the project's book."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["exclude_patterns"] = ["_build/*"]
    (folder / "_config.yml").write_text(yaml.safe_dump(config))
    (folder / "_toc.yml").write_text("format: jb-book\nroot: page\n")
    (folder / "page.md").write_text("# Math\n\n$$x^2 + y^2$$\n\nInline $E_\\text{in}$.\n")
    exe = shutil.which("jupyter-book") or str(Path(ROOT / ".venv" / "bin" / "jupyter-book"))
    subprocess.run(
        [exe, "build", str(folder), "--warningiserror"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return folder / "_build" / "html"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minimal_book(tmp_path_factory.mktemp("book"))


def remote_scripts(html: str) -> list[str]:
    """`<script src>` that load from another host (http://, https:// or //)."""
    srcs = re.findall(r"<script\b[^>]*\bsrc=[\"']([^\"']+)", html, flags=re.I)
    return [s for s in srcs if re.match(r"(?i)(https?:)?//", s)]


def test_math_is_typeset_offline(built: Path, tmp_path: Path) -> None:
    """MathJax is served from the build (_static/mathjax) and turns the TeX into mjx-container."""
    assert (built / "_static" / "mathjax" / "tex-chtml.js").is_file()
    dom = dump_dom((built / "page.html").as_uri(), tmp_path / "profile")
    assert dom.count("<mjx-container") >= 2


def test_the_built_html_loads_no_remote_script(built: Path) -> None:
    pages = sorted(built.glob("**/*.html"))
    assert pages
    for page in pages:
        assert remote_scripts(page.read_text()) == [], page.name
    assert remote_scripts('<script src="https://cdn.example/x.js">') == ["https://cdn.example/x.js"]


def test_a_card_says_what_was_not_measured(tmp_path: Path) -> None:
    """A part with only its relation map: the card shows the scores and, for every other section,
    "not measured for this model" (naming the table), never a number."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "synthetic_book", Path(__file__).resolve().parents[1] / "crossmodel" / "synthetic_book.py"
    )
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    synthetic.make_part(tmp_path / "book", "tiny-135m", 4, 4, synthetic.SMALL)
    atlas.write_atlas("tiny-135m", tmp_path / "site", book=tmp_path / "book")
    dom = dump_dom(f"{(tmp_path / 'site').as_uri()}/index.html#2.0", tmp_path / "profile")
    assert parse(dom).cells[("score", "name_copying", "promote")].startswith("0.800")
    for table in ("salient_mappings.json.gz", "judgements.csv", "output_space.csv",
                  "dynamic_scores.csv", "ablation.csv", "known_heads.csv"):  # fmt: skip
        assert f"not measured for this model (its part has no data/{table}" in dom
