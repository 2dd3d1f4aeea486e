"""One denoiser call, several ways, timed side by side (interleaved rounds, medians).

Variants (on a preset's random weights or a saved ``--model``, ``--rows`` block rows per call):
  eager-fp32  RissoleModel.denoiser: the module's per-step forward, NCHW, weights re-laid-out per call
  torch-fp32  rissole_trt.runtime.torch_backend (prepacked oneDNN convs, channels-last)
  torch-bf16  the same in bf16 (fast only on CPUs with AVX-512-BF16/AMX, or GPUs)
  compiled    torch.compile(forward_hoisted) with inductor's CPU freezing (--compile; compiling takes
              minutes on a small machine and is not counted)

``--profile`` prints torch.profiler's top operators of one call per variant: where the time goes.

Usage: python benchmarks/bench_denoiser.py [--preset celeba64 | --model DIR] [--rows 64] [--rounds 5]
           [--variants eager-fp32 torch-fp32] [--compile] [--profile] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rissole_trt.bench.flops import model_flops
from rissole_trt.models import RissoleModel
from rissole_trt.presets import PRESETS, make_preset_model
from rissole_trt.runtime import registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="celeba64", choices=list(PRESETS))
    ap.add_argument("--model", metavar="DIR", help="a saved model instead of a preset's random weights")
    ap.add_argument("--rows", type=int, default=64, help="block rows per call (a multiple of the block count)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["eager-fp32", "torch-fp32", "torch-bf16"], metavar="BACKEND-PRECISION",
                    help="registered backends with a precision, e.g. torch-bf16 onnxruntime-fp32")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor, freezing)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = RissoleModel.load(args.model) if args.model else make_preset_model(args.preset)
    label = args.model or args.preset
    config = model.config
    p, c, bs, k = config.n_blocks, config.autoencoder.latent_dim, config.block_size, config.unet.k
    if args.rows % p:
        raise SystemExit(f"--rows must be a multiple of the block count {p}")
    b = args.rows // p
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(b, p, k * c, bs, bs, generator=gen)
    x = torch.randn(b, p, c, bs, bs, generator=gen)
    t = config.diffusion.n_steps // 2
    fns = {}
    for name in args.variants:
        backend, _, precision = name.partition("-")
        fns[name] = registry.build(backend, model, precision or "fp32").denoiser(cond)
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        eager = model.denoiser(cond)
        compiled = torch.compile(model.unet.forward_hoisted)
        time_bias = eager.time_table[t:t + 1]
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x.flatten(0, 1), eager.cond_feat, time_bias, eager.pos_bias)
        print(f"torch.compile: {time.perf_counter() - start:.0f} s to compile")
        fns["compiled"] = lambda xx, tt: compiled(xx.flatten(0, 1), eager.cond_feat, time_bias, eager.pos_bias)

    flops = model_flops(model)["denoiser_per_row"] * args.rows
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(x, t)  # warm-up
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x, t)
                times[name].append(time.perf_counter() - start)
    print(f"{label}: {args.rows} rows per call, {flops / 1e9:.1f} GFLOP per call, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    base = statistics.median(times[next(iter(times))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<11} {med * 1e3:9.1f} ms  (min {min(ts) * 1e3:8.1f})  {flops / med / 1e9:7.1f} GFLOP/s  "
              f"{base / med:5.2f}x the first")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, fn in fns.items():
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(x, t)
            print(f"\n{name}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
