"""Does channels-last speed up a denoiser training step? Contiguous vs channels-last, interleaved.

One training step of the default block UNet ([48, 96], k 10, 16 images = 64 block rows of 10x8x8):
forward, MSE loss, backward and an Adam update, with the model and its inputs in torch's contiguous
(NCHW) layout or in channels-last, timed in turn repeat by repeat on the same weights and batch.

Usage: python benchmarks/bench_training_layout.py [--threads 1] [--repeats 25] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json

import torch

from rissole_trt.bench.hardware import machine_info
from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from rissole_trt.models import RissoleModel
from rissole_trt.timing import interleaved_medians


def _step_fn(unet: torch.nn.Module, batch: tuple, channels_last: bool):
    unet = copy.deepcopy(unet)
    x, cond, t, pos = batch
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        x, cond = (v.contiguous(memory_format=torch.channels_last) for v in (x, cond))
    optimizer = torch.optim.Adam(unet.parameters(), 1e-4)

    def step() -> None:
        loss = (unet(x, cond, t, pos) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ModelConfig(autoencoder=AutoencoderConfig(channels=(16, 32), latent_dim=10, n_embeddings=1024),
                         unet=UNetConfig(latent_channels=10, channels=(48, 96), k=10), diffusion=DiffusionConfig(),
                         image_size=64)
    g = torch.Generator().manual_seed(0)
    rows, p = 64, config.n_blocks
    batch = (torch.randn(rows, 10, 8, 8, generator=g), torch.randn(rows, 100, 8, 8, generator=g),
             torch.randint(0, 1000, (rows,), generator=g), torch.arange(p).repeat(rows // p))
    unet = RissoleModel(config).unet.train()
    steps = {"contiguous": _step_fn(unet, batch, False), "channels_last": _step_fn(unet, batch, True)}
    medians = interleaved_medians(steps, args.repeats, warmups=2)
    result = {name: {"ms": seconds * 1e3, "steps_per_s": 1 / seconds} for name, seconds in medians.items()}
    result["channels_last_speedup"] = result["contiguous"]["ms"] / result["channels_last"]["ms"]
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(torch.device("cpu")), "threads": args.threads, **result}, f, indent=1)
    return result


if __name__ == "__main__":
    main()
