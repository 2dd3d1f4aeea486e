"""Synthetic test images with structure (smooth colour waves), so that models can learn them quickly."""
import numpy as np


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
