#!/usr/bin/env bash
# Evaluate a model the way the README's quality table was made: each sampler with the built-in
# model's default sampling (--overlap half) and with the reference's aligned blocks (--overlap none).
# Usage: scripts/experiments/eval_default.sh [DATA.npz] [OUT_DIR] [MODEL_DIR DB_DIR]   (default: the built-in model)
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
out=${2:-benchmarks/results}
model_args=()
[ $# -ge 4 ] && model_args=(--model "$3" --db "$4")
common=(--real "$data" --real-split test_idx --train "$data" --train-split train_idx --no-progress "${model_args[@]}")
dpmpp=(--n 256 --sampler dpmpp_2m --steps 20)
rissole-trt eval "${common[@]}" "${dpmpp[@]}" --overlap half -o "$out/eval_dpmpp_2m-20-overlaphalf.json"
rissole-trt eval "${common[@]}" "${dpmpp[@]}" --overlap none -o "$out/eval_dpmpp_2m-20.json"
rissole-trt eval "${common[@]}" "${dpmpp[@]}" --overlap none --clip codebook -o "$out/eval_dpmpp_2m-20-clipcodebook.json"
for overlap in half none; do
    suffix=$([ $overlap = half ] && echo -overlaphalf || true)
    rissole-trt eval "${common[@]}" --n 256 --sampler ddim --steps 50 --overlap $overlap -o "$out/eval_ddim-50$suffix.json"
    rissole-trt eval "${common[@]}" --n 128 --sampler ddpm --overlap $overlap -o "$out/eval_ddpm-1000$suffix.json"
done
