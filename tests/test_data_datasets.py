"""The windows the trainer reads: shapes, shifts, determinism, resume, rank sharding, full coverage."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmforge.data.datasets import RandomWindows, SequentialWindows, sequential_windows, spread_windows
from lmforge.errors import ConfigError, DataError


@pytest.fixture
def tokens(tmp_path) -> np.memmap:
    """A memmapped split of 1,000 tokens whose value is their position mod 65,536 (easy to check)."""
    path = tmp_path / "train.bin"
    np.arange(1000, dtype="<u2").tofile(path)
    return np.memmap(path, dtype="<u2", mode="r")


def test_random_windows_are_shifted_windows_of_the_split(tokens):
    windows = RandomWindows(tokens, block_size=8, batch_size=4, seed=0)
    x, y = windows.next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    # Token value == position, so each row is consecutive and y is x shifted by one.
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.int64))
    assert torch.equal(y, x + 1)
    # Every start is within [0, 1000 - 8 - 1]: the last window ends at token 999.
    starts = [windows.next_batch()[0][:, 0] for _ in range(200)]
    assert int(torch.cat(starts).max()) <= 991 and int(torch.cat(starts).min()) >= 0


def test_same_seed_same_batches_and_resume_equals_uninterrupted(tokens):
    straight = RandomWindows(tokens, block_size=8, batch_size=4, seed=3)
    batches = [straight.next_batch() for _ in range(6)]
    first = RandomWindows(tokens, block_size=8, batch_size=4, seed=3)
    for _ in range(3):
        first.next_batch()
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = RandomWindows(tokens, block_size=8, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    for expected in batches[3:]:
        got = resumed.next_batch()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = RandomWindows(tokens, block_size=8, batch_size=4, seed=4).next_batch()
    assert not torch.equal(other[0], batches[0][0])
    with pytest.raises(ConfigError, match="saved seed=3"):
        RandomWindows(tokens, block_size=8, batch_size=4, seed=4).load_state_dict(state)


def test_ranks_take_disjoint_slices_of_one_global_batch(tokens):
    whole = RandomWindows(tokens, block_size=8, batch_size=6, seed=1).next_batch()[0]
    parts = [
        RandomWindows(tokens, block_size=8, batch_size=2, seed=1, rank=r, world_size=3).next_batch()[0]
        for r in range(3)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_dataloader_form_matches_next_batch(tokens):
    reference = RandomWindows(tokens, block_size=8, batch_size=4, seed=5)
    expected = [reference.next_batch()[0] for _ in range(6)]
    loader = DataLoader(
        RandomWindows(tokens, block_size=8, batch_size=4, seed=5), batch_size=None, num_workers=2
    )
    got = [x for x, _ in zip(loader, range(6), strict=False)]
    assert all(torch.equal(a[0], b) for a, b in zip(got, expected, strict=True))


def test_pickling_reopens_the_memmap_instead_of_copying(tokens):
    windows = pickle.loads(pickle.dumps(RandomWindows(tokens, block_size=8, batch_size=2, seed=0)))
    assert isinstance(windows.tokens, np.memmap) and np.array_equal(windows.tokens, tokens)


def test_sequential_windows_by_hand():
    """10 tokens, block 4, stride 4: windows at 0, 4, 8; the last has 1 real target (token 9)."""
    batches = list(sequential_windows(np.arange(10), block_size=4, batch_size=2))
    assert [x.shape for x, _ in batches] == [(2, 4), (1, 4)]
    assert batches[0][1].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert batches[1][0].tolist() == [[8, 0, 0, 0]] and batches[1][1].tolist() == [[9, -100, -100, -100]]


def test_spread_windows_by_hand():
    """101 tokens, block 4: K = 25 windows (100 targets). 5 wanted -> windows (i * 25) // 5 = 0, 5, 10,
    15, 20, starting at tokens 0, 20, 40, 60, 80; 6 wanted (3 batches of 2) -> 0, 4, 8, 12, 16, 20.
    The sample reaches the end of the split, not just its first document."""
    batches = list(spread_windows(np.arange(101), block_size=4, batch_size=1, num_batches=5))
    assert [int(x[0, 0]) for x, _ in batches] == [0, 20, 40, 60, 80]
    assert all(torch.equal(y, x + 1) for x, y in batches)  # every target scored, no padding
    batches = list(spread_windows(np.arange(101), block_size=4, batch_size=2, num_batches=3))
    assert [x[:, 0].tolist() for x, _ in batches] == [[0, 16], [32, 48], [64, 80]]


def test_spread_windows_of_a_small_split_score_it_whole():
    tokens = np.arange(30)
    spread = list(spread_windows(tokens, block_size=8, batch_size=2, num_batches=10))
    whole = list(sequential_windows(tokens, block_size=8, batch_size=2))
    assert len(spread) == len(whole)
    for (x, y), (x_whole, y_whole) in zip(spread, whole, strict=True):
        assert torch.equal(x, x_whole) and torch.equal(y, y_whole)


@pytest.mark.parametrize(
    "n, block_size, stride", [(1000, 8, None), (1000, 8, 3), (9, 8, 8), (2, 8, 1), (97, 16, 16)]
)
def test_sequential_windows_score_every_target_exactly_once(n, block_size, stride):
    tokens = np.arange(n)
    scored = []
    for x, y in sequential_windows(tokens, block_size=block_size, batch_size=5, stride=stride):
        # Token value == position: a scored target is the token after its input.
        mask = y != -100
        assert torch.equal(y[mask], x[mask] + 1)
        scored.extend(y[mask].tolist())
    assert scored == tokens[1:].tolist()
    windows = SequentialWindows(tokens, block_size=block_size, stride=stride)
    loader = DataLoader(windows, batch_size=5)
    assert sum(int((y != -100).sum()) for _, y in loader) == n - 1


def test_window_errors():
    with pytest.raises(DataError, match="needs at least 9"):
        RandomWindows(np.arange(8), block_size=8, batch_size=1, seed=0)
    with pytest.raises(ConfigError, match="stride"):
        SequentialWindows(np.arange(100), block_size=8, stride=9)
    with pytest.raises(ConfigError, match="rank"):
        RandomWindows(np.arange(100), block_size=8, batch_size=1, seed=0, rank=2, world_size=2)
