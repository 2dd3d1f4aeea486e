#!/usr/bin/env bash
# The README's engine-vs-peers tables: for one preset, build an engine per precision on this machine
# with the default buckets (1, 16 and 64 images), then bench it beside our torch backend and every
# peer (eager, torch.compile, ONNX Runtime, OpenVINO) in one interleaved run per bucket: the full
# samplers at 16 images (the headline table), DDIM-50 alone at 1 and 64 (the "never slower than the
# fastest peer at any bucket" check). Writes ENGINE_DIRs and one JSON + log per run under OUT.
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
  rissole-trt build-engine --preset "$preset" --precision "$precision" --batch-sizes 1,16,64 --budget 60 \
      --threads "$threads" -o "$engine" 2>&1 | tee "$out/build-$preset-$precision.log"
  peers=(--preset "$preset" --engine "$engine" --peers --backend torch --precision "$precision" --threads "$threads"
         --psnr-images 0)
  rissole-trt bench "${peers[@]}" --sampler ddpm ddim:50 dpmpp_2m:20 --images 16 \
      -o "$out/bench-$preset-$precision.json" 2>&1 | tee "$out/bench-$preset-$precision.log"
  for images in 1 64; do
    rissole-trt bench "${peers[@]}" --sampler ddim:50 --images "$images" \
        -o "$out/bench-$preset-$precision-images$images.json" 2>&1 | tee "$out/bench-$preset-$precision-images$images.log"
  done
done
