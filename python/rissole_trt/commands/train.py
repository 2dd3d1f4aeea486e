"""``rissole-trt train-autoencoder`` and ``rissole-trt train``: train a RISSOLE model on the CPU or a GPU."""
from __future__ import annotations

import argparse

from ..defaults import (
    AUTOENCODER_BATCH_SIZE,
    AUTOENCODER_LR,
    DENOISER_BATCH_SIZE,
    DENOISER_LR,
    XATTN_HEAD_DIM,
    XATTN_HEADS,
)
from . import set_threads


def _common(p: argparse.ArgumentParser, batch_size: int, lr: float) -> None:
    p.add_argument("--images", required=True, metavar="PATH", help="folder of images or .npz with an 'images' array")
    p.add_argument("--split", metavar="KEY", help="for an .npz: index array selecting the training images (e.g. train_idx)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps (counted across resumes)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per step (default {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time; rerun to resume")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (default 250)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the batches and the noise (default 0)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast where the CPU has bf16 arithmetic (auto), or force one; may change on resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-autoencoder", help="train the VQ autoencoder (first stage)",
        description="Train the light VQ-GAN. Checkpoints and the result go to OUT; rerunning with the same OUT resumes.")
    _common(p, AUTOENCODER_BATCH_SIZE, AUTOENCODER_LR)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32], help="channels per level (default 16 32)")
    p.add_argument("--latent-dim", type=int, default=10, help="latent channels (default 10)")
    p.add_argument("--codebook-size", type=int, default=1024, help="codebook rows (default 1024; at most 65536)")
    p.add_argument("--rec-loss", choices=("l1", "l2"), default="l1", help="reconstruction loss (default l1)")
    p.add_argument("--disc-weight", type=float, default=0.0, help="> 0 adds the patch discriminator (hinge loss)")
    p.add_argument("--disc-start", type=int, default=2000, help="step at which the discriminator starts (default 2000)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder: checkpoints and the result; rerun to resume")
    p.set_defaults(func=run_autoencoder)

    p = subparsers.add_parser(
        "train", help="train the block denoiser (second stage) and write a model directory",
        description="Train the block UNet on the quantised latents of the images, conditioned on the same block of the "
                    "k nearest training images (excluding the image itself unless --retrieval include-self). "
                    "Writes OUT/model (config.json + model.safetensors, EMA weights) at every checkpoint; rerunning resumes.")
    _common(p, DENOISER_BATCH_SIZE, DENOISER_LR)
    p.add_argument("--autoencoder", required=True, metavar="DIR", help="output of train-autoencoder")
    p.add_argument("--channels", type=int, nargs="+", default=[48, 96], help="UNet channels per level (default 48 96)")
    p.add_argument("--k", type=int, default=10, help="neighbours per block (default 10)")
    p.add_argument("--block-factor", type=int, default=2, help="blocks per side (default 2: 2x2 blocks; 1: whole latent)")
    p.add_argument("--no-position-embedding", action="store_true", help="no block-position embedding")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout in the residual blocks (default 0.1)")
    p.add_argument("--retrieval", choices=("exclude-self", "include-self", "none"), default="exclude-self",
                   help="neighbours in training: exclude-self (default), include-self (the reference), none (no retrieval)")
    p.add_argument("--conditioning", choices=("add", "xattn"), default="add",
                   help="how the neighbours enter the UNet: add (a conv of the stacked neighbours, the reference; "
                        "default) or xattn (cross-attention over their latent vectors)")
    p.add_argument("--xattn-levels", type=int, nargs="+", metavar="LEVEL",
                   help="with --conditioning xattn: levels with a cross-attention layer, 0..len(channels) "
                        "(len(channels) = the middle; default: the deepest level and the middle)")
    p.add_argument("--xattn-heads", type=int, default=XATTN_HEADS,
                   help=f"cross-attention heads (default {XATTN_HEADS})")
    p.add_argument("--xattn-head-dim", type=int, default=XATTN_HEAD_DIM,
                   help=f"size of one cross-attention head (default {XATTN_HEAD_DIM})")
    p.add_argument("--key", choices=("first-block", "whole-latent"), default="first-block",
                   help="retrieval key (default first-block, the reference)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the exported weights (default 0.999)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in the channels-last memory layout (faster on some CPUs: "
                        "benchmarks/bench_training_layout.py tells); may change on resume")
    p.add_argument("--latent-scale", type=float, default=1.0,
                   help="diffuse latent_scale x the latent (LDM's scale factor; default 1.0, the reference's)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="run folder: checkpoints and the result; rerun to resume")
    p.set_defaults(func=run_denoiser)


def _setup(args: argparse.Namespace):
    from ..images import load_images
    from ..train.loop import resolve_training_precision

    args.precision = resolve_training_precision(args.precision)
    print(f"training precision: {args.precision}")
    return load_images(args.images, args.image_size, indices_key=args.split)


def _check_run_folder(out, inputs: tuple) -> None:
    """OUT is resumed, never replaced: any folder but another kind of rissole output or an input."""
    from ..outputs import check_output, kind_of

    check_output(out, kind="training run folder", overwrite=True, inputs=inputs, flag=None,
                 recognise=lambda p: kind_of(p) is None)


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_autoencoder(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import AutoencoderConfig
    from ..train import AutoencoderTrainConfig, save_autoencoder, train_autoencoder

    set_threads(args.threads)  # an argument: refused before the run folder is probed
    _check_run_folder(args.output, (args.images,))
    images = _setup(args)
    config = AutoencoderConfig(channels=tuple(args.channels), latent_dim=args.latent_dim, n_embeddings=args.codebook_size)
    train = AutoencoderTrainConfig(steps=args.steps, rec_loss=args.rec_loss, disc_weight=args.disc_weight,
                                   disc_start=args.disc_start, checkpoint_every=args.checkpoint_every, seed=args.seed,
                                   precision=args.precision,
                                   **_overrides(args, ("batch_size", "lr")))
    out = Path(args.output)
    model = train_autoencoder(images, config, train, out / "checkpoints", max_minutes=args.max_minutes,
                              progress=not args.no_progress)
    save_autoencoder(model, out)
    print(f"wrote {out}")
    return 0


def run_denoiser(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..config import DiffusionConfig, ModelConfig, UNetConfig
    from ..errors import InvalidArgumentError
    from ..models.rissole import RissoleModel
    from ..outputs import MODEL, check_output
    from ..train import DenoiserTrainConfig, load_autoencoder, train_denoiser

    set_threads(args.threads)  # an argument: refused before the run folder is probed
    _check_run_folder(args.output, (args.images, args.autoencoder))
    check_output(Path(args.output) / "model", kind=MODEL, overwrite=True, flag=None)  # rewritten at checkpoints
    images = _setup(args)
    autoencoder = load_autoencoder(args.autoencoder)
    ae = autoencoder.config
    xattn = {}
    if args.conditioning == "xattn":
        if args.retrieval == "none":
            raise InvalidArgumentError("--conditioning xattn attends to retrieved neighbours: it needs retrieval")
        levels = args.xattn_levels or [len(args.channels) - 1, len(args.channels)]
        xattn = dict(xattn_levels=tuple(levels), xattn_heads=args.xattn_heads, xattn_head_dim=args.xattn_head_dim)
    elif args.xattn_levels:
        raise InvalidArgumentError("--xattn-levels is for --conditioning xattn")
    conditioning = "none" if args.retrieval == "none" else args.conditioning
    unet = UNetConfig(latent_channels=ae.latent_dim, channels=tuple(args.channels), k=args.k,
                      block_factor=args.block_factor, position_embedding=not args.no_position_embedding,
                      dropout=args.dropout, conditioning=conditioning, **xattn)
    config = ModelConfig(autoencoder=ae, unet=unet, diffusion=DiffusionConfig(latent_scale=args.latent_scale),
                         image_size=args.image_size)
    torch.manual_seed(args.seed)  # the initial weights: the same command gives the same model
    model = RissoleModel(config)
    model.autoencoder.load_state_dict(autoencoder.state_dict())
    train = DenoiserTrainConfig(steps=args.steps, retrieval=args.retrieval, key_kind=args.key,
                                checkpoint_every=args.checkpoint_every, ema_decay=args.ema_decay, seed=args.seed,
                                precision=args.precision, channels_last=args.channels_last,
                                **_overrides(args, ("batch_size", "lr")))
    out = Path(args.output)
    train_denoiser(images, model, train, out / "checkpoints", max_minutes=args.max_minutes,
                   progress=not args.no_progress, model_dir=out / "model")
    print(f"wrote {out / 'model'}")
    return 0
