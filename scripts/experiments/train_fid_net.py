"""Train the domain-FID feature network on the training split and write it into the package assets.

    python scripts/experiments/train_fid_net.py ../shared/data/noto-emoji-64.npz [--steps 1500] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rissole_trt.evaluation.fid import ASSET_DIR, save_feature_net, train_feature_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", default=str(ASSET_DIR))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with np.load(args.data) as data:
        train = data["train_idx"]
        images, categories = data["images"][train], data["categories"][train]
    start = time.perf_counter()
    net = train_feature_net(images, categories, steps=args.steps, log=print)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    print(f"wrote {save_feature_net(net, args.output, sorted(set(categories.tolist())))}")


if __name__ == "__main__":
    main()
