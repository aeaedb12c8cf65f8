"""Linear probes: a planted linear signal is read perfectly, shuffled labels are not; the split is by row."""

from __future__ import annotations

import torch

from lmforge.interpret.probes import fit_probe, probe_by_layer, residual_features
from lmforge.models import GPT, GPTConfig


def test_probe_reads_a_planted_direction_and_not_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(800, 16, generator=generator)
    direction = torch.randn(16, generator=generator)
    labels = (features @ direction > 0).long()  # linearly separable by construction
    train, test = slice(0, 600), slice(600, 800)
    probe = fit_probe(features[train], labels[train], n_classes=2, l2=1e-2)
    assert probe.accuracy(features[test], labels[test]) > 0.97
    shuffled = labels[torch.randperm(800, generator=generator)]
    probe = fit_probe(features[train], shuffled[train], n_classes=2, l2=1e-2)
    assert abs(probe.accuracy(features[test], shuffled[test]) - 0.5) < 0.1  # chance on held-out rows


def test_probe_by_layer_finds_a_label_written_into_the_embeddings():
    """Rows of class 1 use ids 10..19, rows of class 0 ids 0..9: the current token's embedding alone
    tells the class, so every depth of a random model reads it perfectly on the held-out rows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(2, (200,), generator=generator)
    ids = torch.randint(10, (200, 8), generator=generator) + 10 * labels[:, None]  # class 1 rows: ids 10..19
    results = probe_by_layer(model, ids, labels, n_classes=2, positions=[2, 5], seed=0)
    assert [r.depth for r in results] == [0, 1]
    assert all(r.test_accuracy == 1.0 for r in results)  # token identity carries the label at every depth
    assert residual_features(model, ids, [2, 5]).shape == (2, 400, 16)
