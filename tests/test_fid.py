"""The domain FID: the Fréchet distance's basic properties, and the shipped feature network sees
shuffled blocks as further from real images than other real images are."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rissole_trt.errors import InvalidArgumentError
from rissole_trt.evaluation.fid import FeatureNet, domain_fid, features, frechet_distance, load_feature_net


def test_frechet_distance_of_gaussians_has_its_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Shifting the mean by d adds |d|^2.
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-9)
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a), rel=1e-9)
    # a against 2a: means differ by mean(a); Tr(C + 4C - 2 (4C^2)^1/2) = Tr C.
    assert frechet_distance(a, 2 * a) == pytest.approx(np.trace(np.cov(a.T)) + a.mean(0) @ a.mean(0), rel=1e-9)
    with pytest.raises(InvalidArgumentError):
        frechet_distance(a[:1], a)


def test_identical_sets_score_zero_with_any_feature_network():
    images = np.random.default_rng(1).integers(0, 256, size=(40, 64, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    net = FeatureNet().eval()
    assert domain_fid(images, images, net) == pytest.approx(0.0, abs=1e-6)
    assert features(net, images).shape == (40, 128)


def _shuffle_blocks(images: np.ndarray, rng) -> np.ndarray:
    """Each image's four 32x32 quadrants taken from four different images."""
    out = images.copy()
    n = len(images)
    for qy in (0, 1):
        for qx in (0, 1):
            perm = rng.permutation(n)
            out[:, qy * 32:(qy + 1) * 32, qx * 32:(qx + 1) * 32] = images[perm, qy * 32:(qy + 1) * 32, qx * 32:(qx + 1) * 32]
    return out


def test_shipped_network_scores_shuffled_blocks_worse_than_real_images(shared_dir):
    net = load_feature_net()
    with np.load(shared_dir / "data" / "noto-emoji-64.npz") as data:
        real, train = data["images"][data["test_idx"]], data["images"][data["train_idx"]]
    rng = np.random.default_rng(0)
    others = train[rng.choice(len(train), size=len(real), replace=False)]
    floor = domain_fid(others, real, net)
    shuffled = domain_fid(_shuffle_blocks(others, rng), real, net)
    assert shuffled > 2 * floor > 0
