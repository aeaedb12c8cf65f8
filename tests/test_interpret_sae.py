"""Sparse autoencoder: metrics worked by hand, training lowers the loss, resampling revives dead features,
an exact dictionary patched into a GPT reproduces its loss, save/load round-trips."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import FormatError
from lmforge.interpret.sae import (
    SAEConfig,
    SparseAutoencoder,
    load_sae,
    patched_losses,
    resample_dead,
    sae_loss,
    sae_metrics,
    save_sae,
    train_sae,
)
from lmforge.models import GPT, GPTConfig


def signed_basis(d: int) -> SparseAutoencoder:
    """Features relu(x_k) and relu(-x_k) for each coordinate, decoded by +e_k and -e_k: x_hat = x."""
    sae = SparseAutoencoder(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))  # (d, 2d)
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=1).T)  # (2d, d), unit rows
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_metrics_worked_by_hand():
    """x = [[1, -2], [0, 3]]; features relu(x0), relu(x1), relu(-x0), relu(-x1):
    row 0 -> [1, 0, 0, 2], row 1 -> [0, 3, 0, 0]: exact reconstruction, L0 = (2 + 1) / 2 = 1.5, and
    relu(-x0) never fires (dead = 1). With b_enc of feature 1 set to -1, row 1 decodes to [0, 2]: squared
    error 1, MSE = 1 / 4 = 0.25; deviations from the mean [0.5, 0.5] square to 0.25 + 6.25 + 0.25 + 6.25
    = 13, so explained variance = 1 - 1/13. L1 term: mean of feature sums (3 + 2) / 2 = 2.5."""
    x = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    sae = signed_basis(2)
    metrics = sae_metrics(sae, x)
    assert metrics == {"mse": 0.0, "explained_variance": 1.0, "l0": 1.5, "dead": 1, "n_features": 4}
    with torch.no_grad():
        sae.b_enc[1] = -1.0
    metrics = sae_metrics(sae, x)
    assert metrics["mse"] == pytest.approx(0.25)
    assert metrics["explained_variance"] == pytest.approx(1 - 1 / 13)
    total, mse = sae_loss(sae, x, l1=0.1)
    assert float(mse.detach()) == pytest.approx(0.25) and float(total.detach()) == pytest.approx(
        0.25 + 0.1 * 2.5
    )


def sparse_data(n: int, seed: int) -> torch.Tensor:
    """8-dim inputs, each a sum of about 2 of 16 fixed unit directions with magnitudes in [0.5, 1.5]."""
    directions = torch.nn.functional.normalize(
        torch.randn(16, 8, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    generator = torch.Generator().manual_seed(seed)
    active = torch.rand(n, 16, generator=generator) < 2 / 16
    magnitudes = 0.5 + torch.rand(n, 16, generator=generator)
    return (active * magnitudes) @ directions


def test_training_lowers_the_loss_and_explains_the_data():
    x = sparse_data(4096, seed=0)
    config = SAEConfig(n_features=32, l1=3e-3, lr=1e-2, steps=400, batch_size=128, resample_every=200)
    sae, history = train_sae(x, config)
    assert history[0]["step"] == 1 and history[-1]["loss"] < 0.3 * history[0]["loss"]
    metrics = sae_metrics(sae, sparse_data(1024, seed=1))  # held-out inputs
    assert metrics["explained_variance"] > 0.95 and metrics["l0"] < 16
    assert all(torch.allclose(row.norm(), torch.tensor(1.0)) for row in sae.W_dec)  # unit decoder rows


def test_resampling_revives_a_dead_feature():
    x = sparse_data(512, seed=2)
    sae = SparseAutoencoder(8, 4)
    with torch.no_grad():
        sae.b_enc[2] = -100.0  # never fires
    assert (sae.encode(x)[:, 2] > 0).sum() == 0
    dead = torch.tensor([False, False, True, False])
    assert resample_dead(sae, x, dead, torch.Generator().manual_seed(0)) == 1
    assert (sae.encode(x)[:, 2] > 0).sum() > 0 and float(sae.W_dec[2].detach().norm()) == pytest.approx(1.0)


def test_an_exact_dictionary_patched_into_the_model_keeps_its_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=12, n_layer=2, n_head=2, n_embd=8)).eval()
    windows = torch.randint(30, (6, 12), generator=torch.Generator().manual_seed(1))
    losses = patched_losses(model, windows, "blocks.0.resid_post", signed_basis(8), batch_size=4)
    assert losses["sae"] == pytest.approx(losses["clean"], abs=1e-5)
    assert losses["recovered"] == pytest.approx(1.0, abs=1e-3)


def test_save_load_round_trip_and_bad_files(tmp_path):
    sae = signed_basis(3)
    save_sae(sae, tmp_path, meta={"point": "blocks.0.resid_post"})
    loaded, meta = load_sae(tmp_path)
    assert meta["point"] == "blocks.0.resid_post"
    pairs = zip(sae.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    description = json.loads((tmp_path / "sae.json").read_text())
    (tmp_path / "sae.json").write_text(json.dumps({**description, "n_features": 7}))
    with pytest.raises(FormatError, match="sae.safetensors"):
        load_sae(tmp_path)
