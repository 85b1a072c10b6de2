"""Describing heads with an LLM (`salient --describe --judge`): which LLM, and the run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mapslib.cli.common import log, settings_from
from mapslib.errors import BadArgument


def check_llm(args: argparse.Namespace) -> None:
    """Before the slow model load: the chosen LLM can be asked (key set, or server installed)."""
    if args.judge and (not args.describe or args.suppress):
        raise BadArgument(
            "--judge scores descriptions of promoted mappings: add --describe, drop --suppress"
        )
    if not args.describe:
        return
    from mapslib.llm.client import require_llm
    from mapslib.llm.server import local_spec, require_backend

    if args.llm_concurrency is not None and args.llm_concurrency < 1:
        raise BadArgument(f"--llm-concurrency must be at least 1, got {args.llm_concurrency}")
    if args.llm == "openai":
        require_llm()
    else:
        local_spec(
            args.llm_model, args.llm_backend
        )  # the model first: its error is the likelier fix
        require_backend(args.llm_backend)


def llm_args(p: argparse.ArgumentParser) -> None:
    """Which LLM describes heads: an OpenAI-compatible API, or a local server the project starts."""
    from mapslib.llm.server import BACKENDS  # stdlib only: cheap at parser build time

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


def concurrency(args: argparse.Namespace) -> int:
    """Requests in flight: as asked, else 1 for llama-cpp-python's server (it answers one at a
    time) and 8 otherwise (llama-server decodes them together, one slot each)."""
    if args.llm_concurrency is not None:
        return args.llm_concurrency
    return 1 if args.llm == "local" and args.llm_backend == "llama-cpp" else 8


def describe(args: argparse.Namespace, salient: Any, out: Path, lm: Any) -> None:
    """Describe (and judge) the heads of `salient`; a local server lives for this call only."""
    from mapslib.llm.client import Endpoint, llm_config
    from mapslib.llm.server import (
        GGUF_BACKENDS,
        LocalServer,
        local_spec,
        server_record,
        slots_for,
    )
    from mapslib.salient.describe import Describer

    cache = Path(args.llm_cache) if args.llm_cache else None
    if args.llm == "openai":
        config = llm_config(args.llm_model, args.llm_temperature, args.llm_seed)
        describe_with(args, salient, out, lm, Describer(config, cache=cache), None)
        return
    slots = slots_for(args.llm_backend, concurrency(args))
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
        describe_with(args, salient, out, lm, describer, server_record(spec))


def describe_with(
    args: argparse.Namespace, salient: Any, out: Path, lm: Any, describer: Any, server: Any
) -> None:
    """Descriptions (category prompt, with each head's evidence) into OUT.descriptions.csv; with
    --judge, the likelihood judge's groups into OUT.judgements.csv."""
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import static_scores
    from mapslib.salient.assess import (
        assessment_verdict,
        evidence_table,
        judge_contexts,
        own_p_values,
        run_assessment,
    )
    from mapslib.salient.describe import run_descriptions
    from mapslib.salient.judge import JudgeSetup, described_part, judge_items
    from mapslib.salient.likelihood import group_accuracy

    settings = settings_from(args)
    setup = JudgeSetup(described=args.top_tokens)
    shown = described_part(salient, setup) if args.judge else salient
    relation_map = None if args.suppress else static_scores(lm, load_relations(), None, settings)
    evidence = evidence_table(shown, relation_map, settings.tau)
    desc_out = out.with_name(out.stem + ".descriptions.csv")
    desc = run_descriptions(
        shown,
        desc_out,
        describer=describer,
        suppress=args.suppress,
        concurrency=concurrency(args),
        server=server,
        evidence=evidence,
    )
    log(f"{desc.attrs['note']} Wrote {desc_out}")
    if args.judge:
        items = judge_items(lm.hw, lm.tokenizer, salient, setup, settings)
        contexts = judge_contexts(salient, setup, evidence, desc)
        judged_out = out.with_name(out.stem + ".judgements.csv")
        record = {"llm": describer.config.model, "prompt": "category, with the evidence"}
        judged = run_assessment(items, contexts, args.judge_model, judged_out, setup, record)
        acc = group_accuracy(judged)
        log(assessment_verdict(acc, *own_p_values(judged)) + f" Wrote {judged_out}")
