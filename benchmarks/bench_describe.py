"""Describing heads with a local LLM: wall time, tokens per second, and what concurrency buys.

For each concurrency level, a fresh answer cache (nothing replayed), one server started for the
run, the first `--heads` heads of SmolLM2's salient table described. Run it on a quiet machine:

    python benchmarks/bench_describe.py --llm-model smollm2-135m --heads 6 --concurrency 1 2 4
    python benchmarks/bench_describe.py --heads 4 --concurrency 1 2   # the book's 1.5B describer
    python benchmarks/bench_describe.py --heads 15 --concurrency 1 8 --backend llama-server

Results go to benchmarks/results/describe_<describer>_<N>heads.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mapslib.foundation.heads import all_heads
from mapslib.foundation.io import write_json
from mapslib.foundation.models import load_model
from mapslib.llm.client import Endpoint, llm_config
from mapslib.llm.server import (
    BACKENDS,
    GGUF_BACKENDS,
    LocalServer,
    local_spec,
    slots_for,
)
from mapslib.salient.describe import Describer, describe_heads
from mapslib.salient.mappings import salient_mappings

RESULTS = Path(__file__).parent / "results"


def one_run(table, spec, concurrency: int) -> dict[str, float]:
    """Describe every head of `table` with a fresh cache; wall time and the server's token counts.
    llama-server gets one slot per request in flight, so they decode together."""
    spec = replace(spec, slots=slots_for(spec.backend, concurrency))
    config = llm_config(spec.name, json_schema=spec.backend in GGUF_BACKENDS, local=True)
    with tempfile.TemporaryDirectory() as cache, LocalServer(spec) as server:
        endpoint = Endpoint(server.base_url, model=server.request_model)
        d = Describer(
            config, cache=Path(cache), endpoint=endpoint, health=server.failure, read_also=()
        )
        t0 = time.perf_counter()
        out = describe_heads(table, describer=d, concurrency=concurrency)
        wall = time.perf_counter() - t0
        records = [json.loads(p.read_text()) for p in Path(cache).rglob("*.json")]
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    answer = sum(r["usage"]["completion_tokens"] for r in records)
    return {
        "concurrency": concurrency,
        "heads": int(out["name"].nunique()),
        "described": int(out["status"].isin(["pattern", "no pattern"]).sum()),
        "requests": d.requests,
        "wall_s": round(wall, 1),
        "seconds_per_head": round(wall / len(out), 1),
        "prompt_tokens": prompt,
        "answer_tokens": answer,
        "answer_tokens_per_s": round(answer / wall, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llm-model", default=None, help="describer alias or file (default: the 1.5B)")
    p.add_argument("--backend", default="llama-cpp", choices=BACKENDS)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default="", help="appended to the result file's name (the machine)")
    args = p.parse_args()
    lm = load_model("smollm2-135m")
    heads = all_heads(lm.hw)[:: max(1, 270 // args.heads)][: args.heads]  # spread over depth
    table = salient_mappings(lm.hw, lm.tokenizer, heads)
    spec = local_spec(args.llm_model, args.backend, threads=args.threads)
    runs = [one_run(table, spec, c) for c in args.concurrency]
    for r in runs:
        r["speedup_vs_first"] = round(runs[0]["wall_s"] / r["wall_s"], 2)
        print(r)
    name = spec.name.replace("@", "_") + (f"_{args.label}" if args.label else "")
    write_json(
        RESULTS / f"describe_{name}_{args.heads}heads.json",
        {"describer": spec.name, "machine": machine(), "runs": runs},
    )


def machine() -> dict[str, object]:
    """What decides these numbers besides the code: CPU model, cores, AMX, memory bandwidth."""
    import os

    import numpy as np

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    a = np.ones(2**27)  # 1 GiB: copy bandwidth, which bounds a decode step of a ~1 GB model
    b = np.empty_like(a)
    np.copyto(b, a)
    t0 = time.perf_counter()
    np.copyto(b, a)
    copy_gbs = 2 * a.nbytes / (time.perf_counter() - t0) / 1e9
    return {
        "arch": platform.machine(),
        "cpu": model,
        "cores": os.cpu_count(),
        "amx": " amx_int8" in info,
        "copy_GB_per_s": round(copy_gbs, 1),
    }


if __name__ == "__main__":
    main()
