"""`relations` and `salient`: the two pillars of MAPS, from the command line."""

from __future__ import annotations

import argparse

from mapslib.cli.common import (
    check_out,
    check_positive,
    command,
    load,
    log,
    model_args,
    relations_arg,
    run_options,
    settings_args,
    settings_from,
    weights_only_arg,
)
from mapslib.cli.describe import check_llm, describe, llm_args

# --- relations -----------------------------------------------------------------------------------


def relations_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relations", help="score every head on predefined relations (promote and suppress)"
    )
    model_args(p)
    weights_only_arg(p)
    relations_arg(p, "all shipped")
    p.add_argument(
        "--layers", default=None, help="comma-separated layers, e.g. 0,5,12 (default: all)"
    )
    settings_args(p)
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


@command("relations")
def cmd_relations(args: argparse.Namespace) -> None:
    """Score every head on every relation and write the long table."""
    from mapslib.foundation.heads import parse_layers
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import run_relation_map

    out = check_out(args.out, (".csv",))
    settings = settings_from(args)
    relations = load_relations(args.relations)  # bad files fail before the slow model load
    lm, t_load = load(args)
    df = run_relation_map(
        lm,
        relations,
        out,
        layers=parse_layers(args.layers, lm.hw.n_layers),
        **run_options(args, settings, t_load),
    )
    t = df.attrs["sidecar"]["timings_s"]["score"]
    log(f"wrote {len(df)} rows to {out} ({df['relation'].nunique()} relations, {t:.1f}s scoring)")


# --- salient -------------------------------------------------------------------------------------


def salient_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "salient", help="each head's most salient tokens and the tokens it maps them to"
    )
    model_args(p)
    weights_only_arg(p)
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
    settings_args(p)
    p.add_argument(
        "--out", required=True, help="output .json (recommended: keeps tokens intact) or .csv"
    )
    p.add_argument(
        "--describe",
        action="store_true",
        help="also describe each head with an LLM into OUT.descriptions.csv (answers cached)",
    )
    p.add_argument(
        "--judge",
        action="store_true",
        help="with --describe: score each description on 5 held-out salient tokens by the "
        "likelihood judge (--judge-model), beside its controls (the seen mappings, another head's "
        "description, none) and the no-LLM evidence template, into OUT.judgements.csv",
    )
    p.add_argument(
        "--judge-model",
        default="qwen2.5-coder-0.5b",
        help="the judge: a GGUF model alias or .gguf file, scored in-process by llama.cpp "
        "(make setup-llm) (default: qwen2.5-coder-0.5b)",
    )
    llm_args(p)


@command("salient")
def cmd_salient(args: argparse.Namespace) -> None:
    """Write the salient mappings of the chosen heads as a tidy table (and their descriptions)."""
    from mapslib.foundation.heads import all_heads, parse_head, parse_layers
    from mapslib.salient.judge import JudgeSetup
    from mapslib.salient.mappings import run_salient

    out = check_out(args.out, (".json", ".csv"))
    check_positive(args, "top_tokens", "top_mappings")
    settings = settings_from(args)
    specs = [s for s in (args.heads or "").split(",") if s.strip()]
    for spec in specs:  # the syntax, before the slow model load
        parse_head(spec)
    check_llm(args)
    lm, t_load = load(args)
    heads = (
        [parse_head(s, lm.hw) for s in specs]
        if specs
        else all_heads(lm.hw, parse_layers(args.layers, lm.hw.n_layers))
    )
    held_out = JudgeSetup().held_out if args.judge else 0
    df = run_salient(
        lm,
        heads,
        out,
        top_tokens=args.top_tokens + held_out,
        top_mappings=args.top_mappings,
        suppress=args.suppress,
        **run_options(args, settings, t_load),
    )
    t = df.attrs["sidecar"]["timings_s"]["salient"]
    log(f"wrote {len(df)} rows to {out} ({len(heads)} heads, {t:.1f}s)")
    if args.describe:
        describe(args, df, out, lm)
