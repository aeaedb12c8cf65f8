"""FID against a hand-worked case and against the scipy computation (pytorch-fid's formula) on the same
features; the confusion matrix and the image grid by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lmforge.errors import DataError
from lmforge.evaluation.fid import classifier_features, fid_from_features, frechet_distance, gaussian_fit
from lmforge.evaluation.vision import confusion_matrix, image_grid


def scipy_fid(real: np.ndarray, generated: np.ndarray) -> float:
    """The reference computation of pytorch-fid: np.cov statistics and scipy.linalg.sqrtm of S1 S2."""
    mu1, mu2 = real.mean(0), generated.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_one_dimensional_case_by_hand():
    """N(0, 1) vs N(3, 4): (0 - 3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 9 + 5 - 4 = 10."""
    assert frechet_distance(np.zeros(1), np.eye(1), np.full(1, 3.0), 4 * np.eye(1)) == pytest.approx(10.0)


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_matches_scipy_sqrtm_on_the_same_features(dim):
    rng = np.random.default_rng(dim)
    mixing = rng.normal(size=(dim, dim))
    real = rng.normal(size=(500, dim)) @ mixing
    generated = rng.normal(size=(400, dim)) @ (mixing + 0.3 * rng.normal(size=(dim, dim))) + 0.5
    ours, reference = fid_from_features(real, generated), scipy_fid(real, generated)
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_statistics_and_identity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    mu, sigma = gaussian_fit(x)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
    np.testing.assert_allclose(mu, x.mean(0))
    assert abs(fid_from_features(x, x)) < 1e-8
    with pytest.raises(DataError, match="at least 2"):
        gaussian_fit(x[:1])


def test_rank_deficient_covariances_stay_finite():
    """Fewer samples than dimensions give singular covariances; eigh keeps the square root real."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20)) + 1
    assert np.isfinite(fid_from_features(a, b))
    assert fid_from_features(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-4)


def test_classifier_features_normalise_like_training():
    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def features(self, x):
            return x.mean(dim=(1, 2, 3), keepdim=False)[:, None] * self.w

    images = np.full((3, 1, 2, 2), 255, dtype=np.uint8)
    features = classifier_features(Mean(), images, mean=0.5, std=0.25, batch_size=2)
    np.testing.assert_allclose(features, np.full((3, 1), 2.0))  # (1 - 0.5) / 0.25


def test_confusion_matrix_by_hand():
    counts = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_image_grid_layout():
    """3 images of 2x2 in rows of 2, padding 1: height 2 * (2 + 1) + 1 = 7, width 2 * (2 + 1) + 1 = 7."""
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    grid = image_grid(images, nrow=2, padding=1)
    assert grid.shape == (7, 7)
    assert grid[1, 1] == 0 and grid[1, 4] == 128 and grid[4, 1] == 255
    assert grid[0, 0] == 255 and grid[4, 4] == 255  # frame and the empty fourth tile are white
