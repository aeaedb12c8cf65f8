"""The playground in a real browser: headless Chromium (Debian's package) types a message, sends it, and
the streamed answer equals the API's greedy answer; the stats panel fills in; with the learner toggle on
the answer is drawn as the tokens the API generated, one box each, and clicking a token shows that
step's top-5 next tokens with the API's probabilities; Stop cancels the next answer on the server.

Chromium is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`: JSON messages
ending in a NUL byte on file descriptors 3 and 4), so no extra package is needed. Skipped when no
chromium binary is installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time

import openai
import pytest
import torch

from lmforge.models import GPT, GPTConfig
from lmforge.serving.server import ServerConfig, create_app
from lmforge.tokenizers import CharTokenizer
from test_serving_server import CHARS, TEMPLATE, Server, idle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)"
)


class Browser:
    """A headless Chromium page driven over the DevTools pipe."""

    def __init__(self):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes():  # the child reads commands on fd 3 and writes answers on fd 4
            read, write = os.dup(to_browser_read), os.dup(from_browser_write)  # numbers above 3 and 4
            os.dup2(read, 3)  # dup2 makes them inheritable
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=wire_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer, self._next_id, self.session = b"", 0, None

    def call(self, method: str, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_browser, 65536)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(answer["error"])
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expression)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)


def test_the_playground_streams_a_chat_answer():
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"))
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64, init_std=0.3
    )
    model = GPT(config).eval()
    server = Server(
        create_app(lambda: (model, tokenizer, {"chat_template": TEMPLATE}), ServerConfig(model_name="tiny"))
    )
    browser = Browser()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0)
        expected = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=12, temperature=0
        )
        browser.open(f"http://127.0.0.1:{server.port}/")
        assert browser.wait_for("document.getElementById('model').textContent.includes('tiny')")
        browser.evaluate(
            "document.getElementById('temperature').value = '0';"
            "document.getElementById('max_tokens').value = '12';"
            "document.getElementById('input').value = 'Hi';"
            "document.getElementById('composer').requestSubmit();"
        )
        browser.wait_for(
            "document.getElementById('stop').disabled === false || "
            "document.getElementById('completion-tokens').textContent !== '–'"
        )
        browser.wait_for(
            "document.getElementById('send').disabled === false && "
            "/^[0-9]+$/.test(document.getElementById('completion-tokens').textContent)"
        )
        answer = browser.evaluate("document.querySelector('.message.assistant .text').textContent")
        assert answer == expected.choices[0].message.content
        assert int(browser.evaluate("document.getElementById('completion-tokens').textContent")) == (
            expected.usage.completion_tokens
        )
        assert browser.evaluate("document.querySelectorAll('.message.error').length") == 0

        # Learner toggle: the same question again, drawn token by token with the top-5 of each step
        with_logprobs = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
        )
        steps = with_logprobs.choices[0].logprobs.content
        browser.evaluate(
            "document.getElementById('clear').click();"
            "document.getElementById('learner').click();"
            "document.getElementById('input').value = 'Hi';"
            "document.getElementById('composer').requestSubmit();"
        )
        browser.wait_for(
            "document.getElementById('send').disabled === false && "
            "/^[0-9]+$/.test(document.getElementById('completion-tokens').textContent)"
        )
        boxes = browser.evaluate(
            "[...document.querySelectorAll('.message.assistant .token')].map(s => s.entry.token)"
        )
        assert boxes == [step.token for step in steps] and len(boxes) > 3
        assert "".join(boxes) == with_logprobs.choices[0].message.content
        browser.evaluate("document.querySelectorAll('.message.assistant .token')[2].click()")
        assert browser.evaluate("document.getElementById('inspector').hidden") is False
        assert browser.evaluate("document.getElementById('inspector-step').textContent").startswith(
            f"step 3: chose {json.dumps(steps[2].token)}"
        )
        rows = browser.evaluate(
            "[...document.querySelectorAll('#top5 tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
        )
        assert [json.loads(token) for token, _ in rows] == [alt.token for alt in steps[2].top_logprobs]
        shown = [float(p.rstrip("%")) for _, p in rows]
        assert len(shown) == 5 and sum(shown) <= 100.5
        for value, alt in zip(shown, steps[2].top_logprobs, strict=True):
            assert abs(value - 100 * math.exp(alt.logprob)) <= 0.05 + 0.01 * value  # rounding of the page
        browser.evaluate("document.getElementById('learner').click()")

        # Stop: with every decoding step slowed to 100 ms, 25 tokens take >= 2.5 s; Stop aborts the fetch
        # after two tokens and the server cancels the generation, freeing its row.
        scheduler = server.server.config.app.state.lmforge["served"].scheduler
        submitted, submit, step = [], scheduler.submit, scheduler.step
        scheduler.submit = lambda request: (submitted.append(request), submit(request))[1]
        scheduler.step = lambda: (time.sleep(0.1), step())[1]
        browser.evaluate(
            "document.getElementById('max_tokens').value = '25';"
            "document.getElementById('input').value = 'Again';"
            "document.getElementById('composer').requestSubmit();"
        )
        deadline = time.monotonic() + 30
        while not (submitted and len(submitted[0].generated) >= 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        browser.evaluate("document.getElementById('stop').click()")
        assert browser.wait_for("document.getElementById('send').disabled === false")
        assert idle(scheduler)
        assert len(submitted) == 1 and len(submitted[0].generated) < 25
    finally:
        browser.close()
        server.stop()
