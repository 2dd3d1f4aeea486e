#!/usr/bin/env bash
# Evaluate the default model against its two ablations the way the README's ablation table was
# made: DPM-Solver++(2M) 20 steps, 512 images, seeds 0 and 1.
# Usage: scripts/experiments/eval_ablations.sh [DATA.npz] [RUN_DIR] [OUT_DIR]
#   RUN_DIR holds ablation-none/ and ablation-include-self/ (scripts/experiments/train_ablations.sh); the
#   default model is the built-in one.
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
run=${2:-runs/default}
out=${3:-benchmarks/results}
common=(--real "$data" --real-split test_idx --train "$data" --train-split train_idx --no-progress
        --n 512 --sampler dpmpp_2m --steps 20)
for seed in 0 1; do
    rissole-trt eval "${common[@]}" --seed "$seed" -o "$out/ablation_retrieval-seed$seed.json"
    rissole-trt eval "${common[@]}" --seed "$seed" --model "$run/ablation-none/model" \
        -o "$out/ablation_none-seed$seed.json"
    # The reference's retrieval, in training and in sampling (the query is its own neighbour) ...
    rissole-trt eval "${common[@]}" --seed "$seed" --model "$run/ablation-include-self/model" \
        --db "$run/db" --include-self -o "$out/ablation_include-self-seed$seed.json"
    # ... and the same model sampled with the query left out of its neighbours.
    rissole-trt eval "${common[@]}" --seed "$seed" --model "$run/ablation-include-self/model" \
        --db "$run/db" -o "$out/ablation_include-self-sampled-exclude-seed$seed.json"
done
