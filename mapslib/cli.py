"""Command line: `python -m mapslib <command> ...`.

Each command parses its arguments, calls one experiment's entry point in the library (the same one
the book's chapters call), and reports. The entry point writes a tidy table atomically with a JSON
of its parameters and protocol beside it (`FILE.csv` -> `FILE.csv.json`). Errors a user can fix are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mapslib.errors import BadArgument, MapsError
from mapslib.foundation.embeddings import EMBEDDING_MODES
from mapslib.foundation.heads import BIASES
from mapslib.foundation.models import ALIASES, DEFAULT_MODEL
from mapslib.relation_map.relations import MIN_PAIRS

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}
log = logging.getLogger("mapslib").info


def command(name: str) -> Callable:
    """Register a `cmd_*` function as a subcommand."""

    def register(fn: Callable[[argparse.Namespace], None]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


# --- arguments shared by commands --------------------------------------------------------------------


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias ({', '.join(ALIASES)}), .gguf path, folder or hub id",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model's own code (off by default)",
    )


def _weights_only_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="read only the weights this needs from the checkpoint (safetensors folder or .gguf), "
        "one layer at a time, without building the model: for models larger than memory; same "
        "scores",
    )


def _offload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="DEVICE=SIZE,...",
        help="for a model larger than memory (a safetensors folder or hub id): accelerate keeps "
        "layers within e.g. cpu=8GiB or cuda=20GiB,cpu=60GiB and offloads the rest to "
        "--offload-folder; slow, every forward pass reads them back",
    )
    p.add_argument(
        "--offload-folder", default=None, metavar="DIR", help="where the offloaded layers go"
    )


def _embedding_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embedding", default="paper", choices=EMBEDDING_MODES, help="E_in mode (default: paper)"
    )


def _relations_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--relations",
        nargs="+",
        default=None,
        metavar="NAME_OR_FILE",
        help=f"shipped names/aliases or .json/.csv files (default: {default})",
    )


def _positive_or_all(value: str) -> int | None:
    """argparse type: a positive integer, or `all` (None)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return int(value)


def _check_llm(args: argparse.Namespace) -> None:
    """Before the slow model load: the chosen LLM can be asked (key set, or server installed)."""
    if args.judge and (not args.describe or args.suppress):
        raise BadArgument(
            "--judge scores descriptions of promoted mappings: add --describe, drop --suppress"
        )
    if not args.describe:
        return
    from mapslib.salient.describe import require_llm
    from mapslib.salient.llm_server import local_spec, require_backend

    if args.llm_concurrency is not None and args.llm_concurrency < 1:
        raise BadArgument(f"--llm-concurrency must be at least 1, got {args.llm_concurrency}")
    if args.llm == "openai":
        require_llm()
    else:
        local_spec(
            args.llm_model, args.llm_backend
        )  # the model first: its error is the likelier fix
        require_backend(args.llm_backend)


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    """Integer options that must be >= 1 when given."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise BadArgument(f"{flag} must be a positive integer, got {value}")


def _check_out(path: str | None, suffixes: tuple[str, ...], flag: str = "--out") -> Path | None:
    if path is None:
        return None
    if Path(path).suffix.lower() not in suffixes:
        raise BadArgument(f"{flag} must end in {' or '.join(suffixes)}, got {path!r}")
    return Path(path)


def _check_static(path: str | None) -> None:
    """A --static file must exist: said before the slow model load."""
    if path is not None and not Path(path).is_file():
        raise BadArgument(f"--static file not found: {path}")


def _header(args: argparse.Namespace, t_load: float) -> dict[str, Any]:
    """What the command line adds to a sidecar: the command, its arguments, the time, load time."""
    return {
        "command": " ".join(["python -m mapslib", *args.argv]),
        "arguments": {k: v for k, v in vars(args).items() if k != "argv"},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings_s": {"load": round(t_load, 3)},
    }


def _load(args: argparse.Namespace) -> tuple[Any, float]:
    """The model the arguments name (only its weights, with --weights-only), and how long loading
    took."""
    from mapslib.foundation.models import load_model, load_weights

    t0 = time.perf_counter()
    if getattr(args, "offload_folder", None) and args.max_memory is None:
        raise BadArgument("--offload-folder needs --max-memory (e.g. cpu=8GiB): what stays loaded")
    if getattr(args, "max_memory", None) is not None:
        from mapslib.foundation.offload import parse_max_memory

        lm = load_model(
            args.model,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            max_memory=parse_max_memory(args.max_memory),
            offload_folder=args.offload_folder,
        )
        return lm, time.perf_counter() - t0
    load = load_weights if getattr(args, "weights_only", False) else load_model
    lm = load(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    return lm, time.perf_counter() - t0


def _progress() -> bool:
    return sys.stderr.isatty()


# --- relations -----------------------------------------------------------------------------------


def _relations_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relations", help="score every head on predefined relations (promote and suppress)"
    )
    _model_args(p)
    _weights_only_arg(p)
    _relations_arg(p, "all shipped")
    p.add_argument(
        "--layers", default=None, help="comma-separated layers, e.g. 0,5,12 (default: all)"
    )
    p.add_argument(
        "--k", type=int, default=None, help="top-k for every relation (default: PROTOCOL.md's rule)"
    )
    _embedding_arg(p)
    p.add_argument(
        "--bias",
        default="none",
        choices=BIASES,
        help="add b_V (value) or b_V and b_O (value+output) to the map; the paper omits both "
        "(default: none)",
    )
    p.add_argument(
        "--min-pairs",
        type=int,
        default=MIN_PAIRS,
        help=f"skip relations with fewer single-token pairs (default: {MIN_PAIRS})",
    )
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


@command("relations")
def cmd_relations(args: argparse.Namespace) -> None:
    """Score every head on every relation and write the long table."""
    from mapslib.foundation.heads import parse_layers
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import run_relation_map

    out = _check_out(args.out, (".csv",))
    _check_positive(args, "k", "min_pairs")
    relations = load_relations(args.relations)  # bad files fail before the slow model load
    lm, t_load = _load(args)
    df = run_relation_map(
        lm,
        relations,
        out,
        layers=parse_layers(args.layers, lm.hw.n_layers),
        k=args.k,
        embedding=args.embedding,
        bias=args.bias,
        min_pairs=args.min_pairs,
        recompute=True,
        header=_header(args, t_load),
        progress=_progress(),
    )
    t = df.attrs["sidecar"]["timings_s"]["score"]
    log(f"wrote {len(df)} rows to {out} ({df['relation'].nunique()} relations, {t:.1f}s scoring)")


# --- book ----------------------------------------------------------------------------------------


def _book_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "book", help="run every chapter for a model with papermill, then build the HTML book"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias, .gguf path, folder or hub id"
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
        help="remove the model's cached tables (its data/ folder) first, so every table is recomputed",
    )
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="static chapters only (01 02 03 07 08): read the weights a layer at a time instead of "
        "building the model",
    )


@command("book")
def cmd_book(args: argparse.Namespace) -> None:
    """Execute the chapters into book/models/<model>/, regenerate _toc.yml, build _build/html."""
    from mapslib.report import book

    params = {"device": args.device} | book.parse_parameters(args.parameter)
    if args.weights_only:
        params["weights_only"] = True
    index = book.run_book(
        args.model, args.chapters, params, fresh=args.fresh, build=not args.no_build, log=log
    )
    if index is not None:
        log(f"book built: {index}")


# --- salient -------------------------------------------------------------------------------------


def _salient_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "salient", help="each head's most salient tokens and the tokens it maps them to"
    )
    _model_args(p)
    _weights_only_arg(p)
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
    _embedding_arg(p)
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
        help="with --describe: score each description on 5 held-out salient tokens (the same LLM "
        "as judge, and a shuffled-description control) into OUT.judgements.csv",
    )
    _llm_args(p)


def _llm_args(p: argparse.ArgumentParser) -> None:
    """Which LLM describes heads: an OpenAI-compatible API, or a local server the project starts."""
    from mapslib.salient.llm_server import BACKENDS  # stdlib only: cheap at parser build time

    p.add_argument(
        "--llm",
        choices=("openai", "local"),
        default="openai",
        help="openai: the API at OPENAI_BASE_URL (default: OpenAI) with OPENAI_API_KEY; local: start "
        "a local OpenAI-compatible server on a free port for the run (default: openai)",
    )
    p.add_argument(
        "--llm-model",
        default=None,
        help="openai: the model name (default: $MAPSLIB_LLM_MODEL or gpt-4o); local: a model alias "
        "or .gguf file (llama-cpp, llama-server) or model folder (transformers) (default: "
        "qwen2.5-coder-1.5b)",
    )
    p.add_argument(
        "--llm-backend",
        choices=BACKENDS,
        default="llama-cpp",
        help="the local server: llama-cpp-python's (GGUF, quantised kernels; wrote the book's "
        "answers), llama.cpp's own llama-server (same GGUF, no Python in the token loop, a slot per "
        "request in flight: 1.13x faster one at a time, 1.46x more with 8 slots on a 2-core "
        "machine whose decoding waits on memory; make setup-llm-server) or transformers serve (a "
        "saved folder, float32, continuous batching) (default: llama-cpp)",
    )
    p.add_argument(
        "--llm-port", type=int, default=None, help="local server port (default: a free one)"
    )
    p.add_argument(
        "--llm-threads",
        type=int,
        default=None,
        help="local server CPU threads (default: every core for the llama.cpp servers; "
        "llama-cpp's own default of "
        "half of them answers 1.6x slower on 2 cores; transformers: its own)",
    )
    p.add_argument(
        "--llm-concurrency",
        type=int,
        default=None,
        help="requests in flight at once (default: 1 for llama-cpp, which answers one at a "
        "time; 8 otherwise, llama-server decoding them together in as many slots)",
    )
    p.add_argument(
        "--llm-cache",
        default=None,
        help="folder for new answers (default: the user cache; committed answers are read as well)",
    )
    p.add_argument(
        "--llm-temperature", type=float, default=0.0, help="sampling temperature (default: 0)"
    )
    p.add_argument("--llm-seed", type=int, default=0, help="seed sent to the LLM (default: 0)")


@command("salient")
def cmd_salient(args: argparse.Namespace) -> None:
    """Write the salient mappings of the chosen heads as a tidy table (and their descriptions)."""
    from mapslib.foundation.heads import all_heads, parse_head, parse_layers
    from mapslib.salient.judge import JudgeSetup
    from mapslib.salient.mappings import run_salient

    out = _check_out(args.out, (".json", ".csv"))
    _check_positive(args, "top_tokens", "top_mappings")
    specs = [s for s in (args.heads or "").split(",") if s.strip()]
    for spec in specs:  # the syntax, before the slow model load
        parse_head(spec)
    _check_llm(args)
    lm, t_load = _load(args)
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
        embedding=args.embedding,
        recompute=True,
        header=_header(args, t_load),
        progress=_progress(),
    )
    t = df.attrs["sidecar"]["timings_s"]["salient"]
    log(f"wrote {len(df)} rows to {out} ({len(heads)} heads, {t:.1f}s)")
    if args.describe:
        _describe(args, df, out, lm)


def _concurrency(args: argparse.Namespace) -> int:
    """Requests in flight: as asked, else 1 for llama-cpp-python's server (it answers one at a
    time) and 8 otherwise (llama-server decodes them together, one slot each)."""
    if args.llm_concurrency is not None:
        return args.llm_concurrency
    return 1 if args.llm == "local" and args.llm_backend == "llama-cpp" else 8


def _describe(args: argparse.Namespace, salient: Any, out: Path, lm: Any) -> None:
    """Describe (and judge) the heads of `salient`; a local server lives for this call only."""
    from mapslib.salient.describe import Describer, Endpoint, llm_config
    from mapslib.salient.llm_server import (
        GGUF_BACKENDS,
        LocalServer,
        local_spec,
        server_record,
        slots_for,
    )

    cache = Path(args.llm_cache) if args.llm_cache else None
    if args.llm == "openai":
        config = llm_config(args.llm_model, args.llm_temperature, args.llm_seed)
        _describe_with(args, salient, out, lm, Describer(config, cache=cache), None)
        return
    slots = slots_for(args.llm_backend, _concurrency(args))
    spec = local_spec(
        args.llm_model, args.llm_backend, port=args.llm_port, threads=args.llm_threads, slots=slots
    )
    config = llm_config(
        spec.name,
        args.llm_temperature,
        args.llm_seed,
        json_schema=spec.backend in GGUF_BACKENDS,
        local=True,
    )
    log(f"starting the {spec.backend} server for {spec.name} ...")
    with LocalServer(spec) as server:
        log(f"server ready at {server.base_url}")
        endpoint = Endpoint(server.base_url, model=server.request_model)
        describer = Describer(config, cache=cache, endpoint=endpoint, health=server.failure)
        _describe_with(args, salient, out, lm, describer, server_record(spec))


def _describe_with(
    args: argparse.Namespace, salient: Any, out: Path, lm: Any, describer: Any, server: Any
) -> None:
    """Descriptions into OUT.descriptions.csv; with --judge, their scores into OUT.judgements.csv."""
    from mapslib.salient.describe import run_descriptions
    from mapslib.salient.judge import JudgeSetup, described_part, judge_items, run_judgement
    from mapslib.salient.overlap_judge import reference_summary

    setup = JudgeSetup(described=args.top_tokens)
    shown = described_part(salient, setup) if args.judge else salient
    desc_out = out.with_name(out.stem + ".descriptions.csv")
    desc = run_descriptions(
        shown,
        desc_out,
        describer=describer,
        suppress=args.suppress,
        concurrency=_concurrency(args),
        server=server,
    )
    log(f"{desc.attrs['note']} Wrote {desc_out}")
    if args.judge:
        items = judge_items(lm.hw, lm.tokenizer, salient, setup, embedding=args.embedding)
        judged_out = out.with_name(out.stem + ".judgements.csv")
        judged = run_judgement(items, desc, describer, judged_out, setup=setup, progress=True)
        own = judged[~judged["control"]]["correct"].dropna()
        ctrl = judged[judged["control"]]["correct"].dropna()
        log(
            f"judge accuracy {own.mean():.2f} on {len(own)} questions (control "
            f"{ctrl.mean():.2f}, chance {setup.chance:.2f}). Wrote {judged_out}"
        )
        ref = reference_summary(items, salient, desc, setup)["accuracy"].tolist()
        log(
            f"word-overlap judges (no LLM): seen mappings {ref[0]:.2f}, description {ref[1]:.2f} "
            f"(another head's description {ref[2]:.2f})"
        )


# --- correlate / ablate --------------------------------------------------------------------------


def _behaviour_args(p: argparse.ArgumentParser, default_relations: str) -> None:
    """Arguments shared by `correlate` and `ablate`."""
    _model_args(p)
    _offload_args(p)
    _relations_arg(p, default_relations)
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
    from mapslib.behaviour.correlation import correlations, parse_templates, run_dynamic_scores
    from mapslib.foundation.io import write_table
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores

    out = _check_out(args.out, (".csv",))
    dyn_out = _check_out(args.dynamic_out, (".csv",), "--dynamic-out")
    parse_templates(args.templates)  # the syntax, before the slow model load
    _check_static(args.static)
    relations = load_relations(args.relations)
    lm, t_load = _load(args)
    static = static_scores(lm, relations, args.static, progress=_progress())
    dynamic = run_dynamic_scores(
        lm,
        relations,
        dyn_out,
        templates=args.templates,
        max_pairs=args.max_pairs,
        seed=args.seed,
        batch_rows=args.batch_rows,
        recompute=True,
        header=_header(args, t_load),
        progress=_progress(),
    )
    corr = correlations(static, dynamic)
    write_table(out, corr, dynamic.attrs["sidecar"] | {"static": static.attrs["source"]})
    t = dynamic.attrs["sidecar"]["timings_s"]["correlate"]
    log(f"wrote {len(corr)} rows to {out} ({corr['relation'].nunique()} relations, {t:.1f}s)")


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

    out = _check_out(args.out, (".csv",))
    _check_positive(args, "random_draws", "step")
    relations = load_relations(args.relations or list(TASK_PROMPTS))
    check_task_relations(relations)
    _check_static(args.static)
    lm, t_load = _load(args)
    static = static_scores(lm, relations, args.static, progress=_progress())
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
        recompute=True,
        header=_header(args, t_load),
        progress=_progress(),
    )
    side = df.attrs["sidecar"]
    log(
        f"wrote {len(df)} rows to {out} ({len(side['summary'])} relations, {side['timings_s']['ablate']:.1f}s)"
    )


def _known_heads_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "known-heads",
        help="IOI: each head's direct effect on logit(IO) - logit(S), beside its name-copying scores",
    )
    _model_args(p)
    _offload_args(p)
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
    p.add_argument("--out", required=True, help="output CSV; parameters go to OUT.json")


@command("known-heads")
def cmd_known_heads(args: argparse.Namespace) -> None:
    """Direct effects of every head on IOI prompts, roles found by behaviour, MAPS's scores beside."""
    from mapslib.behaviour.known_heads import NO_ROLE, run_known_heads
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores

    out = _check_out(args.out, (".csv",))
    _check_positive(args, "n_prompts", "batch_rows")
    _check_static(args.static)
    lm, t_load = _load(args)
    static = static_scores(lm, load_relations(["name_copying"]), args.static, progress=_progress())
    df = run_known_heads(
        lm,
        static,
        out,
        n_prompts=args.n_prompts,
        seed=args.seed,
        batch_rows=args.batch_rows,
        recompute=True,
        header=_header(args, t_load),
        progress=_progress(),
    )
    n_roles = int((df["role"] != NO_ROLE).sum())
    log(f"wrote {len(df)} heads to {out} ({n_roles} with a role found by behaviour)")


# --- entry point ---------------------------------------------------------------------------------

PARSERS = [
    _relations_parser,
    _book_parser,
    _salient_parser,
    _correlate_parser,
    _ablate_parser,
    _known_heads_parser,
]


class _Parser(argparse.ArgumentParser):
    """argparse with mapslib's error format: one `error:` line naming the fix, status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command."""
    parser = _Parser(prog="python -m mapslib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time (tests replace it)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """The library's progress and skip messages go to stderr as plain lines; stdout stays clean."""
    logger = logging.getLogger("mapslib")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and turn user errors into one clear line."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed command line (2)
        return int(e.code or 0)
    args.argv = argv
    _log_to_stderr()
    try:
        COMMANDS[args.command](args)
    except MapsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
