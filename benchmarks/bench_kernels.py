"""The Triton kernels against their torch references, side by side in one run (issue #12).

For each kernel: median time of the kernel and of its plain torch reference (the same work as torch
ops: gather, table lookups / projection, attention; or the sampler update as elementwise ops), the
ratio, and the kernel's achieved bandwidth and arithmetic rate against the device's nominal peaks
(H200: 4.8 TB/s HBM, ~790 TFLOP/s dense bf16/fp16 — nominal datasheet figures, not measured here).

Bytes counted are the kernel's compulsory traffic: q read and output written once, each context
token's code (2 bytes) or context row (D values) read once per (row, head), the tables or
projection weights once, x/ε/noise/x0 once each for the sampler step. FLOPs: 4·rows·heads·Lq·T·dh
for the attention (two matmuls), plus 4·rows·T·D·heads·dh for the fused projection.

Usage: python benchmarks/bench_kernels.py [--dtype bf16] [--json out.json] [--smoke]
(``--smoke``: tiny shapes, e.g. under TRITON_INTERPRET=1 on a CPU, to check that the script runs.)
"""
from __future__ import annotations

import argparse
import statistics

import torch

from rissole_trt.bench.rows import RowWriter
from rissole_trt.diffusion import NoiseSchedule, make_sampler
from rissole_trt.kernels.context_xattn import context_xattn, context_xattn_reference
from rissole_trt.kernels.gather_xattn import gather_xattn, gather_xattn_reference
from rissole_trt.kernels.sampler_step import sampler_step, sampler_step_reference
from rissole_trt.platform import resolve_device
from rissole_trt.timing import time_calls

NOMINAL = {"NVIDIA H200": {"GB/s": 4800.0, "TFLOP/s": 790.0}}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _time(fn, device, min_time):
    return statistics.median(time_calls(fn, min_time=min_time, device=device))


def _row(name, kernel_s, reference_s, bytes_moved, flops, peak):
    row = {"kernel": name, "kernel_ms": kernel_s * 1e3, "reference_ms": reference_s * 1e3,
           "speedup": reference_s / kernel_s, "GB/s": bytes_moved / kernel_s / 1e9,
           "TFLOP/s": flops / kernel_s / 1e12 if flops else None}
    if peak:
        row["bandwidth_of_peak"] = row["GB/s"] / peak["GB/s"]
        row["flops_of_peak"] = row["TFLOP/s"] / peak["TFLOP/s"] if flops else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per measurement")
    ap.add_argument("--json", help="write the rows as JSON (rewritten after every row)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (a check that the script runs)")
    args = ap.parse_args()
    device = resolve_device("auto")
    dtype = DTYPES[args.dtype]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)"
    peak = NOMINAL.get(name)
    # celeba64-like shapes at 256 images: 1024 block rows, 4x4 queries at the deepest level,
    # k = 10 neighbours of 8x8 blocks = 640 tokens, 4 heads of 16, a 1024-row codebook.
    rows, lq, heads, dh, k, bs, entries, n_codes, d = 1024, 16, 4, 16, 10, 8, 20000, 1024, 64
    if args.smoke:
        rows, lq, k, bs, entries, n_codes, d = 8, 16, 2, 4, 50, 32, 32
        args.min_time = 0.0
    images, blocks, tokens = rows // 4, 4, k * bs * bs
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    problem = dict(q=rand(rows, lq, heads, dh), ids=torch.randint(0, entries, (images, k), generator=g).to(device),
                   row_image=torch.arange(images).repeat_interleave(blocks).to(device),
                   row_block=torch.arange(blocks).repeat(images).to(device),
                   codes=torch.randint(0, n_codes, (blocks, entries, bs, bs), generator=g).to(torch.uint16).to(device),
                   k_codes=rand(n_codes, heads, dh), v_codes=rand(n_codes, heads, dh),
                   k_pos=rand(bs * bs, heads, dh), v_pos=rand(bs * bs, heads, dh))
    es = torch.finfo(dtype).bits // 8
    attention_flops = 4 * rows * heads * lq * tokens * dh
    # Each row lands in the JSON as soon as it is measured: a stage stopped by its limit keeps them.
    writer = RowWriter(args.json, {"device": name, "dtype": args.dtype, "torch": torch.__version__,
                                   "nominal_peak": peak})
    print(f"{name}, {args.dtype}, torch {torch.__version__}; rows {rows}, Lq {lq}, heads {heads}x{dh}, "
          f"tokens {tokens} (k {k}, bs {bs}), codebook {n_codes}, D {d}")
    print("| kernel | kernel ms | torch reference ms | speed-up | GB/s | TFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")

    def add(row: dict) -> None:
        writer.add(row)
        tflops = "—" if row["TFLOP/s"] is None else f"{row['TFLOP/s']:.2f}"
        print(f"| {row['kernel']} | {row['kernel_ms']:.3f} | {row['reference_ms']:.3f} | {row['speedup']:.1f}x | "
              f"{row['GB/s']:.0f} | {tflops} |")

    kernel = _time(lambda: gather_xattn(**problem), device, args.min_time)
    reference = _time(lambda: gather_xattn_reference(**problem), device, args.min_time)
    moved = 2 * rows * lq * heads * dh * es + rows * heads * tokens * 2 + 2 * (n_codes + bs * bs) * heads * dh * es
    add(_row("gather_xattn", kernel, reference, moved, attention_flops, peak))

    ctx = dict(q=problem["q"], ctx=rand(rows, tokens, d), w_k=rand(d, heads * dh), w_v=rand(d, heads * dh))
    kernel = _time(lambda: context_xattn(**ctx), device, args.min_time)
    reference = _time(lambda: context_xattn_reference(**ctx), device, args.min_time)
    moved = 2 * rows * lq * heads * dh * es + rows * heads * tokens * d * es + 2 * d * heads * dh * es
    add(_row("context_xattn", kernel, reference, moved, attention_flops + 4 * rows * tokens * d * heads * dh, peak))

    step = make_sampler("dpmpp_2m", NoiseSchedule(), 20).linear_step(5)  # second order: all four inputs
    x, eps, noise, prev = (torch.randn(rows, 10, bs, bs, generator=g).to(device) for _ in range(4))
    kernel = _time(lambda: sampler_step(x, eps, noise, prev, step), device, args.min_time)
    reference = _time(lambda: sampler_step_reference(x, eps, noise, prev, step), device, args.min_time)
    add(_row("sampler_step (fp32)", kernel, reference, 6 * x.numel() * 4, 0, peak))
    writer.finish()

if __name__ == "__main__":
    main()
