#!/usr/bin/env bash
# The paper's comparisons at matched size and budget (issue #14): every row uses the v2 autoencoder
# (runs/v2/ae), the same data, 8,000 steps of batch 16, the same UNet channels and optimiser; only
# the conditioning differs. Each run resumes exactly where it stopped: rerun the same command until
# it prints "done" (--max-minutes bounds one invocation's work per row).
# Usage: scripts/experiments/train_comparisons.sh [SEED] [DATA.npz] [RUN_DIR] [MAX_MINUTES] [ROW...]
set -euo pipefail
seed=${1:-0}
data=${2:-../shared/data/noto-emoji-64.npz}
run=${3:-runs/compare}
minutes=${4:-600}
shift $(( $# < 4 ? $# : 4 ))
steps=${COMPARE_STEPS:-8000}
ae=${AE:-runs/v2/ae}

# name -> the flags that make it that model (everything else is shared)
declare -A flags=(
  [rissole-k10]="--k 10"
  [patchdiffusion]="--retrieval none"
  [rdm]="--block-factor 1 --k 10"
  [ldm]="--block-factor 1 --retrieval none"
  [rissole-k1]="--k 1"
  [rissole-k5]="--k 5"
  [rissole-k20]="--k 20"
  [rissole-nopos]="--k 10 --no-position-embedding"
  [rissole-wholekey]="--k 10 --key whole-latent"
  [rissole-xattn]="--k 10 --conditioning xattn"
  [rissole-xattn-all]="--k 10 --conditioning xattn --xattn-levels 0 1 2"
)
rows=("${@:-rissole-k10 patchdiffusion rdm ldm rissole-k1 rissole-k5 rissole-k20 rissole-nopos rissole-wholekey rissole-xattn rissole-xattn-all}")
read -r -a rows <<< "${rows[*]}"

for row in "${rows[@]}"; do
  [[ -n "${flags[$row]:-}" ]] || { echo "unknown row $row (known: ${!flags[*]})" >&2; exit 2; }
  # shellcheck disable=SC2086
  rissole-trt train --images "$data" --split train_idx --autoencoder "$ae" --steps "$steps" \
      --channels 48 96 --batch-size 16 --lr 4e-4 --ema-decay 0.998 --checkpoint-every 500 \
      --threads 1 --seed "$seed" --max-minutes "$minutes" --no-progress ${flags[$row]} \
      -o "$run/seed$seed/$row"
done
echo done
