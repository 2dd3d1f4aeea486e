"""Does a retrieval model use its neighbours, and do the neighbours carry information?

On held-out images (never in the database), for each model:

* the denoising error E‖ε̂ − ε‖² at a few timesteps, with the image's retrieved neighbours and with
  the neighbours of another held-out image (shuffled). A model that uses retrieval does better with
  the true neighbours; a model without retrieval is listed for scale;
* for the database: how close block p of the nearest neighbour is to block p of the query, against
  block p of a random database entry (latent L2; what the conditioning can tell the denoiser).

Usage: python benchmarks/diagnose_retrieval.py --data noto-emoji-64.npz --db DB \
           --model retrieval=DIR --model none=DIR [--n 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from rissole_trt import ops
from rissole_trt.engine import Engine
from rissole_trt.images import load_images, to_model_input
from rissole_trt.models import RissoleModel
from rissole_trt.retrieval.database import Database

TIMESTEPS = (50, 200, 500, 800)


@torch.no_grad()
def denoising_error(model: RissoleModel, latents: torch.Tensor, cond: torch.Tensor, seed: int) -> dict[str, float]:
    """Mean squared ε error per timestep for latents [n, C, H, W] and neighbour blocks cond [n, P, k*C, bs, bs]."""
    blocks = ops.split_blocks(latents, model.config.unet.block_factor)
    eps_fn = model.denoiser(cond)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for t in TIMESTEPS:
        noise = torch.randn(blocks.shape, generator=generator)
        out[f"t{t}"] = float((eps_fn(model.add_noise(blocks, noise, t), t) - noise).pow(2).mean())
    out["mean"] = float(np.mean(list(out.values())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help=".npz with images and test_idx")
    ap.add_argument("--db", required=True, help="the retrieval models' database")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--n", type=int, default=256, help="held-out images used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results as JSON")
    args = ap.parse_args()

    models = dict(spec.split("=", 1) for spec in args.model)
    database = Database.open(args.db)
    rng = np.random.default_rng(args.seed)
    real = load_images(args.data, 64, indices_key="test_idx")
    real = real[np.sort(rng.choice(len(real), size=min(args.n, len(real)), replace=False))]
    shuffle = np.roll(np.arange(len(real)), 1)  # every image gets another image's neighbours
    report: dict = {"n": len(real), "timesteps": TIMESTEPS, "models": {}}

    for name, directory in models.items():
        model = RissoleModel.load(directory)
        with torch.no_grad():
            latents = model.encode(to_model_input(real, "cpu"))
        if model.config.unet.uses_retrieval:
            engine = Engine(model, database, device="cpu")
            ids = engine.retrieve(len(real), query=real).neighbour_ids
            true = database.neighbour_blocks(ids)
            report["models"][name] = {"true_neighbours": denoising_error(model, latents, true, args.seed),
                                      "shuffled_neighbours": denoising_error(model, latents, true[shuffle], args.seed)}
            if "neighbour_block_distance" not in report:
                bf, c = model.config.unet.block_factor, model.config.autoencoder.latent_dim
                query_blocks = ops.split_blocks(latents, bf)  # [n, P, C, bs, bs]
                nearest = true[:, :, :c]  # block p of the first neighbour
                random_ids = rng.integers(0, database.count, size=(len(real), 1))
                random = database.neighbour_blocks(random_ids)
                report["neighbour_block_distance"] = {
                    "nearest": float((query_blocks - nearest).pow(2).sum((2, 3, 4)).sqrt().mean()),
                    "random_entry": float((query_blocks - random).pow(2).sum((2, 3, 4)).sqrt().mean())}
        else:
            none = torch.empty(len(real), model.config.n_blocks, 0, model.config.block_size, model.config.block_size)
            report["models"][name] = {"no_neighbours": denoising_error(model, latents, none, args.seed)}
        print(name, json.dumps(report["models"][name]))
    print(json.dumps(report.get("neighbour_block_distance")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
