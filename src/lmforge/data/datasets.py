"""Causal-LM windows over a token split: random batches for training, sequential ones for evaluation.

A split is one long 1-D array of token ids (usually a `numpy.memmap` from `shards.open_split`, so it
is never read into RAM as a whole); a window is `block_size + 1` consecutive tokens, giving inputs
`x = w[:-1]` and targets `y = w[1:]`, both int64 tensors of shape (B, T) with T = block_size.

- `RandomWindows` draws windows at uniformly random offsets. Batch number `step` is a pure function of
  `(seed, step)`, so saving the step (`state_dict`) is enough for a resumed run to draw the same batches,
  and ranks of a distributed run take disjoint slices of one global batch: ranks 0..W-1 with batch size B
  together draw exactly what one process with batch size W*B would.
- `spread_windows` takes a fixed sample of windows spaced evenly over the split: the trainer's periodic
  estimate of the val loss.
- `sequential_windows` / `SequentialWindows` walk the split from the start and score every target token
  exactly once (the tail window is padded with targets of -100, the loss's ignore_index). With
  `stride < block_size` windows overlap to give each token more context, and the overlapping targets
  are masked, as in Hugging Face's "perplexity of fixed-length models" guide.

Both are also `torch.utils.data` datasets, so a `DataLoader` with workers can prefetch them and yields
the same batches as the plain API (see each class). Deliberately not here: document-aware attention
masks, packing of SFT/MLM examples (other datasets, other files), and any device placement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lmforge.errors import ConfigError, DataError
from lmforge.models.gpt import IGNORE_INDEX


def _check_tokens(tokens: np.ndarray, min_len: int, what: str) -> None:
    if tokens.ndim != 1:
        raise ConfigError(f"{what}: tokens must be a 1-D array, got shape {tuple(tokens.shape)}")
    if len(tokens) < min_len:
        raise DataError(
            f"{what}: the split has {len(tokens):,} tokens but needs at least {min_len:,}; "
            "use more data or a smaller block_size"
        )


class _ReopenMemmap:
    """Pickle support for a memmap-backed dataset: send the file's location, not its contents.

    Pickling an `np.memmap` copies the whole array; DataLoader workers started with 'spawn' or
    'forkserver' would each load the split into RAM. Instead we pickle (filename, offset, dtype, length)
    and map the file again on the other side.
    """

    tokens: np.ndarray

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        tokens = state["tokens"]
        if isinstance(tokens, np.memmap) and tokens.filename is not None:
            location = (str(tokens.filename), int(tokens.offset), tokens.dtype.str, len(tokens))
            state["tokens"] = ("memmap", *location)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens[0] == "memmap":
            _, filename, offset, dtype, length = tokens
            state["tokens"] = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=(length,)
            )
        self.__dict__.update(state)


class RandomWindows(_ReopenMemmap, IterableDataset):
    """Random training batches, reproducible from `(seed, step)` and sharded across ranks.

    Example: 1,000 tokens, block_size=8 -> start offsets are drawn from [0, 991], so the last possible
    window is tokens[991:1000] (9 tokens: x = tokens[991:999], y = tokens[992:1000]).

    Sharding: the windows of one optimizer step are a single draw of `world_size * accum_steps *
    batch_size` offsets from `(seed, step // accum_steps)`; micro-batch j of rank r takes the slice number
    `j * world_size + r`. So the union over ranks and micro-batches of one step is the same set of windows
    for every split of the same global batch: 2 ranks x 4 sequences, 1 rank x 8, or 1 rank x 4 sequences
    x 2 accumulation steps draw identical steps. Example: world_size=2, accum_steps=2, batch_size=3 -> 12
    offsets per step; rank 1's second micro-batch is offsets [9:12].

    As an IterableDataset (`DataLoader(windows, batch_size=None, num_workers=k)`) it yields batches
    `step, step + 1, ...` forever; worker i makes the batches with `step % k == i` and the DataLoader
    returns them in order, so the stream is identical to calling `next_batch()` repeatedly. Iterating
    does not advance `step` of this object: a trainer using a DataLoader counts batches itself.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accum_steps: int = 1,
    ):
        if block_size < 1 or batch_size < 1 or accum_steps < 1:
            raise ConfigError(
                f"block_size, batch_size and accum_steps must be >= 1, got {block_size}, {batch_size} "
                f"and {accum_steps}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        _check_tokens(tokens, block_size + 1, "RandomWindows")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accum_steps = accum_steps
        self.step = 0  # micro-batches drawn so far; the whole resumable state

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch number `step` for this rank (does not change `self.step`)."""
        T, B = self.block_size, self.batch_size
        optimizer_step, micro = divmod(step, self.accum_steps)
        rng = np.random.Generator(np.random.PCG64([self.seed, optimizer_step]))
        # One global batch of the whole step; this rank's micro-batch is its own contiguous slice.
        starts = rng.integers(0, len(self.tokens) - T, size=self.accum_steps * self.world_size * B)
        first = (micro * self.world_size + self.rank) * B
        starts = starts[first : first + B]
        windows = self.tokens[starts[:, None] + np.arange(T + 1)]  # (B, T+1) gathered from the memmap
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # x, y: (B, T)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair of int64 tensors of shape (batch_size, block_size)."""
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """JSON-serialisable position; the other fields let `load_state_dict` catch a mismatched dataset."""
        return {
            "step": self.step,
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "accum_steps": self.accum_steps,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position. A different seed, block_size or split would silently change
        every later batch, so those raise; batch_size, world_size and accum_steps may change (draws
        continue from the saved optimizer step with the new shape: the same windows when the global batch
        world_size * accum_steps * batch_size is the same)."""
        try:
            step = int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"RandomWindows state needs an integer 'step', got {state!r}") from None
        identity = {"seed": self.seed, "block_size": self.block_size, "num_tokens": len(self.tokens)}
        for key, mine in identity.items():
            if key in state and state[key] != mine:
                raise ConfigError(
                    f"cannot resume RandomWindows: saved {key}={state[key]} but this run has {key}={mine}"
                )
        if step < 0:
            raise ConfigError(f"RandomWindows state has a negative step ({step})")
        saved_accum = state.get("accum_steps", 1)
        if not isinstance(saved_accum, int) or saved_accum < 1:
            raise ConfigError(f"RandomWindows state has an invalid accum_steps ({saved_accum!r})")
        same = saved_accum == self.accum_steps  # else: from the start of the saved optimizer step
        self.step = step if same else step // saved_accum * self.accum_steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        first, every = (0, 1) if worker is None else (worker.id, worker.num_workers)
        step = self.step + first
        while True:
            yield self.batch_at(step)
            step += every


class SequentialWindows(_ReopenMemmap, Dataset):
    """Evaluation windows covering the split once, as a map-style dataset of (x, y) rows of shape (T,).

    Window k starts at k * stride. Its targets are positions k*stride+1 .. k*stride+T; those already
    scored by window k-1 (the first T - stride) are masked with -100, and the last window is padded
    (x with 0, y with -100). Example: 10 tokens, block_size=4, stride=4 -> windows at 0, 4, 8 with
    4, 4 and 1 scored targets: 9 = 10 - 1, every token but the first is a target once.
    `DataLoader(SequentialWindows(...), batch_size=B)` gives the same batches as `sequential_windows`.
    """

    def __init__(self, tokens: np.ndarray, *, block_size: int, stride: int | None = None):
        stride = block_size if stride is None else stride
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        if not 1 <= stride <= block_size:
            raise ConfigError(
                f"stride must be between 1 and block_size ({block_size}), got {stride}; "
                "a larger stride would skip tokens"
            )
        _check_tokens(tokens, 2, "SequentialWindows")
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        n_targets = len(self.tokens) - 1
        # The smallest K with (K-1)*stride + T >= n_targets: the last window reaches the last token.
        return max(0, -(-(n_targets - self.block_size) // self.stride)) + 1

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        T = self.block_size
        start = k * self.stride
        end = min(start + T, len(self.tokens) - 1)  # position of the last target in this window
        window = np.asarray(self.tokens[start : end + 1], dtype=np.int64)  # (L+1,), L = end - start
        x = torch.zeros(T, dtype=torch.int64)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.int64)
        x[: end - start] = torch.from_numpy(window[:-1])
        y[: end - start] = torch.from_numpy(window[1:])
        if k > 0:
            y[: T - self.stride] = IGNORE_INDEX  # scored already by the previous window
        return x, y


def sequential_windows(
    tokens: np.ndarray, *, block_size: int, batch_size: int, stride: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (x, y) of shape (b, block_size), b <= batch_size, covering the split once in order."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    windows = SequentialWindows(tokens, block_size=block_size, stride=stride)
    for first in range(0, len(windows), batch_size):
        rows = [windows[k] for k in range(first, min(first + batch_size, len(windows)))]
        yield torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])


def spread_windows(
    tokens: np.ndarray, *, block_size: int, batch_size: int, num_batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`num_batches` batches of non-overlapping windows spaced evenly over the whole split.

    The in-training estimate of the val loss: the first batches of a split come from its first document
    alone (one play, one file), while evenly spaced windows sample all of it, and the same windows every
    time, so successive evaluations are comparable. Window indices are `(i * K) // n` for i < n = the
    windows wanted, out of the K of `sequential_windows`. Example: 100 tokens, block_size=4 -> K = 25
    windows; batch_size=1, num_batches=5 -> windows 0, 5, 10, 15, 20 (starting at tokens 0, 20, ..., 80).
    A split with no more than n windows is scored whole, exactly as `sequential_windows` does.
    """
    if batch_size < 1 or num_batches < 1:
        raise ConfigError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    windows = SequentialWindows(tokens, block_size=block_size)
    wanted = batch_size * num_batches
    if wanted >= len(windows):
        yield from sequential_windows(tokens, block_size=block_size, batch_size=batch_size)
        return
    picks = [(i * len(windows)) // wanted for i in range(wanted)]
    for first in range(0, wanted, batch_size):
        rows = [windows[k] for k in picks[first : first + batch_size]]
        yield torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])
