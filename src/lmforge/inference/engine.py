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
bytes read per token, which is what bounds batch-1 decoding on a CPU); sampling is done in float32.
For the same reason `Engine` stores each float32 Linear weight in (in, out) memory order
(`matvec_layout`): values and shapes stay the same, but one-row products then stream the weights 1.2x
(blocks) to 1.9x (the 50257-row LM head) faster on the CPU measured in bench/generate_bench.py.
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
    `new_kv_cache(B, max_length=, left_padding=)`)."""

    def __init__(self, model: torch.nn.Module, *, compile: bool = False, context: str = "error"):
        if context not in CONTEXT_POLICIES:
            raise ConfigError(f"context={context!r} is invalid; choose one of {', '.join(CONTEXT_POLICIES)}")
        self.model = matvec_layout(model)
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
        for row, token in self.stream(
            prompts, params, max_new_tokens=max_new_tokens, num_samples=num_samples, stop_ids=stop_ids
        ):
            rows[row].append(token)
        return rows

    @torch.inference_mode()
    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        max_new_tokens: int,
        num_samples: int = 1,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[tuple[int, int]]:
        """Yield (row, token id) as each token is produced: one per unfinished row per step."""
        prompts = self._check(prompts, max_new_tokens=max_new_tokens, num_samples=num_samples)
        history = [list(p) for p in prompts for _ in range(num_samples)]  # per row: prompt + generated
        B = len(history)
        was_training = self.model.training
        self.model.eval()  # no dropout; restored when the stream ends
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
            cache = self.model.new_kv_cache(B, max_length=min(total, self.block_size))
            logits = self._prefill(history, cache)  # (B, V)
            finished = torch.zeros(B, dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                next_ids = sample_next(logits, params, generator=generator, seen=seen, counts=counts)  # (B,)
                for b, token in enumerate(next_ids.tolist()):
                    if not finished[b]:
                        history[b].append(token)
                        yield b, token
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
        logits, _ = self.model(idx, kv_cache=cache, last_only=True)  # (B, 1, V)
        return logits[:, -1]

    def _decode(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: ids (B, 1) -> logits (B, V) of the next token."""
        with _without_onednn():
            logits, _ = self.model(ids, kv_cache=cache)  # (B, 1, V)
        return logits[:, -1]


def matvec_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Store every Linear weight in the memory order that one-row products read fastest; in place.

    `F.linear(x, W)` computes x @ W.T. For float32, W stored as the transpose of a contiguous (in, out)
    matrix (what GPT-2's Conv1D keeps) streams faster through the CPU BLAS kernel than the default
    layout (23.8 -> 19.8 ms for GPT-2's 48 block matrices, 11.9 -> 6.4 ms for its LM head, one-row
    products at 2 threads); ATen's bf16 kernel, which decoding uses, is the other way round (the
    transposed layout made bf16 decoding 6x slower), so other dtypes get the default layout back.
    Values, shapes, parameter identity (tied weights stay tied) and checkpoints (saved contiguous) are
    unchanged, and calling it again is harmless.
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            weight = module.weight.data
            if weight.dtype == torch.float32 and weight.is_contiguous():
                module.weight.data = weight.t().contiguous().t()
            elif weight.dtype != torch.float32 and not weight.is_contiguous():
                module.weight.data = weight.contiguous()
    return model


@contextmanager
def _without_onednn() -> Iterator[None]:
    """Route matmuls to ATen's own CPU kernels instead of oneDNN's for the duration.

    A decoding step multiplies one row by each weight matrix (a matrix-vector product). For bf16
    weights, ATen's kernel streams the weights at memory speed while oneDNN's was 1.6x slower on one
    thread and up to 20x slower on two busy cores (bench/generate_bench.py); for fp32 the two are
    equal. Prefill (many rows: a real matrix product) keeps oneDNN.
    """
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
