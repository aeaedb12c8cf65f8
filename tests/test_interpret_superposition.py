"""Toy model of superposition: dense features are dropped beyond m, sparse ones share the m dimensions."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interpret.superposition import ToyConfig, ToyModel, feature_geometry, toy_loss, train_toy_models


def test_feature_geometry_worked_by_hand():
    """Columns (1, 0), (0, 1), (-1, 0): norms 1, 1, 1; feature 0 overlaps feature 2 fully ((-1)^2 = 1)
    and feature 1 not at all, so interference [1, 0, 1]."""
    W = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])  # (I=1, m=2, n=3)
    norms, interference = feature_geometry(W)
    torch.testing.assert_close(norms, torch.ones(1, 3))
    torch.testing.assert_close(interference, torch.tensor([[1.0, 0.0, 1.0]]))


def test_an_orthonormal_model_reconstructs_non_negative_inputs_exactly():
    model = ToyModel(1, 3, 3)
    with torch.no_grad():
        model.W.copy_(torch.eye(3)[None])
        model.b.zero_()
    x = torch.tensor([[[0.2, 0.0, 0.9], [1.0, 0.5, 0.0]]])  # (I, B, n)
    assert float(toy_loss(model, x, torch.ones(3))[0]) == 0.0


def test_sparsity_turns_dropped_features_into_superposed_ones():
    config = ToyConfig(
        n_features=5,
        n_hidden=2,
        sparsities=[0.0, 0.99],
        importance_decay=0.7,
        steps=800,
        lr=1e-2,
        batch_size=256,
    )
    model, losses = train_toy_models(config)
    norms, _ = feature_geometry(model.W)
    dense, sparse = norms
    assert (dense[:2] > 0.8).all() and (dense[3:] < 0.3).all()  # PCA-like: the two most important only
    assert int((sparse > 0.8).sum()) >= 4  # four or five features stored in two dimensions
    assert losses[1] < losses[0]


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="toy.sparsities"):
        ToyConfig(sparsities=[1.0])
