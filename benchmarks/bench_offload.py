"""Benchmark of the behaviour experiments on an offloaded model: what accelerate's offloading costs.

Writes the model as float32 safetensors shards (bench_stream.py's writer), then runs
`python -m mapslib known-heads` and `python -m mapslib ablate` on it twice, whole and with
`--max-memory cpu=SIZE --offload-folder DIR` (the layers that do not fit go to disk and are read back
on every forward pass): wall time, peak RSS of each process, and the largest difference between the
two tables (the same float32 weights and ops, so it should be rounding at most).

Usage: python benchmarks/bench_offload.py [--model smollm2-135m] [--max-memory cpu=200MB]
Writes benchmarks/results/offload_MODEL.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from measure import run_process

HERE = Path(__file__).resolve().parent
JOBS = {
    "known-heads": (["--n-prompts", "100"], ["direct_effect", "attn_io", "attn_s"]),
    "ablate": (
        ["--relations", "capital", "--max-prompts", "50", "--random-draws", "10"],
        ["accuracy"],
    ),
}


def write_folder(model: str, tmp: Path) -> Path:
    """The model as float32 safetensors shards with its config and tokenizer (a child process)."""
    cmd = [sys.executable, str(HERE / "bench_stream.py"), "--write-model", model]
    proc = subprocess.run(
        [*cmd, "--dir", str(tmp), "--variants", "loaded"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return tmp / "loaded"


def largest_difference(a: Path, b: Path, columns: list[str]) -> float:
    """max |a - b| over the value columns of two tables with the same rows."""
    x, y = pd.read_csv(a), pd.read_csv(b)
    if len(x) != len(y):
        raise RuntimeError(f"{a} has {len(x)} rows, {b} has {len(y)}")
    return float(max((x[c] - y[c]).abs().max() for c in columns))


def bench_job(job: str, folder: Path, tmp: Path, max_memory: str) -> dict:
    """One command whole and offloaded: wall time, peak RSS, largest difference."""
    extra, columns = JOBS[job]
    base = [sys.executable, "-m", "mapslib", job, "--model", str(folder), "--device", "cpu"]
    whole, off = tmp / f"{job}-whole.csv", tmp / f"{job}-offloaded.csv"
    out = {"whole": run_process([*base, *extra, "--out", str(whole)])}
    print(job, "whole:", out["whole"], flush=True)
    offload = ["--max-memory", max_memory, "--offload-folder", str(tmp / "offload")]
    out["offloaded"] = run_process([*base, *extra, *offload, "--out", str(off)])
    print(job, "offloaded:", out["offloaded"], flush=True)
    out["slowdown"] = round(out["offloaded"]["wall_s"] / out["whole"]["wall_s"], 2)
    out["largest_difference"] = largest_difference(whole, off, columns)
    placement = json.loads(off.with_name(off.name + ".json").read_text())
    out["placement"] = placement["params"]["model"]["offload"]["placement"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-memory", default="cpu=200MB")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mapsoffload-"))
    report: dict = {"model": args.model, "max_memory": args.max_memory}
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        folder = write_folder(args.model, tmp)
        for job in JOBS:
            report[job] = bench_job(job, folder, tmp, args.max_memory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = HERE / "results" / f"offload_{args.model}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
