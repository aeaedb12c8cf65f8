"""Built-in models: converted once into the cache, reused, rebuilt when corrupt or stale; `--model` in the
CLI; chats rendered by a model's own Jinja template.

A tiny Llama-style GPT written as GGUF stands in for the real file (the real SmolLM2 file has its own slow
test in test_gguf_smollm2.py).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("gguf")

from lmforge.errors import ConfigError  # noqa: E402
from lmforge.inference.chat import ChatFormat, JinjaChatFormat, chat_format  # noqa: E402
from lmforge.models import (  # noqa: E402
    GPT,
    GPTConfig,
    builtin,  # noqa: E402
)
from lmforge.models.gguf import save_gguf  # noqa: E402
from lmforge.tokenizers import BPETokenizer  # noqa: E402

# ChatML, as SmolLM2 writes it, without its default system message
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    text = "the cat sat on the mat; the dog ate the bone. " * 30
    base = BPETokenizer.train([text], vocab_size=256 + 20, pattern="gpt2", progress=False)
    n = base.vocab_size
    specials = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    return BPETokenizer(merges=base.merges, pattern="gpt2", special_tokens=specials)


@pytest.fixture()
def fake_builtin(tmp_path, tokenizer, monkeypatch):
    """A built-in model 'tiny-chat' whose GGUF file is written here; the cache is tmp_path/cache."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=1,
                       n_embd=32, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
    source = tmp_path / "tiny.gguf"
    save_gguf(GPT(config).eval(), source, tokenizer=tokenizer, chat_template=CHATML,
              roles={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})  # fmt: skip
    entry = builtin.BuiltinModel("tiny-chat", "a test model", "10K", "MIT", "none", lambda: source)
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "tiny-chat", entry)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    return source


def test_first_use_converts_once_then_reuses_the_cache(fake_builtin, tmp_path):
    notes: list[str] = []
    first = builtin.builtin_checkpoint("tiny-chat", log=notes.append)
    assert first == tmp_path / "cache" / "models" / "tiny-chat" and len(notes) == 1
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert builtin.builtin_checkpoint("tiny-chat", log=notes.append) == first
    assert len(notes) == 1 and (first / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize(
    "damage", ["truncate-weights", "corrupt-meta", "source-changed", "other-lmforge", "unknown-config-field"]
)
def test_a_corrupt_or_stale_cache_is_rebuilt_not_trusted(fake_builtin, damage):
    from lmforge.models.checkpoints import load_checkpoint

    ckpt = builtin.builtin_checkpoint("tiny-chat", log=lambda _: None)
    if damage == "truncate-weights":
        weights = ckpt / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "corrupt-meta":
        (ckpt / "meta.json").write_text('{"format_version": 1, "mod')
    elif damage == "source-changed":
        os.utime(fake_builtin, ns=(0, 0))
    else:
        import json

        meta = json.loads((ckpt / "meta.json").read_text())
        if damage == "other-lmforge":
            meta["builtin_source"]["lmforge"] = "0.0.1"
        else:
            meta["config"]["a_field_of_another_version"] = True
        (ckpt / "meta.json").write_text(json.dumps(meta))
    notes: list[str] = []
    assert builtin.builtin_checkpoint("tiny-chat", log=notes.append) == ckpt
    assert "converting it again" in notes[0]
    load_checkpoint(ckpt)  # whole again


def test_resolve_checkpoint_takes_exactly_one_of_ckpt_and_model(fake_builtin, tmp_path):
    assert builtin.resolve_checkpoint("some/dir", None) == builtin.Path("some/dir")
    with pytest.raises(ConfigError, match="either --ckpt DIR"):
        builtin.resolve_checkpoint(None, None)
    with pytest.raises(ConfigError, match="'nope' is not a built-in model; choose one of .*tiny-chat"):
        builtin.resolve_checkpoint(None, "nope")


def test_jinja_chat_renders_the_whole_conversation_and_stops_at_end_of_turn(tokenizer):
    chat = chat_format(tokenizer, {"chat_template_jinja": CHATML, "eos_token": "<|im_end|>"})
    assert isinstance(chat, JinjaChatFormat)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    expected = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.prompt(messages, 1000) == tokenizer.encode(expected, allowed_special="all")
    assert chat.stop_ids() == (
        tokenizer.special_tokens["<|endoftext|>"],
        tokenizer.special_tokens["<|im_end|>"],
    )
    assert isinstance(chat_format(tokenizer, {}), ChatFormat)  # no template: plain continuation


def test_jinja_chat_drops_the_oldest_turns_but_keeps_the_system_message(tokenizer):
    chat = JinjaChatFormat(tokenizer, CHATML, bos_token=None, eos_token="<|im_end|>")
    old = [
        {"role": "user", "content": "the dog ate the bone " * 3},
        {"role": "assistant", "content": "the mat"},
    ]
    messages = [{"role": "system", "content": "sys"}, *old, {"role": "user", "content": "the cat"}]
    kept = [messages[0], messages[-1]]
    short = tokenizer.encode(chat.render(kept), allowed_special="all")
    assert chat.prompt(messages, len(short)) == short  # both older turns had to go, the system message stays
    full = tokenizer.encode(chat.render(messages), allowed_special="all")
    assert chat.prompt(messages, len(full)) == full


def test_chat_and_generate_with_a_builtin_model_through_the_cli(fake_builtin, monkeypatch, capsys):
    from lmforge.cli import main

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("the cat\n"))
    assert main(["chat", "--model", "tiny-chat", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "lmforge chat: chat template" in out and "converting tiny.gguf" in out
    assert (
        main(["generate", "--model", "tiny-chat", "--prompt", "the", "--max-new-tokens", "3", "--seed", "0"])
        == 0
    )
    assert capsys.readouterr().out.startswith("the")
    assert main(["models"]) == 0
    assert "tiny-chat" in capsys.readouterr().out
