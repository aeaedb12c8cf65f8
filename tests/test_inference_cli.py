"""`lmforge.generate`, `lmforge generate` and `lmforge chat` on a tiny character-level checkpoint.

The expected text is a plain argmax loop over full forward passes (`greedy_ids`: no engine, no KV cache),
decoded by the tokenizer.
"""

from __future__ import annotations

import io

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.inference.chat import fit_conversation
from lmforge.models import GPT, GPTConfig
from lmforge.tokenizers import CharTokenizer

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = CharTokenizer(CHARS, special_tokens=("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"))
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64, init_std=0.3
    )
    model = GPT(config).eval()
    directory = tmp_path_factory.mktemp("ckpt")
    model.save_checkpoint(directory, meta={"tokenizer": tokenizer.to_dict()})
    return directory, model, tokenizer


@torch.no_grad()
def greedy_ids(model, prompt: list[int], n: int, stop_ids: set[int] = frozenset()) -> list[int]:
    """The reference: argmax of a full forward pass over the whole sequence for every new token (no
    engine, no KV cache, no sampling code), ending after a stop id."""
    ids: list[int] = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
        if ids[-1] in stop_ids:
            break
    return ids[len(prompt) :]


def greedy_text(model, tokenizer, prompt: str, n: int) -> str:
    """Greedy continuation, cut before the first end-of-text token."""
    ids = greedy_ids(model, tokenizer.encode(prompt), n, {tokenizer.eot_id})
    return tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eot_id else ids)


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_lmforge_generate_from_directory_and_from_model(checkpoint):
    directory, model, tokenizer = checkpoint
    expected = greedy_text(model, tokenizer, "ROMEO:", 30)
    assert lmforge.generate(directory, "ROMEO:", max_new_tokens=30, temperature=0) == expected
    assert (
        lmforge.generate(model, "ROMEO:", tokenizer=tokenizer, max_new_tokens=30, temperature=0) == expected
    )
    a = lmforge.generate(directory, "ROMEO:", max_new_tokens=30, seed=5)
    assert a == lmforge.generate(directory, "ROMEO:", max_new_tokens=30, seed=5)


def test_cli_generate_plain_and_streamed_agree(checkpoint, capsys):
    directory, model, tokenizer = checkpoint
    expected = "ROMEO:" + greedy_text(model, tokenizer, "ROMEO:", 25) + "\n"
    common = (
        "generate",
        "--ckpt",
        str(directory),
        "--prompt",
        "ROMEO:",
        "--temperature",
        "0",
        "--max-new-tokens",
        "25",
    )
    assert run(capsys, *common) == (0, expected, "")
    assert run(capsys, *common, "--stream") == (0, expected, "")


def test_cli_stop_string_cuts_the_text(checkpoint, capsys):
    directory, model, tokenizer = checkpoint
    continuation = greedy_text(model, tokenizer, "To be", 25)
    stop = continuation[5:7]  # two characters that do occur
    cut = continuation[: continuation.find(stop)]
    common = (
        "generate",
        "--ckpt",
        str(directory),
        "--prompt",
        "To be",
        "--temperature",
        "0",
        "--max-new-tokens",
        "25",
    )
    assert run(capsys, *common, "--stop", stop) == (0, "To be" + cut + "\n", "")
    assert run(capsys, *common, "--stop", stop, "--stream") == (0, "To be" + cut + "\n", "")


def test_cli_prompts_from_stdin_and_file_with_samples(checkpoint, capsys, monkeypatch, tmp_path):
    directory, model, tokenizer = checkpoint
    code, out, _ = run(
        capsys,
        "generate",
        "--ckpt",
        str(directory),
        "--per-line",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        stdin="ab\n\ncd\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0
    assert out == "".join(
        f"--- prompt {i + 1}, sample 1 ---\n{p}{greedy_text(model, tokenizer, p, 8)}\n"
        for i, p in enumerate(["ab", "cd"])
    )
    (tmp_path / "prompt.txt").write_text("Hark", encoding="utf-8")
    args = (
        "generate",
        "--ckpt",
        str(directory),
        "--prompt-file",
        str(tmp_path / "prompt.txt"),
        "--seed",
        "3",
        "--max-new-tokens",
        "20",
    )
    code, out, _ = run(capsys, *args, "--num-samples", "3", "--temperature", "2")
    assert code == 0 and out.count("--- prompt 1, sample") == 3
    samples = out.split("---\n")[1:]
    assert len(set(samples)) == 3  # three different samples
    assert run(capsys, *args, "--num-samples", "3", "--temperature", "2")[1] == out  # same seed, same text


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--prompt", ""), "prompt is empty"),
        (("--prompt", "x", "--temperature", "-1"), "temperature"),
        (("--prompt", "x", "--top-p", "1.5"), "top_p"),
        (("--prompt", "x" * 70), "longer than the model's context"),
        (("--prompt", "x" * 60, "--max-new-tokens", "10"), "exceeds the model's context"),
        (("--prompt", "x", "--max-new-tokens", "0"), "max-new-tokens"),
        (("--prompt", "x", "--dtype", "int4"), "use it with --model NAME"),
    ],
)
def test_cli_errors_are_one_clean_line(checkpoint, capsys, extra, message):
    code, out, err = run(capsys, "generate", "--ckpt", str(checkpoint[0]), *extra)
    assert code == 2 and out == ""
    assert err.startswith("lmforge generate: error:") and message in err and err.count("\n") == 1


def test_cli_int4_needs_a_gguf_builtin(capsys):
    code, _, err = run(capsys, "generate", "--model", "all-minilm-l6-v2", "--dtype", "int4", "--prompt", "x")
    assert code == 2 and "not a GGUF model" in err and err.count("\n") == 1


def test_cli_missing_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "x")
    assert code == 2 and "checkpoint directory not found" in err


def test_chat_plain_continuation_keeps_the_transcript(checkpoint, capsys, monkeypatch):
    directory, model, tokenizer = checkpoint
    args = ("chat", "--ckpt", str(directory), "--temperature", "0", "--max-new-tokens", "10")
    code, out, _ = run(capsys, *args, stdin="hello\nthere\n", monkeypatch=monkeypatch)
    first = greedy_text(model, tokenizer, "hello\n", 10)
    second = greedy_text(model, tokenizer, "hello\n" + first + "there\n", 10)
    assert code == 0
    assert out.splitlines()[1:] == f"> {first}\n> {second}\n> ".splitlines()


def test_chat_with_template_wraps_messages(checkpoint, capsys, monkeypatch, tmp_path):
    directory, model, tokenizer = checkpoint
    template = {
        "user": "<|user|>{content}<|end|>",
        "assistant": "<|assistant|>{content}<|end|>",
        "generation_prompt": "<|assistant|>",
        "stop": ["<|end|>"],
    }
    model.save_checkpoint(tmp_path, meta={"tokenizer": tokenizer.to_dict(), "chat_template": template})
    code, out, _ = run(
        capsys,
        "chat",
        "--ckpt",
        str(tmp_path),
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
        stdin="hi\n",
        monkeypatch=monkeypatch,
    )
    prompt = [
        tokenizer.special_tokens["<|user|>"],
        *tokenizer.encode("hi"),
        tokenizer.special_tokens["<|end|>"],
        tokenizer.special_tokens["<|assistant|>"],
    ]
    stops = {tokenizer.eot_id, tokenizer.special_tokens["<|end|>"]}
    ids = greedy_ids(model, prompt, 10, stops)
    reply = tokenizer.decode([t for t in ids if t not in stops])
    assert code == 0 and "chat template" in out.splitlines()[0]
    assert out.splitlines()[1] == "> " + reply


def test_fit_conversation_drops_oldest_turns():
    """Messages of 3, 4 and 2 tokens with budget 7: drop the first (4 + 2 = 6 fits)."""
    messages = [[1, 1, 1], [2, 2, 2, 2], [3, 3]]
    assert fit_conversation(messages, 7, keep_first=False) == [2, 2, 2, 2, 3, 3]
    # keeping the first (a system message): 3 + 2 = 5 fits, 3 + 4 + 2 = 9 does not
    assert fit_conversation(messages, 7, keep_first=True) == [1, 1, 1, 3, 3]
    # the newest message alone is too long: keep its end
    assert fit_conversation([[1], [5, 6, 7, 8, 9]], 3, keep_first=False) == [7, 8, 9]


def test_chat_survives_a_character_the_model_has_never_seen_and_lists_its_commands(
    checkpoint, capsys, monkeypatch
):
    """A char-level model cannot encode '€': the message is not sent, the chat goes on with the
    conversation it had (the next reply equals a fresh chat's reply to the same message)."""
    directory, model, tokenizer = checkpoint
    args = ("chat", "--ckpt", str(directory), "--temperature", "0", "--max-new-tokens", "10")
    code, out, _ = run(capsys, *args, stdin="/help\n10 €\nhello\n", monkeypatch=monkeypatch)
    assert code == 0
    assert "/reset" in out and "/quit" in out and "/help" in out
    assert "not sent:" in out and "the conversation so far is kept" in out
    assert f"> {greedy_text(model, tokenizer, 'hello' + chr(10), 10)}" in out


def test_typed_special_tokens_follow_one_policy_in_every_command(checkpoint, capsys, monkeypatch, tmp_path):
    """'<|endoftext|>' in what a user types is refused by generate, sample, chat and tokenizer encode alike
    (one line naming --allow-special), and with --allow-special it is encoded as the special token."""
    directory, model, tokenizer = checkpoint
    eot = tokenizer.special_tokens["<|endoftext|>"]
    prompt = "hi<|endoftext|>yo"
    for command in (
        ["generate", "--ckpt", str(directory), "--prompt", prompt, "--max-new-tokens", "2"],
        ["sample", "--ckpt", str(directory), "--prompt", prompt, "--max-new-tokens", "2"],
    ):
        code, _, err = run(capsys, *command)
        assert code == 2 and "special token '<|endoftext|>'" in err and "--allow-special" in err
        assert run(capsys, *command, "--allow-special")[0] == 0
    tokenizer.save(tmp_path / "tok.json")
    encode = ["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok.json"), "--text", prompt]
    code, _, err = run(capsys, *encode)
    assert code == 2 and "--allow-special" in err
    code, out, _ = run(capsys, *encode, "--allow-special")
    assert code == 0 and [int(t) for t in out.split()] == tokenizer.encode(prompt, allowed_special="all")
    assert eot in [int(t) for t in out.split()]
    chat = ("chat", "--ckpt", str(directory), "--temperature", "0", "--max-new-tokens", "4")
    code, out, _ = run(capsys, *chat, stdin=prompt + "\n", monkeypatch=monkeypatch)
    assert code == 0 and "not sent:" in out and "--allow-special" in out
    code, out, _ = run(capsys, *chat, "--allow-special", stdin=prompt + "\n", monkeypatch=monkeypatch)
    assert code == 0 and "not sent:" not in out
