"""Synthetic test images with structure (smooth colour waves), so that models can learn them quickly,
and tiny training runs through the CLI."""
from pathlib import Path

import numpy as np

from rissole_trt import cli


def smooth_images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: random low-frequency colour waves, nothing tied to a block grid."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(0.5, 3.0, 2)
        phase = rng.uniform(0, 2 * np.pi, 3)
        for c in range(3):
            out[i, :, :, c] = (127.5 + 100 * np.sin(2 * np.pi * (f[0] * x + f[1] * y) + phase[c])).astype(np.uint8)
    return out


def cli_train_tiny(images: np.ndarray, directory: Path, steps: int, *train_args: str) -> Path:
    """Both training stages of a tiny model on 32x32 ``images`` through the CLI; returns the data .npz
    (``images`` + ``train_idx``). The autoencoder lands in ``directory/ae``, the model in ``directory/run``."""
    npz = directory / "data.npz"
    np.savez(npz, images=images, train_idx=np.arange(len(images)))
    common = ["--images", str(npz), "--split", "train_idx", "--image-size", "32", "--batch-size", "2", "--no-progress"]
    assert cli.main(["train-autoencoder", *common, "--steps", str(steps), "--channels", "8", "16", "--latent-dim", "4",
                     "--codebook-size", "32", "-o", str(directory / "ae")]) == 0
    assert cli.main(["train", *common, "--steps", str(steps), "--autoencoder", str(directory / "ae"),
                     "--channels", "16", "32", *train_args, "-o", str(directory / "run")]) == 0
    return npz
