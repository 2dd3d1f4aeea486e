"""Training the light VQ-GAN: reconstruction + codebook + commitment losses, optional patch GAN.

No perceptual (LPIPS) loss: it needs pretrained VGG weights, which cannot be downloaded here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_file, write_text
from ..config import AutoencoderConfig
from ..defaults import AUTOENCODER_BATCH_SIZE, AUTOENCODER_LR
from ..disk import translate_disk_full
from ..errors import InvalidArgumentError, MissingFileError
from ..images import to_model_input
from ..models.autoencoder import VQAutoencoder
from .loop import RESUMABLE_CHANGES, TrainState, data_fingerprint, draw_batch, load_checkpoint, train_loop


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    steps: int = 4000
    batch_size: int = AUTOENCODER_BATCH_SIZE
    lr: float = AUTOENCODER_LR
    rec_loss: str = "l1"  # "l1" or "l2"
    codebook_weight: float = 1.0
    commitment_weight: float = 0.25
    disc_weight: float = 0.0  # > 0 enables the patch discriminator (hinge loss)
    disc_start: int = 2000  # steps before the adversarial loss switches on
    restart_dead_codes_every: int = 200  # re-seed codebook rows unused for this many steps (0: never)
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    seed: int = 0
    precision: str = "fp32"  # "fp32" or "bf16" (autocast); may change on resume

    def __post_init__(self) -> None:
        if self.rec_loss not in ("l1", "l2"):
            raise InvalidArgumentError(f"rec_loss must be 'l1' or 'l2', got {self.rec_loss!r}")
        if not 0 < self.lr < float("inf"):
            raise InvalidArgumentError(f"lr must be a positive number, got {self.lr}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise InvalidArgumentError(f"{name} must be positive, got {getattr(self, name)}")


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, width: int = 32, n_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(n_layers):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_autoencoder(images: np.ndarray, config: AutoencoderConfig, train: AutoencoderTrainConfig,
                      directory: str | Path, *, max_minutes: float | None = None,
                      progress: bool = True) -> VQAutoencoder:
    """Train (or resume training of) a VQ autoencoder on uint8 images; returns it in eval mode.

    Checkpoints go to ``directory``; calling again with the same directory resumes exactly.
    """
    directory = Path(directory)
    torch.manual_seed(train.seed)
    data = to_model_input(images)
    model = VQAutoencoder(config).train()
    modules: dict[str, nn.Module] = {"autoencoder": model}
    optimizers: dict[str, torch.optim.Optimizer] = {"autoencoder": torch.optim.Adam(model.parameters(), train.lr)}
    disc = None
    if train.disc_weight > 0:
        disc = PatchDiscriminator(config.in_channels).train()
        modules["discriminator"] = disc
        optimizers["discriminator"] = torch.optim.Adam(disc.parameters(), train.lr, betas=(0.5, 0.9))
    generator = torch.Generator().manual_seed(train.seed)
    # No EMA here: re-seeded codebook rows would be averaged with the rows they replaced.
    state = TrainState(modules, optimizers, generator)
    code_last_used = torch.zeros(config.n_embeddings, dtype=torch.long)
    state.modules["code_usage"] = _CodeUsage(code_last_used)
    # What the checkpoint fixes; the step budget, checkpoint interval and precision may change.
    extra = {"config": json.loads(config.to_json()),
             "train": {k: v for k, v in asdict(train).items() if k not in RESUMABLE_CHANGES},
             "data": data_fingerprint(images)}
    load_checkpoint(state, directory, extra)

    quantizer = model.quantizer
    if state.step == 0:
        # Seed the codebook with encoder outputs so that no row starts far from the data.
        with torch.no_grad():
            z = model.encode_continuous(data[draw_batch(len(data), 256, generator)])
            flat = z.permute(0, 2, 3, 1).reshape(-1, config.latent_dim)
            rows = torch.randint(0, len(flat), (config.n_embeddings,), generator=generator)
            quantizer.codebook.copy_(flat[rows])

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        x = random_flip(data[draw_batch(len(data), train.batch_size, generator)], generator)
        # The quantiser's nearest-row search and the VQ losses stay in float32 under autocast.
        z_e = model.encode_continuous(x).float()
        idx = quantizer.indices(z_e.detach())
        z_q = quantizer.lookup(idx)
        code_last_used[idx.unique()] = step
        # Straight-through estimator: the decoder's gradient flows to the encoder unchanged.
        x_hat = model.decoder(z_e + (z_q - z_e).detach())
        rec = F.l1_loss(x_hat, x) if train.rec_loss == "l1" else F.mse_loss(x_hat, x)
        codebook = F.mse_loss(z_q, z_e.detach())
        commitment = F.mse_loss(z_e, z_q.detach())
        loss = rec + train.codebook_weight * codebook + train.commitment_weight * commitment
        losses = {"rec": rec.detach(), "codebook": codebook.detach()}
        if disc is not None and step >= train.disc_start:
            gen_loss = -disc(x_hat).mean()
            loss = loss + train.disc_weight * gen_loss
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(x_hat.detach())).mean()
            optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["discriminator"].step()
            losses["disc"] = d_loss.detach()
        if train.restart_dead_codes_every and (step + 1) % train.restart_dead_codes_every == 0:
            dead = (step - code_last_used) >= train.restart_dead_codes_every
            if dead.any():
                with torch.no_grad():
                    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, config.latent_dim)
                    pick = torch.randint(0, len(flat), (int(dead.sum()),), generator=generator)
                    quantizer.codebook[dead] = flat[pick]
                    code_last_used[dead] = step
        losses["loss"] = loss
        return losses

    train_loop(state, step_fn, total_steps=train.steps, directory=directory, max_minutes=max_minutes,
               checkpoint_every=train.checkpoint_every, grad_clip=train.grad_clip,
               extra=extra, progress=progress, precision=train.precision)
    return model.eval()


class _CodeUsage(nn.Module):
    """Holds the codebook-usage counters as a buffer so that they are checkpointed with the rest."""

    def __init__(self, last_used: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("last_used", last_used)


AUTOENCODER_CONFIG = "autoencoder.json"
AUTOENCODER_WEIGHTS = "autoencoder.safetensors"


def save_autoencoder(autoencoder: VQAutoencoder, directory: str | Path) -> None:
    """Write the trained autoencoder's config and weights (atomically) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with translate_disk_full(directory / AUTOENCODER_WEIGHTS), atomic_file(directory / AUTOENCODER_WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in autoencoder.state_dict().items()}, str(tmp))
    write_text(directory / AUTOENCODER_CONFIG, autoencoder.config.to_json())


def load_autoencoder(directory: str | Path) -> VQAutoencoder:
    """Read what :func:`save_autoencoder` wrote."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (AUTOENCODER_CONFIG, AUTOENCODER_WEIGHTS):
        if not (directory / name).is_file():
            raise MissingFileError(f"{directory} holds no trained autoencoder ({name} is missing); run rissole-trt train-autoencoder")
    model = VQAutoencoder(AutoencoderConfig.from_json((directory / AUTOENCODER_CONFIG).read_text()))
    try:
        model.load_state_dict(load_file(str(directory / AUTOENCODER_WEIGHTS)))
    except Exception as error:
        raise InvalidArgumentError(f"cannot load {directory / AUTOENCODER_WEIGHTS}: {error}") from error
    return model.eval()
