"""``rissole-trt generate-dataset``: many images, sharded, on a Ray cluster (local by default)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate-dataset", help="generate a large image set in shards on Ray",
        description="Generate images 0..N-1 of one seeded plan into shards under a folder, on a Ray cluster "
                    "(a local one unless --ray-address is given). Each worker holds one Engine; image i depends "
                    "only on (seed, i), so the output is the same for any number of workers. Finished shards are "
                    "recorded in DIR/manifest.json; rerunning the same command resumes. Needs "
                    "pip install 'rissole-trt[distributed]'.")
    p.add_argument("-n", type=int, required=True, help="number of images")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (new, or a run to resume)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the built-in model)")
    p.add_argument("--db", metavar="DIR", help="database directory (default: the built-in model's)")
    p.add_argument("--engine", metavar="DIR", help="an engine made by rissole-trt build-engine for the model")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (default 1024)")
    p.add_argument("--batch-size", type=int, default=16, help="images denoised together (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", help="dpmpp_2m (default), ddim or ddpm")
    p.add_argument("--steps", type=int, help="sampler steps (ddim / dpmpp_2m)")
    p.add_argument("--overlap", choices=("none", "half"),
                   help="none or half: also denoise the half-block shifted windows (default: the model's; "
                        "see generate --help)")
    p.add_argument("--format", choices=("png", "npz", "webdataset"), default="png",
                   help="png: a folder of PNGs per shard (default); npz: images + ids; webdataset: a tar per shard")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="join a running cluster ('auto', or ray://HOST:10001); default: start a local one")
    p.add_argument("--workers", type=int, help="actors, each with one Engine (default: as many as the cluster fits)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per actor (default 0: CPU workers)")
    p.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads per actor (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import generate_dataset

    manifest = generate_dataset(
        args.n, args.output, model=args.model, database=args.db, engine=args.engine, shard_size=args.shard_size,
        batch_size=args.batch_size, seed=args.seed, sampler=args.sampler, steps=args.steps, overlap=args.overlap,
        format=args.format,
        ray_address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        threads_per_worker=args.threads_per_worker, progress=not args.no_progress)
    last = manifest.get("last_run")
    if last:
        print(f"wrote {last['images']} images in {last['shards']} shards to {args.output} "
              f"({last['images_per_s']:.2f} images/s on {last['workers']} worker(s))")
    return 0
