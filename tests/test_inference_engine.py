"""The engine against the obvious reference: recompute the whole sequence for every new token.

Models are tiny, with init_std 0.3 so that logits are far apart and greedy choices are not decided by
float rounding (at GPT-2's 0.02 all logits of a random model are nearly equal).
"""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.inference import Engine, SamplingParams
from lmforge.models import GPT, GPTConfig

GREEDY = SamplingParams(temperature=0)
POSITIONS = [
    dict(pos_encoding="learned"),
    dict(pos_encoding="sinusoidal"),
    dict(
        pos_encoding="rope", n_kv_head=1, norm="rmsnorm", mlp="swiglu", bias=False
    ),  # GQA: 4 heads, 1 kv head
]


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=50, init_std=0.3) | overrides
    return GPT(GPTConfig(**config)).eval()


@torch.no_grad()
def recompute_greedy(model: GPT, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Reference: a full forward pass over prompt + generated for every new token (no cache)."""
    ids, all_logits = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0][0, -1]  # (V,)
        all_logits.append(logits)
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :], all_logits


@pytest.mark.parametrize("arch", POSITIONS, ids=lambda a: a["pos_encoding"])
def test_cached_decoding_equals_recomputation(arch):
    model = tiny_gpt(**arch)
    prompt = [3, 14, 15, 9, 2, 6]
    expected_tokens, expected_logits = recompute_greedy(model, prompt, 20)
    assert Engine(model).generate([prompt], GREEDY, max_new_tokens=20) == [expected_tokens]
    # the same logits step by step, through the engine's own prefill and decode step
    engine = Engine(model)
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        logits = engine._prefill([prompt], cache)
        for step, token in enumerate(expected_tokens):
            torch.testing.assert_close(logits[0], expected_logits[step], atol=1e-4, rtol=1e-4)
            logits = engine._decode(torch.tensor([[token]]), cache)


@pytest.mark.parametrize("arch", POSITIONS, ids=lambda a: a["pos_encoding"])
def test_batched_generation_equals_one_by_one(arch):
    model = tiny_gpt(seed=1, **arch)
    prompts = [[5, 1, 7], [9, 9, 8, 2, 4, 4, 1], [11], [2, 30, 31, 40, 49]]
    params = SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.2)  # per-row state
    engine = Engine(model)
    alone = [engine.generate([p], params, max_new_tokens=12)[0] for p in prompts]
    assert engine.generate(prompts, params, max_new_tokens=12) == alone


def test_stop_ids_end_each_row_independently():
    model = tiny_gpt(seed=2)
    prompts = [[1, 2, 3], [4, 5]]
    free = Engine(model).generate(prompts, GREEDY, max_new_tokens=10)
    stop = free[0][3]  # the 4th token of row 0 becomes a stop id
    stopped = Engine(model).generate(prompts, GREEDY, max_new_tokens=10, stop_ids=[stop])
    for full, cut in zip(free, stopped, strict=True):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert cut == full[:end]
    assert stopped[0][-1] == stop and len(stopped[0]) <= 4


def test_samples_seeded_and_distinct():
    model = tiny_gpt(seed=3, init_std=0.05)  # flat enough that samples differ
    engine = Engine(model)
    params = SamplingParams(temperature=1.0, seed=123)
    first = engine.generate([[1, 2], [3]], params, max_new_tokens=16, num_samples=3)
    assert len(first) == 6 and all(len(row) == 16 for row in first)
    assert engine.generate([[1, 2], [3]], params, max_new_tokens=16, num_samples=3) == first
    assert len({tuple(row) for row in first[:3]}) == 3  # three different samples of prompt 0
    other = engine.generate([[1, 2], [3]], SamplingParams(temperature=1.0, seed=124), max_new_tokens=16)
    assert other[0] != first[0]


def test_stream_yields_tokens_as_they_come_and_restores_training_mode():
    model = tiny_gpt(seed=4).train()
    stream = Engine(model).stream([[1, 2, 3]], GREEDY, max_new_tokens=5)
    first = next(stream)
    assert first[0] == 0 and not model.training  # dropout off while generating
    rest = list(stream)
    assert [first[1]] + [t for _, t in rest] == recompute_greedy(model.eval(), [1, 2, 3], 5)[0]
    assert len(rest) == 4
    model.train()
    list(Engine(model).stream([[1]], GREEDY, max_new_tokens=2))
    assert model.training


def test_context_window_errors_and_sliding_window():
    model = tiny_gpt(seed=5, block_size=16)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        Engine(model).generate([list(range(17))], GREEDY, max_new_tokens=1)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        Engine(model).generate([list(range(10))], GREEDY, max_new_tokens=7)

    # sliding: when the 16 slots are full, re-read the last 8 tokens and continue
    prompt, context, history = [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]
    with torch.no_grad():
        for _ in range(40):
            token = int(model(torch.tensor([context]))[0][0, -1].argmax())
            history.append(token)
            context = history[-8:] if len(context) == 16 else context + [token]
    got = Engine(model, context="sliding").generate([prompt], GREEDY, max_new_tokens=40)
    assert got == [history[len(prompt) :]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[[]]), "empty"),
        (dict(prompts=[[1, 50]]), "outside"),
        (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[[1]], num_samples=0), "num_samples"),
    ],
)
def test_invalid_requests(kwargs, match):
    kwargs = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ConfigError, match=match):
        Engine(tiny_gpt()).generate(kwargs.pop("prompts"), GREEDY, **kwargs)


def test_bfloat16_weights_just_work():
    model = tiny_gpt(seed=6).to(torch.bfloat16)
    out = Engine(model).generate([[1, 2, 3], [4]], SamplingParams(temperature=0.8, seed=0), max_new_tokens=8)
    assert all(len(row) == 8 and all(0 <= t < 50 for t in row) for row in out)
    # greedy in bf16 agrees with bf16 recomputation on the first token (same weights, one forward each)
    assert (
        Engine(model).generate([[1, 2, 3]], GREEDY, max_new_tokens=1)[0]
        == recompute_greedy(model, [1, 2, 3], 1)[0]
    )


def test_matvec_layout_changes_memory_order_only(tmp_path):
    """The engine's weight layout keeps values, shapes, the tied head and checkpoints; bf16 gets the
    default layout back (its decoding kernel prefers it)."""
    from lmforge.inference.engine import matvec_layout

    model = GPT(GPTConfig.preset("tiny", vocab_size=97)).eval()
    idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    before = model(idx)[0]
    matvec_layout(model)
    head = model.lm_head.weight
    assert not head.is_contiguous() and head.t().is_contiguous()
    assert head is model.transformer.wte.weight  # still tied
    torch.testing.assert_close(model(idx)[0], before)
    model.save_checkpoint(tmp_path)
    torch.testing.assert_close(GPT.from_checkpoint(tmp_path).eval()(idx)[0], before)
    matvec_layout(model.to(torch.bfloat16))
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))
