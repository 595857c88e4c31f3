#!/usr/bin/env bash
# The GPU rows of docs/benchmark.md, on one CUDA GPU:
#   1. SpotBench test split (baseline, spote), default dtype on CUDA (bfloat16), then float32 on fewer items;
#   2. the pipeline bench (pipelines.vqa, one actor holding the GPU) against a plain loop on the same GPU.
# Each step has its own time limit, so one slow step cannot take the others' results with it.
#   usage: bash benchmarks/gpu_bench.sh OUT_DIR [N_BENCH] [N_PIPELINE] [N_FP32]   (PY=python to pick the interpreter;
#   N_FP32 defaults to N_BENCH / 2, 0 skips the float32 run)
set -u
out=${1:-results/gpu}; n=${2:-600}; np=${3:-300}; nf=${4:-$((n / 2))}; py=${PY:-python3}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch, transformers, ray; print('torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__)"
} > "$out/gpu-env.txt" 2>&1
cat "$out/gpu-env.txt"
timeout 900 $py -m spote.cli bench --split test --n "$n" --methods baseline,spote --device cuda --no-plot \
  --out "$out/bench-test-seed0-gpu.json" || echo "bench (bfloat16) failed or timed out: rc $?"
if [ "$nf" -gt 0 ]; then
  timeout 600 $py -m spote.cli bench --split test --n "$nf" --methods spote --device cuda --dtype float32 --no-plot \
    --out "$out/bench-test-seed0-gpu-fp32.json" || echo "bench (float32) failed or timed out: rc $?"
fi
timeout 900 $py -m benchmarks.pipeline_throughput --n "$np" --device cuda --out "$out/bench-pipeline-gpu.json" \
  || echo "pipeline bench failed or timed out: rc $?"
