"""Benchmark of the reverse search (`heads`): one source -> target query over every head, warm.

    python benchmarks/bench_heads.py [MODEL] [--source ' France' --target ' Paris'] [--suppress]
        [--repeats 5] [--device cpu] [--weights-only] [--out benchmarks/results/heads.json]

The model (an alias, default smollm2-135m; also qwen2.5-coder-1.5b) is loaded once; the query
(`target_ranks`: every head's row for the source, then one pass over U) is run once to warm up and
then `--repeats` times, and the median is reported, with its two parts (the heads' rows; the pass
over U), the FLOPs of that pass (2 x heads x d x |V|) and the rate it achieved beside this machine's
own GEMM of the same shape. Updates benchmarks/results/heads.json (entries of other models are
kept). On 2 shared cores any other process slows it several-fold: the load average is recorded
before and after; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mapslib.foundation.cache import peak_memory
from mapslib.foundation.io import environment, write_json
from mapslib.foundation.kernels import Unembedding
from mapslib.foundation.models import load_model, load_weights
from mapslib.foundation.settings import DEFAULTS
from mapslib.relation_map.reverse import count_beyond, head_rows, target_ranks, token_id

RESULTS = Path(__file__).resolve().parent / "results" / "heads.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds of each of `repeats` runs of `fn`, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def gemm_rate(m: int, k: int, n: int, device: torch.device, repeats: int) -> float:
    """float32 GFLOP/s of an (m x k) @ (k x n) product, median of `repeats`."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    return 2 * m * k * n / statistics.median(timed(lambda: a @ b, device, repeats)) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="smollm2-135m")
    p.add_argument("--source", default=" France")
    p.add_argument("--target", default=" Paris")
    p.add_argument("--suppress", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights-only", action="store_true", help="read the checkpoint (load_weights)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    load_average_before = os.getloadavg()
    t0 = time.perf_counter()
    load = load_weights if args.weights_only else load_model
    lm = load(args.model, device=args.device)
    load_s = time.perf_counter() - t0
    hw, device = lm.hw, lm.hw.device
    s, t = token_id(lm.tokenizer, args.source), token_id(lm.tokenizer, args.target)
    n_heads, d, V = hw.n_layers * hw.n_heads, hw.d_model, hw.vocab_size
    flops = 2.0 * n_heads * d * V

    def query() -> object:
        return target_ranks(hw, [s], [t], suppress=args.suppress)

    total = timed(query, device, args.repeats)
    rows = head_rows(hw, torch.tensor([s], device=device), DEFAULTS)[:, 0]
    rows_s = timed(lambda: head_rows(hw, torch.tensor([s], device=device), DEFAULTS), device, 3)
    unembed = Unembedding.prepare(hw.unembedding(stored=True))
    targets = torch.full((n_heads,), t, device=device)
    pass_s = timed(lambda: count_beyond(rows, targets, unembed, args.suppress), device, 3)
    median = statistics.median(total)
    top = query().head(5)  # type: ignore[union-attr]
    result = {
        "model": lm.info(),
        "query": {"source": args.source, "target": args.target, "suppress": args.suppress},
        "shape": {"heads": n_heads, "d_model": d, "vocabulary": V},
        "load_s": round(load_s, 2),
        "query_s": {"median": round(median, 3), "runs": [round(x, 3) for x in total]},
        "parts_s": {
            "head_rows": round(statistics.median(rows_s), 3),
            "pass_over_U": round(statistics.median(pass_s), 3),
        },
        "pass_gflop": round(flops / 1e9, 1),
        "query_gflops_per_s": round(flops / median / 1e9, 1),
        "machine": {
            "device": str(device),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gemm_gflops_per_s": {
                "same shape (heads x d @ d x |V|)": round(gemm_rate(n_heads, d, V, device, 3), 1),
                "square 2048": round(gemm_rate(2048, 2048, 2048, device, 3), 1),
            },
            "load_average_before": [round(x, 2) for x in load_average_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "top_heads": top[["name", "target_rank", "score"]].to_dict("records"),
        "memory": peak_memory(),
        "environment": environment(),
    }
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report[args.model] = result
    write_json(args.out, report)
    print(json.dumps({k: result[k] for k in ("shape", "query_s", "parts_s")}, indent=1))
    print(f"{result['query_gflops_per_s']} GFLOP/s in the query; machine GEMM:", end=" ")
    print(result["machine"]["gemm_gflops_per_s"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
