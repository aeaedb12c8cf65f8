"""Shared fixtures. Tests use tiny models and small slices of the built-in corpora."""

from __future__ import annotations

import functools

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the tests use tiny tensors, where a second OpenMP thread only adds spin-waits
    (measured on a loaded 2-core machine: ~9 ms per tiny op with 1 thread vs ~450 ms with 2)."""
    import torch

    torch.set_num_threads(1)


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
