"""Building a retrieval database from a model and a set of images (``rissole-trt build-db``)."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InvalidArgumentError
from .images import to_model_input
from .models.autoencoder import VQAutoencoder
from .models.rissole import RissoleModel
from .retrieval.database import Database, DatabaseWriter


def _fingerprint(config_json: str, module: torch.nn.Module) -> str:
    digest = hashlib.sha256(config_json.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def autoencoder_fingerprint(autoencoder: VQAutoencoder) -> str:
    """sha256 of the autoencoder's config and weights: a database is only valid for this exact one."""
    return _fingerprint(autoencoder.config.to_json(), autoencoder)


def model_fingerprint(model: RissoleModel) -> str:
    """sha256 of the whole model's config and weights: a built engine is only valid for this exact one."""
    return _fingerprint(model.config.to_json(), model)


@torch.no_grad()
def build_database(
    model: RissoleModel,
    images: np.ndarray,
    path: str | os.PathLike,
    *,
    key_kind: str = "first-block",
    batch_size: int = 64,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    metadata: dict | None = None,
    store_keys: bool = True,
) -> Database:
    """Encode uint8 images ``[N, S, S, 3]`` with the model's autoencoder and write a database.

    ``store_keys=False`` writes no keys file: they are recomputed from the codes at every open
    (see :mod:`rissole_trt.retrieval.database`).

    The database is written to a temporary sibling directory and renamed into place when complete,
    so an interrupted build leaves nothing at ``path``.
    """
    config = model.config
    size = config.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise InvalidArgumentError(f"images must be uint8 [N, {size}, {size}, 3] for this model, got {images.dtype} {images.shape}")
    if batch_size <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    autoencoder = model.autoencoder
    latent_shape = (config.autoencoder.latent_dim, config.latent_size, config.latent_size)
    meta = {"image_size": size, **(metadata or {})}
    fingerprint = autoencoder_fingerprint(autoencoder)
    with DatabaseWriter(
        path, count=len(images), codebook=autoencoder.codebook.detach().cpu(), latent_shape=latent_shape,
        block_factor=config.unet.block_factor, fingerprint=fingerprint, key_kind=key_kind,
        with_labels=labels is not None, label_names=label_names, metadata=meta, overwrite=overwrite,
        store_keys=store_keys,
    ) as writer:
        for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="encoding", unit="batch"):
            batch = to_model_input(images[start:start + batch_size], device)
            codes = autoencoder.encode_indices(batch).cpu().numpy()
            writer.add(codes, labels=None if labels is None else labels[start:start + batch_size])
    return Database.open(path, expected_fingerprint=fingerprint)
