"""``rissole-trt generate``: sample images and write a PNG grid."""
from __future__ import annotations

import argparse
from ..errors import InvalidArgumentError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate images into a PNG grid",
        description="Generate N images with a model and its retrieval database (the built-in default model when "
                    "--model and --db are not given) and write them as one PNG grid.")
    p.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("-o", "--output", default="grid.png", metavar="PNG", help="grid image to write (default grid.png)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the built-in model)")
    p.add_argument("--db", metavar="DIR",
                   help="database directory (the built-in model's by default; none for a model without retrieval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="ddpm", help="ddpm (exact, 1000 steps), ddim or dpmpp_2m")
    p.add_argument("--steps", type=int, help="steps for ddim / dpmpp_2m")
    p.add_argument("--eta", type=float, help="DDIM noise (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images denoised together")
    p.add_argument("--include-self", action="store_true",
                   help="let a query be its own neighbour (the reference behaviour)")
    p.add_argument("--category", metavar="NAME", help="draw queries from database entries with this label")
    p.add_argument("--query", metavar="PATH", help="retrieve with these images (file, folder or .npz) instead")
    p.add_argument("--save-dir", metavar="DIR", help="also write every image as DIR/NNNN.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", help="torch (auto), eager or onnxruntime")
    p.add_argument("--precision", default="fp32", help="fp32 (exact) or bf16 (torch backend)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ..engine import Engine
    from ..images import load_images, make_grid, save_png

    engine = Engine(args.model, args.db, device=args.device, backend=args.backend, precision=args.precision)
    query = load_images(args.query, engine.model.config.image_size) if args.query else None
    query_ids = None
    if args.category:
        if engine.database is None:
            raise InvalidArgumentError("--category draws queries from the database, and this model uses no retrieval")
        names = engine.database.label_names
        if names is None or args.category not in names:
            raise InvalidArgumentError(f"the database has no label {args.category!r}; labels: {', '.join(names or []) or 'none'}")
        query_ids = np.nonzero(engine.database.labels == names.index(args.category))[0]
    images = engine.generate(args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, eta=args.eta,
                             batch_size=args.batch_size, exclude_self=not args.include_self, query=query,
                             query_ids=query_ids, progress=not args.no_progress)
    save_png(make_grid(images), args.output)
    if args.save_dir:
        for i, image in enumerate(images):
            save_png(image, Path(args.save_dir) / f"{i:04d}.png")
    print(f"wrote {args.output}" + (f" and {len(images)} images in {args.save_dir}" if args.save_dir else ""))
    return 0
