"""Where do the default model's seams come from? Seam ratios of collages of retrieved blocks.

The generated images' seam ratio (mean |gradient| across block borders over the mean elsewhere)
misses the target by far (1.19-1.27 against 0.81 for real images). Each block is denoised from its
own position's retrieved neighbour blocks and never sees the block generated beside it. If that is
why, images assembled from the retrieved blocks alone should show it too:

* ``same neighbour``: every block p from the first neighbour: a real training image through the
  autoencoder (the floor);
* ``neighbour per block``: block p from the p-th neighbour (blocks of different but similar
  images, the mix a denoiser that copied its neighbours would make);
* ``random entries``: block p from a random database entry (no retrieval at all);

each decoded by the model's own decoder, for the queries of ``Engine.plan(n, seed)``, against the
generated images of the same plan.

Usage: python benchmarks/diagnose_seams.py [--model DIR --db DIR] [--n 256] [--seed 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from rissole_trt.engine import Engine
from rissole_trt.evaluation.metrics import block_seam_ratio
from rissole_trt.images import from_model_output


@torch.no_grad()
def collage(engine: Engine, ids: np.ndarray) -> np.ndarray:
    """uint8 images [n, H, W, 3] whose block p is block p of database entry ``ids[i, p]``."""
    P = ids.shape[1]
    blocks = engine.database.neighbour_blocks(ids)  # [n, P, P*C, bs, bs]: block p of each listed entry
    C = blocks.shape[2] // P
    own = torch.stack([blocks[:, p, p * C:(p + 1) * C] for p in range(P)], dim=1)  # entry p's block p
    return from_model_output(engine.decode(own * engine.model.config.diffusion.latent_scale))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the built-in model)")
    parser.add_argument("--db", help="database directory (default: the built-in one)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    engine = Engine(args.model, args.db, device="cpu")
    factor = engine.model.config.unet.block_factor
    P = factor * factor
    plan = engine.plan(args.n, seed=args.seed)
    neighbours = engine.retrieve(plan).neighbour_ids  # [n, k], nearest first
    if neighbours.shape[1] < P:
        raise SystemExit(f"needs k >= {P} neighbours, the model has k = {neighbours.shape[1]}")
    rng = np.random.default_rng(args.seed)
    sets = {
        "same neighbour": np.repeat(neighbours[:, :1], P, axis=1),
        "neighbour per block": neighbours[:, :P],
        "random entries": rng.integers(0, engine.database.count, size=(args.n, P)),
    }
    result = {"n": args.n, "seed": args.seed, "block_factor": factor}
    for name, ids in sets.items():
        result[name] = block_seam_ratio(collage(engine, ids), factor)
    result["generated"] = block_seam_ratio(engine.generate_batch(plan, 0, args.n), factor)
    for name, value in result.items():
        print(f"{name:>20}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
