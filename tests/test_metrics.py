"""Metrics on inputs whose answer is known."""
import numpy as np
import pytest
import torch

from rissole_trt.evaluation.metrics import (
    block_seam_ratio,
    laplacian_pyramid,
    memorisation_rate,
    nearest_neighbour_distances,
    psnr,
    sliced_wasserstein,
)

from synthetic import smooth_images


def test_seam_ratio_of_seamless_images_is_about_one():
    assert block_seam_ratio(smooth_images(16), block_factor=2) == pytest.approx(1.0, abs=0.1)


def test_seam_ratio_of_hard_block_edges_is_far_above_one():
    images = smooth_images(16)
    # Shift the brightness of each block differently: hard edges along the 2x2 grid.
    blocky = images.astype(np.int16)
    blocky[:, :32, 32:] += 60
    blocky[:, 32:, :32] -= 60
    blocky = np.clip(blocky, 0, 255).astype(np.uint8)
    assert block_seam_ratio(blocky, block_factor=2) > 3.0


def test_seam_ratio_only_counts_the_right_grid():
    images = smooth_images(8)
    blocky = images.astype(np.int16)
    blocky[:, :, 32:] += 60
    blocky = np.clip(blocky, 0, 255).astype(np.uint8)
    assert block_seam_ratio(blocky, block_factor=2) > 2.0
    # With a 3x3 grid that edge is not on a block boundary (64 % 3 != 0 must be rejected anyway).
    with pytest.raises(ValueError, match="divisible"):
        block_seam_ratio(blocky, block_factor=3)


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    pyramid = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyramid] == [32, 16, 8]
    # Collapsing the pyramid with the same expand step gives the input back exactly.
    from rissole_trt.evaluation.metrics import _blur

    current = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        up = torch.zeros_like(detail)
        up[:, :, ::2, ::2] = current
        current = detail + 4.0 * _blur(up)
    assert torch.allclose(current, x, atol=1e-12)


def test_swd_of_a_set_with_itself_is_about_zero_and_grows_with_difference():
    a = smooth_images(64, seed=1)
    same = sliced_wasserstein(a, a.copy(), patches_per_image=16, directions=64, repeats=2)
    assert same["mean"] == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    other = sliced_wasserstein(a, noisy, patches_per_image=16, directions=64, repeats=2)
    similar = sliced_wasserstein(a, smooth_images(64, seed=2), patches_per_image=16, directions=64, repeats=2)
    assert set(other) == {"level_64", "level_32", "level_16", "mean"}
    # Added pixel noise shows at the finest level above all.
    assert other["level_64"] > 5 * similar["level_64"] > 0
    assert other["mean"] > similar["mean"]


def test_nearest_neighbour_distances_match_brute_force():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    queries = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    d = nearest_neighbour_distances(queries, train)
    flat_q = queries.reshape(5, -1) / 255.0
    flat_t = train.reshape(20, -1) / 255.0
    expected = np.sqrt(((flat_q[:, None] - flat_t[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(d, expected, rtol=1e-5)
    self_d = nearest_neighbour_distances(train, train, exclude_same_index=True)
    full = np.sqrt(((flat_t[:, None] - flat_t[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(self_d, full.min(1), rtol=1e-5)


def test_memorisation_rate_detects_copies():
    train = np.random.default_rng(3).integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
    copies = train[:10].copy()
    # Saturated images are farther from uniform noise than noise images are from each other.
    fresh = np.concatenate([np.zeros((5, 16, 16, 3), np.uint8), np.full((5, 16, 16, 3), 255, np.uint8)])
    assert memorisation_rate(copies, train)["rate"] == 1.0
    assert memorisation_rate(fresh, train)["rate"] == 0.0


def test_psnr_known_values():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[...] = 110  # MSE 100 -> 10*log10(255^2/100)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / 100.0))
    assert psnr(a, a) == 100.0
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:1])
