#!/usr/bin/env bash
# Train the two ablations of the default model with its exact budget and settings (see
# docs/default-model.md): the same denoiser without retrieval, and with the reference's
# self-inclusive retrieval. Both reuse the default model's autoencoder. Each resumes where it
# stopped: rerun until it prints "done".
# Usage: scripts/experiments/train_ablations.sh [DATA.npz] [RUN_DIR] [MAX_MINUTES]   (RUN_DIR of train_default.sh)
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
run=${2:-runs/default}
minutes=${3:-600}
unet_steps=${UNET_STEPS:-8128}

for retrieval in none include-self; do
    rissole-trt train --images "$data" --split train_idx --autoencoder "$run/ae" --steps "$unet_steps" \
        --channels 48 96 --k 10 --batch-size 16 --lr 4e-4 --ema-decay 0.998 --checkpoint-every 250 --threads 1 \
        --max-minutes "$minutes" --retrieval "$retrieval" -o "$run/ablation-$retrieval"
done
echo done
