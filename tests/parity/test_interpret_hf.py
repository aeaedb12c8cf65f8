"""Attention patterns and the logit lens against Hugging Face GPT-2 (eager attention) on the same weights.

HF's `output_attentions=True` returns the softmaxed weights of every layer, (B, nh, T, T), and
`output_hidden_states=True` returns the residual stream entering each block (entries 0 .. L-1) and the
final one after `ln_f` (entry L). The lens of HF is therefore `lm_head(ln_f(hidden_states[i]))` for
i < L and the logits at depth L.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.interpret.attention import attention_patterns  # noqa: E402
from lmforge.interpret.lens import logit_lens  # noqa: E402
from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.convert import to_hf_gpt2  # noqa: E402


def test_patterns_and_lens_equal_hf_gpt2(tmp_path):
    torch.manual_seed(0)
    # a larger init than GPT-2's so that the attention patterns are far from uniform
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_embd=32, init_std=0.2)).eval()
    to_hf_gpt2(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(50, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(ids, output_attentions=True, output_hidden_states=True)
        hf_lens = [hf.lm_head(hf.transformer.ln_f(h)) for h in out.hidden_states[:-1]] + [out.logits]

    patterns = attention_patterns(model, ids[0])  # (L, nh, T, T)
    assert patterns.max() > 0.5  # not a trivial comparison of near-uniform rows
    torch.testing.assert_close(patterns, torch.stack([a[0] for a in out.attentions]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logit_lens(model, ids), torch.stack(hf_lens), rtol=1e-5, atol=1e-5)
