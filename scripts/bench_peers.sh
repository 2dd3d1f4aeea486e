#!/usr/bin/env bash
# The README's engine-vs-peers table: for one preset, build an engine per precision on this machine,
# then bench it beside our torch backend and every peer (eager, torch.compile, ONNX Runtime,
# OpenVINO) in one interleaved run. Writes ENGINE_DIRs and one JSON + log per precision under OUT.
# Usage: scripts/bench_peers.sh PRESET OUT [THREADS] [PRECISIONS...]
set -euo pipefail
preset=$1
out=$2
threads=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
precisions=("${@:-fp32 bf16}")
read -r -a precisions <<< "${precisions[*]}"
mkdir -p "$out"
for precision in "${precisions[@]}"; do
  engine="$out/engine-$preset-$precision"
  rissole-trt build-engine --preset "$preset" --precision "$precision" --batch-sizes 1,16 --budget 60 \
      --threads "$threads" -o "$engine" 2>&1 | tee "$out/build-$preset-$precision.log"
  rissole-trt bench --preset "$preset" --engine "$engine" --peers --backend torch --precision "$precision" \
      --sampler ddpm ddim:50 dpmpp_2m:20 --images 16 --threads "$threads" --psnr-images 0 \
      -o "$out/bench-$preset-$precision.json" 2>&1 | tee "$out/bench-$preset-$precision.log"
done
