"""``rissole-trt eval``: block-seam ratio, SWD, domain FID, memorisation and autoencoder PSNR of a model."""
from __future__ import annotations

import argparse
import sys

from . import set_threads


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="measure sample quality (seam ratio, SWD, domain FID, memorisation, autoencoder PSNR)",
        description="Generate N images and compare them with held-out real images (--real) and the training images "
                    "(--train, for the memorisation rate). Writes the JSON report and a PNG sample grid beside it.")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the built-in model)")
    p.add_argument("--db", metavar="DIR",
                   help="database directory (the built-in model's by default; none for a model without retrieval)")
    p.add_argument("--real", required=True, metavar="PATH", help="held-out images: folder or .npz")
    p.add_argument("--real-split", metavar="KEY", help="for an .npz: index array of the held-out images (e.g. test_idx)")
    p.add_argument("--train", metavar="PATH", help="training images (folder or .npz) for the memorisation rate")
    p.add_argument("--train-split", metavar="KEY", help="for an .npz: index array of the training images (e.g. train_idx)")
    p.add_argument("--n", type=int, default=512, help="images to generate (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seeds the queries and the noise (default 0)")
    p.add_argument("--sampler", default="dpmpp_2m", help="dpmpp_2m (default), ddim or ddpm (exact, 1000 steps)")
    p.add_argument("--steps", type=int, help="sampler steps (default 20 for dpmpp_2m, 50 for ddim)")
    p.add_argument("--batch-size", type=int, default=32, help="images denoised together (default 32)")
    p.add_argument("--clip", choices=("none", "codebook"), default="none",
                   help="sample with clean-latent clamping to the codebook's range (see generate --help)")
    p.add_argument("--overlap", choices=("none", "half"),
                   help="none or half: sample with half-block shifted windows too (default: the model's; "
                        "see generate --help)")
    p.add_argument("--include-self", action="store_true", help="let a query be its own neighbour (the reference)")
    p.add_argument("--device", default="auto", help="auto (CUDA if torch sees a GPU, else CPU), cpu or cuda[:i]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, metavar="JSON", help="report to write (a .json file; the sample "
                                                                         "grid goes beside it as .png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..engine import Engine
    from ..errors import InvalidArgumentError
    from ..evaluation.report import evaluate, write_report
    from ..images import load_images
    from ..outputs import check_output

    output = Path(args.output)
    if output.suffix != ".json":
        raise InvalidArgumentError(f"{output}: the report is JSON; give a name ending in .json")
    inputs = (args.model, args.db, args.real, args.train)
    check_output(output, overwrite=True, kind="JSON report", directory=False, inputs=inputs,
                 recognise=lambda p: p.suffix == ".json")
    check_output(output.with_suffix(".png"), overwrite=True, kind="sample grid", directory=False, inputs=inputs,
                 recognise=lambda p: p.suffix == ".png")
    if args.n < 64:
        print(f"warning: SWD and memorisation over {args.n} images are noisy; use --n 64 or more "
              "(the README's figures use 512)", file=sys.stderr)
    for flag, path, split in (("--real", args.real, args.real_split), ("--train", args.train, args.train_split)):
        if path and str(path).endswith(".npz") and split is None:
            print(f"warning: {flag} {path} is used whole (no {flag}-split): held-out and training images "
                  "alike", file=sys.stderr)
    set_threads(args.threads)
    engine = Engine(args.model, args.db, device=args.device)
    size = engine.model.config.image_size
    real = load_images(args.real, size, indices_key=args.real_split)
    training = load_images(args.train, size, indices_key=args.train_split) if args.train else None
    report, generated = evaluate(engine, real, training, n=args.n, seed=args.seed, sampler=args.sampler,
                                 steps=args.steps, batch_size=args.batch_size, exclude_self=not args.include_self, clip=args.clip,
                                 overlap=args.overlap, progress=not args.no_progress)
    report["settings"].update({"model": args.model or "built-in", "db": args.db or ("built-in" if engine.database is not None else None)})
    json_path, grid = write_report(report, generated, args.output)
    print(json.dumps({k: report[k] for k in ("seam_ratio", "swd", "domain_fid", "autoencoder_psnr_db")
                      + (("memorisation", "autoencoder_floor") if training is not None else ())}, indent=1))
    print(f"wrote {json_path} and {grid}")
    return 0
