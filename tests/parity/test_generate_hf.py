"""Greedy generation parity with transformers: GPT2LMHeadModel.generate(do_sample=False), weights copied
into lmforge through its HF import (`from_hf_gpt2`). Random weights from a tiny GPT2Config; no network.

initializer_range=0.3 spreads the logits so that greedy choices are not decided by float rounding.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.models.convert import from_hf_gpt2  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=120,
        n_positions=64,
        n_embd=64,
        n_layer=3,
        n_head=4,
        initializer_range=0.3,
        attn_pdrop=0.0,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(directory)  # config.json + model.safetensors
    return hf, from_hf_gpt2(directory).eval()


def hf_greedy(hf, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> list[list[int]]:
    out = hf.generate(
        input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        pad_token_id=0,
    )
    return out[:, input_ids.size(1) :].tolist()


def test_greedy_tokens_equal_transformers_generate(models):
    hf, ours = models
    prompt = [7, 99, 3, 45, 12, 0, 118, 64]
    expected = hf_greedy(hf, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), 40)
    got = Engine(ours).generate([prompt], SamplingParams(temperature=0), max_new_tokens=40)
    assert got == expected


def test_left_padded_batch_equals_transformers(models):
    """transformers needs an explicit left-padded batch and attention mask; we take ragged prompts."""
    hf, ours = models
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = hf_greedy(hf, ids, mask, 20)
    assert Engine(ours).generate(prompts, SamplingParams(temperature=0), max_new_tokens=20) == expected
