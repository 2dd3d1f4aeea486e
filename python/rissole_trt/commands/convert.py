"""``rissole-trt convert``: import a checkpoint of the authors' code into our model format."""

from __future__ import annotations

import argparse

_POSITION_CHOICES = {"auto": None, "on": True, "off": False}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="import a checkpoint of the authors' RISSOLE code (best_model.pt + YAML configs)",
        description=(
            "Read a model trained with the authors' code (github.com/avideep/rissole) and write it as "
            "DIR/config.json + DIR/model.safetensors. Give either --checkpoint (train_ddpm.py's DDPM "
            "best_model.pt) or both --vqgan-checkpoint and --unet-checkpoint."
        ),
    )
    p.add_argument("--checkpoint", metavar="PT", help="DDPM checkpoint (UNet under eps_model., VQ-GAN under vae_model.)")
    p.add_argument("--vqgan-checkpoint", metavar="PT", help="VQ-GAN-only checkpoint (train_vqgan.py)")
    p.add_argument("--unet-checkpoint", metavar="PT", help="UNet-only checkpoint (train_ddpm.py)")
    p.add_argument("--unet-config", required=True, metavar="YAML", help="their UNet config")
    p.add_argument("--vqgan-config", required=True, metavar="YAML", help="their VQ-GAN config")
    p.add_argument("--ddpm-config", required=True, metavar="YAML", help="their DDPM config (beta schedule)")
    p.add_argument("--k", type=int, default=None, help="neighbours per block (inferred from the weights; give to check)")
    p.add_argument("--block-factor", type=int, default=2, help="blocks per side, their --block-factor (default 2)")
    p.add_argument("--image-size", type=int, default=64, help="image size, their --img_size (default 64)")
    p.add_argument(
        "--position-embedding", choices=sorted(_POSITION_CHOICES), default="auto",
        help="block-position embedding: auto = used iff the weights have per-block projections "
             "(rissole_alt trained with --use-pos); off for rissole_alt trained without --use-pos",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds a saved model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print what was imported."""
    from ..models import RissoleModel
    from ..outputs import MODEL, check_output

    check_output(args.output, overwrite=args.overwrite, kind=MODEL,
                 inputs=(args.checkpoint, args.unet_config, args.vqgan_config, args.ddpm_config,
                         args.vqgan_checkpoint, args.unet_checkpoint))
    model = RissoleModel.from_reference(
        args.checkpoint, args.unet_config, args.vqgan_config, args.ddpm_config,
        vqgan_checkpoint=args.vqgan_checkpoint, unet_checkpoint=args.unet_checkpoint, k=args.k,
        block_factor=args.block_factor, image_size=args.image_size,
        position_embedding=_POSITION_CHOICES[args.position_embedding],
    )
    path = model.save(args.output, overwrite=args.overwrite)
    report = model.reference_import
    cfg = model.config
    counts = model.parameter_count()
    print(f"variant: {report.variant}; k = {report.k}; position embedding: {'on' if report.position_embedding else 'off'}")
    print(f"latent {cfg.autoencoder.latent_dim}x{cfg.latent_size}x{cfg.latent_size}, "
          f"{cfg.n_blocks} blocks of {cfg.block_size}x{cfg.block_size}; schedule {cfg.diffusion.schedule}, T = {cfg.diffusion.n_steps}")
    print(f"parameters: UNet {counts['unet']:,}, autoencoder {counts['autoencoder']:,}; "
          f"{len(report.dropped)} unused reference tensors dropped")
    print(f"wrote {path}")
    return 0
