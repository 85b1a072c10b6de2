"""Benchmark: saliency, output-space size and the random baseline for every head of a model.

    python benchmarks/bench_salient.py [--model smollm2-135m] [--sample 1024]
        [--parts saliency space baseline validate] [--out benchmarks/results/salient.json]

Prints a table and writes JSON: wall time, the FLOPs each part needs, the FLOP rate it achieved, and
a measured float32 matmul rate of this machine for comparison. `baseline` also scores the real heads
(relation_scores) and reports heads over tau, real and random. `validate` computes the exact
output-space size of a few heads (|V| x |V| work each) and compares both sampled estimators and their
jackknife errors with it over repeated samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.io import environment, write_json
from mapslib.foundation.kernels import KernelStats
from mapslib.foundation.models import load_model
from mapslib.relation_map.baseline import baseline_table, random_scores
from mapslib.relation_map.relations import load_relations, scorable
from mapslib.relation_map.scores import relation_scores
from mapslib.salient.globality import (
    argmax_targets,
    normalized_unembedding_rows,
    output_space,
    sample_sources,
    space_stats,
)
from mapslib.salient.saliency import saliency_scores

VALIDATE_HEADS = [(2, 4), (14, 5), (23, 2), (23, 6), (28, 0)]


def matmul_rate(m: int, k: int, n: int, repeat: int = 5) -> float:
    """GFLOP/s of a float32 (m x k) @ (k x n) product on this machine, best of `repeat`."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def mlp0_flops(hw: HeadWeights) -> float:
    """FLOPs of the first MLP over the whole vocabulary (gated: three d x d_ff matrices)."""
    d_ff = getattr(hw.model.config, "intermediate_size", 4 * hw.d_model)
    return 2 * hw.vocab_size * 3 * hw.d_model * d_ff


def bench_saliency(hw: HeadWeights) -> dict:
    """Saliency of every head over the whole vocabulary, E_in included."""
    t = time.perf_counter()
    inputs = InputEmbeddings(hw, None)
    sal = saliency_scores(hw, inputs=inputs)
    dt = time.perf_counter() - t
    V, d, r = hw.vocab_size, hw.d_model, hw.d_head
    flops = mlp0_flops(hw) + hw.n_layers * (
        2 * V * d * hw.n_kv_heads * r + hw.n_heads * 2 * V * r * r
    )
    return {
        "seconds": dt,
        "flops": flops,
        "gflops_per_s": flops / dt / 1e9,
        "shape": list(sal.shape),
    }


def bench_space(hw: HeadWeights, sample: int) -> dict:
    """Sampled output-space size of every head."""
    t = time.perf_counter()
    df = output_space(hw, sample=sample)
    dt = time.perf_counter() - t
    V, d, r, n = hw.vocab_size, hw.d_model, hw.d_head, sample
    flops = hw.n_layers * hw.n_heads * 2 * V * (n * r + r * d)
    return {
        "seconds": dt,
        "sample": sample,
        "flops": flops,
        "gflops_per_s": flops / dt / 1e9,
        "mean_size_sample": float(df["size_sample"].mean()),
        "mean_size": float(df["size"].mean()),
        "mean_size_se": float(df["size_se"].mean()),
    }


def bench_baseline(hw: HeadWeights, tokenizer) -> dict:
    """Real relation scores and random W_VO scores of every layer; heads over tau of each."""
    rels = scorable(load_relations(None), tokenizer, log=lambda m: None)
    out = {"relations": len(rels)}
    st_real, st_rand = KernelStats(), KernelStats()
    t = time.perf_counter()
    real = relation_scores(hw, rels, stats=st_real)
    out["real_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    rand = random_scores(hw, rels, stats=st_rand, seed=0)
    out["random_seconds"] = time.perf_counter() - t
    table = baseline_table(real, rand)
    out["real_flops"], out["random_flops"] = st_real.flops, st_rand.flops
    out["real_gflops_per_s"] = st_real.flops / out["real_seconds"] / 1e9
    out["random_gflops_per_s"] = st_rand.flops / out["random_seconds"] / 1e9
    out["real_over_tau"] = int(table.loc["total", "real_over_tau"])
    out["random_over_tau"] = int(table.loc["total", "random_over_tau"])
    out["heads"] = int(table.loc["total", "heads"])
    out["max_random_score"] = float(rand["score"].max())
    out["per_layer"] = {
        str(k): {c: int(v) for c, v in row.items()} for k, row in table.drop("total").iterrows()
    }
    return out


def bench_validate(hw: HeadWeights, samples: list[int], repeats: int = 20) -> dict:
    """Exact output-space size of VALIDATE_HEADS, and both estimators over repeated samples."""
    inputs = InputEmbeddings(hw, None)
    u_rows = normalized_unembedding_rows(hw.unembedding())
    V = hw.vocab_size
    out = {}
    for layer, head in VALIDATE_HEADS:
        t = time.perf_counter()
        a = inputs.for_layer(layer) @ hw.W_V(layer)[hw.kv_head(head)]
        full = argmax_targets(a, hw.W_O(layer)[head], u_rows).numpy()
        res = {"exact": len(np.unique(full)) / V, "exact_seconds": time.perf_counter() - t}
        for n in samples:
            st = [
                space_stats(full[sample_sources(V, n, seed).numpy()], V) for seed in range(repeats)
            ]
            for key in ("size_sample", "size"):
                vals = np.array([s[key] for s in st])
                res[f"{key}@{n}"] = {
                    "mean": float(vals.mean()),
                    "sd_over_samples": float(vals.std(ddof=1)),
                    "mean_jackknife_se": float(np.mean([s[f"{key}_se"] for s in st])),
                }
        out[f"{layer}.{head}"] = res
        print(f"  validated {layer}.{head}: exact {res['exact']:.4f}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sample", type=int, default=1024)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["saliency", "space", "baseline"],
        choices=["saliency", "space", "baseline", "validate"],
    )
    p.add_argument("--out", default="benchmarks/results/salient.json")
    args = p.parse_args()

    torch.manual_seed(0)
    t = time.perf_counter()
    lm = load_model(args.model)
    hw = HeadWeights(lm.model)
    result = {
        "model": lm.info(),
        "load_seconds": time.perf_counter() - t,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "environment": environment(),
        "matmul_gflops_per_s": {
            "1024x576 @ 576x8192": matmul_rate(1024, 576, 8192),
            "1024x64 @ 64x8192": matmul_rate(1024, 64, 8192),
        },
    }
    path = Path(args.out)
    if path.is_file():  # keep parts measured by earlier runs
        result = json.loads(path.read_text()) | result
    for part in args.parts:
        print(f"{part} ...", file=sys.stderr, flush=True)
        if part == "saliency":
            result["saliency"] = bench_saliency(hw)
        elif part == "space":
            result["space"] = bench_space(hw, args.sample)
        elif part == "baseline":
            result["baseline"] = bench_baseline(hw, lm.tokenizer)
        else:
            result["validate"] = bench_validate(hw, [1024, 4096])
        write_json(path, result)

    rate = result["matmul_gflops_per_s"]
    print(f"model {args.model}: {hw.n_layers * hw.n_heads} heads, |V| = {hw.vocab_size}")
    print("matmul rate (GFLOP/s): " + ", ".join(f"{k}: {v:.1f}" for k, v in rate.items()))
    print(f"{'part':<28}{'seconds':>10}{'GFLOP':>10}{'GFLOP/s':>10}")
    rows = []
    if "saliency" in result:
        s = result["saliency"]
        rows.append(("saliency, all heads", s["seconds"], s["flops"]))
    if "space" in result:
        s = result["space"]
        rows.append((f"output space, n={s['sample']}", s["seconds"], s["flops"]))
    if "baseline" in result:
        b = result["baseline"]
        rows.append(("relation scores, real", b["real_seconds"], b["real_flops"]))
        rows.append(("relation scores, random", b["random_seconds"], b["random_flops"]))
    for name, sec, fl in rows:
        print(f"{name:<28}{sec:>10.1f}{fl / 1e9:>10.0f}{fl / sec / 1e9:>10.1f}")
    if "baseline" in result:
        b = result["baseline"]
        print(
            f"heads over tau: real {b['real_over_tau']} / {b['heads']}, random {b['random_over_tau']}"
            f" / {b['heads']} (max random score {b['max_random_score']:.3f})"
        )
    if "validate" in result:
        for head, r in result["validate"].items():
            est = ", ".join(
                f"{k}: {v['mean']:.4f}±{v['sd_over_samples']:.4f} (jk {v['mean_jackknife_se']:.4f})"
                for k, v in r.items()
                if "@" in k
            )
            print(f"head {head}: exact {r['exact']:.4f}; {est}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
