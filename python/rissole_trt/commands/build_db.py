"""``rissole-trt build-db``: encode a set of images into a retrieval database."""
from __future__ import annotations

import argparse

from ..errors import InvalidArgumentError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-db", help="encode images into a retrieval database",
        description="Encode images with a model's autoencoder and write the database DB (codes, codebook, keys, "
                    "manifest). The database is written beside DB and renamed when complete.")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json + model.safetensors)")
    p.add_argument("--images", required=True, metavar="PATH",
                   help="a folder of PNG/JPEG images (resized and centre-cropped) or an .npz with an 'images' array")
    p.add_argument("--split", metavar="KEY", help="for an .npz: an index array inside it selecting the images (e.g. train_idx)")
    p.add_argument("--labels", metavar="KEY", help="for an .npz: a string array of per-image labels to store (e.g. categories)")
    p.add_argument("--key", choices=("first-block", "whole-latent"), default="first-block",
                   help="retrieval key: block 0 of the latent (the reference) or the whole latent")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("-o", "--output", required=True, metavar="DB", help="database directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing database at DB")
    p.add_argument("--no-store-keys", action="store_true",
                   help="write no keys file; recompute the keys from the codes when the database is opened "
                        "(smaller on disk, for small databases such as the shipped one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ..builder import build_database
    from ..images import load_images, split_indices
    from ..models import RissoleModel
    from ..outputs import DATABASE, check_output

    check_output(args.output, overwrite=args.overwrite, kind=DATABASE, inputs=(args.model, args.images))
    if args.labels and not args.images.endswith(".npz"):
        raise InvalidArgumentError("--labels needs an .npz input")
    model = RissoleModel.load(args.model)
    images = load_images(args.images, model.config.image_size, indices_key=args.split)
    labels = names = None
    if args.labels:
        with np.load(args.images, allow_pickle=False) as data:
            if args.labels not in data:
                raise InvalidArgumentError(f"{args.images} has no '{args.labels}' array")
            raw = data[args.labels]
            total = len(data["images"])
            if len(raw) != total:
                raise InvalidArgumentError(f"{args.images}: '{args.labels}' has {len(raw)} entries for {total} images")
            if args.split:
                raw = raw[split_indices(data, args.split, total, Path(args.images))]
        names, labels = np.unique(raw.astype(str), return_inverse=True)
    db = build_database(model, images, args.output, key_kind=args.key, batch_size=args.batch_size,
                        labels=labels, label_names=None if names is None else list(names), overwrite=args.overwrite,
                        metadata={"source": Path(args.images).name, "split": args.split},
                        store_keys=not args.no_store_keys, progress=not args.no_progress)
    print(f"wrote {db}")
    return 0
