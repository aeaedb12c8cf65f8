"""The linear probe's fit against scikit-learn's LogisticRegression on the same standardised features.

sklearn (lbfgs, multinomial) minimises 0.5 ||W||^2 + C * sum_i CE_i; ours minimises mean_i CE_i +
(l2 / 2) ||W||^2. With C = 1 / (l2 * N) the second is the first divided by C * N, so the minimiser (and
every predicted probability) is the same.
"""

from __future__ import annotations

import pytest
import torch

linear_model = pytest.importorskip("sklearn.linear_model")

from lmforge.interpret.probes import fit_probe  # noqa: E402


def test_probe_equals_sklearn_logistic_regression():
    generator = torch.Generator().manual_seed(0)
    N, C, K, l2 = 300, 6, 3, 0.05
    features = torch.randn(N, C, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 1.0]) + 1.0
    labels = (features[:, :3] + 0.8 * torch.randn(N, 3, generator=generator)).argmax(-1)
    probe = fit_probe(features, labels, n_classes=K, l2=l2)

    standardised = ((features.double() - probe.mean) / probe.scale).numpy()
    reference = linear_model.LogisticRegression(C=1 / (l2 * N), tol=1e-10, max_iter=1000)
    reference.fit(standardised, labels.numpy())
    ours = probe.logits(features.double()).softmax(-1)
    torch.testing.assert_close(
        ours, torch.from_numpy(reference.predict_proba(standardised)), atol=1e-5, rtol=0
    )
