"""Benchmark of the behaviour checks on SmolLM2-135M: `correlate` and `ablate`, whole CLI processes.

Measures, in one run on one machine:
* the static scores all three need (`python -m mapslib relations`, every shipped relation), timed
  separately and passed to the others with --static;
* `correlate`: every scored relation, the four templates, with and without context, promote and
  suppress (all single-token pairs);
* `ablate`: every relation with a task prompt, 100 prompts per task (the default), 5 random draws;
  with --full-ablation also every single-token pair as a prompt;
* the load average before and after each step: the machine may be shared, and a busy CPU slows the
  many small parallel kernels far more than in proportion, so read times with the load beside them.

Usage: python benchmarks/bench_behaviour.py [--device cpu] [--full-ablation]
Writes benchmarks/results/behaviour.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from bench_relations import matmul_rate, run_process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "behaviour.json"
MODEL = "smollm2-135m"


def mapslib_cmd(command: str, out: Path, device: str, *extra: str) -> list[str]:
    """`python -m mapslib COMMAND --model MODEL --device DEVICE --out OUT EXTRA...`."""
    head = [sys.executable, "-m", "mapslib", command, "--model", MODEL, "--device", device]
    return [*head, "--out", str(out), *extra]


def timed(cmd: list[str], out: Path) -> dict:
    """Run a mapslib command; its wall time, peak memory, the load around it and its own timings."""
    before = os.getloadavg()[0]
    result = run_process(cmd)
    side = json.loads(out.with_name(out.name + ".json").read_text())
    return result | {
        "load_1min_before": round(before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "timings_s": side["timings_s"],
        "command": " ".join(cmd[1:]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-ablation", action="store_true", help="also ablate with every pair")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mapsbench-behaviour-"))
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "device": args.device,
        "model": MODEL,
        "matmul_gflops": matmul_rate(args.device),
    }
    print("matmul rate (GFLOP/s):", report["matmul_gflops"], flush=True)

    static = tmp / "static.csv"
    report["static"] = timed(mapslib_cmd("relations", static, args.device), static)
    print("static scores:", report["static"], flush=True)

    corr = tmp / "correlations.csv"
    cmd = mapslib_cmd("correlate", corr, args.device, "--static", str(static))
    report["correlate"] = timed(cmd, corr)
    c = pd.read_csv(corr)
    promote = c[c["mode"] == "promote"].pivot_table(index="relation", columns="setting", values="r")
    report["correlate"]["relations"] = int(c["relation"].nunique())
    report["correlate"]["median_r_promote"] = promote.median().round(3).to_dict()
    print("correlate:", report["correlate"], flush=True)

    runs = [("ablate", [])] + (
        [("ablate_all_prompts", ["--max-prompts", "all"])] if args.full_ablation else []
    )
    for key, extra in runs:
        out = tmp / f"{key}.csv"
        cmd = mapslib_cmd("ablate", out, args.device, "--static", str(static), *extra)
        report[key] = timed(cmd, out)
        summ = json.loads(out.with_name(out.name + ".json").read_text())["summary"]
        capital = [s for s in summ if s["relation"] == "country_to_capital_wikidata"]
        report[key]["rows"] = len(pd.read_csv(out))
        report[key]["capital"] = {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in (capital[0] if capital else {}).items()
            if v is not None
        }
        print(f"{key}:", report[key], flush=True)

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
