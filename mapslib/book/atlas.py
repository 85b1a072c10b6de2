"""The head atlas: one static page per model that gathers, for every head, what the book measured.

A reader who wants to know what head 23.2 does would otherwise visit six chapters. The atlas reads
the tables a model's part of the book wrote (`book/models/<model>/data/`, through `ModelPart`) and
writes a site with no server and no network: `index.html`, `atlas.js`, `atlas.css` (package data in
`mapslib/book/atlas/`) and `data.js`, which sets `window.ATLAS` (a page opened from `file://` may
not fetch() a JSON file beside it, but it may load a script). Nothing is recomputed: a table the
part has not written leaves its section of every card "not measured for this model".

Per head: every relation's promote and suppress score, whether it reaches tau and its rank among
the heads (chapter 2); the category of its best relation over tau; its salient mappings, the offline
labeller's label, the LLM's description and the judge's score (chapter 7); its output-space size
(chapter 8); its dynamic scores (chapter 4), its place among a relation's ablated heads (chapter 5)
and its IOI direct effect and role (chapter 10), each linked to the chapter page that measured it.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mapslib.errors import BadArgument
from mapslib.foundation.io import read_table, write_text
from mapslib.foundation.settings import DEFAULTS

ASSETS = Path(__file__).resolve().parent / "atlas"  # index.html, atlas.js, atlas.css
SITE_FILES = ("index.html", "atlas.js", "atlas.css", "data.js")
# the chapter that writes each table, by its number (the chapter's page is found by the number)
CHAPTER_OF = {
    "relation_scores.csv": "02",
    "dynamic_scores.csv": "04",
    "ablation.csv": "05",
    "salient_mappings.json.gz": "07",
    "judgements.csv": "07",
    "descriptions.csv": "07",
    "output_space.csv": "08",
    "known_heads.csv": "10",
}


# -- locating a part ------------------------------------------------------------------------------
def part_folder(model: str, book: Path | None = None) -> Path:
    """A model's part of the book; a model without one is a BadArgument naming those that exist."""
    from mapslib.crossmodel.parts import BOOK, model_folders
    from mapslib.foundation.models import model_slug

    folders = {f.name: f for f in model_folders(book or BOOK)}
    slug = model_slug(model)
    if slug not in folders:
        raise BadArgument(
            f"no part of the book for {model!r} (no book/models/{slug}/data/relation_scores.csv); "
            f"parts: {', '.join(folders) or 'none'}; make one with `python -m mapslib book "
            f"--model {model}`"
        )
    return folders[slug]


def load_part(folder: Path) -> Any:
    """The part's ModelPart (its tables, read on demand, and its shape)."""
    from mapslib.crossmodel.parts import ModelPart, model_info

    return ModelPart(data=folder / "data", **model_info(folder))


def chapter_links(folder: Path, url: str) -> dict[str, str | None]:
    """Per chapter number, the URL of its page (`url` + `NN_name.html`) when the part executed it."""
    from mapslib.book.build import chapters

    out: dict[str, str | None] = {}
    for number in sorted(set(CHAPTER_OF.values())):
        names = [c for c in chapters() if c.startswith(number + "_")]
        done = [c for c in names if (folder / f"{c}.ipynb").is_file()]
        out[number] = f"{url}{done[0]}.html" if done else None
    return out


# -- small helpers --------------------------------------------------------------------------------
def clean(value: Any, digits: int = 6) -> Any:
    """A number fit for JSON: rounded, NaN and infinities as None, numpy scalars as Python's."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), digits)
    return value


def head_key(layer: Any, head: Any) -> str:
    """The atlas's key of a head: LAYER.HEAD, as the book writes heads."""
    return f"{int(layer)}.{int(head)}"


def ranks(scores: pd.Series) -> pd.Series:
    """Rank among heads, best first: 1 + the number of heads with a strictly higher score; none
    (NaN) for a score of 0, which ties with every head the relation leaves at 0."""
    return scores.rank(method="min", ascending=False).where(scores > 0)


# -- chapter 2: relation scores, ranks and categories --------------------------------------------
def relation_records(scores: pd.DataFrame, tau: float) -> tuple[list[dict], dict[str, dict]]:
    """The relations (name, label, category, k, pairs) and, per head, its scores and ranks in both
    modes (lists in the order of the relations), its best relation over tau and its category."""
    from mapslib.relation_map.relations import category_of, label_of

    names = sorted(scores["relation"].unique(), key=lambda r: (category_of(r), r))
    first = scores.groupby("relation").first()
    relations = [
        {
            "name": r,
            "label": label_of(r),
            "category": category_of(r),
            "k": clean(first.loc[r, "k"]),
            "pairs": clean(first.loc[r, "n_pairs"]),
        }
        for r in names
    ]
    wide = scores.pivot_table(index=["layer", "head"], columns=["mode", "relation"], values="score")
    over = scores[scores["score"] >= tau].sort_values(  # ties: promote first, then by name
        ["score", "mode", "relation"], ascending=[False, True, True]
    )
    best = over.drop_duplicates(["layer", "head"]).set_index(["layer", "head"])
    heads: dict[str, dict] = {head_key(*i): {} for i in wide.index}
    for mode in ("promote", "suppress"):
        table = wide[mode].reindex(columns=names)
        rank = table.apply(ranks)
        for i, key in zip(table.index, heads, strict=True):
            heads[key][mode] = [clean(x) for x in table.loc[i]]
            heads[key][mode + "_rank"] = [None if pd.isna(x) else int(x) for x in rank.loc[i]]
    for i, key in zip(wide.index, heads, strict=True):
        b = best.loc[i] if i in best.index else None
        heads[key]["best"] = (
            None
            if b is None
            else {
                "relation": b["relation"],
                "mode": b["mode"],
                "score": clean(b["score"]),
            }
        )
        heads[key]["category"] = "none" if b is None else category_of(b["relation"])
    return relations, heads


# -- chapter 7: salient mappings, labels, descriptions, judge --------------------------------------
def salient_table(part: Any) -> pd.DataFrame | None:
    """The salient mappings chapter 7 wrote (data/salient_mappings.json.gz, committed), the described
    tokens only (the first `described` of each head, from the judge's setup), or None when not
    written."""
    path = part.data / "salient_mappings.json.gz"
    if not path.is_file():
        return None
    df = read_table(path)
    side = part.sidecar("judgements.csv") or {}
    setup = side.get("setup") or (side.get("params") or {}).get("setup") or {}
    if setup.get("described"):
        df = df[df["salient_rank"] <= int(setup["described"])]
    return df


def mapping_records(salient: pd.DataFrame) -> dict[str, list]:
    """Per head, its salient tokens most salient first, each `[source, [targets...]]` (raw text;
    the page shows it the way `foundation.tokens.shown` does)."""
    out: dict[str, list] = {}
    ordered = salient.sort_values(["layer", "head", "salient_rank", "rank"])
    last = None
    cols = ["layer", "head", "salient_rank", "source", "target"]
    for layer, head, rank, source, target in ordered[cols].itertuples(index=False):
        rows = out.setdefault(head_key(layer, head), [])
        if (layer, head, rank) != last:  # the next salient token
            rows.append([str(source), []])
            last = (layer, head, rank)
        rows[-1][1].append(str(target))
    return out


def label_records(salient: pd.DataFrame) -> dict[str, dict]:
    """Per head, the offline labeller's label (`salient.labeller.label_heads`), share and labels."""
    from mapslib.salient.labeller import label_heads

    labels = label_heads(salient)
    return {
        head_key(r.layer, r.head): {
            "label": r.label,
            "share": clean(r.share, 3),
            "labels": r.labels,
        }
        for r in labels.itertuples()
    }


def description_table(part: Any, salient: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """The LLM's descriptions and where they come from: chapter 7's descriptions.csv when the part
    wrote one, else the committed answers replayed (never asked: no LLM, no network) for the LLM
    its judgements.csv records, as chapter 7 itself does; (None, "") without either."""
    if part.has("descriptions.csv"):
        return part.table("descriptions.csv"), "descriptions.csv"
    llm = ((part.sidecar("judgements.csv") or {}).get("params") or {}).get("llm")
    if salient is None or not llm:
        return None, ""
    from dataclasses import fields

    from mapslib.llm.client import LLMConfig
    from mapslib.salient.describe import Describer, describe_heads

    known = {f.name for f in fields(LLMConfig)}
    config = LLMConfig(**{k: v for k, v in llm.items() if k in known})
    describer = Describer(config, replay=True)  # stored answers only: else "unavailable"
    return describe_heads(salient, describer=describer), "the committed LLM answers, replayed"


def _text(value: Any) -> str:
    """A cell as text; missing (NaN, None) as ""."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def description_records(desc: pd.DataFrame, source: str) -> dict[str, dict]:
    """Per head, the LLM's status (pattern, no pattern, unavailable, failed) and its sentences."""
    return {
        head_key(r.layer, r.head): {
            "status": str(r.status),
            "pattern": "" if pd.isna(r.pattern) else str(r.pattern),
            "inputs": "" if pd.isna(r.inputs) else str(r.inputs),
            "category": _text(getattr(r, "category", "")),
            "source": source,
        }
        for r in desc.itertuples()
    }


def judge_records(judged: pd.DataFrame) -> dict[str, dict]:
    """Per head, the likelihood judge's accuracy with the head's own description (not a control)."""
    from mapslib.salient.judge import per_head_accuracy
    from mapslib.salient.likelihood import OWN

    acc = per_head_accuracy(judged) if "group" in judged else judged.iloc[0:0]
    acc = acc[acc["group"] == OWN] if "group" in acc else acc
    return {
        head_key(r.layer, r.head): {"accuracy": clean(r.accuracy, 3), "questions": int(r.questions)}
        for r in acc.itertuples()
    }


# -- chapter 8: global or specific ------------------------------------------------------------------
def globality_records(space: pd.DataFrame) -> dict[str, dict]:
    """Per head, its output-space size (sampled and Shlosser's estimate, with errors) and the share
    of the model's heads with a smaller sampled size; `global` when above the median head."""
    size = space["size_sample"]
    below = size.rank(method="min").sub(1) / max(len(size) - 1, 1)
    median = float(size.median())
    return {
        head_key(r.layer, r.head): {
            "size_sample": clean(r.size_sample, 4),
            "size_sample_se": clean(r.size_sample_se, 4),
            "size": clean(r.size, 4),
            "size_se": clean(r.size_se, 4),
            "exact": bool(r.exact),
            "n_sources": int(r.n_sources),
            "above": clean(below.loc[i], 3),
            "kind": "global" if r.size_sample > median else "specific",
        }
        for i, r in zip(space.index, space.itertuples(), strict=True)
    }


# -- chapter 4: dynamic scores ------------------------------------------------------------------------
def dynamic_records(
    dynamic: pd.DataFrame, scores: pd.DataFrame, correlations: pd.DataFrame | None
) -> dict[str, list]:
    """Per head, each relation and mode where its static or dynamic score is not 0: the static
    score, the dynamic score (mean over templates) without and with context, and the relation's r."""
    dyn = dynamic.groupby(["layer", "head", "relation", "mode", "setting"])["score"].mean()
    dyn = dyn.unstack("setting")
    static = scores.set_index(["layer", "head", "relation", "mode"])["score"]
    both = dyn.join(static.rename("static"), how="left").reset_index()
    r = {}
    if correlations is not None:
        r = correlations.set_index(["relation", "mode", "setting"])["r"].to_dict()
    out: dict[str, list] = {}
    for (layer, head), g in both.groupby(["layer", "head"], sort=True):
        rows = []
        for x in g.itertuples():
            values = [getattr(x, c, 0.0) for c in ("static", "no_context", "context")]
            if not any(v and not pd.isna(v) for v in values):
                continue
            rows.append(
                {
                    "relation": x.relation,
                    "mode": x.mode,
                    "static": clean(x.static, 4),
                    "no_context": clean(getattr(x, "no_context", None), 4),
                    "context": clean(getattr(x, "context", None), 4),
                    "r_no_context": clean(r.get((x.relation, x.mode, "no_context")), 3),
                    "r_context": clean(r.get((x.relation, x.mode, "context")), 3),
                }
            )
        out[head_key(layer, head)] = rows
    return out


# -- chapter 5: ablation --------------------------------------------------------------------------------
def ablation_map(part: Any) -> pd.DataFrame:
    """The relation map chapter 5 chose its relation heads from (its sidecar's `static`)."""
    static = str((part.sidecar("ablation.csv") or {}).get("static", ""))
    embedding = static.rsplit("embedding ", 1)[-1].strip() if "embedding " in static else "paper"
    maps = part.maps()
    return maps.get(embedding, part.scores())


def ablation_records(ablation: pd.DataFrame, static: pd.DataFrame, n_heads: int) -> dict[str, list]:
    """Per head, the relations whose ablated relation heads include it: its place among them, the
    task accuracy before and after it was removed (heads go one by one in score order), and the
    relation's result (base, minus all its relation heads, minus as many random heads, p)."""
    from mapslib.behaviour.ablation import ablation_summary, n_relation_heads, top_relation_heads

    summary = ablation_summary(ablation).set_index("relation")
    m = n_relation_heads(n_heads)
    out: dict[str, list] = {}
    for rel, s in summary.iterrows():
        if s["status"] != "ok":
            continue
        own = ablation[(ablation["relation"] == rel) & (ablation["task"] == rel)]
        curve = own[own["heads"] == "relation"].set_index("n_removed")["accuracy"]
        top = top_relation_heads(static, rel, m)
        if len(top) != int(s["n_heads"]):  # not the map chapter 5 used: say nothing
            continue
        for i, (layer, head) in enumerate(top, start=1):
            out.setdefault(head_key(layer, head), []).append(
                {
                    "relation": rel,
                    "position": i,
                    "n_heads": len(top),
                    "before": clean(s["base"] if i == 1 else curve.get(i - 1), 4),
                    "after": clean(curve.get(i), 4),
                    "base": clean(s["base"], 4),
                    "minus_relation": clean(s["minus_relation"], 4),
                    "minus_random": clean(s["minus_random"], 4),
                    "p_random": clean(s["p_random"], 4),
                }
            )
    return out


# -- chapter 10: IOI ------------------------------------------------------------------------------
def ioi_records(known: pd.DataFrame) -> dict[str, dict]:
    """Per head, its IOI direct effect on logit(IO) - logit(S), robust z, attention and role."""
    cols = ["direct_effect", "direct_effect_sd", "robust_z", "attn_io", "attn_s"]
    return {
        head_key(r["layer"], r["head"]): {c: clean(r[c], 4) for c in cols}
        | {"role": str(r["role"])}
        for _, r in known.iterrows()
    }


# -- the whole atlas --------------------------------------------------------------------------------
def atlas_data(folder: Path, chapters_url: str = "", tau: float = DEFAULTS.tau) -> dict[str, Any]:
    """Every head of a part with what its tables say of it, as one JSON-able dict (`window.ATLAS`).

    A section whose table the part has not written is None in `measured` and in every head."""
    part = load_part(folder)
    scores = part.scores()
    relations, heads = relation_records(scores, tau)
    salient = salient_table(part)
    desc, desc_source = description_table(part, salient)

    def read(table: str, records: Callable[[pd.DataFrame], dict]) -> dict | None:
        return records(part.table(table)) if part.has(table) else None

    correlations = part.table("correlations.csv")
    sections: dict[str, dict | None] = {
        "mappings": None if salient is None else mapping_records(salient),
        "label": None if salient is None else label_records(salient),
        "llm": None if desc is None else description_records(desc, desc_source),
        "judge": read("judgements.csv", judge_records),
        "globality": read("output_space.csv", globality_records),
        "dynamic": read("dynamic_scores.csv", lambda t: dynamic_records(t, scores, correlations)),
        "ablation": read(
            "ablation.csv", lambda t: ablation_records(t, ablation_map(part), part.heads)
        ),
        "ioi": read("known_heads.csv", ioi_records),
    }
    empty = {"mappings": [], "dynamic": [], "ablation": []}  # measured, nothing for this head
    records = []
    for key, rec in heads.items():
        layer, head = (int(x) for x in key.split("."))
        rec = {"name": key, "layer": layer, "head": head} | rec
        for name, found in sections.items():
            rec[name] = None if found is None else found.get(key, empty.get(name))
        records.append(rec)
    return {
        "model": part.name,
        "n_layers": part.n_layers,
        "n_heads": part.n_heads,
        "tau": tau,
        "relations": relations,
        "categories": sorted({r["category"] for r in relations}),
        "measured": {name: found is not None for name, found in sections.items()},
        "llm_source": desc_source,
        "chapters": chapter_links(folder, chapters_url),
        "heads": records,
    }


def data_script(data: dict[str, Any]) -> str:
    """data.js: the atlas as one global, `window.ATLAS` (ASCII JSON: safe in any page encoding)."""
    return "window.ATLAS = " + json.dumps(data, ensure_ascii=True, separators=(",", ":")) + ";\n"


def write_site(data: dict[str, Any], out: Path) -> Path:
    """Write the site into `out`: the assets, then data.js, each file atomically; returns index.html."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("atlas.js", "atlas.css"):
        write_text(out / name, (ASSETS / name).read_text(encoding="utf-8"))
    write_text(out / "data.js", data_script(data))
    title = html.escape(f"Head atlas: {data['model']}")
    page = (ASSETS / "index.html").read_text(encoding="utf-8").replace("{{title}}", title)
    return write_text(out / "index.html", page)


def default_chapters_url(model: str) -> str:
    """Where the chapter pages are seen from an atlas at `_build/html/atlas/<model>/`: the built
    book keeps them at `_build/html/book/models/<model>/`."""
    return f"../../book/models/{model}/"


def write_atlas(
    model: str, out: Path, *, book: Path | None = None, chapters_url: str | None = None
) -> Path:
    """The atlas of one model's part of the book, written into `out`; returns its index.html."""
    folder = part_folder(model, book)
    url = default_chapters_url(folder.name) if chapters_url is None else chapters_url
    return write_site(atlas_data(folder, url), out)


def write_atlases(book: Path, html: Path) -> list[Path]:
    """One atlas per model part of `book`, at `html/atlas/<model>/` (inside the built book)."""
    from mapslib.crossmodel.parts import model_folders

    shutil.rmtree(html / "atlas", ignore_errors=True)  # parts removed since leave no stale atlas
    return [write_atlas(f.name, html / "atlas" / f.name, book=book) for f in model_folders(book)]
