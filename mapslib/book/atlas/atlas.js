// The head atlas: draws window.ATLAS (data.js, written by mapslib.book.atlas) as a grid of heads,
// a card per head (#LAYER.HEAD) and search results (#search=TOKEN, #relation=NAME&mode=MODE,
// #category=NAME). Plain JavaScript, no build step; every text goes in with textContent.
"use strict";

const A = window.ATLAS;
const byName = new Map(A.heads.map((h) => [h.name, h]));
const relIndex = new Map(A.relations.map((r, i) => [r.name, i]));
const CATEGORY_COLOURS = {
  algorithmic: "#4e79a7", knowledge: "#f28e2b", linguistic: "#59a14f",
  translation: "#b07aa1", custom: "#9c755f", none: "#f4f4f4",
};
const CHAPTER_NAMES = {
  "02": "chapter 2", "04": "chapter 4", "05": "chapter 5", "07": "chapter 7",
  "08": "chapter 8", "10": "chapter 10",
};
const $ = (id) => document.getElementById(id);

// -- building the DOM safely -----------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// A token made visible as mapslib.foundation.tokens.shown does: ' ' -> '␣', newline -> '\n', ...
function shown(text) {
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === " ") out += "\u2423";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\ufffd" || /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}]/u.test(ch)) {
      out += code < 256 ? "\\x" + code.toString(16).padStart(2, "0")
                        : "\\u" + code.toString(16).padStart(4, "0");
    } else out += ch;
  }
  return out;
}
const tok = (text) => el("span", { class: "tok" }, shown(text));
// What a token search compares: visible spaces as spaces, outer whitespace dropped, lower case.
const norm = (text) => text.replace(/\u2423/g, " ").trim().toLowerCase();

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : x.toFixed(digits));
// A part without the table a section reads: say so, and which table, never show a value.
const missing = (table) => el("span", { class: "missing" },
  `not measured for this model (its part has no data/${table})`);
const missingBlock = (table) => el("p", {}, missing(table));
function chapterLink(number) {
  const url = A.chapters[number];
  return url ? el("a", { href: url, class: "chapter" }, CHAPTER_NAMES[number]) : null;
}
const section = (title, number, ...body) =>
  el("section", { class: "part" }, el("h3", {}, title, chapterLink(number)), ...body);

// -- the grid ------------------------------------------------------------------------------------
function mix(a, b, t) {  // two #rrggbb colours mixed, t in [0, 1]
  const c = (s, i) => parseInt(s.slice(i, i + 2), 16);
  const v = [1, 3, 5].map((i) => Math.round(c(a, i) + (c(b, i) - c(a, i)) * t));
  return "#" + v.map((x) => x.toString(16).padStart(2, "0")).join("");
}
const isDark = (hex) => parseInt(hex.slice(1, 3), 16) * 0.3 + parseInt(hex.slice(3, 5), 16) * 0.6
  + parseInt(hex.slice(5, 7), 16) * 0.1 < 120;

function cellColour(h, how, rel, mode) {
  if (how === "category") return { fill: CATEGORY_COLOURS[h.category] || "#999", mark: "" };
  if (how === "globality") {
    if (!h.globality) return { fill: "#ffffff", mark: "?" };
    return { fill: mix("#f7fcb9", "#1b4f72", h.globality.above), mark: "" };
  }
  const s = h[mode][relIndex.get(rel)] || 0;
  const end = mode === "promote" ? "#08306b" : "#67000d";
  return { fill: mix("#ffffff", end, Math.min(1, s)), mark: s >= A.tau ? "•" : "" };
}

function drawGrid() {
  const how = $("colour").value, rel = $("relation").value, mode = $("mode").value;
  $("score-choice").hidden = how !== "score";
  const selected = decodeURIComponent(location.hash.slice(1));
  const head = el("tr", {}, el("th", {}, "layer"));
  for (let j = 0; j < A.n_heads; j++) head.append(el("th", {}, j));
  const rows = [head];
  for (let i = 0; i < A.n_layers; i++) {
    const row = el("tr", {}, el("th", {}, i));
    for (let j = 0; j < A.n_heads; j++) {
      const h = byName.get(i + "." + j);
      if (!h) { row.append(el("td")); continue; }
      const { fill, mark } = cellColour(h, how, rel, mode);
      const best = h.best ? `${h.best.relation} (${h.best.mode}) ${fmt(h.best.score)}` : "no relation over τ";
      const a = el("a", {
        href: "#" + h.name, class: "cell" + (isDark(fill) ? " dark" : "")
          + (h.name === selected ? " selected" : ""),
        title: `${h.name}: ${h.category}; ${best}`, "data-head": h.name,
      }, mark);
      a.style.background = fill;
      row.append(el("td", {}, a));
    }
    rows.push(row);
  }
  $("grid").replaceChildren(el("table", {}, rows));
  $("legend").replaceChildren(legend(how, rel, mode));
}

function legend(how, rel, mode) {
  if (how === "category") {
    const used = new Set(A.heads.map((h) => h.category));
    const items = Object.keys(CATEGORY_COLOURS).filter((c) => used.has(c));
    return el("div", {}, "Category of the head's best relation over τ = " + A.tau + ":",
      items.map((c) => [el("span", { class: "swatch", style: "background:" + CATEGORY_COLOURS[c] }), c]));
  }
  if (how === "globality") {
    if (!A.measured.globality) return el("div", { class: "missing" }, "globality: not measured for this model");
    return el("div", {}, "Output-space size (chapter 8), as the share of this model's heads with a smaller one:",
      el("span", { class: "swatch", style: "background:#f7fcb9" }), "specific",
      el("span", { class: "swatch", style: "background:#1b4f72" }), "global");
  }
  return el("div", {}, `Score of ${rel} (${mode}): white 0 to dark 1; • marks a score ≥ τ = ${A.tau}.`);
}

// -- a head's card ---------------------------------------------------------------------------------
function scoreTable(h) {
  const order = A.relations.map((r, i) => i)
    .sort((a, b) => Math.max(h.promote[b], h.suppress[b]) - Math.max(h.promote[a], h.suppress[a]));
  const n = A.heads.length;
  const cells = (i, mode) => {
    const s = h[mode][i], over = s !== null && s >= A.tau;
    const rel = A.relations[i].name;
    return [
      el("td", { class: "num score" + (over ? " over" : ""), "data-relation": rel, "data-mode": mode },
        el("span", { class: "v" }, fmt(s)), over ? el("span", { class: "tau", title: "reaches τ" }, "≥τ") : null),
      el("td", { class: "num rank", "data-relation": rel, "data-mode": mode },
        h[mode + "_rank"][i] === null ? "–" : `${h[mode + "_rank"][i]} / ${n}`),
    ];
  };
  const rows = order.map((i) => el("tr", {},
    el("td", {}, el("a", { href: `#relation=${encodeURIComponent(A.relations[i].name)}&mode=promote` },
      A.relations[i].name)),
    el("td", {}, A.relations[i].category), cells(i, "promote"), cells(i, "suppress")));
  return el("table", { class: "data scores" },
    el("thead", {}, el("tr", {}, ["relation", "category"].map((t) => el("th", {}, t)),
      ["promote", "rank", "suppress", "rank"].map((t) => el("th", { class: "num" }, t)))),
    el("tbody", {}, rows));
}

function mappingList(rows) {
  const line = ([src, targets]) => el("li", {}, tok(src), " → ",
    targets.map((t, i) => [i ? ", " : "", tok(t)]));
  const first = el("ol", { class: "mappings" }, rows.slice(0, 10).map(line));
  if (rows.length <= 10) return first;
  return [first, el("details", {}, el("summary", {}, `all ${rows.length} salient tokens`),
    el("ol", { class: "mappings", start: 11 }, rows.slice(10).map(line)))];
}

function describe(h) {
  const out = [];
  if (!A.measured.mappings) {
    out.push(el("p", {}, el("b", {}, "Salient mappings: "), missing("salient_mappings.json.gz")));
  } else if (!h.mappings.length) {
    out.push(el("p", { class: "missing" }, "no salient mappings for this head"));
  } else {
    out.push(el("p", {}, "Most salient tokens, each with the 5 tokens the head's map M scores highest:"),
      mappingList(h.mappings));
  }
  out.push(el("p", {}, el("b", {}, "Offline labeller: "), !h.label ? missing("salient_mappings.json.gz")
    : h.label.label === "none" ? `no operation explains half of the salient tokens (best share ${fmt(h.label.share, 2)})`
    : `${h.label.label} (${Math.round(h.label.share * 100)}% of the salient tokens)`
      + (h.label.labels.includes(",") ? `; all labels: ${h.label.labels}` : "")));
  const llm = h.llm;
  if (!llm) out.push(el("p", {}, el("b", {}, "LLM description: "),
    missing("descriptions.csv, nor the salient_mappings.json.gz to replay the committed answers")));
  else if (llm.status === "pattern") out.push(el("p", {}, el("b", {}, "LLM description"),
    el("small", {}, ` (${llm.source})`), ":"),
    el("blockquote", {}, llm.category ? el("div", {}, "Category: ", llm.category) : "",
      el("div", {}, "Pattern: ", llm.pattern), llm.inputs ? el("div", {}, "Inputs: ", llm.inputs) : ""));
  else out.push(el("p", {}, el("b", {}, "LLM description: "),
    llm.status === "no pattern" ? "“Unclear”: no pattern found" : `none (${llm.status})`));
  out.push(el("p", {}, el("b", {}, "Judge: "), !A.measured.judge ? missing("judgements.csv") : !h.judge
    ? "not judged (no description)"
    : `${Math.round(h.judge.accuracy * h.judge.questions)} of ${h.judge.questions} held-out tokens `
      + `matched to their real mappings from the description alone (accuracy ${fmt(h.judge.accuracy, 2)}; chance 0.25)`));
  return out;
}

function globality(g) {
  if (!g) return missingBlock("output_space.csv");
  const how = g.exact ? "exact, over the whole vocabulary" : `over ${g.n_sources} sampled source tokens`;
  return el("p", {}, el("b", {}, g.kind), ` (its output space is larger than ${Math.round(g.above * 100)}% `
    + `of this model's heads'; above the median head counts as global). Output-space size ${fmt(g.size_sample, 4)}`
    + ` ± ${fmt(g.size_sample_se, 4)} (${how}); Shlosser's estimate for the whole vocabulary ${fmt(g.size, 4)}`
    + ` ± ${fmt(g.size_se, 4)}.`);
}

function dynamic(rows) {
  if (rows === null) return missingBlock("dynamic_scores.csv");
  if (!rows.length) return el("p", {}, "Static and dynamic scores are 0 on every relation.");
  return el("table", { class: "data" },
    el("thead", {}, el("tr", {}, ["relation", "mode"].map((t) => el("th", {}, t)),
      ["static", "dynamic, no context", "dynamic, in context", "r (relation), no ctx / ctx"]
        .map((t) => el("th", { class: "num" }, t)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, r.relation), el("td", {}, r.mode),
      el("td", { class: "num" }, fmt(r.static)), el("td", { class: "num" }, fmt(r.no_context)),
      el("td", { class: "num" }, fmt(r.context)),
      el("td", { class: "num" }, `${fmt(r.r_no_context, 2)} / ${fmt(r.r_context, 2)}`)))));
}

function ablation(rows) {
  if (rows === null) return missingBlock("ablation.csv");
  if (!rows.length) return el("p", {}, "Not among the relation heads ablated for any relation.");
  return el("ul", {}, rows.map((r) => el("li", {}, el("b", {}, r.relation),
    `: relation head ${r.position} of ${r.n_heads} (removed in score order); task accuracy `
    + `${fmt(r.before)} → ${fmt(r.after)} when it was removed. All ${r.n_heads} removed: `
    + `${fmt(r.base)} → ${fmt(r.minus_relation)}, against ${fmt(r.minus_random)} with as many random `
    + `heads (p = ${fmt(r.p_random)}).`)));
}

function ioi(x) {
  if (!x) return missingBlock("known_heads.csv");
  return el("p", {}, `Direct effect on logit(IO) − logit(S): ${fmt(x.direct_effect, 4)} `
    + `(sd over prompts ${fmt(x.direct_effect_sd, 4)}; robust z ${fmt(x.robust_z, 1)}). Attention to IO `
    + `${fmt(x.attn_io)}, to S ${fmt(x.attn_s)}. Role: `, el("b", {}, x.role === "-" ? "none" : x.role), ".");
}

function card(h) {
  const near = (dl, dh) => byName.get(`${h.layer + dl}.${h.head + dh}`);
  const nav = [["← ", near(0, -1)], ["↑ ", near(-1, 0)], ["↓ ", near(1, 0)], ["→ ", near(0, 1)]]
    .filter(([, x]) => x).map(([arrow, x]) => el("a", { href: "#" + x.name }, arrow + x.name));
  const best = h.best ? [`best relation over τ: ${h.best.relation} (${h.best.mode}, ${fmt(h.best.score)})`]
    : ["no relation reaches τ = " + A.tau];
  return el("article", { class: "card", id: "card", "data-head": h.name },
    el("h2", {}, `Head ${h.name}`, el("small", {}, `  layer ${h.layer}, head ${h.head} of ${A.model}`)),
    el("p", { class: "nav" }, nav, el("a", { href: "#" + h.name }, "permalink")),
    el("p", {}, el("b", {}, "Category: "), h.category, "; ", best),
    section("Relation scores", "02", el("p", { class: "muted" },
      `Score: the share of a relation's pairs whose target is in the top k of the source's row of M; `
      + `≥τ marks ${A.tau}; rank among the ${A.heads.length} heads (1: highest; – for a score of 0).`),
    scoreTable(h)),
    section("Salient mappings and descriptions", "07", describe(h)),
    section("Global or specific", "08", globality(h.globality)),
    section("Static and dynamic scores", "04", el("p", { class: "muted" },
      "Dynamic: the same score read from the head's output during inference (mean over the "
      + "templates), on the source token alone and in a prompt; r: the relation's correlation of "
      + "static with dynamic scores over all heads."), dynamic(h.dynamic)),
    section("Causal ablation", "05", ablation(h.ablation)),
    section("Indirect object identification", "10", ioi(h.ioi)));
}

// -- search ------------------------------------------------------------------------------------------
function tokenSearch(query) {
  const q = norm(query);
  if (!A.measured.mappings) {
    return [el("h2", {}, `Heads mapping “${query}”`), missingBlock("salient_mappings.json.gz")];
  }
  const hits = [];
  for (const h of A.heads) {
    let src = 0, tgt = 0;
    for (const [s, targets] of h.mappings) {
      if (norm(s) === q) src++;
      tgt += targets.filter((t) => norm(t) === q).length;
    }
    if (src + tgt) hits.push({ h, src, tgt });
  }
  hits.sort((a, b) => (b.src + b.tgt) - (a.src + a.tgt) || a.h.layer - b.h.layer || a.h.head - b.h.head);
  return [el("h2", {}, `Heads whose salient mappings hold “${query}”`),
    el("p", { class: "muted" }, `${hits.length} heads (the token's text, ignoring case and outer spaces).`),
    el("ol", { class: "results" }, hits.map(({ h, src, tgt }) => el("li", { "data-head": h.name },
      el("a", { href: "#" + h.name }, h.name), ` as source ${src}, as target ${tgt}`)))];
}

function relationSearch(rel, mode) {
  const i = relIndex.get(rel);
  if (i === undefined) return [el("h2", {}, `No relation “${rel}”`),
    el("p", {}, "Relations: " + A.relations.map((r) => r.name).join(", "))];
  const ranked = A.heads.filter((h) => h[mode][i] > 0).sort((a, b) => b[mode][i] - a[mode][i]);
  $("colour").value = "score"; $("relation").value = rel; $("mode").value = mode; drawGrid();
  return [el("h2", {}, `${rel} (${mode}): heads by score`),
    el("p", {}, chapterLink("02"), ` ${ranked.filter((h) => h[mode][i] >= A.tau).length} heads reach τ; `
      + `${ranked.length} score above 0.`),
    el("ol", { class: "results" }, ranked.map((h) => el("li", { "data-head": h.name },
      el("a", { href: "#" + h.name }, h.name), ` ${fmt(h[mode][i])}`, h[mode][i] >= A.tau ? " ≥τ" : "")))];
}

function categorySearch(cat) {
  const best = (h) => (h.best ? h.best.score : 0);
  const found = A.heads.filter((h) => h.category === cat).sort((a, b) => best(b) - best(a));
  $("colour").value = "category"; drawGrid();
  return [el("h2", {}, `Category ${cat}: ${found.length} heads`),
    el("p", { class: "muted" }, "Heads whose best relation over τ is of this category."),
    el("ol", { class: "results" }, found.map((h) => el("li", { "data-head": h.name },
      el("a", { href: "#" + h.name }, h.name),
      h.best ? ` ${h.best.relation} (${h.best.mode}, ${fmt(h.best.score)})` : "")))];
}

function home() {  // the strongest head of every relation, in both modes: a way in
  const strongest = (i, mode) => {
    const best = A.heads.reduce((a, h) => (h[mode][i] > a[mode][i] ? h : a));
    const over = A.heads.filter((h) => h[mode][i] >= A.tau).length;
    return [el("td", { class: "num" }, over),
      el("td", {}, best[mode][i] > 0 ? [el("a", { href: "#" + best.name }, best.name), ` ${fmt(best[mode][i])}`] : "–")];
  };
  const rows = A.relations.map((r, i) => el("tr", {},
    el("td", {}, el("a", { href: `#relation=${encodeURIComponent(r.name)}&mode=promote` }, r.name)),
    el("td", {}, r.category), strongest(i, "promote"), strongest(i, "suppress")));
  return [el("h2", {}, "A card per head"),
    el("p", {}, "Click a head in the grid for everything the book measured about it, or search: by token "
      + "(heads whose salient mappings hold it), by relation (heads ranked by score) or by category. "
      + "Each card links to the chapter that measured each part; what this model's chapters have not "
      + "measured says so."),
    el("table", { class: "data" },
      el("thead", {}, el("tr", {}, ["relation", "category"].map((t) => el("th", {}, t)),
        el("th", { class: "num" }, "promote ≥τ"), el("th", {}, "strongest"),
        el("th", { class: "num" }, "suppress ≥τ"), el("th", {}, "strongest"))),
      el("tbody", {}, rows))];
}

// -- routing: the hash says what the panel shows ------------------------------------------------------
function route() {
  let hash = location.hash.slice(1);
  try { hash = decodeURIComponent(hash); } catch (e) { /* keep it as it is */ }
  const params = new URLSearchParams(location.hash.slice(1));
  let view;
  if (byName.has(hash)) view = card(byName.get(hash));
  else if (params.has("search")) view = tokenSearch(params.get("search"));
  else if (params.has("relation")) view = relationSearch(params.get("relation"), params.get("mode") || "promote");
  else if (params.has("category")) view = categorySearch(params.get("category"));
  else view = home();
  $("panel").replaceChildren(...[view].flat());
  drawGrid();
}

function choices() {  // the search box's suggestions for the chosen kind
  const kind = $("kind").value;
  const names = kind === "relation" ? A.relations.map((r) => r.name)
    : kind === "category" ? A.categories.concat(["none"]) : [];
  $("choices").replaceChildren(...names.map((n) => el("option", { value: n })));
  $("q").placeholder = kind === "search" ? "a token, e.g. Paris" : kind;
}

function start() {
  document.title = `Head atlas: ${A.model}`;
  $("summary").textContent = `${A.model}: ${A.n_layers} layers × ${A.n_heads} heads, `
    + `${A.relations.length} relations, τ = ${A.tau}.`;
  for (const r of A.relations) $("relation").append(el("option", { value: r.name }, r.name));
  for (const id of ["colour", "relation", "mode"]) $(id).addEventListener("change", drawGrid);
  $("kind").addEventListener("change", choices);
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const kind = $("kind").value, q = $("q").value;
    location.hash = kind === "relation" ? `relation=${encodeURIComponent(q)}&mode=${$("mode").value}`
      : `${kind}=${encodeURIComponent(q)}`;
  });
  window.addEventListener("hashchange", route);
  choices();
  route();
}

start();
