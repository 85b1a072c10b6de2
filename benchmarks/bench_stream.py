"""Benchmark: the relation map with weights only (streamed from the checkpoint) against the full model.

    python benchmarks/bench_stream.py [--model smollm2-135m] [--layers 0,15,29] [--variants bf16 loaded gguf]
    python benchmarks/bench_stream.py --synthetic llama-3.1-8b [--layers 0,1,2] [--dir /tmp] [--keep]
        [--synthetic-layers N] [--device cuda]
    python benchmarks/bench_stream.py --project   # projections from the last synthetic run

Model mode: the model is loaded (load_model) and its weights written as a sharded safetensors
checkpoint with its tokenizer into a temporary folder, in bf16 (`bf16`) and as loaded (`loaded`,
float32). For each, `python -m mapslib relations --model FOLDER --layers L` runs twice in separate
processes, with the whole model and with --weights-only; each process's wall time and peak resident
memory (os.wait4) are recorded with its sidecar's timings, and the two tables must be identical.
`gguf` does the same on an alias's own GGUF file. The memory budget the issue sets is 1.3 x (E + U +
one layer) in the stored dtype, sizes read from the checkpoint (a tied E = U counted once).

Synthetic mode: a checkpoint with the shapes of a large model (every tensor, random bf16 values, 2 GB
shards; Llama-3.1-8B: 16 GB on disk) is written once, and the relation map of a few layers runs on it
weights-only in a child process, on synthetic relations over token ids (no tokenizer): peak memory,
time reading tensors, computing E_in, scoring per head, and the kernel's work. Random weights leave
almost no row to the full pass, so the projection adds that pass for the share of rows real models
leave (2.7% on SmolLM2). `--synthetic-layers N` writes only the first N layers (same shapes per layer:
what one layer costs does not change; a quicker write where disk or time is short, e.g. on a lent GPU).

Projection: memory and CPU time of the relation map of every head of Llama-3.1 8B and 70B and the
paper's other models, from the synthetic run's measured read rate, MLP rate, kernel rate and memory
overhead. Results: benchmarks/results/stream_MODEL.json (model mode), stream_synthetic.json.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import run_process

from mapslib.foundation.packaged import ALIASES  # imports no torch

# The parent imports no torch and loads no model: a child process's peak RSS (os.wait4, getrusage)
# starts at its parent's peak at spawn (Linux keeps the old address space's high-water mark across
# exec), so the heavy steps (loading, writing checkpoints) run in child processes too.

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GIB = 2**30

# name: layers, heads, kv heads, d, d_head, d_ff, |V|, gated MLP, tied, bytes per stored parameter
SHAPES = {
    "GPT-2 xl": (48, 25, 25, 1600, 64, 6400, 50257, False, True, 4),
    "Phi-2": (32, 32, 32, 2560, 80, 10240, 51200, False, False, 2),
    "Pythia 6.9B": (32, 32, 32, 4096, 128, 16384, 50432, False, False, 2),
    "Pythia 12B": (36, 40, 40, 5120, 128, 20480, 50688, False, False, 2),
    "Llama-3.1 8B": (32, 32, 8, 4096, 128, 14336, 128256, True, False, 2),
    "Llama-3.1 70B": (80, 64, 8, 8192, 128, 28672, 128256, True, False, 2),
}
SYNTHETIC = {"llama-3.1-8b": "Llama-3.1 8B"}
# rows the column sample leaves to the full pass (SmolLM2, benchmarks/results/relations.json)
UNDECIDED = 0.027
PAIRS = 16 * 130  # rows per head (SmolLM2: 557550 rows / 270 heads = 2065)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }


ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


def checkpoint_budget(folder: Path) -> dict[str, float]:
    """E, U and the largest layer in the stored dtype (GiB), from the checkpoint's headers."""
    size = {}
    for shard in folder.glob("*.safetensors"):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for k, v in header.items():
            size[k] = math.prod(v["shape"]) * ITEMSIZE[v["dtype"]]
    embed = sum(v for k, v in size.items() if k.endswith("embed_tokens.weight"))
    unembed = sum(v for k, v in size.items() if k == "lm_head.weight")
    layers: dict[str, int] = {}
    for k, v in size.items():
        if ".layers." in k:
            layer = k.split(".layers.")[1].split(".")[0]
            layers[layer] = layers.get(layer, 0) + v
    one_layer = max(layers.values())
    return {
        "E_gib": round(embed / GIB, 3),
        "U_gib": round(unembed / GIB, 3),  # 0: tied, U is E
        "one_layer_gib": round(one_layer / GIB, 3),
        "checkpoint_gib": round(sum(size.values()) / GIB, 3),
        "budget_1.3x_gib": round(1.3 * (embed + unembed + one_layer) / GIB, 3),
    }


# --- model mode ------------------------------------------------------------------------------------


def write_model_folders(model: str, tmp: str, variants: list[str]) -> None:
    """(A child process.) The loaded model's weights as safetensors shards (200 MB) with config and
    tokenizer, in bf16 and as loaded; prints the number of layers."""
    import torch

    from mapslib.foundation.checkpoint import model_tensors, write_checkpoint
    from mapslib.foundation.models import load_model

    lm = load_model(model)
    for variant in variants:
        if variant in ("bf16", "loaded"):
            folder = Path(tmp) / variant
            dtype = torch.bfloat16 if variant == "bf16" else None
            tensors = model_tensors(lm.model)
            config = lm.model.config
            write_checkpoint(folder, tensors, config, max_shard_bytes=200 << 20, dtype=dtype)
            lm.tokenizer.save_pretrained(folder)
    print(json.dumps({"n_layers": lm.hw.n_layers}))


def relations_cmd(model: str, out: Path, layers: str, device: str, weights_only: bool) -> list:
    cmd = [sys.executable, "-m", "mapslib", "relations", "--model", model, "--device", device]
    cmd += ["--layers", layers, "--out", str(out)]
    return cmd + (["--weights-only"] if weights_only else [])


def compare(model: str, tmp: Path, name: str, layers: str, device: str) -> dict:
    """Both paths on one checkpoint: process wall time and peak RSS, sidecar timings, equality."""
    out: dict = {}
    for path in ("full", "weights_only"):
        csv = tmp / f"{name}-{path}.csv"
        out[path] = run_process(relations_cmd(model, csv, layers, device, path == "weights_only"))
        side = json.loads(csv.with_name(csv.name + ".json").read_text())
        out[path] |= {"timings_s": side["timings_s"], "sidecar_memory": side.get("memory")}
        print(f"  {name} {path}: {out[path]}", flush=True)
    full, weights = tmp / f"{name}-full.csv", tmp / f"{name}-weights_only.csv"
    out["rows"] = sum(1 for _ in open(full)) - 1
    out["scores_identical"] = filecmp.cmp(full, weights, shallow=False)  # byte for byte
    out["peak_ratio_weights_only_to_full"] = round(
        out["weights_only"]["peak_rss_gib"] / out["full"]["peak_rss_gib"], 3
    )
    return out


def baseline_rss(folder: Path) -> float:
    """Peak RSS of a process that only imports the libraries and loads the tokenizer."""
    code = (
        "import torch, transformers, mapslib.cli, mapslib.foundation.checkpoint;"
        f"transformers.AutoTokenizer.from_pretrained({str(folder)!r})"
    )
    return run_process([sys.executable, "-c", code])["peak_rss_gib"]


def budget_checks(result: dict) -> None:
    """The 1.3 x (E + U + one layer) budget against the whole process's peak, and against the peak
    above a process that only loads the libraries and the tokenizer (for a small model that
    baseline, 0.4-0.7 GB, is most of the peak and alone exceeds the budget)."""
    peak, budget = result["weights_only"]["peak_rss_gib"], result["checkpoint"]["budget_1.3x_gib"]
    above = round(peak - result["baseline_process_rss_gib"], 3)
    result["weights_only_within_budget"] = peak <= budget
    result["weights_only_above_baseline_gib"] = above
    result["above_baseline_within_budget"] = above <= budget


def model_mode(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mapsstream-", dir=args.dir))
    report: dict = {"machine": machine(), "model": args.model, "device": args.device}
    try:
        cmd = [sys.executable, __file__, "--write-model", args.model, "--dir", str(tmp)]
        proc = subprocess.run([*cmd, "--variants", *args.variants], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        n_layers = json.loads(proc.stdout.strip().splitlines()[-1])["n_layers"]
        layers = args.layers or f"0,{n_layers // 2},{n_layers - 1}"
        report["layers"] = layers
        for variant in args.variants:
            print(f"{variant} ...", flush=True)
            if variant == "gguf":  # the alias's (or .gguf path's) own file, streamed
                if args.model in ALIASES or args.model.endswith(".gguf"):
                    report["gguf"] = compare(args.model, tmp, "gguf", layers, args.device)
                continue
            folder = tmp / variant
            result = compare(str(folder), tmp, variant, layers, args.device)
            result["checkpoint"] = checkpoint_budget(folder)
            result["baseline_process_rss_gib"] = baseline_rss(folder)
            budget_checks(result)
            report[variant] = result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out or RESULTS / f"stream_{Path(args.model).name}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


# --- synthetic mode --------------------------------------------------------------------------------


def synthetic_config(name: str, n_layers: int | None = None):
    from transformers import LlamaConfig

    all_layers, n_heads, n_kv, d, dh, d_ff, vocab, *_ = SHAPES[SYNTHETIC[name]]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers or all_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=dh,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )


def synthetic_tensors(config, seed: int = 0):
    """Every tensor of the model, random bf16 (N(0, 0.02^2); norms near 1), generated in row blocks."""
    import torch

    from mapslib.foundation.checkpoint import meta_model

    gen = torch.Generator().manual_seed(seed)
    for name, p in meta_model(config).state_dict().items():
        t = torch.empty(p.shape, dtype=torch.bfloat16)
        if t.ndim == 1:
            t.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            step = max(1, (64 << 20) // (4 * p.shape[1]))
            for r0 in range(0, p.shape[0], step):
                block = torch.randn(min(step, p.shape[0] - r0), p.shape[1], generator=gen)
                t[r0 : r0 + step] = block.mul_(0.02)
        yield name, t


def write_synthetic(name: str, folder: str, n_layers: int | None) -> None:
    """(A child process.) The whole synthetic checkpoint (or its first n_layers), in 2 GB bf16 shards."""
    import torch

    from mapslib.foundation.checkpoint import write_checkpoint

    config = synthetic_config(name, n_layers)
    write_checkpoint(folder, synthetic_tensors(config), config, dtype=torch.bfloat16)


def synthetic_relations(vocab: int, seed: int = 0):
    """16 relations of 130 random (source, target) token pairs."""
    import torch

    from mapslib.relation_map.relations import Relation, TokenizedRelation

    gen = torch.Generator().manual_seed(seed)
    rels = []
    for i in range(16):
        src = torch.randint(0, vocab, (130,), generator=gen).tolist()
        dst = torch.randint(0, vocab, (130,), generator=gen).tolist()
        pairs = tuple((str(s), str(t)) for s, t in zip(src, dst, strict=True))
        rel = Relation(f"r{i}", pairs, "synthetic", f"r{i}", False, "<synthetic>", "0")
        rels.append(TokenizedRelation(rel, pairs, tuple(src), tuple(dst)))
    return rels


def child_synthetic(folder: str, layers: list[int], device: str, out: str) -> None:
    """In its own process: the relation map of `layers` on the checkpoint, weights only, timed."""
    from dataclasses import asdict

    import torch

    from mapslib.foundation.adapters import HeadWeights
    from mapslib.foundation.checkpoint import CheckpointSource, SafetensorsStore
    from mapslib.foundation.kernels import KernelStats
    from mapslib.relation_map.scores import relation_scores

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    reads = {"seconds": 0.0, "bytes": 0, "tensors": []}
    for method in ("read", "read_rows"):
        original = getattr(SafetensorsStore, method)

        def timed(self, key, *a, _original=original):
            t = time.perf_counter()
            result = _original(self, key, *a)
            result.sum()  # touch every byte: count the read itself, not a lazy memory map
            reads["seconds"] += time.perf_counter() - t
            reads["bytes"] += result.numel() * result.element_size()
            reads["tensors"].append(key)
            return result

        setattr(SafetensorsStore, method, timed)

    report: dict = {"rss_after_imports_gib": rss() / GIB}
    t0 = time.perf_counter()
    hw = HeadWeights(CheckpointSource.open(folder, device=device))
    report["open_s"] = time.perf_counter() - t0
    report["rss_after_open_gib"] = rss() / GIB
    mlp = {"seconds": 0.0, "rows": 0}
    build = hw.mlp0_function

    def timed_mlp0():
        fn = build()

        def run(x):
            t = time.perf_counter()
            y = fn(x)
            if y.is_cuda:  # count the work, not its launch
                torch.cuda.synchronize(y.device)
            mlp["seconds"] += time.perf_counter() - t
            mlp["rows"] += x.shape[0]
            return y

        return run

    hw.mlp0_function = timed_mlp0
    rels = synthetic_relations(hw.vocab_size)
    stats = KernelStats()
    t1 = time.perf_counter()
    relation_scores(hw, rels, layers=layers, stats=stats)
    total = time.perf_counter() - t1
    heads = len(layers) * hw.n_heads
    compute = total - reads["seconds"] - mlp["seconds"]
    report |= {
        "layers": layers,
        "heads": heads,
        "relation_scores_s": total,
        "read_s": reads["seconds"],
        "read_gib": reads["bytes"] / GIB,
        "read_gib_per_s": reads["bytes"] / GIB / max(reads["seconds"], 1e-9),
        "tensors_read": sorted(set(reads["tensors"])),
        "mlp0_s": mlp["seconds"],
        "mlp0_rows": mlp["rows"],
        "scoring_s_per_head": compute / heads,
        "kernel": asdict(stats),
        "kernel_gflops_per_s": stats.flops / max(compute, 1e-9) / 1e9,
        "rss_at_end_gib": rss() / GIB,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "unembedding_dtype": str(hw.unembedding(stored=True).dtype),
    }
    if hw.device.type == "cuda":
        report["cuda_peak_gib"] = torch.cuda.max_memory_allocated(hw.device) / GIB
    Path(out).write_text(json.dumps(report, indent=2))


def synthetic_mode(args: argparse.Namespace) -> None:
    part = f"-{args.synthetic_layers}layers" if args.synthetic_layers else ""
    folder = Path(args.dir or tempfile.gettempdir()) / f"mapslib-synthetic-{args.synthetic}{part}"
    report: dict = {"machine": machine(), "model": args.synthetic, "device": args.device}
    report["layers_in_checkpoint"] = args.synthetic_layers or SHAPES[SYNTHETIC[args.synthetic]][0]
    if not (folder / "model.safetensors.index.json").is_file():
        print(f"writing {folder} (every tensor, random bf16) ...", flush=True)
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--write-synthetic", args.synthetic, "--dir", str(folder)]
        if args.synthetic_layers:
            cmd += ["--synthetic-layers", str(args.synthetic_layers)]
        subprocess.run(cmd, check=True)
        report["write_s"] = round(time.perf_counter() - t, 1)
    report["checkpoint"] = checkpoint_budget(folder)
    layers = args.layers or "0,1,2"
    out = folder.with_suffix(".child.json")
    cmd = [sys.executable, __file__, "--child", str(folder), "--layers", layers]
    cmd += ["--device", args.device, "--out", str(out)]
    report["process"] = run_process(cmd)
    report["run"] = json.loads(out.read_text())
    peak = report["process"]["peak_rss_gib"]
    report["weights_only_within_budget"] = peak <= report["checkpoint"]["budget_1.3x_gib"]
    report["projection"] = projection(report["run"])
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    path = Path(args.out or RESULTS / "stream_synthetic.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["process"]), f"\nwrote {path}")


# --- projection ------------------------------------------------------------------------------------


def _cost(n: int, r: int, d: int) -> int:
    return min(r * d + n * r, n * d)


def projection(run: dict, kernel_patched: bool | None = None) -> dict:
    """Memory and CPU time of the whole relation map (every head) of the paper's models, from a run.

    Time = tensor bytes read / measured read rate + E_in FLOPs / measured MLP rate + per-head kernel
    FLOPs (pass 1 over the column sample, pass 2 over every column for UNDECIDED of the rows) / the
    measured kernel rate. Memory = measured overhead (the run's peak minus what it held) + U as kept
    (stored dtype with the kernel change, else float32) + U's column sample + one layer's W_V and W_O
    in float32 + E_in rows; or the E_in phase (the first block's MLP in float32), if larger.
    """
    from mapslib.foundation.kernels import default_stride

    kernel_rate = run["kernel_gflops_per_s"] * 1e9
    read_rate = run["read_gib_per_s"] * GIB
    ran_stored = run["unembedding_dtype"] in ("torch.bfloat16", "torch.float16")
    stored_u = ran_stored if kernel_patched is None else kernel_patched
    d8, v8 = 4096, 128256  # the synthetic model's own terms, to find the run's fixed overhead
    n_src = 1900  # distinct sources of PAIRS pairs over a large vocabulary
    held8 = v8 * d8 * (2 if ran_stored else 4) + v8 // default_stride(v8) * d8 * 4
    held8 += (8 + 32) * 128 * d8 * 4 + 2 * n_src * d8 * 4
    overhead = run["peak_rss_gib"] * GIB - held8
    mlp_rate = 2 * run["mlp0_rows"] * 3 * d8 * 14336 / max(run["mlp0_s"], 1e-9)
    out = {
        "assumptions": {
            "rows_per_head": PAIRS,
            "undecided_share": UNDECIDED,
            "kernel_gflops_per_s": round(kernel_rate / 1e9, 1),
            "read_gib_per_s": round(read_rate / GIB, 2),
            "mlp0_gflops_per_s": round(mlp_rate / 1e9, 1),
            "fixed_overhead_gib": round(overhead / GIB, 3),
            "unembedding_kept_in": "stored dtype" if stored_u else "float32",
        }
    }
    for name, (L, H, G, d, dh, d_ff, V, gated, tied, nbytes) in SHAPES.items():
        n, m = PAIRS, math.ceil(UNDECIDED * PAIRS)
        stride = default_stride(V)
        flops_head = 2 * (n * dh * d + _cost(n, dh, d) * (V // stride) + _cost(m, dh, d) * V)
        mlp_mats = 3 if gated else 2
        layer_vo = (G + H) * dh * d
        read_bytes = V * d * nbytes * (1 if tied else 2) + mlp_mats * d * d_ff * nbytes
        read_bytes += L * layer_vo * nbytes
        seconds = (
            read_bytes / read_rate
            + 2 * n_src * mlp_mats * d * d_ff / mlp_rate
            + L * H * flops_head / kernel_rate
        )
        u_bytes = V * d * (nbytes if stored_u and nbytes < 4 else 4)
        score_phase = u_bytes + V // stride * d * 4 + layer_vo * 4 + 2 * n_src * d * 4
        ein_phase = mlp_mats * d * d_ff * 4 + d * d_ff * nbytes + 2 * n_src * d * 4
        peak = overhead + max(score_phase, ein_phase)
        one_layer = (2 * H * dh * d + 2 * G * dh * d + mlp_mats * d * d_ff) * nbytes
        budget = 1.3 * (V * d * nbytes * (1 if tied else 2) + one_layer)
        full_fp32 = (
            L * ((2 * H + 2 * G) * dh * d + mlp_mats * d * d_ff) + V * d * (1 + (not tied))
        ) * 4
        out[name] = {
            "heads": L * H,
            "relation_map_cpu_hours": round(seconds / 3600, 2),
            "kernel_tflop": round(L * H * flops_head / 1e12, 1),
            "peak_gib": round(peak / GIB, 2),
            "budget_1.3x_gib": round(budget / GIB, 2),
            "full_model_float32_gib": round(full_fp32 / GIB, 1),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--variants", nargs="+", default=["bf16", "loaded", "gguf"])
    p.add_argument("--synthetic", choices=list(SYNTHETIC), default=None)
    p.add_argument(
        "--synthetic-layers", type=int, default=None, help="write only the first N layers"
    )
    p.add_argument("--project", action="store_true", help="print projections of the last run")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: a few)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dir", default=None, help="where checkpoints are written (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint for reruns")
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--write-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--write-synthetic", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_model:
        write_model_folders(args.write_model, args.dir, args.variants)
    elif args.write_synthetic:
        write_synthetic(args.write_synthetic, args.dir, args.synthetic_layers)
    elif args.child:
        layers = [int(x) for x in args.layers.split(",")]
        child_synthetic(args.child, layers, args.device, args.out)
    elif args.project:
        run = json.loads((RESULTS / "stream_synthetic.json").read_text())["run"]
        print(
            json.dumps(
                {"as run": projection(run), "with U kept in bf16": projection(run, True)}, indent=2
            )
        )
    elif args.synthetic:
        synthetic_mode(args)
    else:
        model_mode(args)


if __name__ == "__main__":
    main()
