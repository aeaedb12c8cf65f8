"""Continuous batching: one running batch of generations that requests join and leave between steps.

A `Request` is token ids in, token ids out, delivered one by one through its `emit(token, finish)`
callback. `Scheduler.step()` does one round:
1. rows whose request was cancelled (client gone, stop string seen by the text layer) or whose time
   ran out leave the batch;
2. waiting requests join while the batch has room: each is prefilled ALONE (its own one-row KV cache,
   so a long prompt never pads the others) and its first token is sampled;
3. one batched decoding step: the last token of every running row goes through the model at once
   (B, 1) over the shared KV cache, and each row samples its own next token with its own parameters
   and random generator (`sampling.sample_next` on that row's logits). Greedy rows without penalties
   take one batched argmax instead, which is the same choice with less Python per step.
A row finishes at a stop id ("stop") or after `max_tokens` ("length") and leaves at once.

Log-probabilities. A request with `logprobs=k` also gets, for every generated token, a `TokenLogprobs`:
the token's log-probability and the k most likely tokens with theirs. They are `log_softmax` of the
logits row the sampler receives, in float32, BEFORE penalties, temperature, top-k, top-p and min-p,
i.e. the model's own distribution, as OpenAI's API reports it: a token that top-k excluded can still
be listed, and at temperature 0.5 the chosen token was drawn with a sharper distribution than shown.

The shared cache. When the membership changes the cache is rebuilt (`regroup`): every row's real
slots are copied right-aligned to a common length L = the longest row's, and the shorter rows get
left padding. The model's KV cache gives slot s of row b the position s - left_padding[b] and hides
pad slots, so a row computes the same logits as it would alone: greedy output in a busy batch equals
single-request generation with `Engine`. Rebuilding copies the cache (B x L slots per layer), which
costs far less than a forward pass and happens only when a request joins or leaves. Because L is
always the longest live row's length, it never exceeds the model's context.

Runs in one background thread (`start`/`stop`); `step` is public so tests can drive it by hand. The
optional `flush` callback runs on that thread after each burst of emits (after each prefill, whose
first token should not wait for the others, and after each decoding step), so a consumer can wake once
for a whole step's tokens.
Deliberately not here: text (detokenizing, stop strings), HTTP, limits on the prompt length (the
server checks them; `submit` only checks that the request fits the context).
Reference: Yu et al. 2022, Orca (iteration-level scheduling); vLLM's scheduler (waiting/running queues).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.inference.engine import cache_dtype
from lmforge.inference.sampling import SamplingParams, sample_next
from lmforge.models.layers import KVCache

log = logging.getLogger("lmforge.serving")

# emit(token id or None, finish reason or None): a token as it is produced; the last call carries the
# finish reason: "stop" | "length" | "cancelled" | "timeout" | "error" (token None for the last three).
Emit = Callable[[int | None, str | None], None]


@dataclass(frozen=True)
class TokenLogprobs:
    """The model's log-probability of one generated token and the k most likely alternatives."""

    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), most likely first; k entries


class QueueFull(Exception):
    """The scheduler already holds as many requests as it may (the server answers 429)."""


@dataclass(eq=False)
class Request:
    prompt: list[int]  # token ids, at least one
    params: SamplingParams
    max_tokens: int  # new tokens at most
    emit: Emit
    stop_ids: frozenset[int] = frozenset()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token generated so far
    deadline: float | None = None  # time.monotonic() after which the generation ends with "timeout"
    logprobs: int | None = None  # None: off; k >= 0: log-probabilities with the k most likely tokens
    # state kept by the scheduler
    generated: list[int] = field(default_factory=list)
    token_logprobs: list[TokenLogprobs] = field(default_factory=list)  # one per generated token (logprobs)
    cached: int = 0  # this row's real slots in the KV cache
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (1, V) bool: tokens in the sequence (repetition penalty)
    counts: torch.Tensor | None = None  # (1, V) float: times each token was generated (frequency/presence)

    def cancel(self) -> None:
        """Ask the scheduler to drop this request at its next step (safe from any thread)."""
        self.cancelled.set()


class Scheduler:
    """Runs requests on `model` (a GPT: forward with kv_cache, new_kv_cache) with continuous batching."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int = 8,
        max_waiting: int = 32,
        flush: Callable[[], None] | None = None,
    ):
        if max_batch < 1 or max_waiting < 0:
            raise ConfigError(f"max_batch={max_batch} must be >= 1 and max_waiting={max_waiting} >= 0")
        if model.training:  # dropout would make every answer random
            raise ConfigError("the model is in training mode; call model.eval() before serving it")
        self.model = model
        self.block_size: int = model.config.block_size
        self.vocab_size: int = model.config.vocab_size
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.flush = flush or (lambda: None)
        self.device = next(model.parameters()).device
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []  # row b of `cache` is running[b]
        self.cache: KVCache | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- the caller's side (any thread) -------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request; QueueFull when max_batch + max_waiting requests are already held."""
        if not request.prompt or min(request.prompt) < 0 or max(request.prompt) >= self.vocab_size:
            raise ConfigError(f"the prompt must be non-empty token ids in [0, {self.vocab_size})")
        if request.logprobs is not None and not 0 <= request.logprobs <= self.vocab_size:
            raise ConfigError(f"logprobs={request.logprobs} must be in [0, {self.vocab_size}]")
        if request.max_tokens < 1 or len(request.prompt) + request.max_tokens > self.block_size:
            raise ConfigError(
                f"prompt ({len(request.prompt)} tokens) + max_tokens ({request.max_tokens}) must fit the "
                f"context of {self.block_size}"
            )
        with self._wake:
            if len(self.waiting) + len(self.running) >= self.max_batch + self.max_waiting:
                raise QueueFull
            self.waiting.append(request)
            self._wake.notify()

    def load(self) -> tuple[int, int]:
        """(running, waiting) request counts."""
        with self._wake:
            return len(self.running), len(self.waiting)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel everything and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for request in [*self.running, *self.waiting]:
            _finish(request, None, "cancelled")
        self.running, self.cache = [], None
        self.waiting.clear()
        self.flush()

    # --- the scheduler's thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.running and not self.waiting:
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # a bug must not kill the server: fail the requests it touched, go on
                log.exception("scheduler step failed; the running requests end with an error")
                with self._wake:
                    for request in self.running:
                        _finish(request, None, "error")
                    self.running, self.cache = [], None
                self.flush()

    @torch.inference_mode()
    def step(self) -> None:
        """One round: drop cancelled rows, admit waiting requests, decode every running row once."""
        now = time.monotonic()
        keep = []
        for request in self.running:
            if request.cancelled.is_set():
                _finish(request, None, "cancelled")
            elif request.deadline is not None and now > request.deadline:
                _finish(request, None, "timeout")
            else:
                keep.append(request)
        joined: list[tuple[Request, KVCache]] = []
        while len(keep) + len(joined) < self.max_batch:
            with self._wake:
                if not self.waiting:
                    break
                request = self.waiting.popleft()
            if request.cancelled.is_set():
                _finish(request, None, "cancelled")
                continue
            cache = self._prefill(request)
            self.flush()  # its first token now, not after the other prefills and the decoding step
            if cache is not None:
                joined.append((request, cache))
        if len(keep) != len(self.running) or joined:
            self._regroup(keep, joined)
        if self.running:
            self._decode()
        self.flush()

    def _prefill(self, request: Request) -> KVCache | None:
        """Run the prompt through a fresh one-row cache and sample the first token; the cache, or None
        when the request already finished."""
        request.generator = request.params.make_generator(self.device)
        if request.params.repetition_penalty != 1.0:
            request.seen = torch.zeros(1, self.vocab_size, dtype=torch.bool, device=self.device)
            request.seen[0, request.prompt] = True
        if request.params.frequency_penalty != 0.0 or request.presence_penalty != 0.0:
            request.counts = torch.zeros(1, self.vocab_size, device=self.device)
        cache = self.model.new_kv_cache(1, max_length=len(request.prompt), dtype=cache_dtype(self.model))
        idx = torch.tensor([request.prompt], device=self.device)  # (1, P)
        logits, _ = self.model(idx, kv_cache=cache, last_only=True)  # (1, 1, V)
        request.cached = len(request.prompt)
        (token,) = choose([request], logits[:, -1].float())
        return cache if self._take(request, token) else None

    def _decode(self) -> None:
        """One batched step over the running rows; finished rows leave."""
        assert self.cache is not None
        ids = torch.tensor([[r.generated[-1]] for r in self.running], device=self.device)  # (B, 1)
        logits, _ = self.model(ids, kv_cache=self.cache)  # (B, 1, V)
        tokens = choose(self.running, logits[:, -1].float())
        still = []
        for b, (request, token) in enumerate(zip(self.running, tokens, strict=True)):
            request.cached += 1
            if self._take(request, token):
                still.append(b)
        if len(still) != len(self.running):
            self._regroup([self.running[b] for b in still], [])

    def _take(self, request: Request, token: int) -> bool:
        """Record and emit the next token of one row; False when the row finished."""
        request.generated.append(token)
        if request.seen is not None:
            request.seen[0, token] = True
        if request.counts is not None:
            request.counts[0, token] += 1
        if token in request.stop_ids:
            _finish(request, token, "stop")
            return False
        if len(request.generated) >= request.max_tokens:
            _finish(request, token, "length")
            return False
        _emit(request, token, None)
        return True

    def _regroup(self, keep: list[Request], joined: list[tuple[Request, KVCache]]) -> None:
        """Make `keep` + the joined requests the running batch, with one cache holding all their rows."""
        kept = set(keep)
        sources = [(r, self.cache, b) for b, r in enumerate(self.running) if r in kept]
        sources += [(r, cache, 0) for r, cache in joined]
        with self._wake:
            self.running = [r for r, _, _ in sources]
        if not sources:
            self.cache = None  # every KV row freed
            return
        rows = [(cache, b, r.cached) for r, cache, b in sources]
        # tokens each row may still feed: one per token it may still generate after the last one
        remaining = [r.max_tokens - len(r.generated) for r, _, _ in sources]
        self.cache = regroup(self.model, rows, remaining=remaining)


def choose(requests: Sequence[Request], logits: torch.Tensor) -> list[int]:
    """The next token of each request from its row of float32 logits (B, V), and the log-probabilities
    of the requests that asked for them (appended to `request.token_logprobs`)."""
    plain = [b for b, r in enumerate(requests) if r.params.greedy and r.seen is None and r.counts is None]
    plain_set, tokens = set(plain), [0] * len(requests)
    if plain:  # one argmax for every greedy row without penalties: what sample_next would pick
        for b, token in zip(plain, logits[plain].argmax(dim=-1).tolist(), strict=True):
            tokens[b] = token
    for b, request in enumerate(requests):
        if b in plain_set:
            continue
        row = logits[b : b + 1]  # (1, V)
        if request.presence_penalty != 0.0 and request.counts is not None:
            row = row - request.presence_penalty * (request.counts > 0)
        tokens[b] = int(
            sample_next(
                row, request.params, generator=request.generator, seen=request.seen, counts=request.counts
            )[0]
        )
    wanting = [b for b, r in enumerate(requests) if r.logprobs is not None]
    if wanting:
        logp = torch.log_softmax(logits[wanting], dim=-1)  # (W, V): the model's own distribution
        chosen = logp.gather(1, torch.tensor([[tokens[b]] for b in wanting], device=logp.device))  # (W, 1)
        k = max(requests[b].logprobs or 0 for b in wanting)
        values, ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())  # (W, k) each
        for b, value, top_values, top_ids in zip(
            wanting, chosen[:, 0].tolist(), values.tolist(), ids.tolist(), strict=True
        ):
            k_b = requests[b].logprobs or 0
            requests[b].token_logprobs.append(
                TokenLogprobs(value, list(zip(top_ids[:k_b], top_values[:k_b], strict=True)))
            )
    return tokens


def regroup(
    model: torch.nn.Module, rows: Sequence[tuple[KVCache, int, int]], *, remaining: Sequence[int]
) -> KVCache:
    """A new cache holding the given rows, right-aligned: rows[i] = (source cache, row in it, real slots).

    The real slots of a row are the last `real` filled slots of its source. They are copied to slots
    [L - real, L) of row i, L = the longest real length, and row i gets left padding L - real. The new
    cache has room for `remaining[i]` more tokens in every row (at most the model's context), in the
    dtype of the sources (`cache_dtype`). Example: rows of 3 and 5 real slots -> L = 5, left padding [2, 0].
    """
    L = max(real for _, _, real in rows)
    capacity = min(model.config.block_size, L + max(remaining))
    pads = [L - real for _, _, real in rows]
    cache = model.new_kv_cache(len(rows), max_length=capacity, left_padding=pads, dtype=rows[0][0].k.dtype)
    for i, (source, b, real) in enumerate(rows):
        end = source.length
        cache.k[:, i, :, L - real : L] = source.k[:, b, :, end - real : end]  # (n_layer, nkv, real, hd)
        cache.v[:, i, :, L - real : L] = source.v[:, b, :, end - real : end]
    cache.length = L
    return cache


def _emit(request: Request, token: int | None, finish: str | None) -> None:
    try:
        request.emit(token, finish)
    except Exception:  # the receiver is gone (its event loop closed): stop generating for it
        log.debug("emit failed; cancelling the request", exc_info=True)
        request.cancel()


def _finish(request: Request, token: int | None, reason: str) -> None:
    request.cancelled.set()  # a finished request is never scheduled again
    _emit(request, token, reason)
