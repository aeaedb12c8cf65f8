"""Shared fixtures. Tests use tiny models and small slices of the built-in corpora."""

from __future__ import annotations

import functools

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the tests use tiny tensors, where a second OpenMP thread only adds spin-waits
    (measured on a loaded 2-core machine: ~9 ms per tiny op with 1 thread vs ~450 ms with 2)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _model_cache_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory):
    """Built-in models convert into $LMFORGE_CACHE: never the user's own cache during tests."""
    import os

    previous = os.environ.get("LMFORGE_CACHE")
    os.environ["LMFORGE_CACHE"] = str(tmp_path_factory.mktemp("lmforge-cache"))
    yield
    if previous is None:
        os.environ.pop("LMFORGE_CACHE", None)
    else:
        os.environ["LMFORGE_CACHE"] = previous


@functools.cache
def _shakespeare() -> str:
    from lmforge.data.builtin import builtin_text

    return builtin_text("shakespeare")


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """The whole built-in Shakespeare corpus (about 5 MB), read once per test session."""
    return _shakespeare()


@pytest.fixture(scope="session")
def shakespeare_sample() -> str:
    """About 200 kB of Shakespeare: enough to train a small tokenizer or model in a second."""
    return _shakespeare()[:200_000]


# The 2-layer, 32-wide GPT on 16-token windows that the reliability tests train for a couple of steps.
TINY_TRAIN = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=16",
    "train.batch_size=4",
    "train.eval_batches=1",
    "train.log_interval=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.peak_tflops=1",
    "train.precision=fp32",
    "optim.warmup_iters=1",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, shakespeare_sample: str):
    """A char-level prepared dataset of 12 documents of 2,000 characters (3 in val), built once."""
    import json

    from lmforge.data.dedup import DedupConfig
    from lmforge.data.prepare import prepare
    from lmforge.tokenizers import CharTokenizer

    root = tmp_path_factory.mktemp("tiny-data")
    docs = [shakespeare_sample[i : i + 2_000] for i in range(0, 24_000, 2_000)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    CharTokenizer.train(docs).save(root / "tokenizer.json")
    prepare(
        [str(root / "docs.jsonl")],
        tokenizer=root / "tokenizer.json",
        out=root / "char",
        dedup=DedupConfig(mode="none"),
        val=0.25,
        verbose=False,
    )
    return root / "char"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset):
    """A run directory of the tiny GPT after 2 steps (checkpoints step_00000002 and best), built once.
    Tests that damage it work on a copy."""
    from lmforge.training.config import load_config
    from lmforge.training.trainer import train_from_config

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = [*TINY_TRAIN, f"data.dir={tiny_dataset}", f"train.out_dir={run}", "train.max_iters=2"]
    train_from_config(load_config(None, overrides=overrides))
    return run


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`lmforge ARGV...` in this process: (exit code, stdout, stderr)."""
    from lmforge.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def record_cache_dtypes(monkeypatch: pytest.MonkeyPatch, model) -> list:
    """Spy on `model.new_kv_cache`: the returned list fills with the dtype of every cache it makes."""
    dtypes = []
    new_kv_cache = model.new_kv_cache

    def spy(*args, **kwargs):
        cache = new_kv_cache(*args, **kwargs)
        dtypes.append(cache.k.dtype)
        return cache

    monkeypatch.setattr(model, "new_kv_cache", spy)
    return dtypes
