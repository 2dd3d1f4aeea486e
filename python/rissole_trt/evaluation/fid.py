"""A domain FID: the Fréchet distance between feature statistics of two image sets, on the features
of a small CNN trained here on the emoji images. It is **not** Inception-FID (no ImageNet
network; the numbers are not comparable with published FIDs): it measures how far generated images
are from real ones *in this domain*, in features that know what emoji look like.

The feature network (:class:`FeatureNet`, ~0.58 M parameters, shipped in
``rissole_trt/assets/fid``) is trained on the training split to predict each image's category and
its own identity under augmentation (shifts, flips, brightness): features that separate emoji and
are stable under small nuisances. :func:`train_feature_net` makes it;
``scripts/experiments/train_fid_net.py`` is the command that made the shipped one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError, MissingFileError

__all__ = ["FeatureNet", "frechet_distance", "domain_fid", "load_feature_net", "train_feature_net", "ASSET_DIR"]

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "fid"
WEIGHTS, CONFIG = "feature_net.safetensors", "config.json"


class FeatureNet(nn.Module):
    """Four stride-2 conv stages (64 -> 4 px), global average pool: ``features(x)`` is [N, width]."""

    def __init__(self, width: int = 128, n_categories: int = 1, n_identities: int = 1) -> None:
        super().__init__()
        chans = (3, 32, 64, 128, width)
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.category = nn.Linear(width, n_categories)
        self.identity = nn.Linear(width, n_identities)
        self.config = {"width": width, "n_categories": n_categories, "n_identities": n_identities}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.category(f), self.identity(f)


def _to_input(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidArgumentError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    shift = 4
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=g).tolist()
    x = padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (x * gain).clamp(-1, 1)


def train_feature_net(images: np.ndarray, categories: np.ndarray, *, steps: int = 3000, batch_size: int = 64,
                      lr: float = 2e-3, seed: int = 0, log=lambda _: None) -> FeatureNet:
    """Train a :class:`FeatureNet` to predict category and identity of augmented ``images``."""
    names, labels = np.unique(np.asarray(categories), return_inverse=True)
    torch.manual_seed(seed)
    net = FeatureNet(n_categories=len(names), n_identities=len(images))
    x_all = _to_input(images)
    y_cat = torch.from_numpy(labels).long()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        cat_logits, id_logits = net(_augment(x_all[idx], g))
        loss = F.cross_entropy(cat_logits, y_cat[idx]) + F.cross_entropy(id_logits, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")
    return net.eval()


def save_feature_net(net: FeatureNet, directory: str | os.PathLike, categories: list[str] | None = None) -> Path:
    """Write the feature part of ``net`` (the heads are not needed for FID) atomically."""
    from safetensors.torch import save_file

    from ..atomic import atomic_directory
    from ..outputs import check_output

    directory = check_output(directory, kind="feature network", overwrite=True, flag=None,
                             recognise=lambda p: {c.name for c in p.iterdir()} <= {WEIGHTS, CONFIG})
    with atomic_directory(directory, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in net.body.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"width": net.config["width"], "categories": categories}, indent=1))
    return directory


def load_feature_net(directory: str | os.PathLike | None = None) -> FeatureNet:
    """The shipped feature network (or the one in ``directory``), in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory) if directory is not None else ASSET_DIR
    if not (directory / WEIGHTS).is_file():
        raise MissingFileError(f"no domain-FID feature network in {directory} (make one with scripts/experiments/train_fid_net.py)")
    config = json.loads((directory / CONFIG).read_text())
    net = FeatureNet(width=config["width"])
    net.body.load_state_dict(load_file(str(directory / WEIGHTS)))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def features(net: FeatureNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    x = _to_input(images)
    return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(C_a + C_b - 2 (C_a C_b)^1/2), in float64.

    The trace of the matrix square root is computed as the sum of square roots of the eigenvalues of
    C_a^1/2 C_b C_a^1/2 (symmetric positive semi-definite), which needs no general sqrtm.
    """
    a, b = torch.as_tensor(feats_a, dtype=torch.float64), torch.as_tensor(feats_b, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InvalidArgumentError("features must be [N >= 2, D] with one D")
    mu = a.mean(0) - b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root_a @ cb @ root_a).clamp(min=0)
    value = float(mu @ mu + ca.trace() + cb.trace() - 2 * middle.sqrt().sum())
    return max(value, 0.0)


def domain_fid(images_a: np.ndarray, images_b: np.ndarray, net: FeatureNet | None = None) -> float:
    """The domain FID between two uint8 image sets (the shipped feature network by default)."""
    net = net or load_feature_net()
    return frechet_distance(features(net, images_a), features(net, images_b))
