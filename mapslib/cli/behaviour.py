"""`correlate`, `ablate` and `known-heads`: the static map against the forward pass."""

from __future__ import annotations

import argparse

from mapslib.cli.common import (
    check_out,
    check_positive,
    check_static,
    command,
    load,
    log,
    model_args,
    offload_args,
    positive_or_all,
    progress,
    relations_arg,
    run_options,
    settings_args,
    settings_from,
)

# --- correlate / ablate --------------------------------------------------------------------------


def behaviour_args(p: argparse.ArgumentParser, default_relations: str) -> None:
    """Arguments shared by `correlate` and `ablate`."""
    model_args(p)
    offload_args(p)
    relations_arg(p, default_relations)
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
    settings_args(p)
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


def correlate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correlate", help="correlate static relation scores with head outputs in a forward pass"
    )
    behaviour_args(p, "all shipped")
    p.add_argument(
        "--templates", default="all", help="template indices 0..3, e.g. 0,1 (default: all)"
    )
    p.add_argument(
        "--max-pairs",
        type=positive_or_all,
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
    from mapslib.behaviour.correlation import correlations, parse_templates, run_dynamic_scores
    from mapslib.foundation.io import write_table
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores

    out = check_out(args.out, (".csv",))
    settings = settings_from(args)
    dyn_out = check_out(args.dynamic_out, (".csv",), "--dynamic-out")
    parse_templates(args.templates)  # the syntax, before the slow model load
    check_static(args.static)
    relations = load_relations(args.relations)
    lm, t_load = load(args)
    static = static_scores(lm, relations, args.static, settings=settings, progress=progress())
    dynamic = run_dynamic_scores(
        lm,
        relations,
        dyn_out,
        templates=args.templates,
        max_pairs=args.max_pairs,
        seed=args.seed,
        batch_rows=args.batch_rows,
        **run_options(args, settings, t_load),
    )
    corr = correlations(static, dynamic)
    write_table(out, corr, dynamic.attrs["sidecar"] | {"static": static.attrs["source"]})
    t = dynamic.attrs["sidecar"]["timings_s"]["correlate"]
    log(f"wrote {len(corr)} rows to {out} ({corr['relation'].nunique()} relations, {t:.1f}s)")


def ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="task accuracy as relation heads, random heads are removed (causal check)"
    )
    behaviour_args(p, "all with a task prompt")
    p.add_argument(
        "--max-prompts",
        type=positive_or_all,
        default=100,
        help="task prompts per relation, sampled with --seed; 'all' for every pair (default: 100)",
    )
    p.add_argument(
        "--random-draws",
        type=int,
        default=200,
        help="random head sets, each removed at the relation's size; the first 5 also give the "
        "curves (default: 200)",
    )
    p.add_argument(
        "--step",
        type=int,
        default=5,
        help="random and control curves at every STEP-th head and at the last (default: 5)",
    )


@command("ablate")
def cmd_ablate(args: argparse.Namespace) -> None:
    """Accuracy curves for relation heads, random heads and controls; summary in the JSON."""
    from mapslib.behaviour.ablation import TASK_PROMPTS, check_task_relations, run_ablation
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores

    out = check_out(args.out, (".csv",))
    settings = settings_from(args)
    check_positive(args, "random_draws", "step")
    relations = load_relations(args.relations or list(TASK_PROMPTS))
    check_task_relations(relations)
    check_static(args.static)
    lm, t_load = load(args)
    static = static_scores(lm, relations, args.static, settings=settings, progress=progress())
    df = run_ablation(
        lm,
        relations,
        static,
        out,
        max_prompts=args.max_prompts,
        random_draws=args.random_draws,
        step=args.step,
        seed=args.seed,
        batch_rows=args.batch_rows,
        static_source=static.attrs["source"],
        **run_options(args, settings, t_load),
    )
    side = df.attrs["sidecar"]
    log(
        f"wrote {len(df)} rows to {out} ({len(side['summary'])} relations, {side['timings_s']['ablate']:.1f}s)"
    )


def known_heads_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "known-heads",
        help="IOI: each head's direct effect on logit(IO) - logit(S), beside its name-copying scores",
    )
    model_args(p)
    offload_args(p)
    p.add_argument(
        "--static",
        default=None,
        metavar="FILE.csv",
        help="static scores from `python -m mapslib relations` for the same model, with "
        "name_copying (default: computed)",
    )
    p.add_argument("--n-prompts", type=int, default=300, help="IOI prompts (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts (default: 0)")
    p.add_argument(
        "--batch-rows", type=int, default=64, help="prompts per forward pass (default: 64)"
    )
    settings_args(p)
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


@command("known-heads")
def cmd_known_heads(args: argparse.Namespace) -> None:
    """Direct effects of every head on IOI prompts, roles found by behaviour, MAPS's scores beside."""
    from mapslib.behaviour.known_heads import NO_ROLE, run_known_heads
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores

    out = check_out(args.out, (".csv",))
    settings = settings_from(args)
    check_positive(args, "n_prompts", "batch_rows")
    check_static(args.static)
    lm, t_load = load(args)
    static = static_scores(
        lm, load_relations(["name_copying"]), args.static, settings=settings, progress=progress()
    )
    df = run_known_heads(
        lm,
        static,
        out,
        n_prompts=args.n_prompts,
        seed=args.seed,
        batch_rows=args.batch_rows,
        **run_options(args, settings, t_load),
    )
    n_roles = int((df["role"] != NO_ROLE).sum())
    log(f"wrote {len(df)} heads to {out} ({n_roles} with a role found by behaviour)")
