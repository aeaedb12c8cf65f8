"""Fréchet distance between two image sets, through the features of a classifier (a "domain FID").

FID (Heusel et al. 2017) fits a Gaussian to the features of real images (mu_r, S_r) and of generated
ones (mu_g, S_g) and reports the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

The matrix square root: S_r S_g is not symmetric, but it is similar to the symmetric positive
semi-definite A = S_r^(1/2) S_g S_r^(1/2) (same eigenvalues), so Tr((S_r S_g)^(1/2)) = sum_i sqrt(l_i(A)).
Two symmetric eigendecompositions give it without the complex arithmetic and the "imaginary component"
checks of a general `scipy.linalg.sqrtm`, to which the tests compare it on the same features.

The features: the standard FID uses Inception-v3's pool layer, whose weights cannot be downloaded here.
`classifier_features` uses the penultimate layer (`model.features`) of lmforge's own Fashion-MNIST
classifier instead. Values are therefore comparable between models scored with the SAME classifier
checkpoint only, never with published FIDs.

Deliberately not here: Inception weights, the KID / precision-recall variants.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.data.images import normalize
from lmforge.errors import DataError


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64 (as numpy's `np.cov`)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise DataError(f"FID needs at least 2 feature vectors of shape (N, F), got {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; tiny negative eigenvalues (round-off) become 0."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) (see the module docstring).

    Example (1-D): N(0, 1) vs N(3, 4): 9 + 1 + 4 - 2 * sqrt(1 * 4) = 10.
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1  # symmetric PSD, same eigenvalues as sigma1 @ sigma2
    middle = (middle + middle.T) / 2  # remove round-off asymmetry before eigvalsh
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_from_features(real: np.ndarray, generated: np.ndarray) -> float:
    return frechet_distance(*gaussian_fit(real), *gaussian_fit(generated))


@torch.no_grad()
def classifier_features(
    model: nn.Module, images: np.ndarray, *, mean: float, std: float, batch_size: int = 500
) -> np.ndarray:
    """Penultimate-layer features (N, F) of uint8 images (N, C, H, W), normalised as the classifier was."""
    model.eval()
    device = next(model.parameters()).device
    chunks = [
        model.features(normalize(images[i : i + batch_size], mean=mean, std=std).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).double().numpy()


def fid_table(
    classifier_dir: str | Path,
    generator_dirs: Sequence[str | Path],
    *,
    num_images: int = 2000,
    seed: int = 0,
    root: str = "",
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """FID of the test split and of each generator's samples, all against `num_images` training images.

    The classifier's data set and normalisation come from its checkpoint. The "real" row compares
    `num_images` test images with the training ones: the floor a perfect generator would reach with
    this many samples. Generators sample in batches of 250 (DDPM through its DDIM sampler with
    `ddim_steps`) and their [0, 1] images are rounded to uint8, as real pixels are.
    """
    from lmforge.data.images import load_dataset
    from lmforge.models.generative import load_generative, to_unit
    from lmforge.models.vision import load_classifier

    classifier, _, meta = load_classifier(classifier_dir)
    classifier.to(device)
    mean, std = meta["mean"], meta["std"]
    rng = np.random.default_rng(seed)
    train = load_dataset(meta["dataset"], "train", root=root, seed=seed)
    test = load_dataset(meta["dataset"], "test", root=root, seed=seed)
    if min(len(train), len(test)) < num_images:
        raise DataError(
            f"num_images={num_images} exceeds the data set ({len(train)} train, {len(test)} test)"
        )
    train_images = train.images[rng.choice(len(train), num_images, replace=False)]
    test_images = test.images[rng.choice(len(test), num_images, replace=False)]
    reference = classifier_features(classifier, train_images, mean=mean, std=std)
    test_features = classifier_features(classifier, test_images, mean=mean, std=std)
    rows = [
        {
            "source": f"real: {meta['dataset']} test split",
            "fid": fid_from_features(reference, test_features),
            "sample_seconds": 0.0,
        }
    ]
    for directory in generator_dirs:
        model, config, _ = load_generative(directory)
        model.to(device)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        batches = []
        for i in range(0, num_images, 250):
            n = min(250, num_images - i)
            if config.kind == "ddpm":
                samples = model.sample_ddim(n, steps=config.ddim_steps, generator=generator)
            else:
                samples = model.sample(n, generator=generator)
            batches.append((to_unit(samples, config.kind) * 255).round().byte().cpu().numpy())
        seconds = time.perf_counter() - start
        features = classifier_features(classifier, np.concatenate(batches), mean=mean, std=std)
        label = f"{config.kind}" + (f" (DDIM, {config.ddim_steps} steps)" if config.kind == "ddpm" else "")
        rows.append(
            {
                "source": f"{label}: {directory}",
                "fid": fid_from_features(reference, features),
                "sample_seconds": seconds,
            }
        )
    return rows
