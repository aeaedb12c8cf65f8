"""`lmforge vision ...` end to end on scikit-learn's 8x8 digits with tiny models, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.cli import main

TINY = ["--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.log_interval=1"]
DIGITS_CNN = [
    "--set",
    "data.dataset=digits",
    "--set",
    "model.image_size=8",
    "--set",
    "model.width=4",
    "--set",
    "model.stages=2",
    "--set",
    "train.batch_size=32",
]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = [
        "vision",
        "train",
        *DIGITS_CNN,
        *TINY,
        "--set",
        "train.max_iters=3",
        "--set",
        f"train.out_dir={out}",
    ]
    assert main(argv) == 0
    return out


def test_train_leaves_a_complete_run(classifier_run, capsys):
    results = json.loads((classifier_run / "results.json").read_text())
    assert results["arch"] == "cnn" and results["test_images"] == 359 and 0 <= results["accuracy"] <= 1
    assert np.array(results["confusion_matrix"]).sum() == 359
    for name in (
        "confusion_matrix.png",
        "misclassified.png",
        "plots/loss.png",
        "config.toml",
        "model/meta.json",
    ):
        assert (classifier_run / name).is_file(), name


def run_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_patch_size_that_does_not_divide_the_image(capsys, tmp_path):
    argv = [
        "vision",
        "train",
        *DIGITS_CNN,
        "--set",
        "model.arch=vit",
        "--set",
        "model.patch_size=3",
        "--set",
        f"train.out_dir={tmp_path}",
    ]
    assert "patch_size=3 does not divide model.image_size=8" in run_error(argv, capsys)


def test_images_of_the_wrong_size_for_the_config(capsys, tmp_path):
    argv = ["vision", "train", "--set", "data.dataset=digits", "--set", f"train.out_dir={tmp_path}"]
    assert "has 1x8x8 images (CxHxW) but the model is configured for 1x28x28" in run_error(argv, capsys)


def test_truncated_idx_file(capsys, tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\0" * 100
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))
    argv = ["vision", "train", "--set", f"data.root={tmp_path}", "--set", f"train.out_dir={tmp_path / 'run'}"]
    err = run_error(argv, capsys)
    assert "train-images-idx3-ubyte" in err and "1568 bytes of data but the file holds 100" in err


def test_generate_fid_and_transfer(classifier_run, tmp_path, capsys):
    vae_dir = tmp_path / "vae"
    argv = [
        "vision",
        "generate",
        "--set",
        "model.kind=vae",
        "--set",
        "data.dataset=digits",
        "--set",
        "model.image_size=8",
        "--set",
        "model.width=4",
        "--set",
        "train.max_iters=2",
        "--set",
        "train.batch_size=16",
        "--set",
        f"train.out_dir={vae_dir}",
        *TINY,
    ]
    assert main(argv) == 0
    for name in ("samples.png", "reconstructions.png", "traversal.png", "progress.png", "model/meta.json"):
        assert (vae_dir / name).is_file(), name
    capsys.readouterr()
    argv = [
        "vision",
        "fid",
        "--classifier",
        str(classifier_run / "model"),
        "--generator",
        str(vae_dir / "model"),
        "--num-images",
        "100",
        "--json",
        str(tmp_path / "fid.json"),
    ]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "fid.json").read_text())
    assert [r["source"].split(":")[0] for r in rows] == ["real", "vae"]
    assert all(np.isfinite(r["fid"]) and r["fid"] >= -1e-6 for r in rows)
    argv = [
        "vision",
        "transfer",
        "--pretrained",
        str(classifier_run / "model"),
        "--set",
        "data.dataset=digits",
        "--set",
        "train.max_iters=2",
        "--set",
        "train.batch_size=16",
        "--set",
        f"train.out_dir={tmp_path / 't'}",
        *TINY,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(a) frozen backbone + new head" in out and "(c) from scratch" in out
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    frozen, full, _ = (r["trainable_parameters"] for r in results["rows"])
    assert frozen == 8 * 10 + 10 < full  # the new head only: 8 features (width 4, doubled once) x 10 + 10
