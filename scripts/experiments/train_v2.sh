#!/usr/bin/env bash
# The v2 default model: autoencoder (lr 1e-3, 5,600 steps, bf16 autocast where the CPU has it), then
# the block denoiser on it, then its database. Every stage resumes exactly where it stopped (rerun
# the same command until it prints "done"); --max-minutes bounds each stage's piece of work.
# Usage: scripts/experiments/train_v2.sh [DATA.npz] [RUN_DIR] [LATENT_SCALE] [MAX_MINUTES]
# UNET_STEPS sets the denoiser's step budget; UNET_FLAGS adds flags to its `rissole-trt train` (e.g.
# --channels-last where benchmarks/bench_training_layout.py measures it faster).
set -euo pipefail
data=${1:-../shared/data/noto-emoji-64.npz}
run=${2:-runs/v2}
scale=${3:-1.0}
minutes=${4:-600}
unet_steps=${UNET_STEPS:-40000}
read -r -a unet_flags <<< "${UNET_FLAGS:-}"

rissole-trt train-autoencoder --images "$data" --split train_idx --steps 5600 --batch-size 32 --lr 1e-3 \
    --checkpoint-every 200 --threads 1 --max-minutes "$minutes" --no-progress -o "$run/ae"
rissole-trt train --images "$data" --split train_idx --autoencoder "$run/ae" --steps "$unet_steps" \
    --channels 48 96 --k 10 --batch-size 16 --lr 4e-4 --ema-decay 0.998 --latent-scale "$scale" \
    --checkpoint-every 500 --threads 1 --max-minutes "$minutes" "${unet_flags[@]}" -o "$run/unet-scale$scale"
rissole-trt build-db --model "$run/unet-scale$scale/model" --images "$data" --split train_idx --labels categories \
    --no-store-keys --overwrite -o "$run/db-scale$scale"
echo done
