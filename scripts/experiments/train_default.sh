#!/usr/bin/env bash
# Reproduce the built-in default model and its database (see docs/default-model.md).
# Every stage resumes exactly where it stopped: rerun this script until it prints "done".
# Usage: scripts/experiments/train_default.sh [DATA.npz] [RUN_DIR] [MAX_MINUTES_PER_STAGE]
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
run=${2:-runs/default}
minutes=${3:-600}
ae_steps=${AE_STEPS:-1469}
unet_steps=${UNET_STEPS:-8128}

rissole-trt train-autoencoder --images "$data" --split train_idx --steps "$ae_steps" --batch-size 32 \
    --checkpoint-every 100 --threads 1 --max-minutes "$minutes" -o "$run/ae"
rissole-trt train --images "$data" --split train_idx --autoencoder "$run/ae" --steps "$unet_steps" \
    --channels 48 96 --k 10 --batch-size 16 --lr 4e-4 --ema-decay 0.998 --checkpoint-every 250 --threads 1 \
    --max-minutes "$minutes" -o "$run/unet"
rissole-trt build-db --model "$run/unet/model" --images "$data" --split train_idx --labels categories \
    --no-store-keys --overwrite -o "$run/db"
echo done
