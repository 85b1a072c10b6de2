"""Benchmark: the relation-map kernel against the device's own matrix-multiply rate (a GPU, or the CPU).

    python benchmarks/bench_kernel.py [--device cuda] [--shape llama-3.1-8b] [--heads 32] [--out FILE]

The issue's goal: on a GPU, the kernel within 2x of the device's matmul rate. Measured here:

* the device's ceilings: a square float32 GEMM (8192^3 on a GPU), the two GEMM shapes of the kernel's
  first pass (W_O @ U_sample, r x d @ d x |V|/stride, and a @ (W_O U_sample), n x r @ r x |V|/stride),
  a bf16 GEMM and a device-to-device copy, for reference;
* `count_outside_many` on one layer of heads with a model's shapes (Llama-3.1-8B: 32 heads, d_head 128,
  d 4096, |V| 128256, U kept in bf16 as the weights-only path keeps it), on random weights whose
  targets are placed as a real map's are (most rows decided by the first column sample; 2% near the
  top, settled by the denser sample; 0.5% top-1, needing the full pass: Qwen2.5-Coder-1.5B had 2.3%
  and 0.5%, benchmarks/results/relations.json). Its rate is the FLOPs it executed (KernelStats) over
  its time, median of repeats after a warm-up, the device synchronised before each clock read.

float32 stays float32: TF32 is off (PyTorch's default for matmuls), since the kernel's tie tolerance
assumes float32 rounding (foundation.kernels). Results: benchmarks/results/kernel_rate_DEVICE.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mapslib.foundation.kernels import Blocks, KernelStats, Unembedding, count_outside_many

RESULTS = Path(__file__).resolve().parent / "results"
# name: n rows per head (PAIRS of bench_stream), d_head, d, |V|, heads per layer, cap (largest k)
SHAPES = {
    "llama-3.1-8b": (2080, 128, 4096, 128256, 32, 25),  # |V| >= 100k: k up to 25 (PROTOCOL.md)
    "tiny": (200, 16, 64, 4096, 4, 10),  # a smoke test of this script on a CPU
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of `fn` over `reps` runs after one warm-up, synchronised around each."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_tflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> float:
    """TFLOP/s of an (m x k) @ (k x n) product on random data (never zeros: they run faster)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    return 2 * m * k * n / timed(lambda: a @ b, device, reps) / 1e12


def ceilings(shape: str, device: torch.device) -> dict[str, float]:
    """The device's matmul rates (TFLOP/s) for the shapes the kernel runs, and its copy rate."""
    n, r, d, V, *_ = SHAPES[shape]
    cols = V // 16
    square = 8192 if device.type == "cuda" else 1024
    out = {
        "tf32_allowed": float(torch.backends.cuda.matmul.allow_tf32),
        f"fp32_square_{square}": gemm_tflops(square, square, square, torch.float32, device),
        f"fp32_wo_at_Usample_{r}x{d}x{cols}": gemm_tflops(r, d, cols, torch.float32, device),
        f"fp32_a_at_cols_{n}x{r}x{cols}": gemm_tflops(n, r, cols, torch.float32, device),
        f"fp32_full_pass_block_{4096}x{r}x{16384}": gemm_tflops(
            4096, r, 16384, torch.float32, device
        ),
        f"bf16_square_{square}": gemm_tflops(square, square, square, torch.bfloat16, device),
    }
    x = torch.randn(256 << 20 if device.type == "cuda" else 16 << 20, device=device)
    y = torch.empty_like(x)
    out["copy_gb_per_s"] = 2 * x.numel() * 4 / timed(lambda: y.copy_(x), device, 10) / 1e12 * 1e3
    return {k: round(v, 3) for k, v in out.items()}


def layer_problems(
    shape: str, device: torch.device, heads: int, seed: int = 0
) -> tuple[Unembedding, list]:
    """U (bf16, as the weights-only path keeps it) and `heads` heads' (key, a, w_o, targets)."""
    n, r, d, V, *_ = SHAPES[shape]
    g = torch.Generator(device=device).manual_seed(seed)
    rows = (0.02 * torch.randn(V, d, generator=g, device=device)).to(torch.bfloat16)
    unembed = Unembedding.prepare(rows.T)  # U = lm_head.weight.T: no copy
    problems = []
    n_top, n_near = max(1, n // 200), max(1, n // 50)  # 0.5% top-1 rows, 2% near the top
    for head in range(heads):
        a = torch.randn(n, r, generator=g, device=device)
        w_o = 0.02 * torch.randn(r, d, generator=g, device=device)
        targets = torch.randint(0, V, (n,), generator=g, device=device)
        top = (a[: n_top + n_near] @ w_o) @ rows.T.float()  # only these rows, in full
        order = top.argsort(dim=1, descending=True)
        targets[:n_top] = order[:n_top, 0]
        # rank 6 cap: under cap entries above it in the 1-in-16 sample, over cap in the 1-in-2 one
        targets[n_top : n_top + n_near] = order[n_top:, 6 * SHAPES[shape][5]]
        problems.append((head, a, w_o, targets))
    return unembed, problems


def kernel_rate(shape: str, device: torch.device, heads: int, reps: int) -> dict:
    """`count_outside_many` over one layer of heads: seconds, executed TFLOP, rate, its work."""
    unembed, problems = layer_problems(shape, device, heads)
    cap = SHAPES[shape][5]
    blocks = Blocks.for_device(device)
    stats = KernelStats()

    def run() -> None:
        for _ in count_outside_many(problems, unembed, cap, blocks, KernelStats()):
            pass

    seconds = timed(run, device, reps)
    for _ in count_outside_many(problems, unembed, cap, blocks, stats):
        pass
    heads = len(problems)
    return {
        "heads": heads,
        "seconds_per_layer": round(seconds, 4),
        "ms_per_head": round(1e3 * seconds / heads, 3),
        "executed_tflop_per_layer": round(stats.flops / 1e12, 3),
        "executed_tflops": round(stats.flops / seconds / 1e12, 3),
        "rows": stats.rows,
        "dense_rows": stats.dense_rows,
        "full_rows": stats.full_rows,
        "blocks": [blocks.rows, blocks.cols],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=list(SHAPES), default="llama-3.1-8b")
    p.add_argument("--heads", type=int, default=None, help="default: one layer's")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "shape": dict(
            zip(("n", "d_head", "d", "vocab", "heads", "cap"), SHAPES[args.shape], strict=True)
        ),
    }
    report["ceilings_tflops"] = ceilings(args.shape, device)
    print("ceilings (TFLOP/s; copy GB/s):", report["ceilings_tflops"], flush=True)
    heads = args.heads or SHAPES[args.shape][4]
    report["kernel"] = kernel_rate(args.shape, device, heads, args.reps)
    fp32 = max(v for k, v in report["ceilings_tflops"].items() if k.startswith("fp32_square"))
    report["kernel_over_fp32_gemm"] = round(report["kernel"]["executed_tflops"] / fp32, 3)
    if device.type == "cuda":
        report["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print("kernel:", report["kernel"], "share of fp32 GEMM:", report["kernel_over_fp32_gemm"])
    out = Path(args.out or RESULTS / f"kernel_rate_{device.type}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
