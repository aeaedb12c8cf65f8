"""Log-probabilities through the official `openai` client (chat and legacy completions, streamed and
whole), checked against an independent computation: one plain forward pass of the model over prompt +
generated tokens (no KV cache, no batching) and `log_softmax` of its logits at each generated position.

The tiny model has random weights (init_std=0.3), so its distributions are far from uniform and a wrong
position, row or normalisation would change the values well beyond the 1e-4 tolerance.
"""

from __future__ import annotations

import math

import openai
import pytest
import torch

from lmforge.models import GPT, GPTConfig
from lmforge.serving.server import ServerConfig, TokenTexts, create_app
from lmforge.tokenizers import CharTokenizer
from test_serving_server import CHARS, TEMPLATE, Server

TOL = 1e-4


@pytest.fixture(scope="module")
def served():
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"))
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64, init_std=0.3
    )
    model = GPT(config).eval()
    app = create_app(lambda: (model, tokenizer, {"chat_template": TEMPLATE}), ServerConfig(model_name="tiny"))
    server = Server(app)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0)
    yield client, model, tokenizer
    server.stop()


def reference(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax of one forward pass over prompt + generated: row i is the distribution of generated[i]."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + generated]))  # (1, P + G, V)
    return torch.log_softmax(logits[0, len(prompt) - 1 : -1].double(), dim=-1)  # (G, V)


def check_chat_content(content, model, tokenizer, prompt: list[int], k: int) -> None:
    generated = [tokenizer.encode(entry.token) for entry in content]
    assert all(len(ids) == 1 for ids in generated)  # one character, one token
    ids = [i[0] for i in generated]
    expected = reference(model, prompt, ids)
    for row, entry, token in zip(expected, content, ids, strict=True):
        assert entry.bytes == list(entry.token.encode())
        assert math.isclose(entry.logprob, row[token].item(), abs_tol=TOL)
        values, top_ids = row.topk(k)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([i]) for i in top_ids.tolist()]
        for t, v in zip(entry.top_logprobs, values.tolist(), strict=True):
            assert math.isclose(t.logprob, v, abs_tol=TOL)


def test_chat_logprobs_whole_and_streamed_equal_a_plain_forward_pass(served):
    client, model, tokenizer = served
    prompt = tokenizer.encode("<|user|>Hi<|end|><|assistant|>", allowed_special="all")
    messages = [{"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5
    )
    content = whole.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == whole.choices[0].message.content
    check_chat_content(content, model, tokenizer, prompt, 5)
    # greedy: the chosen token is the most likely one
    assert all(entry.token == entry.top_logprobs[0].token for entry in content)

    streamed = []
    for chunk in client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        stream=True,
    ):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed += choice.logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]

    # sampled with temperature 1.7 and top-k 3: still the model's own log-probabilities (before
    # temperature and top-k), and top_logprobs=0 lists no alternatives
    sampled = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=1.7,
        extra_body={"top_k": 3},
        seed=5,
        logprobs=True,
        top_logprobs=0,
    )
    content = sampled.choices[0].logprobs.content
    assert content and all(entry.top_logprobs == [] for entry in content)
    check_chat_content(content, model, tokenizer, prompt, 0)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_legacy_shape(served):
    client, model, tokenizer = served
    prompt = tokenizer.encode("KING:")
    whole = client.completions.create(model="tiny", prompt="KING:", max_tokens=10, temperature=0, logprobs=3)
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text
    ids = [tokenizer.encode(t)[0] for t in lp.tokens]
    expected = reference(model, prompt, ids)
    for row, token, value, top in zip(expected, ids, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert math.isclose(value, row[token].item(), abs_tol=TOL)
        values, top_ids = row.topk(3)
        assert list(top) == [tokenizer.decode([i]) for i in top_ids.tolist()]
        assert all(
            math.isclose(top[tokenizer.decode([i])], v, abs_tol=TOL)
            for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)
        )
    assert lp.text_offset == list(range(len(lp.tokens)))  # one character per token

    tokens, offsets = [], []
    for chunk in client.completions.create(
        model="tiny", prompt="KING:", max_tokens=10, temperature=0, logprobs=3, stream=True
    ):
        for choice in chunk.choices:
            tokens += choice.logprobs.tokens
            offsets += choice.logprobs.text_offset
    assert tokens == lp.tokens and offsets == lp.text_offset


def test_logprobs_bad_parameters_are_400(served):
    client, _, _ = served
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, top_logprobs=3
        )
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            logprobs=True,
            top_logprobs=21,
        )
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt="A", max_tokens=2, logprobs=6)


def test_a_token_that_is_not_whole_utf8_is_shown_with_escapes():
    class Bytes:  # a byte-level tokenizer's view: token 7 is the first two bytes of "…" (E2 80 A6)
        def decode_bytes(self, ids):
            return bytes([0xE2, 0x80]) if list(ids) == [7] else "é".encode()

    texts = TokenTexts(Bytes())
    assert texts(7) == ("\\xe2\\x80", [0xE2, 0x80])
    assert texts(8) == ("é", [0xC3, 0xA9])
