"""The HTTP server through the official `openai` client and raw HTTP, on 127.0.0.1 with a tiny model.

Expected texts are Engine's own greedy ids for the same prompt decoded by the tokenizer (the engine is
checked against recomputation and transformers elsewhere); the scheduler's equality with Engine is
tested in test_serving_scheduler.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
import time

import openai
import pytest
import torch
import uvicorn

from lmforge.inference import Engine, SamplingParams
from lmforge.models import GPT, GPTConfig
from lmforge.serving.server import ServerConfig, create_app
from lmforge.tokenizers import CharTokenizer

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEMPLATE = {
    "user": "<|user|>{content}<|end|>",
    "assistant": "<|assistant|>{content}<|end|>",
    "generation_prompt": "<|assistant|>",
    "stop": ["<|end|>"],
}
KEY = "test-key"


class Server:
    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(300):
            if self.server.started and self.get("/health")[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request(
            method, path, body=body, headers={"Authorization": f"Bearer {KEY}", **(headers or {})}
        )
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, payload, headers=None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, data = self.request(
            "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
        )
        return status, json.loads(data)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served():
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"))
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64, init_std=0.3
    )
    model = GPT(config).eval()
    meta = {"chat_template": TEMPLATE}
    server_config = ServerConfig(
        model_name="tiny", api_key=KEY, max_batch=4, max_waiting=12, max_tokens=40, max_body_bytes=20_000
    )
    server = Server(create_app(lambda: (model, tokenizer, meta), server_config))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0)
    yield server, client, model, tokenizer
    server.stop()


def idle(scheduler, timeout: float = 10.0) -> bool:
    """True once the scheduler holds no request and no KV rows (it updates its batch just after the last
    token of a request has been sent, so a client can see its answer a moment before that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler.load() == (0, 0) and scheduler.cache is None:
            return True
        time.sleep(0.02)
    return False


def greedy(model, tokenizer, ids: list[int], n: int, stop_ids=()) -> tuple[str, list[int]]:
    """Engine's greedy continuation as text (cut before a stop id) and its ids."""
    out = Engine(model).generate([ids], SamplingParams(temperature=0), max_new_tokens=n, stop_ids=stop_ids)[0]
    if out and out[-1] in stop_ids:
        out = out[:-1]
    return tokenizer.decode(out), out


def test_completions_chat_and_models(served):
    server, client, model, tokenizer = served
    expected, _ = greedy(model, tokenizer, tokenizer.encode("ROMEO:"), 12, stop_ids=(tokenizer.eot_id,))
    completion = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12, temperature=0)
    assert completion.choices[0].text == expected
    assert (
        completion.usage.prompt_tokens == 6
        and completion.usage.total_tokens == 6 + completion.usage.completion_tokens
    )
    chat_ids = tokenizer.encode("<|user|>Hi<|end|><|assistant|>", allowed_special="all")
    end = tokenizer.special_tokens["<|end|>"]
    expected_chat, ids = greedy(model, tokenizer, chat_ids, 10, stop_ids=(tokenizer.eot_id, end))
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=0
    )
    assert reply.choices[0].message.content == expected_chat and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(chat_ids)
    assert [m.id for m in client.models.list()] == ["tiny"]
    sampled = [
        client.completions.create(model="tiny", prompt="A", max_tokens=8, seed=4, n=2) for _ in range(2)
    ]
    assert [c.text for c in sampled[0].choices] == [
        c.text for c in sampled[1].choices
    ]  # same seed, same text


def test_streaming_matches_the_whole_answer(served):
    server, client, model, tokenizer = served
    expected, _ = greedy(model, tokenizer, tokenizer.encode("KING:"), 20, stop_ids=(tokenizer.eot_id,))
    pieces, usage, finish = [], None, None
    stream = client.completions.create(
        model="tiny",
        prompt="KING:",
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected and len(pieces) > 2
    assert finish in ("stop", "length") and usage.prompt_tokens == 5
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=0, stream=True
    )
    chunks = list(chat)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-1].choices[0].finish_reason is not None
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=0
    )
    assert text == whole.choices[0].message.content
    two = client.completions.create(
        model="tiny", prompt="KING:", max_tokens=20, temperature=0, n=2, stream=True
    )
    texts = ["", ""]
    for chunk in two:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [expected, expected]


def test_stop_strings_cut_the_text(served):
    server, client, model, tokenizer = served
    full = (
        client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0).choices[0].text
    )
    stop = full[5:7]
    cut = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped_and_parsed_by_the_client(served):
    server, client, model, tokenizer = served
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="A", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="A", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.completions.create(model="tiny", prompt="A", max_tokens=10**9)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="A" * 60, max_tokens=10)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    bad_key = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


@pytest.mark.parametrize(
    "payload, status",
    [
        (b"{not json", 400),
        ({"model": "tiny", "prompt": "A", "max_tokens": "many"}, 400),
        ({"model": "tiny", "prompt": 5}, 400),
        ({"model": "tiny", "prompt": ""}, 400),
        ({"model": "tiny", "prompt": [1, 10**6]}, 400),
        ({"model": "tiny", "prompt": "A", "temperature": -1}, 400),
        ({"model": "tiny", "prompt": "A", "stop": [""]}, 400),
        ({"model": "tiny", "prompt": "A", "n": 99}, 400),
        ({"prompt": "A"}, 400),
        ({"model": "tiny", "prompt": "A" * 30_000}, 413),
    ],
)
def test_bad_input_gets_the_right_status_and_shape(served, payload, status):
    server = served[0]
    code, body = server.post("/v1/completions", payload)
    assert code == status and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    assert server.get("/health")[0] == 200  # still up


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "tiny", "messages": "Hi"},
        {"model": "tiny", "messages": [{"role": "robot", "content": "Hi"}]},
        {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
        {"model": "tiny", "messages": [{"role": "user"}]},
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 0},
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi" * 40}]},
    ],
)
def test_bad_chat_input_is_400(served, payload):
    server = served[0]
    code, body = server.post("/v1/chat/completions", payload)
    assert code == 400 and body["error"]["type"] == "invalid_request_error"


def test_auth_health_and_playground(served):
    server = served[0]
    code, body = server.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert code == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    code, page = server.request("GET", "/", headers={"Authorization": ""})
    assert code == 200 and b"<html" in page.lower()
    code, body = server.request("GET", "/nowhere")
    assert code == 404 and "error" in json.loads(body)


def test_a_client_dropping_mid_stream_frees_its_rows(served):
    server, client, model, tokenizer = served
    scheduler = server.server.config.app.state.lmforge["served"].scheduler
    stream = client.completions.create(model="tiny", prompt="A", max_tokens=40, temperature=0, stream=True)
    next(iter(stream))
    stream.close()  # the connection goes away mid-generation
    assert idle(scheduler)
    assert server.get("/health")[0] == 200


def test_a_client_dropping_before_a_whole_answer_cancels_it(served):
    """Non-streaming: the server notices the closed connection (it polls every 0.25 s) and cancels. Each
    step is slowed by 50 ms so that 40 tokens take at least 2 s; the cancelled request has fewer."""
    server = served[0]
    scheduler = server.server.config.app.state.lmforge["served"].scheduler
    submitted, submit, step = [], scheduler.submit, scheduler.step
    scheduler.submit = lambda request: (submitted.append(request), submit(request))[1]
    scheduler.step = lambda: (time.sleep(0.05), step())[1]
    try:
        body = json.dumps({"model": "tiny", "prompt": "A", "max_tokens": 40, "temperature": 0}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.1)
        assert idle(scheduler)
    finally:
        scheduler.submit, scheduler.step = submit, step
    assert len(submitted) == 1 and 0 < len(submitted[0].generated) < 40
    assert server.get("/health")[0] == 200


def test_concurrent_streaming_clients(served):
    """8 streaming clients x 2 requests through a batch of 4 rows: no errors, greedy texts equal to
    single-request generation, every KV row freed at the end."""
    server, client, model, tokenizer = served
    prompts = ["ROMEO:", "KING:", "A", "To be", "JULIET: O", "Hi", "What", "No"]
    expected = {
        p: greedy(model, tokenizer, tokenizer.encode(p), 25, stop_ids=(tokenizer.eot_id,))[0] for p in prompts
    }
    results, errors = [], []

    def worker(prompt):
        try:
            for _ in range(2):
                stream = client.completions.create(
                    model="tiny", prompt=prompt, max_tokens=25, temperature=0, stream=True
                )
                results.append((prompt, "".join(c.choices[0].text for c in stream if c.choices)))
        except Exception as e:  # collected, asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(results) == 16
    assert all(text == expected[p] for p, text in results)
    scheduler = server.server.config.app.state.lmforge["served"].scheduler
    assert idle(scheduler)


def test_queue_limit_answers_429():
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>",))
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)
    ).eval()
    gate = threading.Event()

    def slow_load():
        return model, tokenizer, {}

    server = Server(create_app(slow_load, ServerConfig(model_name="t", max_batch=1, max_waiting=0)))
    try:
        scheduler = server.server.config.app.state.lmforge["served"].scheduler
        original = scheduler.step

        def held_step():  # keep the one running request busy until the test lets go
            gate.wait(10)
            original()

        scheduler.step = held_step
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0)
        first = threading.Thread(
            target=lambda: client.completions.create(model="t", prompt="A", max_tokens=3)
        )
        first.start()
        for _ in range(100):
            if sum(scheduler.load()) == 1:
                break
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="t", prompt="B", max_tokens=3)
        gate.set()
        first.join(30)
    finally:
        gate.set()
        server.stop()


def test_health_is_503_while_loading_and_access_log(caplog):
    release = threading.Event()
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>",))
    model = GPT(
        GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)
    ).eval()

    def slow_load():
        release.wait(20)
        return model, tokenizer, {}

    app = create_app(slow_load, ServerConfig(model_name="t"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

        def logged() -> bool:  # the line is written once the answer has been sent: wait for it
            lines = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
            return any(line.get("path") == "/v1/completions" and line["status"] == 503 for line in lines)

        with caplog.at_level(logging.INFO, logger="lmforge.serving"):
            with pytest.raises(openai.InternalServerError) as e:
                client.completions.create(model="t", prompt="A", max_tokens=2)
            for _ in range(200):
                if logged():
                    break
                time.sleep(0.02)
        assert e.value.status_code == 503 and logged()
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_a_request_over_its_time_limit_gets_504():
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>",))
    model = GPT(
        GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)
    ).eval()
    server = Server(
        create_app(lambda: (model, tokenizer, {}), ServerConfig(model_name="t", request_timeout=1e-3))
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model="t", prompt="A", max_tokens=40, temperature=0)
        assert e.value.status_code == 504
        with pytest.raises(openai.APIError, match="too long"):  # a stream gets an error event instead
            list(client.completions.create(model="t", prompt="A", max_tokens=40, temperature=0, stream=True))
        scheduler = server.server.config.app.state.lmforge["served"].scheduler
        assert idle(scheduler)
    finally:
        server.stop()


def test_cli_serve_refuses_bad_options_in_one_line(tmp_path, capsys):
    from lmforge.cli import main

    assert main(["serve", "--ckpt", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--ckpt", str(tmp_path), "--port", "70000"]) == 2
    assert main(["serve", "--ckpt", str(tmp_path), "--max-batch", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("lmforge serve: error:") for line in errors)
    assert "missing" in errors[0] and "port" in errors[1] and "max_batch" in errors[2]


def test_the_mailbox_wakes_the_loop_once_per_flush():
    from lmforge.serving.server import Mailbox

    async def main():
        loop = asyncio.get_running_loop()
        mailbox, queue, wakes = Mailbox(loop), asyncio.Queue(), []
        deliver = mailbox._deliver
        mailbox._deliver = lambda: (wakes.append(1), deliver())
        poster = threading.Thread(target=lambda: [mailbox.post(queue, i) for i in range(16)])
        poster.start()
        poster.join()
        await asyncio.sleep(0.05)
        assert queue.empty()  # nothing before the flush
        mailbox.flush()
        mailbox.flush()  # a second flush while the delivery is due adds no wake-up
        items = [await asyncio.wait_for(queue.get(), 5) for _ in range(16)]
        assert items == list(range(16)) and len(wakes) == 1

    asyncio.run(main())
