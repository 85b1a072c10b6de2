"""`heads`: which heads map a source token to a target token, e.g. ` France` to ` Paris`?"""

from __future__ import annotations

import argparse

import pandas as pd

from mapslib.cli.common import (
    check_out,
    command,
    header,
    load,
    log,
    model_args,
    settings_args,
    settings_from,
    weights_only_arg,
)
from mapslib.errors import BadArgument

SHOWN = 10  # heads printed on stdout


def heads_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heads", help="rank every head by where a target token falls in its map of a source token"
    )
    model_args(p)
    weights_only_arg(p)
    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="TEXT",
        help="a source token exactly as the tokenizer sees it, leading space included, e.g. "
        "' France'; repeat with --target for several pairs (paired in order; ranks are averaged)",
    )
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="TEXT",
        help="the target token of the source given in the same position, e.g. ' Paris'",
    )
    p.add_argument(
        "--suppress",
        action="store_true",
        help="rank by the negated row: heads that push the target down the most come first",
    )
    settings_args(p)
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


def pair_up(sources: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """The --source and --target flags, paired in order; unequal counts are one line."""
    if len(sources) != len(targets):
        raise BadArgument(
            f"--source and --target pair up in order: got {len(sources)} --source and "
            f"{len(targets)} --target"
        )
    return list(zip(sources, targets, strict=True))


def top_table(df: pd.DataFrame, pairs: list[tuple[str, str]], mode: str, n: int = SHOWN) -> str:
    """The best `n` heads as a small table, titled with the pairs and the mode."""
    asked = ", ".join(f"{s!r} -> {t!r}" for s, t in pairs)
    columns = ["name", "target_rank", "score"]
    if len(pairs) > 1:
        columns += [f"rank_{i + 1}" for i in range(len(pairs))]
    title = f"top {min(n, len(df))} of {len(df)} heads, {mode}, {asked}:"
    table = df.head(n)[columns].rename(columns={"name": "head"})
    mean = table["target_rank"].dtype.kind == "f"  # a mean over pairs; one pair's is an integer
    mean_rank = {"target_rank": "{:.1f}".format} if mean else None
    text = table.to_string(index=False, formatters=mean_rank, float_format=lambda x: f"{x:.4g}")
    return title + "\n" + text


@command("heads")
def cmd_heads(args: argparse.Namespace) -> None:
    """Rank every head on the source -> target pairs, write the table, print its top."""
    from mapslib.relation_map.reverse import run_heads

    out = check_out(args.out, (".csv",))
    pairs = pair_up(args.source, args.target)
    settings = settings_from(args)  # a bad value fails before the slow model load
    lm, t_load = load(args)
    df = run_heads(
        lm,
        pairs,
        out,
        settings=settings,
        suppress=args.suppress,
        header=header(args, t_load),
        recompute=True,
    )
    print(top_table(df, pairs, "suppress" if args.suppress else "promote"))
    t = df.attrs["sidecar"]["timings_s"]["heads"]
    log(f"wrote {len(df)} rows to {out} ({len(pairs)} pair(s), {t:.2f}s ranking)")
