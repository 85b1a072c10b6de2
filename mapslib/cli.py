"""Command line: `python -m mapslib <command> ...`.

Each command loads a model once, runs one experiment from the library, and writes a tidy table
atomically with a JSON of its parameters beside it (`FILE.csv` -> `FILE.csv.json`). Errors a user can
fix are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mapslib.errors import BadArgument, MapsError

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}


def command(name: str) -> Callable:
    """Register a `cmd_*` function as a subcommand."""

    def register(fn: Callable[[argparse.Namespace], None]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


def log(message: str) -> None:
    """Progress and skip messages go to stderr, so stdout stays clean for pipes."""
    print(message, file=sys.stderr, flush=True)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="alias (smollm2-135m, gemma3-270m), .gguf path, folder or hub id",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to compute (default: auto)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model's own code (off by default)",
    )


def _check_out(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise BadArgument(f"--out must end in {' or '.join(suffixes)}, got {path!r}")
    return out


def run_header(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """The parameters every result records: command, arguments, model, versions, time."""
    from mapslib.io import environment

    return {
        "command": " ".join(["python -m mapslib", *args.argv]),
        "arguments": {k: v for k, v in vars(args).items() if k != "argv"},
        "model": loaded.info(),
        "environment": environment(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- relations --------------------------------------------------------------------------------------


def _relations_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relations", help="score every head on predefined relations (promote and suppress)"
    )
    _model_args(p)
    p.add_argument(
        "--relations",
        nargs="+",
        default=None,
        metavar="NAME_OR_FILE",
        help="shipped names/aliases or .json/.csv files (default: all shipped)",
    )
    p.add_argument(
        "--layers", default=None, help="comma-separated layers, e.g. 0,5,12 (default: all)"
    )
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="top-k for every relation (default: PROTOCOL.md's rule by vocabulary size)",
    )
    p.add_argument(
        "--embedding",
        default="paper",
        choices=["paper", "raw", "mlp0-residual"],
        help="E_in mode (default: paper)",
    )
    p.add_argument(
        "--min-pairs",
        type=int,
        default=30,
        help="skip relations with fewer single-token pairs (default: 30)",
    )
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


@command("relations")
def cmd_relations(args: argparse.Namespace) -> None:
    """Score every head on every relation and write the long table."""
    from mapslib.adapters import HeadWeights
    from mapslib.io import write_table
    from mapslib.kernels import KernelStats
    from mapslib.models import load_model
    from mapslib.relations import load_relations, scorable, tokenize_relation
    from mapslib.scores import parse_layers, relation_k, relation_scores

    out = _check_out(args.out, (".csv",))
    if args.k is not None and args.k < 1:
        raise BadArgument(f"--k must be a positive integer, got {args.k}")
    t0 = time.perf_counter()
    relations = load_relations(args.relations)  # validate files before the slow model load
    loaded = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    t_load = time.perf_counter() - t0
    hw = HeadWeights(loaded.model)
    layers = parse_layers(args.layers, hw.n_layers)
    tokenized = scorable(relations, loaded.tokenizer, args.min_pairs, log=log)
    stats = KernelStats()
    t1 = time.perf_counter()
    df = relation_scores(
        hw,
        tokenized,
        layers=layers,
        k=args.k,
        embedding=args.embedding,
        progress=sys.stderr.isatty(),
        stats=stats,
    )
    t_score = time.perf_counter() - t1
    kept = {t.name: t for t in tokenized}
    params = run_header(args, loaded) | {
        "layers": layers,
        "embedding": args.embedding,
        "k_rule": "override"
        if args.k is not None
        else "PROTOCOL.md: |V|<100k -> 1 (copying) / 10; else 3 / 25",
        "relations": [
            {
                "name": r.name,
                "category": r.category,
                "path": r.path,
                "sha256": r.sha256,
                "pairs": len(r),
                "single_token_pairs": len(tokenize_relation(r, loaded.tokenizer))
                if r.name not in kept
                else len(kept[r.name]),
                "scored": r.name in kept,
                "k": relation_k(kept[r.name], hw.vocab_size, args.k) if r.name in kept else None,
            }
            for r in relations
        ],
        "kernel": {"rows": stats.rows, "full_rows": stats.full_rows, "flops": stats.flops},
        "timings_s": {
            "load": round(t_load, 3),
            "score": round(t_score, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    write_table(out, df, params)
    log(
        f"wrote {len(df)} rows to {out} ({len(tokenized)} relations, {len(layers)} layers, {t_score:.1f}s scoring)"
    )


# --- book -----------------------------------------------------------------------------------------------


def _book_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "book", help="run every chapter for a model with papermill, then build the HTML book"
    )
    p.add_argument(
        "--model", default="smollm2-135m", help="model alias, .gguf path, folder or hub id"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--chapters", nargs="+", default=None, help="e.g. 01 02 (default: all)")
    p.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="extra chapter parameter (JSON value)",
    )
    p.add_argument(
        "--no-build", action="store_true", help="run the chapters but do not build the HTML"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="recompute every table (MAPSLIB_RECOMPUTE=1) instead of reusing the tables in data/",
    )


@command("book")
def cmd_book(args: argparse.Namespace) -> None:
    """Execute the chapters into book/models/<model>/, regenerate _toc.yml, build _build/html."""
    from mapslib import book
    from mapslib.models import model_slug

    selected = book.select_chapters(args.chapters, book.chapters())
    if args.fresh:
        os.environ["MAPSLIB_RECOMPUTE"] = "1"  # inherited by the papermill kernels
    params = {"device": args.device} | book.parse_parameters(args.parameter)
    for chapter in selected:
        t = time.perf_counter()
        log(f"running {chapter} for {args.model} ...")
        try:
            book.run_chapter(chapter, args.model, params)
        except Exception as e:  # papermill's error carries the failing cell; keep its last line
            if type(e).__name__ != "PapermillExecutionError":
                raise
            where = book.BOOK / "models" / model_slug(args.model) / f"{chapter}.ipynb"
            raise MapsError(
                f"chapter {chapter} failed ({e.ename}: {e.evalue}); the executed notebook is {where}"
            ) from None
        log(f"  {chapter} done in {time.perf_counter() - t:.0f}s")
    book.write_model_index(args.model)
    book.write_toc()
    if not args.no_build:
        index = book.build_html()
        log(f"book built: {index}")


# --- salient ----------------------------------------------------------------------------------------


def _salient_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "salient", help="each head's most salient tokens and the tokens it maps them to"
    )
    _model_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--heads", default=None, help="comma-separated LAYER.HEAD, e.g. 23.2,23.3")
    which.add_argument(
        "--layers", default=None, help="comma-separated layers, e.g. 0,5,12 (default: all)"
    )
    p.add_argument(
        "--top-tokens", type=int, default=30, help="salient tokens per head (default: 30)"
    )
    p.add_argument(
        "--top-mappings", type=int, default=5, help="mapped tokens per salient token (default: 5)"
    )
    p.add_argument(
        "--suppress", action="store_true", help="the most suppressed tokens instead of promoted"
    )
    p.add_argument(
        "--embedding",
        default="paper",
        choices=["paper", "raw", "mlp0-residual"],
        help="E_in mode (default: paper)",
    )
    p.add_argument(
        "--out", required=True, help="output .json (recommended: keeps tokens intact) or .csv"
    )
    p.add_argument(
        "--describe",
        action="store_true",
        help="also describe each head with an LLM (OPENAI_API_KEY, optional OPENAI_BASE_URL; "
        "answers cached) into OUT.descriptions.csv",
    )
    p.add_argument(
        "--llm-model",
        default=None,
        help="LLM for --describe (default: $MAPSLIB_LLM_MODEL or gpt-4o)",
    )
    p.add_argument(
        "--llm-temperature", type=float, default=0.0, help="sampling temperature (default: 0)"
    )
    p.add_argument("--llm-seed", type=int, default=0, help="seed sent to the LLM (default: 0)")


@command("salient")
def cmd_salient(args: argparse.Namespace) -> None:
    """Write the salient mappings of the chosen heads as a tidy table."""
    from dataclasses import asdict, replace

    from mapslib.adapters import HeadWeights
    from mapslib.describe import LLMConfig, availability_note, describe_heads, llm_available
    from mapslib.errors import MissingAPIKey
    from mapslib.io import write_table
    from mapslib.mappings import parse_head
    from mapslib.models import load_model
    from mapslib.salient import salient_mappings
    from mapslib.scores import parse_layers

    out = _check_out(args.out, (".json", ".csv"))
    for name in ("top_tokens", "top_mappings"):
        if getattr(args, name) < 1:
            raise BadArgument(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    specs = [s for s in (args.heads or "").split(",") if s.strip()]
    for spec in specs:  # check the syntax before the slow model load
        parse_head(spec)
    if args.describe and not llm_available():
        raise MissingAPIKey(
            "--describe needs an API key: set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
            "OpenAI-compatible server); without --describe the salient mappings are written alone"
        )
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    hw = HeadWeights(loaded.model)
    if specs:
        heads = [parse_head(s, hw) for s in specs]
    else:
        heads = [
            (layer, h)
            for layer in parse_layers(args.layers, hw.n_layers)
            for h in range(hw.n_heads)
        ]
    t1 = time.perf_counter()
    df = salient_mappings(
        hw,
        loaded.tokenizer,
        heads,
        top_tokens=args.top_tokens,
        top_mappings=args.top_mappings,
        suppress=args.suppress,
        embedding=args.embedding,
        progress=sys.stderr.isatty(),
    )
    params = run_header(args, loaded) | {
        "heads": [f"{la}.{h}" for la, h in heads],
        "top_tokens": args.top_tokens,
        "top_mappings": args.top_mappings,
        "mode": "suppress" if args.suppress else "promote",
        "embedding": args.embedding,
        "saliency": "||e_t W_VO|| / ||e_t||, e_t a row of E_in, over the whole vocabulary",
        "timings_s": {
            "load": round(t1 - t0, 3),
            "salient": round(time.perf_counter() - t1, 3),
        },
    }
    write_table(out, df, params)
    log(f"wrote {len(df)} rows to {out} ({len(heads)} heads, {time.perf_counter() - t1:.1f}s)")
    if args.describe:
        config = LLMConfig(temperature=args.llm_temperature, seed=args.llm_seed)
        config = replace(config, model=args.llm_model) if args.llm_model else config
        desc = describe_heads(df, config=config, suppress=args.suppress, cache_only=False)
        desc_out = out.with_name(out.stem + ".descriptions.csv")
        write_table(desc_out, desc, params | {"llm": asdict(config)})
        log(f"{availability_note(desc)} Wrote {desc_out}")


# --- correlate / ablate -----------------------------------------------------------------------------


def _behaviour_args(p: argparse.ArgumentParser, default_relations: str) -> None:
    """Arguments shared by `correlate` and `ablate`."""
    _model_args(p)
    p.add_argument(
        "--relations",
        nargs="+",
        default=None,
        metavar="NAME_OR_FILE",
        help=f"shipped names/aliases or .json/.csv files (default: {default_relations})",
    )
    p.add_argument(
        "--static",
        default=None,
        metavar="FILE.csv",
        help="static scores from `python -m mapslib relations` for the same model (default: computed)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for sampled pairs / heads (default: 0)"
    )
    p.add_argument(
        "--batch-rows", type=int, default=256, help="rows per forward pass (default: 256)"
    )
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


def _positive_or_all(value: str) -> int | None:
    """argparse type: a positive integer, or `all` (None)."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'all', got {value!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return n


def _static_scores(args: argparse.Namespace, hw: Any, tokenized: list) -> Any:
    """Static promote/suppress scores of `tokenized`: read from --static, or computed now."""
    import pandas as pd

    from mapslib.scores import relation_scores

    if args.static is None:
        return relation_scores(hw, tokenized, progress=sys.stderr.isatty())
    path = Path(args.static)
    if not path.is_file():
        raise BadArgument(f"--static file not found: {path}")
    static = pd.read_csv(path)
    missing = {t.name for t in tokenized} - set(static.get("relation", []))
    if missing or static.get("layer", pd.Series([])).nunique() != hw.n_layers:
        raise BadArgument(
            f"--static {path} does not cover every layer and relation asked for (missing: "
            f"{', '.join(sorted(missing)) or 'layers'}); make it with `python -m mapslib relations`"
        )
    return static


def _correlate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correlate", help="correlate static relation scores with head outputs in a forward pass"
    )
    _behaviour_args(p, "all shipped")
    p.add_argument(
        "--templates", default="all", help="template indices 0..3, e.g. 0,1 (default: all)"
    )
    p.add_argument(
        "--max-pairs",
        type=_positive_or_all,
        default=None,
        help="pairs per relation, sampled with --seed (default: all)",
    )
    p.add_argument(
        "--dynamic-out",
        default=None,
        metavar="FILE.csv",
        help="also write every head's dynamic score per relation, template, setting and mode",
    )


@command("correlate")
def cmd_correlate(args: argparse.Namespace) -> None:
    """Dynamic scores of every head and their Pearson r with the static scores, per relation."""
    from mapslib.adapters import HeadWeights
    from mapslib.dynamic import TEMPLATES, correlate, parse_templates
    from mapslib.io import write_table
    from mapslib.kernels import KernelStats
    from mapslib.models import load_model
    from mapslib.relations import load_relations, scorable

    out = _check_out(args.out, (".csv",))
    dyn_out = _check_out(args.dynamic_out, (".csv",)) if args.dynamic_out else None
    try:
        templates = parse_templates(args.templates)
    except ValueError as e:
        raise BadArgument(f"--templates: {e}") from None
    t0 = time.perf_counter()
    relations = load_relations(args.relations)
    loaded = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    hw = HeadWeights(loaded.model)
    tokenized = scorable(relations, loaded.tokenizer, log=log)
    t1 = time.perf_counter()
    static = _static_scores(args, hw, tokenized)
    t2 = time.perf_counter()
    stats = KernelStats()
    dynamic, corr = correlate(
        hw,
        loaded.tokenizer,
        tokenized,
        static,
        templates=templates,
        max_pairs=args.max_pairs,
        seed=args.seed,
        batch_rows=args.batch_rows,
        progress=sys.stderr.isatty(),
        stats=stats,
    )
    t3 = time.perf_counter()
    params = run_header(args, loaded) | {
        "templates": {i: TEMPLATES[i] for i in templates},
        "prompt": "template cut after <X>, filled with src (the src is the last token)",
        "dynamic_score": "dst in the top-k of (z_h W_O[h]) U (suppress: of -(...) U), no b_O, no final norm; "
        "no_context: z_h = x_last W_V + b_V; k as the static score",
        "correlation": "Pearson r over heads x templates (static repeated per template)",
        "relations": [
            {"name": t.name, "sha256": t.relation.sha256, "pairs": len(t)} for t in tokenized
        ],
        "static": args.static or "computed (PROTOCOL.md defaults)",
        "kernel": {"rows": stats.rows, "full_rows": stats.full_rows, "flops": stats.flops},
        "timings_s": {
            "load": round(t1 - t0, 3),
            "static": round(t2 - t1, 3),
            "correlate": round(t3 - t2, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    write_table(out, corr, params)
    if dyn_out is not None:
        write_table(dyn_out, dynamic, params)
    log(f"wrote {len(corr)} rows to {out} ({len(tokenized)} relations, {t3 - t2:.1f}s)")


def _ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="task accuracy as relation heads, random heads are removed (causal check)"
    )
    _behaviour_args(p, "all with a task prompt")
    p.add_argument(
        "--max-prompts",
        type=_positive_or_all,
        default=100,
        help="task prompts per relation, sampled with --seed; 'all' for every pair (default: 100)",
    )
    p.add_argument("--random-draws", type=int, default=5, help="random-head baselines (default: 5)")
    p.add_argument(
        "--step",
        type=int,
        default=5,
        help="random and control curves at every STEP-th head and at the last (default: 5)",
    )


@command("ablate")
def cmd_ablate(args: argparse.Namespace) -> None:
    """Accuracy curves for relation heads, random heads and controls; summary in the JSON."""
    from mapslib import ablation
    from mapslib.adapters import HeadWeights
    from mapslib.io import write_table
    from mapslib.models import load_model
    from mapslib.relations import load_relations, scorable

    out = _check_out(args.out, (".csv",))
    if args.random_draws < 1 or args.step < 1:
        raise BadArgument("--random-draws and --step must be positive integers")
    t0 = time.perf_counter()
    relations = load_relations(args.relations or list(ablation.TASK_PROMPTS))
    no_task = [r.name for r in relations if r.name not in ablation.TASK_PROMPTS]
    if no_task:
        raise BadArgument(
            f"no task prompt for {', '.join(no_task)}; relations with one: {', '.join(ablation.TASK_PROMPTS)}"
        )
    loaded = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    hw = HeadWeights(loaded.model)
    tokenized = scorable(relations, loaded.tokenizer, log=log)
    t1 = time.perf_counter()
    static = _static_scores(args, hw, tokenized)
    t2 = time.perf_counter()
    df = ablation.ablation_experiment(
        hw,
        loaded.tokenizer,
        tokenized,
        static,
        max_prompts=args.max_prompts,
        random_draws=args.random_draws,
        seed=args.seed,
        step=args.step,
        batch_rows=args.batch_rows,
        progress=sys.stderr.isatty(),
    )
    t3 = time.perf_counter()
    summ = ablation.summary(df)
    params = run_header(args, loaded) | {
        "task_prompts": {t.name: ablation.TASK_PROMPTS[t.name] for t in tokenized},
        "relation_heads": f"top {ablation.n_relation_heads(hw.n_layers * hw.n_heads)} by static "
        "promote score among scores > 0",
        "rules": {
            "min_base_accuracy": ablation.MIN_BASE,
            "control_max_overlap": ablation.MAX_OVERLAP,
            "control_max_base_gap": ablation.MAX_BASE_GAP,
            "max_controls": ablation.MAX_CONTROLS,
        },
        "accuracy": "greedy next token == the dst token (' ' + dst, single-token pairs)",
        "ablation": "heads' z zeroed at the last position only",
        "static": args.static or "computed (PROTOCOL.md defaults)",
        "summary": summ.astype(object).where(summ.notna(), None).to_dict(orient="records"),
        "timings_s": {
            "load": round(t1 - t0, 3),
            "static": round(t2 - t1, 3),
            "ablate": round(t3 - t2, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    write_table(out, df, params)
    log(f"wrote {len(df)} rows to {out} ({len(summ)} relations, {t3 - t2:.1f}s)")


# --- entry point ------------------------------------------------------------------------------------

PARSERS = [_relations_parser, _book_parser, _salient_parser, _correlate_parser, _ablate_parser]


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command."""
    parser = argparse.ArgumentParser(prog="python -m mapslib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn user errors into one clear line."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        COMMANDS[args.command](args)
    except MapsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
