#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one script (CI has no GPU: there these tests skip).
#
#   bash benchmarks/gpu_checks.sh OUT kernel   # no real model needed
#   bash benchmarks/gpu_checks.sh OUT model    # needs SmolLM2-135M installed (make setup)
#
# kernel: the device's ceilings and the relation-map kernel at Llama-3.1-8B shapes (bench_kernel.py);
#         the CUDA tests that use tiny models; the weights-only relation map of a synthetic checkpoint with
#         Llama-3.1-8B shapes (its first 2 layers, random bf16) on the GPU (bench_stream.py).
# model:  the CUDA tests on SmolLM2-135M (scores against the CPU's, offloading onto the GPU); its whole
#         relation map on the GPU, cold and warm (bench_relations.py), and that table against the CPU
#         table the book shows (book/models/smollm2-135m/data/relation_scores.csv, or CPU_TABLE).
# Results and logs go to OUT.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT kernel|model}
stage=${2:?usage: gpu_checks.sh OUT kernel|model}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { echo "== $* ($(date +%T))"; }

if [ "$stage" = kernel ]; then
    step device
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
        | tee "$out/gpu.txt"
    step kernel against the device
    $py benchmarks/bench_kernel.py --device cuda --out "$out/kernel_rate_cuda.json" || status=1
    step CUDA tests on tiny models
    $py -m pytest -q -p no:cacheprovider -rs tests/foundation/test_kernels.py \
        tests/foundation/test_checkpoint.py -k cuda 2>&1 | tee "$out/pytest_kernel.txt" || status=1
    step synthetic Llama-3.1-8B checkpoint, weights-only on the GPU
    $py benchmarks/bench_stream.py --synthetic llama-3.1-8b --synthetic-layers 2 --layers 0,1 \
        --device cuda --dir /tmp --out "$out/stream_synthetic_cuda.json" || status=1
elif [ "$stage" = model ]; then
    step CUDA tests on SmolLM2-135M
    $py -m pytest -q -p no:cacheprovider -rs tests/foundation/test_models.py \
        tests/foundation/test_offload.py -k "cuda or gpu" 2>&1 | tee "$out/pytest_model.txt" || status=1
    step SmolLM2 relation map on the GPU, cold and warm
    $py benchmarks/bench_relations.py --device cuda --models smollm2-135m --skip-naive \
        --out "$out/relations_cuda.json" || status=1
    step the GPU table against the CPU table
    $py -m mapslib relations --model smollm2-135m --device cuda --out "$out/smollm2_cuda.csv" \
        || status=1
    $py - "$out/smollm2_cuda.csv" "${CPU_TABLE:-book/models/smollm2-135m/data/relation_scores.csv}" \
        <<'EOF' | tee "$out/compare.txt" || status=1
import sys

import pandas as pd

keys = ["layer", "head", "relation", "mode"]
gpu, cpu = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
both = gpu.merge(cpu, on=keys, suffixes=("_gpu", "_cpu"))
diff = (both["score_gpu"] - both["score_cpu"]).abs()
n_pairs = both["n_pairs_cpu"]
print(f"rows: gpu {len(gpu)}, cpu {len(cpu)}, matched {len(both)}")
print(f"rows differing: {(diff > 0).sum()}; largest difference {diff.max():.6f}")
print(f"largest difference in pairs: {(diff * n_pairs).round().max():.0f}")
print(both[diff > 0].head(20).to_string())
EOF
else
    echo "unknown stage $stage (kernel or model)" >&2
    exit 2
fi
exit $status
