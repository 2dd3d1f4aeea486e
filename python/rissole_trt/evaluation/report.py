"""The ``rissole-trt eval`` report: sample quality against held-out and training images."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text
from ..engine import Engine
from ..images import from_model_output, make_grid, save_image, to_model_input
from .fid import features, frechet_distance, load_feature_net
from .metrics import block_seam_ratio, memorisation_rate, psnr, sliced_wasserstein


@torch.no_grad()
def reconstruct(engine: Engine, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Autoencoder round trip (encode, quantise, decode) of uint8 images."""
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size], engine.device)
        out.append(from_model_output(engine.model.decode(engine.model.encode(x))))
    return np.concatenate(out)


def evaluate(engine: Engine, real: np.ndarray, training: np.ndarray | None, *, n: int = 512, seed: int = 0,
             sampler: str = "dpmpp_2m", steps: int | None = None, batch_size: int = 32, exclude_self: bool = True,
             clip: str = "none", overlap: str | None = None, progress: bool = True) -> tuple[dict, np.ndarray]:
    """Generate ``n`` images and measure them; returns (report, generated images).

    Sampling arguments as in :meth:`Engine.plan` (``overlap`` None: the model's default)."""
    # A whole-latent model (block factor 1) has no seams of its own: it is measured on the 2x2 grid
    # where a block model's would be, so that every model of a comparison is measured alike.
    bf = max(2, engine.model.config.unet.block_factor)
    plan = engine.plan(n, seed=seed, sampler=sampler, steps=steps, batch_size=batch_size,
                       exclude_self=exclude_self, clip=clip, overlap=overlap)
    start = time.perf_counter()
    generated = engine.generate_plan(plan, progress=progress)
    seconds = time.perf_counter() - start
    report = {
        "settings": {"n": n, "seed": seed, "sampler": sampler, "steps": plan.steps, "clip": clip,
                     "overlap": plan.overlap,
                     "retrieval": (("exclude-self" if exclude_self else "include-self")
                                   if engine.model.config.unet.uses_retrieval else "none"),
                     "batch_size": batch_size, "real_images": len(real),
                     "training_images": None if training is None else len(training)},
        "generation_seconds": seconds,
        "images_per_second": n / seconds,
        "seam_ratio": {"generated": block_seam_ratio(generated, bf), "real": block_seam_ratio(real, bf),
                       "block_factor": bf},
        "swd": sliced_wasserstein(generated, real, seed=seed),
        "autoencoder_psnr_db": psnr(real, reconstruct(engine, real)),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "torch_threads": torch.get_num_threads(), "device": str(engine.device)},
    }
    if training is not None:
        report["memorisation"] = memorisation_rate(generated, training)
        # The target for SWD: as many real training images as generated ones against the same
        # held-out images (what a perfect model's samples would score, sampling noise included).
        pick = np.random.default_rng(seed).choice(len(training), size=min(n, len(training)), replace=False)
        report["swd_training_images"] = sliced_wasserstein(training[np.sort(pick)], real, seed=seed)
    # Domain FID (not Inception-FID: a small CNN trained on the emoji images, see evaluation.fid), with
    # its floor: as many real training images as generated ones against the same held-out images.
    net = load_feature_net()
    report["domain_fid"] = {"generated": frechet_distance(features(net, generated), features(net, real))}
    if training is not None:
        picked = training[np.sort(pick)]
        report["domain_fid"]["training_images"] = frechet_distance(features(net, picked), features(net, real))
        # What a perfect denoiser of this model would score: the same training images through the
        # model's autoencoder (every sample is decoded by it). A metric's target below this floor
        # cannot be met by training the denoiser.
        decoded = reconstruct(engine, picked)
        report["autoencoder_floor"] = {
            "swd": sliced_wasserstein(decoded, real, seed=seed),
            "domain_fid": frechet_distance(features(net, decoded), features(net, real)),
            "seam_ratio": block_seam_ratio(decoded, bf),
        }
    return report, generated


def write_report(report: dict, generated: np.ndarray, path: str | os.PathLike, grid_images: int = 64) -> tuple[Path, Path]:
    """Write the JSON report and a sample grid PNG beside it (same name, ``.png``); both atomically."""
    path = Path(path)
    write_text(path, json.dumps(report, indent=2))
    grid = save_image(make_grid(generated[:grid_images]), path.with_suffix(".png"))
    return path, grid
