"""Attention patterns and the logit lens against TransformerLens on the same converted GPT-2 weights.

TransformerLens 4 builds its `TransformerBridge` around a Hugging Face model object (`hf_model=`), so our
GPT goes through `to_hf_gpt2` and HF's `GPT2LMHeadModel` first; the bridge runs it with eager attention
and records `blocks.i.attn.hook_pattern` (B, nh, T, T). Its logit lens is the usual TransformerLens
idiom: `cache.accumulated_resid(apply_ln=True)` (the embeddings and the stream after each block, each
through the final LayerNorm; L + 1 entries) followed by `bridge.unembed`. A tokenizer is passed in so
that nothing is fetched: a word-level one over the same 50 ids, without a BOS token (the bridge would
otherwise rebuild it from the hub to add one).
"""

from __future__ import annotations

import pytest
import torch

transformer_lens = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lmforge.interpret.attention import attention_patterns  # noqa: E402
from lmforge.interpret.lens import logit_lens  # noqa: E402
from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.convert import to_hf_gpt2  # noqa: E402


def test_patterns_and_lens_equal_transformer_lens(tmp_path):
    torch.manual_seed(0)
    # a larger init than GPT-2's so that the attention patterns are far from uniform
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_embd=32, init_std=0.2)).eval()
    to_hf_gpt2(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"t{i}": i for i in range(50)}, unk_token="t0"))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0")
    bridge = transformer_lens.TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tokenizer)
    ids = torch.randint(50, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tl_logits, cache = bridge.run_with_cache(ids)
        tl_patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(3)])
        tl_lens = bridge.unembed(cache.accumulated_resid(apply_ln=True))  # (L + 1, B, T, V)

    patterns = attention_patterns(model, ids[0])  # (L, nh, T, T)
    assert patterns.max() > 0.5  # not a trivial comparison of near-uniform rows
    torch.testing.assert_close(patterns, tl_patterns, rtol=1e-5, atol=1e-6)
    lens = logit_lens(model, ids)
    torch.testing.assert_close(lens, tl_lens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lens[-1], tl_logits, rtol=1e-5, atol=1e-5)
