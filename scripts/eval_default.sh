#!/usr/bin/env bash
# Evaluate a model the way the README's quality table was made.
# Usage: scripts/eval_default.sh [DATA.npz] [OUT_DIR] [MODEL_DIR DB_DIR]   (default: the built-in model)
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
out=${2:-benchmarks/results}
model_args=()
[ $# -ge 4 ] && model_args=(--model "$3" --db "$4")
common=(--real "$data" --real-split test_idx --train "$data" --train-split train_idx --no-progress "${model_args[@]}")
rissole-trt eval "${common[@]}" --n 256 --sampler dpmpp_2m --steps 20 -o "$out/eval_dpmpp_2m-20.json"
rissole-trt eval "${common[@]}" --n 256 --sampler dpmpp_2m --steps 20 --clip codebook -o "$out/eval_dpmpp_2m-20-clipcodebook.json"
rissole-trt eval "${common[@]}" --n 256 --sampler dpmpp_2m --steps 20 --overlap half -o "$out/eval_dpmpp_2m-20-overlaphalf.json"
rissole-trt eval "${common[@]}" --n 256 --sampler ddim --steps 50 -o "$out/eval_ddim-50.json"
rissole-trt eval "${common[@]}" --n 128 --sampler ddpm -o "$out/eval_ddpm-1000.json"
