"""The machine's peak FLOP/s as `rissole-trt bench` measures it, and what the machine is.

GEMM-shaped (square matmul) and conv-shaped (3x3, 256 -> 256 channels on 8x8 maps, batch 64,
prepacked oneDNN weights, channels-last) microbenchmarks in fp32 and bf16. A dtype the CPU does not
compute natively (bf16 without AVX-512-BF16/AMX) is measured at a small size so that it stays quick.

Usage: python benchmarks/bench_peak.py [--threads N] [--min-time 2] [--json peak.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from rissole_trt.bench.hardware import machine_info, measure_peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per microbenchmark")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device)
    hw = info["hardware"]
    print(f"{hw['cpu_model']} ({hw['cpu_vendor']}), {hw['usable_cpus']} CPUs, {torch.get_num_threads()} torch threads; "
          f"ISA: {' '.join(f for f, on in hw['isa_flags'].items() if on)}; torch {info['versions']['torch']}")
    peak = measure_peak(device, ["fp32", "bf16"], args.min_time)
    for precision, r in peak.items():
        for kind in ("gemm", "conv"):
            print(f"  {precision:<5} {kind:<5} {r[kind]['gflops']:8.1f} GFLOP/s  shape {r[kind]['shape']} "
                  f"({r[kind]['calls']} calls)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "threads": torch.get_num_threads(), "peak": peak}, f, indent=2)


if __name__ == "__main__":
    main()
