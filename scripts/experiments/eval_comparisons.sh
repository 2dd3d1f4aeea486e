#!/usr/bin/env bash
# Evaluate every finished row of scripts/experiments/train_comparisons.sh the way the README's quality tables are
# made: a database of the training split (rows with retrieval), then DPM-Solver++(2M)-20 on 512 images
# per eval seed against the held-out split, 1 thread. Skips rows already evaluated.
# Usage: scripts/experiments/eval_comparisons.sh [TRAIN_SEED] [DATA.npz] [RUN_DIR] [OUT_DIR] [EVAL_SEEDS...]
set -euo pipefail
seed=${1:-0}
data=${2:-../shared/data/noto-emoji-64.npz}
run=${3:-runs/compare}
out=${4:-benchmarks/results/compare}
shift $(( $# < 4 ? $# : 4 ))
eval_seeds=("${@:-0}")
steps=${COMPARE_STEPS:-8000}
mkdir -p "$out"
for dir in "$run/seed$seed"/*/; do
  row=$(basename "$dir")
  done_step=$(python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" \
      "$dir/checkpoints/checkpoint.pt" 2>/dev/null || echo 0)
  [[ "$done_step" == "$steps" ]] || { echo "$row: at step $done_step of $steps, not evaluated yet"; continue; }
  db_args=()
  if python -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['config']['unet'].get('conditioning','add') != 'none' else 1)" \
      "$dir/model/config.json"; then
    [[ -d "$dir/db" ]] || rissole-trt build-db --model "$dir/model" --images "$data" --split train_idx \
        --labels categories --no-store-keys --no-progress -o "$dir/db" >/dev/null
    db_args=(--db "$dir/db")
  fi
  for eval_seed in "${eval_seeds[@]}"; do
    report="$out/$row-train$seed-eval$eval_seed.json"
    [[ -f "$report" ]] && continue
    rissole-trt eval --model "$dir/model" "${db_args[@]}" --real "$data" --real-split test_idx --train "$data" \
        --train-split train_idx --n 512 --sampler dpmpp_2m --steps 20 --seed "$eval_seed" --threads 1 \
        --no-progress -o "$report"
  done
done
