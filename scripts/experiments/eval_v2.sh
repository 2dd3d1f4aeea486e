#!/usr/bin/env bash
# Evaluate the current export of a v2 denoiser run (its EMA weights at the last checkpoint) the way
# the README's quality tables are made: a database of the training split, then DPM-Solver++(2M)-20
# on 512 images per seed against the held-out split.
# Usage: [CLIP=codebook] scripts/experiments/eval_v2.sh RUN_DIR/unet-scaleS [DATA.npz] [OUT_DIR] [SEEDS...]
set -euo pipefail
run=$1
data=${2:-../shared/data/noto-emoji-64.npz}
out=${3:-benchmarks/results/v2}
shift $(( $# < 3 ? $# : 3 ))
seeds=("${@:-0}")
# A copy of the export, so that the running training cannot replace it mid-evaluation; its step is
# the checkpoint's (the export is written right after each checkpoint).
step=$(python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$run/checkpoints/checkpoint.pt")
clip=${CLIP:-none}
name=$(basename "$run")-step$step-clip$clip
rm -rf "$run-evalmodel" && cp -r "$run/model" "$run-evalmodel"
rissole-trt build-db --model "$run-evalmodel" --images "$data" --split train_idx --labels categories --no-store-keys \
    --overwrite -o "$run-evaldb"
for seed in "${seeds[@]}"; do
  rissole-trt eval --model "$run-evalmodel" --db "$run-evaldb" --real "$data" --real-split test_idx --train "$data" \
      --train-split train_idx --n 512 --sampler dpmpp_2m --steps 20 --clip "$clip" --seed "$seed" --no-progress \
      -o "$out/$name-seed$seed.json"
done
echo "wrote $out/$name-seed*.json"
