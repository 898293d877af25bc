#!/usr/bin/env bash
# The step benchmark on a CUDA machine: XLM-R-base-sized encoder, RTN after layers 0 / 6 / 12,
# fp32 and bf16 autocast; time per step, ratios to joint, MFU, peak CUDA memory. Writes
# bench/results/step_cost_gpu_{fp32,bf16}.json (commit them, with the card's name they hold).
#   bash bench/gpu_step_cost.sh            # about 5 minutes on an H100
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')"
for precision in fp32 bf16; do
  python bench/step_cost.py --device cuda --precision "$precision" --configs xlmr-base e5-small \
    --layers all --repeats 10 --warmup 3 --out "bench/results/step_cost_gpu_${precision}.json"
done
