"""The continuous-batching scheduler: requests that join and leave a running batch get exactly the tokens
that single-request generation with `Engine` gives (greedy, and seeded sampling), and free their rows."""

from __future__ import annotations

import pytest
import torch

from conftest import record_cache_dtypes
from lmforge.errors import ConfigError
from lmforge.inference import Engine, SamplingParams
from lmforge.models import GPT, GPTConfig
from lmforge.serving.scheduler import QueueFull, Request, Scheduler, regroup

GREEDY = SamplingParams(temperature=0)


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=97, n_layer=2, n_head=2, n_embd=32, block_size=48, init_std=0.3)
    return GPT(GPTConfig(**(config | overrides))).eval()


def collecting_request(prompt, params=GREEDY, *, max_tokens, stop_ids=()):
    events: list[tuple[int | None, str | None]] = []
    request = Request(
        prompt=list(prompt),
        params=params,
        max_tokens=max_tokens,
        stop_ids=frozenset(stop_ids),
        emit=lambda token, finish: events.append((token, finish)),
    )
    return request, events


def tokens(events) -> list[int]:
    return [t for t, _ in events if t is not None]


def single(model, prompt, params=GREEDY, *, max_tokens, stop_ids=()):
    return Engine(model).generate([prompt], params, max_new_tokens=max_tokens, stop_ids=stop_ids)[0]


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_requests_joining_and_leaving_a_busy_batch_match_single_generation(pos_encoding):
    """Staggered joins (prompts of 3..11 tokens, 4..20 new tokens) through a batch of at most 3 rows:
    every row's tokens equal Engine's greedy tokens for that prompt alone."""
    model = tiny_gpt(pos_encoding=pos_encoding)
    generator = torch.Generator().manual_seed(1)
    specs = [
        (torch.randint(0, 97, (length,), generator=generator).tolist(), new)
        for length, new in [(3, 20), (11, 4), (5, 9), (8, 15), (4, 6), (10, 12)]
    ]
    expected = [single(model, p, max_tokens=n) for p, n in specs]
    scheduler = Scheduler(model, max_batch=3, max_waiting=10)
    requests = []
    for i, (prompt, new) in enumerate(specs):
        request, events = collecting_request(prompt, max_tokens=new)
        requests.append(events)
        scheduler.submit(request)
        for _ in range(i % 3):  # a few decoding steps between arrivals
            scheduler.step()
    while scheduler.running or scheduler.waiting:
        scheduler.step()
    assert [tokens(e) for e in requests] == expected
    assert all(e[-1][1] == "length" for e in requests)
    assert scheduler.cache is None  # every KV row freed


def test_seeded_sampling_and_penalties_match_single_generation():
    model = tiny_gpt()
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, frequency_penalty=0.5, seed=3)
    other = SamplingParams(temperature=0, repetition_penalty=1.3)
    a, events_a = collecting_request([1, 2, 3], params, max_tokens=15)
    b, events_b = collecting_request([5, 6, 7, 8, 9], other, max_tokens=15)
    scheduler = Scheduler(model, max_batch=4)
    scheduler.submit(a)
    scheduler.step()
    scheduler.submit(b)
    while scheduler.running or scheduler.waiting:
        scheduler.step()
    assert tokens(events_a) == single(model, [1, 2, 3], params, max_tokens=15)
    assert tokens(events_b) == single(model, [5, 6, 7, 8, 9], other, max_tokens=15)


def test_stop_ids_cancellation_and_the_queue_limit():
    model = tiny_gpt()
    free_run = single(model, [4, 5], max_tokens=10)
    stop = free_run[3]
    first = free_run.index(stop)
    request, events = collecting_request([4, 5], max_tokens=10, stop_ids=[stop])
    doomed, doomed_events = collecting_request([7, 8, 9], max_tokens=30)
    scheduler = Scheduler(model, max_batch=1, max_waiting=1)
    scheduler.submit(request)
    scheduler.submit(doomed)
    with pytest.raises(QueueFull):
        scheduler.submit(collecting_request([1], max_tokens=2)[0])
    while scheduler.running or scheduler.waiting:
        scheduler.step()
        if len(doomed_events) == 2:
            doomed.cancel()
    assert tokens(events) == free_run[: first + 1] and events[-1] == (stop, "stop")
    assert doomed_events[-1] == (None, "cancelled") and len(tokens(doomed_events)) == 2
    assert scheduler.cache is None and not scheduler.running
    with pytest.raises(ConfigError, match="context"):
        scheduler.submit(collecting_request([1] * 40, max_tokens=9)[0])


def test_regroup_right_aligns_rows_with_left_padding():
    """Rows of 3 and 5 real slots -> L = 5, left padding [2, 0], values copied from the sources' ends."""
    model = tiny_gpt()
    a, b = model.new_kv_cache(1, max_length=4), model.new_kv_cache(1, max_length=5)
    a.k.normal_(), b.k.normal_()
    a.length, b.length = 4, 5
    cache = regroup(model, [(a, 0, 3), (b, 0, 5)], remaining=[2, 1])
    assert cache.length == 5 and cache.max_length == 7 and cache.left_padding.tolist() == [2, 0]
    torch.testing.assert_close(cache.k[:, 0, :, 2:5], a.k[:, 0, :, 1:4])
    torch.testing.assert_close(cache.k[:, 1, :, :5], b.k[:, 0, :, :5])


def test_the_background_thread_serves_requests():
    model = tiny_gpt()
    scheduler = Scheduler(model, max_batch=2)
    scheduler.start()
    try:
        import threading

        done = threading.Event()
        events: list = []

        def emit(token, finish):
            events.append(token)
            if finish:
                done.set()

        scheduler.submit(Request(prompt=[3, 4], params=GREEDY, max_tokens=6, emit=emit))
        assert done.wait(30)
        assert events == single(model, [3, 4], max_tokens=6)
    finally:
        scheduler.stop()


def test_requests_that_fill_the_whole_context_never_overflow_the_shared_cache():
    """Prompt + max_tokens == block_size for every request, lengths mixed so that a long row and a short
    row with many tokens to go share the batch (the case where right-aligning could overflow)."""
    model = tiny_gpt(block_size=24)
    generator = torch.Generator().manual_seed(2)
    lengths = [20, 2, 15, 1, 23, 8, 12, 3]
    specs = [(torch.randint(0, 97, (n,), generator=generator).tolist(), 24 - n) for n in lengths]
    expected = [single(model, p, max_tokens=n) for p, n in specs]
    scheduler = Scheduler(model, max_batch=3, max_waiting=8)
    collected = []
    for prompt, new in specs:
        request, events = collecting_request(prompt, max_tokens=new)
        scheduler.submit(request)
        collected.append(events)
        scheduler.step()
    while scheduler.running or scheduler.waiting:
        assert scheduler.cache.length <= 24
        scheduler.step()
    assert [tokens(e) for e in collected] == expected


def test_flush_follows_each_burst_of_emits():
    """flush runs after each prefill (a first token is delivered at once) and after every decoding
    step, so a consumer wakes once per burst; every emit happened before its flush."""
    model = tiny_gpt()
    log: list[str] = []
    scheduler = Scheduler(model, max_batch=4, flush=lambda: log.append("flush"))
    for prompt in ([1, 2, 3], [4, 5]):
        request = Request(
            prompt=prompt, params=GREEDY, max_tokens=3, emit=lambda token, finish: log.append("emit")
        )
        scheduler.submit(request)
    scheduler.step()  # two prefills (one token each), then one decoding step for both rows
    assert log == ["emit", "flush", "emit", "flush", "emit", "emit", "flush"]
    log.clear()
    scheduler.step()  # the last token of each row: both finish
    assert log == ["emit", "emit", "flush"] and scheduler.cache is None


def test_a_bfloat16_model_is_served_from_float32_caches(monkeypatch):
    """As in `Engine`, a bf16 model on the CPU caches keys and values in float32 (its one-token steps
    attend in float32); prefill caches and the regrouped shared cache alike. A request alone gets the
    engine's tokens, and a busy batch still runs every request to its length."""
    model = tiny_gpt(pos_encoding="rope").to(torch.bfloat16)
    dtypes = record_cache_dtypes(monkeypatch, model)
    prompt = [5, 17, 3, 40, 2]
    expected = single(model, prompt, max_tokens=12)
    scheduler = Scheduler(model, max_batch=3, max_waiting=10)
    request, events = collecting_request(prompt, max_tokens=12)
    scheduler.submit(request)
    while scheduler.running or scheduler.waiting:
        scheduler.step()
    assert tokens(events) == expected
    busy = [collecting_request(list(range(1 + i, 6 + 2 * i)), max_tokens=6 + i) for i in range(3)]
    for request, _ in busy:
        scheduler.submit(request)
    while scheduler.running or scheduler.waiting:
        scheduler.step()
    assert [len(tokens(e)) for _, e in busy] == [6, 7, 8]
    assert len(dtypes) > 3 and set(dtypes) == {torch.float32}
