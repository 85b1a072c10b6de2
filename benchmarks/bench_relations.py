"""Benchmark of the relation map: the whole CLI process against the naive way, plus peak memory.

Measures, in one run on one machine:
* the machine's fp32 matmul rate (a square GEMM and the skinny n x d_head @ d_head x |V| shape);
* `python -m mapslib relations` on SmolLM2-135M, all shipped relations, all heads, promote and
  suppress: wall time of the whole process (model load included), cold (empty weight cache: the GGUF
  is dequantised) and warm, and its peak resident memory;
* the naive way (benchmarks/naive_relations.py) on the same job, checked to give identical scores;
* the achieved rate against the low-rank FLOP floor, 2 * pairs * d_head * |V| * heads;
* `relations` on Gemma-3-270M (262k vocabulary): wall time and peak memory.

Usage: python benchmarks/bench_relations.py [--skip-naive] [--skip-gemma] [--device cpu]
Writes benchmarks/results/relations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "relations.json"


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a command; return its wall time and the peak RSS of that one process (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-gemma", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mapsbench-"))
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "device": args.device,
        "matmul_gflops": matmul_rate(args.device),
    }
    print("matmul rate (GFLOP/s):", report["matmul_gflops"], flush=True)

    cold_env = os.environ | {"MAPSLIB_CACHE": str(tmp / "cache")}
    fast_csv = tmp / "fast.csv"
    report["smollm2_cold"] = run_process(
        relations_cmd("smollm2-135m", fast_csv, args.device), cold_env
    )
    print("smollm2 relations, cold cache:", report["smollm2_cold"], flush=True)
    report["smollm2_warm"] = run_process(relations_cmd("smollm2-135m", fast_csv, args.device))
    print("smollm2 relations, warm cache:", report["smollm2_warm"], flush=True)
    side = json.loads(fast_csv.with_name("fast.csv.json").read_text())
    score_s = side["timings_s"]["score"]
    floor = floor_flops(side, 30 * 9, 64, 49152)
    report["smollm2_kernel"] = {
        "score_s": score_s,
        "load_s": side["timings_s"]["load"],
        "floor_tflop": round(floor / 1e12, 2),
        "floor_rate_gflops": round(floor / score_s / 1e9, 1),
        "executed_tflop": round(side["kernel"]["flops"] / 1e12, 3),
        "executed_rate_gflops": round(side["kernel"]["flops"] / score_s / 1e9, 1),
        "rows": side["kernel"]["rows"],
        "rows_needing_full_pass": side["kernel"]["full_rows"],
    }
    print("kernel:", report["smollm2_kernel"], flush=True)

    if not args.skip_naive:
        naive_csv = tmp / "naive.csv"
        cmd = [
            sys.executable,
            str(HERE / "naive_relations.py"),
            "smollm2-135m",
            str(naive_csv),
            args.device,
        ]
        report["smollm2_naive"] = run_process(cmd)
        fast, naive = pd.read_csv(fast_csv), pd.read_csv(naive_csv)
        key = ["layer", "head", "relation", "mode"]
        merged = fast.merge(naive, on=key, suffixes=("", "_naive"))
        report["smollm2_naive"]["rows_compared"] = len(merged)
        report["smollm2_naive"]["rows_differing"] = int(
            ((merged["score"] - merged["score_naive"]).abs() > 1e-6).sum()
        )
        report["speedup_warm"] = round(
            report["smollm2_naive"]["wall_s"] / report["smollm2_warm"]["wall_s"], 1
        )
        report["speedup_cold"] = round(
            report["smollm2_naive"]["wall_s"] / report["smollm2_cold"]["wall_s"], 1
        )
        print(
            "naive:",
            report["smollm2_naive"],
            "speedup warm/cold:",
            report["speedup_warm"],
            report["speedup_cold"],
            flush=True,
        )

    if not args.skip_gemma:
        g_csv = tmp / "gemma.csv"
        report["gemma_cold"] = run_process(
            relations_cmd("gemma3-270m", g_csv, args.device), cold_env
        )
        report["gemma_warm"] = run_process(relations_cmd("gemma3-270m", g_csv, args.device))
        g_side = json.loads(g_csv.with_name("gemma.csv.json").read_text())
        report["gemma_timings_s"] = g_side["timings_s"]
        report["gemma_scored_relations"] = sum(r["scored"] for r in g_side["relations"])
        print(
            "gemma cold/warm:",
            report["gemma_cold"],
            report["gemma_warm"],
            g_side["timings_s"],
            flush=True,
        )

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
