"""``rissole-trt generate``: sample images and write them as one grid (and, optionally, one by one)."""
from __future__ import annotations

import argparse
import errno
import os
import re

from ..errors import InvalidArgumentError, OutOfSpaceError
from . import set_threads

#: Names of the images that ``--save-dir`` writes; a folder holding only such files is a previous run's.
SAVED_IMAGE = re.compile(r"^\d{4,}\.(png|jpg|jpeg|webp|bmp)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate images into a grid image",
        description="Generate N images with a model and its retrieval database (the built-in default model when "
                    "--model and --db are not given) and write them as one grid image. Every output location is "
                    "checked before any work, and every output is written atomically.")
    p.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("-o", "--output", default="grid.png", metavar="IMAGE",
                   help="grid image to write; its suffix names the format: .png, .jpg, .webp or .bmp (default grid.png)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the built-in model)")
    p.add_argument("--db", metavar="DIR",
                   help="database directory (the built-in model's by default; none for a model without retrieval)")
    p.add_argument("--seed", type=int, default=0, help="seeds every image's query and noise (default 0)")
    p.add_argument("--sampler", default="dpmpp_2m",
                   help="dpmpp_2m (default, 20 steps: the best quality per second on the built-in model), "
                        "ddim, or ddpm (the reference's exact sampler, 1000 steps)")
    p.add_argument("--steps", type=int, help="steps for ddim / dpmpp_2m (default 20 for dpmpp_2m, 50 for ddim)")
    p.add_argument("--eta", type=float, help="DDIM noise (default 0: deterministic)")
    p.add_argument("--clip", choices=("none", "codebook"), default="none",
                   help="none (the reference's sampling, default) or codebook: clamp each step's clean-latent "
                        "estimate to the codebook's range")
    p.add_argument("--overlap", choices=("none", "half"),
                   help="none (the reference's aligned blocks) or half: each step also denoises the windows "
                        "shifted by half a block and blends them (fewer seams; 9/4 the denoiser work). "
                        "Default: the model's (half for the built-in model, none for imported and trained ones)")
    p.add_argument("--batch-size", type=int, default=16, help="images denoised together (default 16)")
    p.add_argument("--include-self", action="store_true",
                   help="let a query be its own neighbour (the reference behaviour)")
    p.add_argument("--category", metavar="NAME", help="draw queries from database entries with this label")
    p.add_argument("--query", metavar="PATH", help="retrieve with these images (file, folder or .npz) instead")
    p.add_argument("--save-dir", metavar="DIR", help="also write every image as DIR/0000.png, ... (one folder, "
                                                     "written whole when generation is done)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a --save-dir folder that holds an earlier run's images")
    p.add_argument("--device", default="auto", help="auto (CUDA if torch sees a GPU, else CPU), cpu or cuda[:i]")
    p.add_argument("--backend", default="auto", help="denoiser backend (rissole-trt info lists them; default auto)")
    p.add_argument("--precision", help="fp32 (exact, default), bf16 (fast on CPUs with bf16 arithmetic and on "
                                       "GPUs) or fp16 (TensorRT on CUDA only); with --engine, the engine's")
    p.add_argument("--engine", metavar="DIR", help="run the denoiser from an engine made by rissole-trt build-engine "
                                                   "for this model")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _is_saved_images(path) -> bool:
    return all(SAVED_IMAGE.match(child.name) for child in path.iterdir())


def _check_space(args: argparse.Namespace, image_size: int) -> None:
    """The outputs' room, before any work: a generation must not run to the end to be lost at the write.
    The estimate is the raw pixels (PNG rarely compresses generated images much)."""
    from ..disk import check_free_space

    per_image = image_size ** 2 * 3
    check_free_space(args.output, args.n * per_image, f"a grid of {args.n} images")
    if args.save_dir:
        check_free_space(args.save_dir, args.n * per_image * 2, f"{args.n} images and their grid")


def _keep(images) -> str:
    """Save the generated images where there is room, so that a full disk at the end loses nothing."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from ..atomic import atomic_file

    rescue = Path(tempfile.gettempdir()) / f"rissole-generate-{os.getpid()}.npz"
    try:
        with atomic_file(rescue) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images)
    except OSError:
        return "the images could not be kept (the temporary folder is full too)"
    return f"the {len(images)} images were kept in {rescue} (numpy.load(...)['images'])"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ..atomic import atomic_directory
    from ..disk import translate_disk_full
    from ..engine import Engine
    from ..images import image_format, load_images, make_grid, save_image
    from ..outputs import check_output

    # Outputs first: a wrong location must not cost a whole generation.
    image_format(args.output)
    inputs = (args.model, args.db, args.query, args.engine)
    check_output(args.output, overwrite=True, kind="image", directory=False, inputs=inputs,
                 recognise=lambda p: p.suffix.lower() == Path(args.output).suffix.lower())
    if args.save_dir:
        check_output(args.save_dir, overwrite=args.overwrite, kind="folder of generated images", inputs=inputs,
                     recognise=_is_saved_images)
    set_threads(args.threads)

    engine = Engine(args.model, args.db, device=args.device, backend=args.backend, precision=args.precision,
                    engine=args.engine)
    _check_space(args, engine.model.config.image_size)
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
                             query_ids=query_ids, clip=args.clip, overlap=args.overlap,
                             progress=not args.no_progress)
    if args.overlap is None and engine.model.default_overlap != "none":
        print(f"sampled with overlap={engine.model.default_overlap}, this model's default (--overlap none: "
              "the reference's aligned blocks)")
    try:
        with translate_disk_full(args.save_dir or args.output, images.nbytes):
            if args.save_dir:
                with atomic_directory(args.save_dir, replace=args.overwrite) as folder:
                    for i, image in enumerate(images):
                        save_image(image, Path(folder) / f"{i:04d}.png")
            save_image(make_grid(images), args.output)
    except OutOfSpaceError as error:
        raise OutOfSpaceError(errno.ENOSPC, f"{error.strerror}; {_keep(images)}") from error
    print(f"wrote {args.output}" + (f" and {len(images)} images in {args.save_dir}" if args.save_dir else ""))
    return 0
