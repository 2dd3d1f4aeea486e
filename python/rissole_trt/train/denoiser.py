"""Training the block denoiser on quantised latents, conditioned on retrieved neighbour blocks.

Retrieval is fixed during training (the autoencoder is frozen), so the neighbours of every training
image, and of its mirror image, are searched once up front. Each step takes B images, all P blocks
of each (B*P rows, each with its own timestep), gathers the same block of their k neighbours, and
regresses the noise.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from ..config import ModelConfig
from ..defaults import DENOISER_BATCH_SIZE, DENOISER_LR
from ..errors import InvalidArgumentError
from ..images import to_model_input
from ..models.autoencoder import VQAutoencoder
from ..models.rissole import RissoleModel
from ..retrieval.database import compute_keys
from ..retrieval.index import make_index
from .loop import RESUMABLE_CHANGES, TrainState, data_fingerprint, draw_batch, load_checkpoint, make_ema, train_loop

#: How neighbours are chosen in training: ``exclude-self`` (ours), ``include-self`` (the reference,
#: where an image is usually its own nearest neighbour), ``none`` (the ablation:
#: a model with ``conditioning="none"``, no neighbours).
RETRIEVAL_MODES = ("exclude-self", "include-self", "none")


@dataclass(frozen=True)
class DenoiserTrainConfig:
    steps: int = 20000
    batch_size: int = DENOISER_BATCH_SIZE  # images per step; the denoiser sees batch_size * P block rows
    lr: float = DENOISER_LR
    retrieval: str = "exclude-self"
    key_kind: str = "first-block"
    flip: bool = True
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    seed: int = 0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast); may change on resume
    # The UNet and its inputs in channels-last (benchmarks/bench_training_layout.py: 1.09x the
    # steps/s on an AVX2 Zen 3 in fp32); may change on resume.
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.retrieval not in RETRIEVAL_MODES:
            raise InvalidArgumentError(f"retrieval must be one of {RETRIEVAL_MODES}, got {self.retrieval!r}")
        if not 0 < self.lr < float("inf"):
            raise InvalidArgumentError(f"lr must be a positive number, got {self.lr}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise InvalidArgumentError(f"{name} must be positive, got {getattr(self, name)}")


@torch.no_grad()
def encode_all(autoencoder: VQAutoencoder, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Quantised latents of uint8 images, [N, C, h, w]."""
    autoencoder.eval()
    out = [autoencoder.encode(to_model_input(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def neighbour_ids(query_latents: torch.Tensor, db_latents: torch.Tensor, k: int, key_kind: str,
                  block_factor: int, exclude: np.ndarray | None) -> np.ndarray:
    """Ids [N, k] of the k nearest database entries of each query latent (exact inner product)."""
    index = make_index("flat", compute_keys(db_latents, key_kind, block_factor))
    _, ids = index.search(compute_keys(query_latents, key_kind, block_factor), k, exclude=exclude)
    return ids


def _training_data(images: np.ndarray, model: RissoleModel, train: DenoiserTrainConfig
                   ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor] | None]:
    """Per view (the images, and with ``train.flip`` their mirror images): the diffused targets
    ``[N, P, C, bs, bs]`` and the neighbour ids (None without retrieval); and the database blocks."""
    config: ModelConfig = model.config
    bf = config.unet.block_factor
    latents = encode_all(model.autoencoder, images)
    views = [latents]
    if train.flip:
        views.append(encode_all(model.autoencoder, images[:, :, ::-1]))
    # Database blocks in gather layout [P, N, C, bs, bs].
    db_blocks = ops.split_blocks(latents, bf).transpose(0, 1).contiguous()
    own = np.arange(len(images), dtype=np.int64)
    if train.retrieval == "none":
        ids = None
    else:
        exclude = own if train.retrieval == "exclude-self" else None
        ids = [torch.from_numpy(neighbour_ids(v, latents, config.unet.k, train.key_kind, bf, exclude)) for v in views]
    # The diffused variable: the scaled latent (the neighbours stay unscaled, as the database stores them).
    targets = [ops.split_blocks(v, bf) * config.diffusion.latent_scale for v in views]  # [N, P, C, bs, bs]
    return targets, db_blocks, ids


def _exporter(model: RissoleModel, ema: torch.nn.Module, model_dir: str | Path | None) -> Callable[[TrainState], None]:
    """The checkpoint hook: with ``model_dir``, the model with the EMA UNet weights saved there."""
    def export(_: TrainState) -> None:
        if model_dir is not None:
            # Building a model draws its initial weights from the global RNG, which the training
            # continues from: draw them from a fork, so that a checkpoint leaves the run unchanged.
            with torch.random.fork_rng():
                snapshot = RissoleModel(model.config)
            snapshot.autoencoder.load_state_dict(model.autoencoder.state_dict())
            snapshot.unet.load_state_dict(ema.state_dict())
            snapshot.save(model_dir, overwrite=True)
    return export


def train_denoiser(images: np.ndarray, model: RissoleModel, train: DenoiserTrainConfig, directory: str | Path,
                   *, max_minutes: float | None = None, progress: bool = True,
                   model_dir: str | Path | None = None) -> RissoleModel:
    """Train (or resume) ``model.unet`` on uint8 images with ``model.autoencoder`` frozen.

    The database is the training set itself. With ``model_dir``, the model with the EMA UNet weights
    is saved there at every checkpoint. Returns the model with the EMA UNet weights, in eval mode.
    """
    directory = Path(directory)
    config: ModelConfig = model.config
    p = config.n_blocks
    if (train.retrieval == "none") == config.unet.uses_retrieval:
        raise InvalidArgumentError(f"retrieval {train.retrieval!r} needs a model with "
                         f"{'conditioning none' if train.retrieval == 'none' else 'neighbour conditioning'}, "
                         f"this one has conditioning {config.unet.conditioning!r}")
    torch.manual_seed(train.seed)

    targets, db_blocks, ids = _training_data(images, model, train)
    n = len(images)

    unet = model.unet.train()
    layout = torch.channels_last if train.channels_last else torch.contiguous_format
    unet.to(memory_format=layout)  # before the optimizer and the EMA copy take its parameters
    ema = make_ema(unet)
    generator = torch.Generator().manual_seed(train.seed)
    optimizer = torch.optim.Adam(unet.parameters(), train.lr)
    state = TrainState({"unet": unet}, {"unet": optimizer}, generator, ema={"unet": ema})
    # Everything that changes the arithmetic must match for a resume; the step budget and the
    # checkpoint interval may change (a longer run continues a shorter one).
    extra = {"config": json.loads(config.to_json()),
             "train": {k: v for k, v in asdict(train).items() if k not in RESUMABLE_CHANGES},
             "data": data_fingerprint(images)}
    load_checkpoint(state, directory, extra)

    pos = torch.arange(p).repeat(train.batch_size)
    no_neighbours = torch.empty(train.batch_size * p, 0, config.block_size, config.block_size)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        rows = draw_batch(n, train.batch_size, generator)
        view = int(torch.randint(0, len(targets), (1,), generator=generator)) if train.flip else 0
        x0 = targets[view][rows].flatten(0, 1)  # [B*P, C, bs, bs]
        if ids is None:
            cond = no_neighbours
        else:
            cond = ops.gather_blocks(db_blocks, ids[view][rows]).flatten(0, 1)
        t = torch.randint(0, config.diffusion.n_steps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = model.add_noise(x0, noise, t).contiguous(memory_format=layout)
        cond = cond.contiguous(memory_format=layout)
        eps = unet(x_t, cond, t, pos if unet.pos_embed is not None else None)
        loss = F.mse_loss(eps.float(), noise)
        return {"loss": loss}

    train_loop(state, step_fn, total_steps=train.steps, directory=directory, max_minutes=max_minutes,
               checkpoint_every=train.checkpoint_every, ema_decay=train.ema_decay, grad_clip=train.grad_clip,
               extra=extra, progress=progress, on_checkpoint=_exporter(model, ema, model_dir), precision=train.precision)
    unet.load_state_dict(ema.state_dict())
    unet.to(memory_format=torch.contiguous_format)
    return model.eval()
