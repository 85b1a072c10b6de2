"""Benchmark of the relation map: the whole CLI process against the naive way, plus peak memory.

Measures, in one run on one machine:
* the machine's fp32 matmul rate (a square GEMM and the skinny n x d_head @ d_head x |V| shape);
* `python -m mapslib relations` on SmolLM2-135M, all shipped relations, all heads, promote and
  suppress: wall time of the whole process (model load included), cold (empty weight cache: the GGUF
  is dequantised) and warm, and its peak resident memory;
* the naive way (benchmarks/naive_relations.py) on the same job, checked to give identical scores;
* the achieved rate against the low-rank FLOP floor, 2 * pairs * d_head * |V| * heads;
* the same, cold and warm, with the kernel's work, for every real model (`--models`).

Usage: python benchmarks/bench_relations.py [--models M ...] [--no-cold] [--skip-naive] [--device cpu]
    [--out FILE]
Updates benchmarks/results/relations.json, or FILE (entries of models not run are kept). Run it on a quiet
machine: on 2 cores any other process slows the kernels several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from measure import run_process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "relations.json"
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def matmul_rate(device: str) -> dict[str, float]:
    """fp32 GFLOP/s for a 2048^3 GEMM and for the kernel's skinny shape (512 x 64 @ 64 x 2048)."""
    out = {}
    for name, (m, k, n) in {
        "square_2048": (2048, 2048, 2048),
        "skinny_512x64x2048": (512, 64, 2048),
    }.items():
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        reps = 3 if name.startswith("square") else 200
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = round(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9, 1)
    return out


def relations_cmd(model: str, out: Path, device: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mapslib",
        "relations",
        "--model",
        model,
        "--device",
        device,
        "--out",
        str(out),
    ]


def floor_flops(sidecar: dict, n_heads_total: int, d_head: int, vocab: int) -> float:
    """2 * pairs * d_head * |V| per head: the rows of the low-rank product, once each."""
    pairs = sum(r["single_token_pairs"] for r in sidecar["relations"] if r["scored"])
    return 2.0 * pairs * d_head * vocab * n_heads_total


def bench_model(model: str, tmp: Path, device: str, cold: bool) -> dict:
    """`relations` on one model: cold (fresh weight cache) if asked, then warm; timings and kernel."""
    csv = tmp / f"{model}.csv"
    out: dict = {}
    env = None  # warm alone: the user's cache, filled by an earlier run
    if cold:  # a fresh cache, which the cold run fills and the warm run then reads
        env = os.environ | {"MAPSLIB_CACHE": str(tmp / "cache")}
        out["cold"] = run_process(relations_cmd(model, csv, device), env)
        print(f"{model} relations, cold cache:", out["cold"], flush=True)
    out["warm"] = run_process(relations_cmd(model, csv, device), env)
    print(f"{model} relations, warm cache:", out["warm"], flush=True)
    side = json.loads(csv.with_name(csv.name + ".json").read_text())
    shape, score_s = side["architecture"], side["timings_s"]["score"]
    heads = shape["layers"] * shape["heads per layer"]
    floor = floor_flops(side, heads, shape["d_head"], shape["vocabulary"])
    out["timings_s"] = side["timings_s"]
    out["kernel"] = {
        "heads": heads,
        "scored_relations": sum(r["scored"] for r in side["relations"]),
        "floor_tflop": round(floor / 1e12, 2),
        "floor_rate_gflops": round(floor / score_s / 1e9, 1),
        "executed_tflop": round(side["kernel"]["flops"] / 1e12, 3),
        "executed_rate_gflops": round(side["kernel"]["flops"] / score_s / 1e9, 1),
        "rows": side["kernel"]["rows"],
        "rows_in_dense_sample_pass": side["kernel"].get("dense_rows", 0),
        "rows_needing_full_pass": side["kernel"]["full_rows"],
    }
    print(f"{model} kernel:", out["timings_s"], out["kernel"], flush=True)
    return out


def naive_check(fast_csv: Path, tmp: Path, device: str) -> dict:
    """The naive way (full W_VO, full rows, torch.topk) on SmolLM2: wall time and score agreement."""
    naive_csv = tmp / "naive.csv"
    cmd = [sys.executable, str(HERE / "naive_relations.py"), "smollm2-135m", str(naive_csv), device]
    out = run_process(cmd)
    fast, naive = pd.read_csv(fast_csv), pd.read_csv(naive_csv)
    merged = fast.merge(naive, on=["layer", "head", "relation", "mode"], suffixes=("", "_naive"))
    out["rows_compared"] = len(merged)
    out["rows_differing"] = int(((merged["score"] - merged["score_naive"]).abs() > 1e-6).sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=MODELS, help=f"default: {' '.join(MODELS)}")
    p.add_argument("--no-cold", action="store_true", help="warm runs only")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    results = args.out
    tmp = Path(tempfile.mkdtemp(prefix="mapsbench-"))
    report: dict = json.loads(results.read_text()) if results.exists() else {}
    machine = {
        "device": args.device,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": matmul_rate(args.device),
    }
    print("matmul rate (GFLOP/s):", machine["matmul_gflops"], flush=True)
    report.setdefault("models", {})
    for model in args.models:
        # each entry keeps the machine it ran on: hosts differ (the skinny GEMM rate varied 3x)
        entry = bench_model(model, tmp, args.device, not args.no_cold)
        report["models"][model] = entry | {"machine": machine}
        if model == "smollm2-135m" and not args.skip_naive:
            naive = naive_check(tmp / f"{model}.csv", tmp, args.device)
            warm = report["models"][model]["warm"]["wall_s"]
            report["smollm2_naive"] = naive | {"speedup_warm": round(naive["wall_s"] / warm, 1)}
            print("naive:", report["smollm2_naive"], flush=True)
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
