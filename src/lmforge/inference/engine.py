"""The generation engine: token ids in, token ids out, decoded one token at a time from the KV cache.

`Engine(model).stream(prompts, params, max_new_tokens=...)` yields (row, token id) as tokens are
produced; `generate` collects them. One call:
1. expands each prompt into `num_samples` rows and LEFT-pads them to one length (the model's KV cache
   gives slot s of row b the position s - left_padding[b] and hides pad slots, so every row computes
   exactly what it would compute alone);
2. prefills the cache with all prompt tokens in one forward pass (only the last position's logits);
3. repeatedly samples the next token of every row (`sampling.sample_next`) and feeds it back as a
   (B, 1) step that attends over the cached keys/values.
A row stops at one of `stop_ids` (which is yielded, so the caller sees why) or after
`max_new_tokens`; the call ends when every row has stopped.

Context window: by default a prompt plus `max_new_tokens` that cannot fit `block_size` is an error
before any work is done. With `context="sliding"`, when the window is full the model re-reads the
most recent `block_size // 2` tokens of every row (a fresh prefill, so learned, sinusoidal and rotary
positions all restart consistently) and carries on; prompts longer than the window keep their last
`block_size` tokens. This is llama.cpp's "context shift", done by recomputation instead of rotating
cached keys, which only RoPE would allow.

The engine runs in whatever dtype the model's parameters have (`model.to(torch.bfloat16)` halves the
bytes read per token, which is what bounds batch-1 decoding on a CPU); sampling is done in float32, and
so are the cached keys and values of a bfloat16 or float16 model on a CPU (its one-token attention runs
in float32: see `layers.CausalSelfAttention`).
Kernels: prefill (all prompt tokens at once, a matrix product) runs on oneDNN; the one-token steps
(a row times each weight matrix) run with oneDNN switched off, on ATen's own kernels, which stream bf16
weights much faster (figures in BENCHMARKS.md). The switch is torch's global
`torch.backends.mkldnn.enabled`: it is off only while the engine computes and is put back before any
token reaches the caller, also on errors and when a stream is abandoned.
The engine never changes the model it is given (it only sets eval mode for the duration of a call).
The weight layout that makes float32 decoding faster on a CPU is a separate, explicit step that owns
its copy of the weights: `lmforge.inference.cpu.for_cpu_inference`.
`compile=True` wraps the one-token decoding step in `torch.compile`.

Deliberately not here: text (tokenizers, stop strings, UTF-8; see `text.py`), and the choice of the
next token (`sampling.py`). The model is used only through its forward and KV-cache API.
Reference: nanochat's `engine.py`; gpt-fast's `generate.py` (compiled decode step).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from lmforge.errors import ConfigError
from lmforge.inference.sampling import SamplingParams, sample_next

if TYPE_CHECKING:
    from lmforge.models import KVCache

CONTEXT_POLICIES = ("error", "sliding")


class Engine:
    """Generates token ids with a GPT (anything with `config`, `forward(idx, kv_cache=, last_only=)` and
    `new_kv_cache(B, max_length=, left_padding=, dtype=)`)."""

    def __init__(self, model: torch.nn.Module, *, compile: bool = False, context: str = "error"):
        if context not in CONTEXT_POLICIES:
            raise ConfigError(f"context={context!r} is invalid; choose one of {', '.join(CONTEXT_POLICIES)}")
        self.model = model
        self.context = context
        self.block_size: int = model.config.block_size
        self.vocab_size: int = model.config.vocab_size
        # the decode step is a separate function so that it alone can be compiled (fixed shape (B, 1))
        self._decode_step = torch.compile(self._decode, dynamic=True) if compile else self._decode

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        max_new_tokens: int,
        num_samples: int = 1,
        stop_ids: Sequence[int] = (),
    ) -> list[list[int]]:
        """New token ids of every row; row i * num_samples + j is sample j of prompt i. A row that hit a
        stop id ends with it."""
        rows: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        with _onednn(enabled=False):  # no caller code runs inside: one scope for the whole decode loop
            for tokens in self._steps(
                prompts, params, max_new_tokens=max_new_tokens, num_samples=num_samples, stop_ids=stop_ids
            ):
                for row, token in tokens:
                    rows[row].append(token)
        return rows

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        max_new_tokens: int,
        num_samples: int = 1,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[tuple[int, int]]:
        """Yield (row, token id) as each token is produced: one per unfinished row per step.

        oneDNN is off while the engine computes a step and back as it was whenever the caller's code runs
        (at each yield): a scope held across yields would leave it off in the caller's code, for as long
        as an abandoned stream is not garbage collected, and for good if two streams were interleaved
        (each restores the value it saw on entry, so out-of-order exits leave the wrong one).
        """
        steps = self._steps(
            prompts, params, max_new_tokens=max_new_tokens, num_samples=num_samples, stop_ids=stop_ids
        )
        try:
            while True:
                with _onednn(enabled=False):
                    tokens = next(steps, None)
                if tokens is None:
                    return
                yield from tokens
        finally:
            steps.close()  # an abandoned stream puts the model's training mode back now

    @torch.inference_mode()
    def _steps(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        max_new_tokens: int,
        num_samples: int,
        stop_ids: Sequence[int],
    ) -> Iterator[list[tuple[int, int]]]:
        """The decode loop: yields, step by step, the (row, token id) of every row still unfinished.
        Meant to run with oneDNN off (`generate`, `stream`); prefill turns it on for itself."""
        prompts = self._check(prompts, max_new_tokens=max_new_tokens, num_samples=num_samples)
        history = [list(p) for p in prompts for _ in range(num_samples)]  # per row: prompt + generated
        B = len(history)
        was_training = self.model.training
        self.model.eval()  # no dropout; restored when the loop ends
        try:
            device = self.model.lm_head.weight.device
            generator = params.make_generator(device)
            stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
            seen = counts = None  # (B, V) state of the penalties, only when they are on
            if params.repetition_penalty != 1.0:
                seen = torch.zeros(B, self.vocab_size, dtype=torch.bool, device=device)
                for b, row in enumerate(history):
                    seen[b, row] = True
            if params.frequency_penalty != 0.0:
                counts = torch.zeros(B, self.vocab_size, device=device)

            total = max(map(len, history)) + max_new_tokens
            cache = self.model.new_kv_cache(
                B, max_length=min(total, self.block_size), dtype=cache_dtype(self.model)
            )
            logits = self._prefill(history, cache)  # (B, V)
            finished = torch.zeros(B, dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                next_ids = sample_next(logits, params, generator=generator, seen=seen, counts=counts)  # (B,)
                tokens = [(b, token) for b, token in enumerate(next_ids.tolist()) if not finished[b]]
                for b, token in tokens:
                    history[b].append(token)
                yield tokens
                finished |= torch.isin(next_ids, stop)
                if bool(finished.all()) or step == max_new_tokens - 1:
                    return
                if seen is not None:
                    seen[torch.arange(B), next_ids] = True
                if counts is not None:
                    counts[torch.arange(B), next_ids] += 1
                if cache.length == cache.max_length:  # window full (only reachable with context="sliding")
                    logits = self._prefill([row[-(self.block_size // 2) :] for row in history], cache)
                else:
                    logits = self._decode_step(next_ids[:, None], cache)
        finally:
            self.model.train(was_training)

    def _check(
        self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, num_samples: int
    ) -> list[list[int]]:
        """Validate the request; returns the prompts as lists (cut to the window under "sliding")."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} is invalid; use an integer >= 1")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} is invalid; use an integer >= 1")
        if len(prompts) == 0:
            raise ConfigError("no prompts given")
        checked = []
        for i, prompt in enumerate(prompts):
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise ConfigError(f"prompt {i} is empty; give at least one token")
            if min(prompt) < 0 or max(prompt) >= self.vocab_size:
                raise ConfigError(f"prompt {i} has token ids outside [0, {self.vocab_size})")
            if self.context == "error":
                if len(prompt) > self.block_size:
                    raise ConfigError(
                        f"prompt {i} has {len(prompt)} tokens, longer than the model's context of "
                        f"{self.block_size}; shorten it, or keep its end with --context sliding"
                    )
                if len(prompt) + max_new_tokens > self.block_size:
                    raise ConfigError(
                        f"prompt {i} ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                        f"model's context of {self.block_size}; ask for fewer new tokens or slide the window "
                        "(--context sliding)"
                    )
            checked.append(prompt[-self.block_size :])
        return checked

    def _prefill(self, rows: list[list[int]], cache: KVCache) -> torch.Tensor:
        """Run the rows (left-padded to one length) through an emptied cache; -> logits (B, V) of each
        row's last token."""
        T = max(map(len, rows))
        left_padding = [T - len(row) for row in rows]
        padded = [[0] * n + row for n, row in zip(left_padding, rows, strict=True)]  # any pad id works
        idx = torch.tensor(padded, device=cache.k.device)  # (B, T)
        cache.reset(left_padding=left_padding)
        with _onednn(enabled=True):  # many rows: a matrix product, where oneDNN's kernels are the fast ones
            logits, _ = self.model(idx, kv_cache=cache, last_only=True)  # (B, 1, V)
        return logits[:, -1]

    def _decode(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: ids (B, 1) -> logits (B, V) of the next token."""
        logits, _ = self.model(ids, kv_cache=cache)  # (B, 1, V)
        return logits[:, -1]


def cache_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype to cache keys and values in when generating with `model`: its weights', except float32
    for a bfloat16 or float16 model on a CPU. Its one-token steps attend in float32 (`layers.py`), and a
    half-precision cache would be upcast whole, every layer, at every step."""
    weight = model.lm_head.weight
    if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return weight.dtype


@contextmanager
def _onednn(*, enabled: bool) -> Iterator[None]:
    """Turn torch's global oneDNN switch on or off for the duration, then put back the value it had.

    For a matrix-vector product (one row times a weight matrix, each decoding step) ATen's own CPU
    kernels stream bf16 weights at memory speed while oneDNN's are slow for a single row, much more so
    on busy cores; for fp32 the two are level. For prefill (many rows) oneDNN's are the fast ones.
    """
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous
