"""`lmforge interpret probe|sae train|sae features|superposition` end to end on a tiny byte-level model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from lmforge.cli import main
from lmforge.models import GPT, GPTConfig
from lmforge.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = BPETokenizer.train(["the cat sat on the mat"], vocab_size=258, progress=False)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=32)
    directory = tmp_path_factory.mktemp("ckpt")
    GPT(config).save_checkpoint(directory, meta={"tokenizer": tokenizer.to_dict()})
    return directory


def test_probe_sae_and_superposition_commands(checkpoint, capsys, tmp_path):
    ckpt = ["--ckpt", str(checkpoint)]
    code, out, _ = run_cli(
        capsys,
        "interpret",
        "probe",
        *ckpt,
        "--leads",
        "40",
        "--length",
        "24",
        "--skip",
        "12",
        "--out",
        str(tmp_path / "probe.png"),
    )
    assert code == 0 and (tmp_path / "probe.png").exists()
    lines = out.splitlines()
    assert lines[1].split()[0] == "depth" and [line.split()[0] for line in lines[2:5]] == ["emb", "1", "2"]

    text = ["--corpus", "wiki-leads", "--windows", "20", "--length", "16"]
    sae_dir = tmp_path / "sae"
    code, out, _ = run_cli(
        capsys,
        "interpret",
        "sae",
        "train",
        *ckpt,
        *text,
        "--point",
        "blocks.1.resid_post",
        "--features",
        "32",
        "--steps",
        "30",
        "--batch-size",
        "64",
        "--out",
        str(sae_dir),
    )
    assert code == 0 and "explained variance" in out and "recovered" in out
    description = json.loads((sae_dir / "sae.json").read_text())
    assert description["point"] == "blocks.1.resid_post" and description["n_features"] == 32
    code, out, _ = run_cli(
        capsys,
        "interpret",
        "sae",
        "features",
        *ckpt,
        *text,
        "--sae",
        str(sae_dir),
        "--feature",
        "3",
        "--top",
        "2",
    )
    assert code == 0 and out.startswith("feature 3 (active on") and out.count("[") >= 2

    code, out, _ = run_cli(
        capsys,
        "interpret",
        "superposition",
        "--steps",
        "20",
        "--sparsity",
        "0",
        "--sparsity",
        "0.9",
        "--out",
        str(tmp_path / "toy.png"),
    )
    assert code == 0 and (tmp_path / "toy.png").exists() and len(out.splitlines()) == 5


@pytest.mark.parametrize(
    "command, options, message",
    [
        (["probe"], ["--length", "99"], "--length must be between"),
        (["sae", "train"], ["--point", "blocks.9.resid_post"], "unknown hook point"),
        (["sae", "features"], ["--sae", "no/such/dir"], "sae.json"),
    ],
)
def test_errors_are_one_line(checkpoint, capsys, command, options, message):
    code = main(["interpret", *command, "--ckpt", str(checkpoint), *options])
    _, err = capsys.readouterr()
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_superposition_refuses_bad_sparsity(capsys):
    assert main(["interpret", "superposition", "--sparsity", "1.5"]) != 0
    assert "toy.sparsities" in capsys.readouterr().err
