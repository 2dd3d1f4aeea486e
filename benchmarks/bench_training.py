"""Training steps/s in fp32 and in bf16 autocast, side by side in one process.

    python benchmarks/bench_training.py [--data noto-emoji-64.npz] [--steps 60] [--rounds 3] [--threads 1]

Times the optimizer steps of the autoencoder (the default [16, 32], batch 32) and of the block
denoiser (the default [48, 96], k 10, batch 16 images = 64 block rows) as ``rissole-trt
train-autoencoder`` / ``train`` run them, alternating fp32 and bf16 rounds so that a change in
machine load hits both alike; prints the median steps/s of each and the ratio, with the CPU. A step's
cost does not depend on the number of training images, so the first ``--images`` of the training
split are used: the per-call setup (encoding, retrieval), subtracted from the timings, stays small.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rissole_trt.bench.hardware import machine_info
from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from rissole_trt.images import load_images
from rissole_trt.models import RissoleModel
from rissole_trt.runtime.torch_backend import bf16_native
from rissole_trt.train import AutoencoderTrainConfig, DenoiserTrainConfig, train_autoencoder, train_denoiser


def _time(run, steps: int) -> float:
    """Steps/s of ``steps`` more steps of one run: a call resumes the run (loading, encoding, retrieval,
    a final checkpoint), so the time of a call that adds no step is subtracted."""
    start = time.perf_counter()
    run(0)
    fixed = time.perf_counter() - start
    start = time.perf_counter()
    run(steps)
    return steps / max(time.perf_counter() - start - fixed, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/noto-emoji-64.npz")
    ap.add_argument("--steps", type=int, default=60, help="steps per timed round")
    ap.add_argument("--images", type=int, default=512, help="training images used (default 512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = load_images(args.data, 64, indices_key="train_idx")[:args.images]
    ae_config = AutoencoderConfig(channels=(16, 32), latent_dim=10, n_embeddings=1024)
    model_config = ModelConfig(autoencoder=ae_config, unet=UNetConfig(latent_channels=10, channels=(48, 96), k=10),
                               diffusion=DiffusionConfig(), image_size=64)
    results: dict[str, dict[str, list[float]]] = {"autoencoder": {}, "denoiser": {}}
    with tempfile.TemporaryDirectory() as tmp:
        done: dict[tuple[str, str], int] = {}

        def stage(kind: str, precision: str):
            directory = Path(tmp) / f"{kind}-{precision}"

            def run(steps: int) -> None:
                total = done.get((kind, precision), 0) + steps
                if kind == "autoencoder":
                    train_autoencoder(images, ae_config, AutoencoderTrainConfig(steps=total, precision=precision,
                                      checkpoint_every=10**9), directory, progress=False)
                else:
                    model = RissoleModel(model_config)
                    train_denoiser(images, model, DenoiserTrainConfig(steps=total, precision=precision,
                                   checkpoint_every=10**9), directory, progress=False)
                done[(kind, precision)] = total
            return run

        for kind in results:
            runs = {p: stage(kind, p) for p in ("fp32", "bf16")}
            for run in runs.values():
                run(2)  # warm-up, and the per-run setup (encoding, retrieval) out of the timed rounds
            for _ in range(args.rounds):
                for precision, run in runs.items():
                    results[kind].setdefault(precision, []).append(_time(run, args.steps))
    cpu = machine_info(torch.device("cpu"))["hardware"]["cpu_model"]
    print(f"{cpu}, {args.threads} thread(s), native bf16: {bf16_native('cpu')}")
    summary = {}
    for kind, by_precision in results.items():
        medians = {p: statistics.median(v) for p, v in by_precision.items()}
        summary[kind] = {"steps_per_s": medians, "rounds": by_precision, "bf16_speedup": medians["bf16"] / medians["fp32"]}
        print(f"{kind:12s} fp32 {medians['fp32']:.2f} steps/s, bf16 {medians['bf16']:.2f} steps/s "
              f"({summary[kind]['bf16_speedup']:.2f}x)")
    if args.output:
        Path(args.output).write_text(json.dumps({"cpu": cpu, "threads": args.threads, **summary}, indent=2))


if __name__ == "__main__":
    main()
