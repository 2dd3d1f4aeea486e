"""Image-quality metrics that need no downloaded network weights.

All functions take uint8 images ``[N, H, W, 3]`` (numpy) as the engine returns them.

- :func:`block_seam_ratio` - how visible the block grid is (real images ~ 1).
- :func:`sliced_wasserstein` - SWD on multi-scale Laplacian-pyramid patches (Karras et al. 2018).
- :func:`memorisation_rate` - share of samples closer to a training image than training images
  usually are to each other.
- :func:`psnr` - reconstruction quality of the autoencoder.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError

__all__ = [
    "block_seam_ratio",
    "laplacian_pyramid",
    "sliced_wasserstein",
    "nearest_neighbour_distances",
    "memorisation_rate",
    "psnr",
]


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidArgumentError(f"{name} must be [N, H, W, 3], got shape {images.shape}")
    if images.shape[0] == 0:
        raise InvalidArgumentError(f"{name} is empty")
    return images


def block_seam_ratio(images: np.ndarray, block_factor: int) -> float:
    """Mean |pixel gradient| across block boundaries divided by the mean elsewhere.

    Horizontal and vertical neighbour differences are pooled. A boundary pair is one whose two
    pixels lie in different blocks of the ``block_factor`` x ``block_factor`` grid. Images without
    visible seams give about 1; hard block edges give far more.
    """
    images = _check_images(images).astype(np.float64)
    n, h, w, _ = images.shape
    if block_factor < 2:
        raise InvalidArgumentError("block_factor must be >= 2: with one block there is no seam")
    if h % block_factor or w % block_factor:
        raise InvalidArgumentError(f"image size {h}x{w} is not divisible by block_factor {block_factor}")
    dx = np.abs(np.diff(images, axis=2)).mean(axis=(0, 1, 3))  # [W-1], pair (j, j+1)
    dy = np.abs(np.diff(images, axis=1)).mean(axis=(0, 2, 3))  # [H-1]
    seam_x = (np.arange(1, w) % (w // block_factor)) == 0
    seam_y = (np.arange(1, h) % (h // block_factor)) == 0
    # Weight each column/row mean by the number of pixel pairs it stands for.
    at_seam = (dx[seam_x].sum() * h + dy[seam_y].sum() * w) / (seam_x.sum() * h + seam_y.sum() * w)
    elsewhere = (dx[~seam_x].sum() * h + dy[~seam_y].sum() * w) / ((~seam_x).sum() * h + (~seam_y).sum() * w)
    if elsewhere == 0:
        raise InvalidArgumentError("images are flat away from the block boundaries: the ratio is undefined")
    return float(at_seam / elsewhere)


_BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = (_BINOMIAL_5[:, None] * _BINOMIAL_5[None, :]).to(x)
    kernel = kernel.expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid of ``[N, C, H, W]`` float images, finest level first; the last is Gaussian."""
    pyramid = []
    current = images
    for _ in range(levels - 1):
        down = _blur(current)[:, :, ::2, ::2]
        up = torch.zeros_like(current)
        up[:, :, ::2, ::2] = down
        pyramid.append(current - 4.0 * _blur(up))
        current = down
    pyramid.append(current)
    return pyramid


def _patch_descriptors(level: torch.Tensor, ys: np.ndarray, xs: np.ndarray, size: int) -> torch.Tensor:
    n, c, h, w = level.shape
    per_image = ys.shape[1]
    offsets = torch.arange(size)
    rows = torch.as_tensor(ys)[..., None] + offsets  # [n, per, size]
    cols = torch.as_tensor(xs)[..., None] + offsets
    img = torch.arange(n)[:, None, None, None]
    # level[img, :, rows, cols] -> [n, per, size, size, c]
    patches = level.permute(0, 2, 3, 1)[img, rows[:, :, :, None], cols[:, :, None, :]]
    return patches.reshape(n * per_image, -1)


def _normalise(desc: torch.Tensor) -> torch.Tensor:
    return (desc - desc.mean(dim=0, keepdim=True)) / desc.std(dim=0, keepdim=True).clamp_min(1e-8)


def _sliced_wasserstein_1d(a: torch.Tensor, b: torch.Tensor, directions: int, repeats: int,
                           generator: torch.Generator) -> float:
    results = []
    for _ in range(repeats):
        proj = torch.randn(a.shape[1], directions, generator=generator, dtype=a.dtype)
        proj = proj / proj.norm(dim=0, keepdim=True)
        pa = torch.sort(a @ proj, dim=0).values
        pb = torch.sort(b @ proj, dim=0).values
        results.append((pa - pb).abs().mean().item())
    return float(np.mean(results))


def sliced_wasserstein(images_a: np.ndarray, images_b: np.ndarray, *, levels: int = 3, patch_size: int = 7,
                       patches_per_image: int = 64, directions: int = 512, repeats: int = 4,
                       seed: int = 0) -> dict[str, float]:
    """Sliced Wasserstein distance between two image sets on Laplacian-pyramid patches.

    Follows Karras et al. 2018 (Progressive GAN): random ``patch_size``² patches from every pyramid
    level, each level's descriptors normalised per channel over both sets together, then the mean
    absolute difference of sorted random 1-D projections. Returns ``{"level_<res>": swd, ...,
    "mean": swd}`` scaled by 1e3 as in the paper. Both sets are subsampled to the same count.
    """
    a = _check_images(images_a, "images_a")
    b = _check_images(images_b, "images_b")
    if a.shape[1:] != b.shape[1:]:
        raise InvalidArgumentError(f"image sets differ in size: {a.shape[1:]} vs {b.shape[1:]}")
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    a = a[rng.choice(len(a), n, replace=False)] if len(a) > n else a
    b = b[rng.choice(len(b), n, replace=False)] if len(b) > n else b

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1.0

    pyr_a = laplacian_pyramid(to_tensor(a), levels)
    pyr_b = laplacian_pyramid(to_tensor(b), levels)
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for level_a, level_b in zip(pyr_a, pyr_b):
        h, w = level_a.shape[-2:]
        if h < patch_size or w < patch_size:
            raise InvalidArgumentError(f"pyramid level {h}x{w} is smaller than the {patch_size}x{patch_size} patch")
        # The same patch positions in both sets, so that a set compared with itself gives 0.
        ys = rng.integers(0, h - patch_size + 1, size=(n, patches_per_image))
        xs = rng.integers(0, w - patch_size + 1, size=(n, patches_per_image))
        da = _patch_descriptors(level_a, ys, xs, patch_size)
        db = _patch_descriptors(level_b, ys, xs, patch_size)
        both = _normalise(torch.cat([da, db]))
        swd = _sliced_wasserstein_1d(both[: len(da)], both[len(da):], directions, repeats, generator)
        result[f"level_{level_a.shape[-1]}"] = swd * 1e3
    result["mean"] = float(np.mean(list(result.values())))
    return result


def nearest_neighbour_distances(queries: np.ndarray, reference: np.ndarray, *, exclude_same_index: bool = False,
                                chunk: int = 512) -> np.ndarray:
    """Pixel-space L2 distance from every query image to its nearest reference image.

    With ``exclude_same_index`` (queries are the reference set) an image is not its own neighbour.
    """
    q = torch.from_numpy(_check_images(queries, "queries").reshape(len(queries), -1).astype(np.float32)) / 255.0
    r = torch.from_numpy(_check_images(reference, "reference").reshape(len(reference), -1).astype(np.float32)) / 255.0
    if q.shape[1] != r.shape[1]:
        raise InvalidArgumentError("queries and reference images differ in size")
    r_sq = (r.double() ** 2).sum(dim=1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        qc = q[start:start + chunk]
        d2 = (qc.double() ** 2).sum(dim=1, keepdim=True) + r_sq[None] - 2.0 * (qc @ r.T).double()
        if exclude_same_index:
            idx = torch.arange(start, start + len(qc))
            d2[torch.arange(len(qc)), idx] = float("inf")
        out[start:start + len(qc)] = d2.min(dim=1).values.clamp_min(0).sqrt().numpy()
    return out


def memorisation_rate(generated: np.ndarray, training: np.ndarray, percentile: float = 1.0) -> dict[str, float]:
    """Share of generated images closer to their nearest training image than the ``percentile``-th
    percentile of nearest-neighbour distances among the training images themselves."""
    if len(training) < 2:
        raise InvalidArgumentError("memorisation needs at least two training images")
    train_nn = nearest_neighbour_distances(training, training, exclude_same_index=True)
    threshold = float(np.percentile(train_nn, percentile))
    gen_nn = nearest_neighbour_distances(generated, training)
    return {
        "rate": float(np.mean(gen_nn < threshold)),
        "threshold": threshold,
        "median_generated_nn_distance": float(np.median(gen_nn)),
        "median_training_nn_distance": float(np.median(train_nn)),
    }


def psnr(original: np.ndarray, reconstructed: np.ndarray) -> float:
    """Mean per-image PSNR in dB between two uint8 image sets of the same shape."""
    a = _check_images(original, "original").astype(np.float64)
    b = _check_images(reconstructed, "reconstructed").astype(np.float64)
    if a.shape != b.shape:
        raise InvalidArgumentError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(255.0 ** 2 / mse)
    return float(np.mean(np.minimum(values, 100.0)))  # identical images: cap instead of inf
