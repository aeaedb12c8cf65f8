"""The engine against the obvious reference: recompute the whole sequence for every new token.

Models are tiny, with init_std 0.3 so that logits are far apart and greedy choices are not decided by
float rounding (at GPT-2's 0.02 all logits of a random model are nearly equal).
"""

from __future__ import annotations

import pytest
import torch

from conftest import record_cache_dtypes
from lmforge.errors import ConfigError
from lmforge.inference import Engine, SamplingParams
from lmforge.models import GPT, GPTConfig

GREEDY = SamplingParams(temperature=0)
POSITIONS = [
    dict(pos_encoding="learned"),
    dict(pos_encoding="sinusoidal"),
    dict(pos_encoding="alibi"),
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


@torch.no_grad()
def recompute_penalised_greedy(
    model: GPT, prompt: list[int], n: int, *, repetition: float, frequency: float, prompt_counts: bool = True
) -> list[int]:
    """Reference for the penalties, one plain loop per token over a full forward pass: CTRL's repetition
    penalty on every token of prompt + generated (logit / r if > 0 else logit * r), then the OpenAI
    frequency penalty (minus f x times generated), then argmax. `prompt_counts=False` leaves the
    prompt out of the repetition penalty (the bug this reference exists to catch)."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0][0, -1].tolist()
        generated = ids[len(prompt) :]
        for token in set(ids if prompt_counts else generated):
            logits[token] = logits[token] / repetition if logits[token] > 0 else logits[token] * repetition
        for token in set(generated):
            logits[token] -= frequency * generated.count(token)
        ids.append(max(range(len(logits)), key=logits.__getitem__))
    return ids[len(prompt) :]


def test_penalties_over_prompt_and_generated_tokens_equal_a_reference_loop():
    model = tiny_gpt(1)
    prompts = [[3, 14, 15, 9, 2, 6], [7, 7, 1]]
    params = SamplingParams(temperature=0, repetition_penalty=1.8, frequency_penalty=0.7)
    expected = [recompute_penalised_greedy(model, p, 12, repetition=1.8, frequency=0.7) for p in prompts]
    assert Engine(model).generate(prompts, params, max_new_tokens=12) == expected
    # the reference is sensitive to what it checks: the prompt's part in the penalty, and the penalties
    assert expected != [
        recompute_penalised_greedy(model, p, 12, repetition=1.8, frequency=0.7, prompt_counts=False)
        for p in prompts
    ]
    assert expected != [recompute_greedy(model, p, 12)[0] for p in prompts]
    assert expected != [
        recompute_penalised_greedy(model, p, 12, repetition=1.8, frequency=0) for p in prompts
    ]


def test_compiled_decode_step_gives_the_same_tokens(monkeypatch):
    """Engine(compile=True) decodes through torch.compile's graph of the one-token step (TorchDynamo with
    the "eager" backend, so no C++ kernels are generated in the test): the same greedy tokens."""
    compiled = []

    def compile_eagerly(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend="eager", **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    model = tiny_gpt(2)
    prompt = [3, 14, 15, 9]
    engine = Engine(model, compile=True)
    assert len(compiled) == 1
    assert engine.generate([prompt], GREEDY, max_new_tokens=6) == [recompute_greedy(model, prompt, 6)[0]]


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


@pytest.mark.parametrize("arch", POSITIONS, ids=lambda a: a["pos_encoding"])
def test_half_precision_model_keeps_a_float32_cache_on_the_cpu(arch, monkeypatch):
    """A bf16 model's one-token steps attend in float32, so the engine caches keys and values in float32
    (no upcast of the whole cache per step). Its logits must still be the bf16 model's: against a
    recomputation without cache, each step within bf16 rounding, and a sliding-window re-prefill (T > 1
    reading the float32 cache back in bf16) must work."""
    model = tiny_gpt(seed=7, **arch).to(torch.bfloat16)
    dtypes = record_cache_dtypes(monkeypatch, model)
    prompt = [3, 14, 15, 9, 2, 6]
    _, expected_logits = recompute_greedy(model, prompt, 12)
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):  # the engine's cache, and the model's own dtype
        engine, cache = Engine(model), model.new_kv_cache(1, dtype=dtype)
        with torch.no_grad():
            logits, worst = engine._prefill([prompt], cache), 0.0
            for step in range(12):
                worst = max(worst, float((logits[0].float() - expected_logits[step].float()).abs().max()))
                logits = engine._decode(torch.tensor([[int(expected_logits[step].argmax())]]), cache)
        errors[dtype] = worst
    # bf16 rounding alone moves these logits (scale ~4) by about 0.05 whichever cache is used
    assert errors[torch.float32] < 0.1 and errors[torch.float32] <= errors[torch.bfloat16] + 0.01, errors
    dtypes.clear()
    out = Engine(model, context="sliding").generate([prompt], GREEDY, max_new_tokens=40)
    assert dtypes == [torch.float32] and len(out[0]) == 40
    model.float()
    Engine(model).generate([prompt], GREEDY, max_new_tokens=2)
    assert dtypes[-1] == torch.float32  # a float32 model's cache: its own dtype


def snapshot(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, tuple[int, ...], int]]:
    """Every parameter's values (a copy), strides and data pointer, by name (tied ones under each name)."""
    return {
        name: (p.detach().clone(), p.stride(), p.data_ptr())
        for name, p in model.named_parameters(remove_duplicate=False)
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, (values, stride, pointer) in before.items():
        assert after[name][1] == stride and after[name][2] == pointer, name
        assert torch.equal(after[name][0], values), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_leaves_the_model_and_onednn_switch_unchanged(dtype):
    """Default construction, generating, streaming to the end and abandoning a stream change neither the
    model's parameters (values, strides, storage) nor torch's global oneDNN switch, whichever value it had."""
    model = tiny_gpt(seed=7).to(dtype).train()
    before = snapshot(model)
    engine = Engine(model)
    assert_unchanged(model, before)
    for onednn in (True, False):
        torch.backends.mkldnn.enabled = onednn
        try:
            engine.generate([[1, 2, 3], [4]], GREEDY, max_new_tokens=5)
            assert torch.backends.mkldnn.enabled is onednn
            list(engine.stream([[1, 2]], GREEDY, max_new_tokens=4))
            assert torch.backends.mkldnn.enabled is onednn
            abandoned = engine.stream([[1, 2]], GREEDY, max_new_tokens=10)
            next(abandoned)
            assert torch.backends.mkldnn.enabled is onednn and not model.training
            del abandoned  # garbage collected mid-stream
            assert torch.backends.mkldnn.enabled is onednn and model.training
        finally:
            torch.backends.mkldnn.enabled = True
    assert_unchanged(model, before)
    assert model.training


def test_onednn_is_off_exactly_while_the_engine_decodes():
    """The one-token steps run with oneDNN off and prefill with it on; the caller's code between tokens,
    interleaved streams and an error inside a step all find the switch as they left it."""
    model = tiny_gpt(seed=8)
    forwards: list[tuple[int, bool]] = []  # (tokens per row, oneDNN on) of every forward pass
    hook = model.register_forward_pre_hook(
        lambda module, args: forwards.append((args[0].shape[1], torch.backends.mkldnn.enabled))
    )
    engine = Engine(model, context="sliding")
    # two streams advanced in turn; the window of 32 fills, so prefill also runs inside the loop
    first = engine.stream([[1, 2]], GREEDY, max_new_tokens=40)
    second = engine.stream([[3, 4, 5]], GREEDY, max_new_tokens=40)
    caller = [torch.backends.mkldnn.enabled for _ in zip(first, second, strict=True)]
    assert len(caller) == 40 and all(caller) and torch.backends.mkldnn.enabled
    prefills = [on for T, on in forwards if T > 1]
    decodes = [on for T, on in forwards if T == 1]
    assert len(prefills) > 2 and all(prefills)
    assert len(decodes) > 60 and not any(decodes)
    hook.remove()

    def failing_step(module, args):
        if args[0].shape[1] == 1:
            raise RuntimeError("step failed")

    model.register_forward_pre_hook(failing_step)
    with pytest.raises(RuntimeError, match="step failed"):
        engine.generate([[1, 2]], GREEDY, max_new_tokens=3)
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="step failed"):
        list(engine.stream([[1, 2]], GREEDY, max_new_tokens=3))
    assert torch.backends.mkldnn.enabled


def test_for_cpu_inference_changes_memory_order_only(tmp_path):
    """The CPU layout keeps values, shapes, the tied head and checkpoints; by default it works on a copy
    and leaves the model alone; with copy=False it re-lays out the model given, keeping each Parameter;
    bf16 gets the default layout back (its decoding kernel prefers it)."""
    from lmforge.inference import for_cpu_inference

    model = GPT(GPTConfig.preset("tiny", vocab_size=97)).eval()
    idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = model(idx)[0]
    before = snapshot(model)
    copy = for_cpu_inference(model)
    assert_unchanged(model, before)
    head = copy.lm_head.weight
    assert head is not model.lm_head.weight and head.data_ptr() != model.lm_head.weight.data_ptr()
    assert head.stride() == (1, 97)  # (97, 64) values stored as a contiguous (64, 97) matrix
    assert head is copy.transformer.wte.weight  # still tied
    torch.testing.assert_close(copy(idx)[0], logits)
    copy.save_checkpoint(tmp_path)
    torch.testing.assert_close(GPT.from_checkpoint(tmp_path).eval()(idx)[0], logits)

    parameters = list(model.parameters())
    assert for_cpu_inference(model, copy=False) is model
    assert list(model.parameters()) == parameters and all(
        a is b for a, b in zip(model.parameters(), parameters, strict=True)
    )
    assert model.lm_head.weight.stride() == (1, 97) and model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model(idx)[0], logits)
    again = snapshot(model)
    for_cpu_inference(model, copy=False)
    assert_unchanged(model, again)  # applying it twice changes nothing
    for_cpu_inference(model.to(torch.bfloat16), copy=False)
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))
