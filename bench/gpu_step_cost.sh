#!/usr/bin/env bash
# The step benchmark on a CUDA machine: XLM-R-base- and e5-small-sized encoders, RTN after
# layers 0 / 6 / 12, fp32 and bf16 autocast, at the CPU benchmark's step (20 x 48 tokens) and,
# for XLM-R-base, at a GPU-sized step (80 x 128 tokens); time per step, ratios to joint, MFU,
# peak CUDA memory. Writes bench/results/step_cost_gpu_*.json (or under $1), which hold the
# card's name; a tiny smoke run first fails fast if the CUDA path is broken.
#   bash bench/gpu_step_cost.sh [OUT_DIR]     # about 4 minutes on an H200
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
"$PYTHON" bench/step_cost.py --device cuda --quick --repeats 2 --no-memory --out "$out/step_cost_gpu_smoke.json"
for precision in bf16 fp32; do
  "$PYTHON" bench/step_cost.py --device cuda --precision "$precision" --configs xlmr-base e5-small \
    --layers all --repeats 10 --warmup 3 --out "$out/step_cost_gpu_${precision}.json"
  "$PYTHON" bench/step_cost.py --device cuda --precision "$precision" --configs xlmr-base \
    --layers all --repeats 10 --warmup 3 --seq-len 128 --batch-scale 4 \
    --out "$out/step_cost_gpu_${precision}_large.json"
done
