"""Attention summary (worked by hand), the logit lens (last row = the model's logits) and causal tracing
(restoring the one corrupted token at layer 0 restores everything; identical positions restore nothing)."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interpret.attention import attention_patterns, head_summary, plot_attention
from lmforge.interpret.lens import logit_lens, plot_ranks, target_ranks, top_tokens
from lmforge.interpret.tracing import plot_trace, trace
from lmforge.models.gpt import GPT, GPTConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(n_layer=3, n_head=2, n_embd=16, block_size=16, vocab_size=13) | overrides
    return GPT(GPTConfig(**config)).eval()


def test_head_summary_worked_by_hand():
    """Head (0, 0): rows [1,0,0], [.5,.5,0], [0,1,0] -> over queries 1 and 2: entropy (ln 2 + 0) / 2,
    previous-token (.5 + 1) / 2 = .75, first-token (.5 + 0) / 2 = .25. Head (0, 1) looks at itself:
    entropy 0, previous 0, first 0."""
    a = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 1, 0]])
    patterns = torch.stack([a, torch.eye(3)])[None]  # (1, 2, 3, 3)
    first, second = head_summary(patterns)
    assert first.entropy == pytest.approx(math.log(2) / 2)
    assert (first.previous_token, first.first_token) == (pytest.approx(0.75), pytest.approx(0.25))
    assert (second.entropy, second.previous_token, second.first_token) == (0, 0, 0)


def test_attention_patterns_and_plots(tmp_path):
    model = tiny()
    patterns = attention_patterns(model, torch.tensor([1, 2, 3, 4]))
    assert patterns.shape == (3, 2, 4, 4)
    paths = plot_attention(patterns, ["a", "b", "\n", " d"], tmp_path)
    assert [p.name for p in paths] == ["layer0.png", "layer1.png", "layer2.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(ConfigError, match="3 token labels"):
        plot_attention(patterns, ["a", "b", "c"], tmp_path)


@pytest.mark.parametrize(
    "overrides", [{}, dict(norm_placement="post"), dict(tie_embeddings=False, norm="rmsnorm")]
)
def test_logit_lens_last_row_is_the_model(overrides):
    model = tiny(**overrides)
    ids = torch.tensor([[1, 5, 2, 7, 3]])
    lens = logit_lens(model, ids)
    assert lens.shape == (4, 1, 5, 13)
    logits, _ = model(ids)
    torch.testing.assert_close(lens[-1], logits)
    # row 0: the embeddings alone (token + position), through the final norm and the head
    with torch.no_grad():
        embedded = model.transformer.wte(ids) + model.transformer.wpe.weight[:5]
        torch.testing.assert_close(lens[0], model.lm_head(model.transformer.ln_f(embedded)))


def test_target_ranks_and_top_tokens(tmp_path):
    """Depth 0 scores [3, 1, 2]: token 2 has one better -> rank 1; depth 1 [0, 5, 5]: a tie counts for
    the target -> rank 0."""
    lens = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    assert target_ranks(lens, 2) == [1, 0]
    probs, ids = top_tokens(lens, k=1)
    assert ids[:, 0].tolist()[0] == 0
    torch.testing.assert_close(probs[0, 0], torch.tensor([3.0, 1.0, 2.0]).softmax(0)[0])
    assert plot_ranks([5, 1], tmp_path / "r.png", title="t").stat().st_size > 0


def test_trace_restores_the_corrupted_token_at_layer_zero(tmp_path):
    model = tiny()
    clean = torch.tensor([1, 5, 2, 7, 3, 9])
    corrupt = torch.tensor([1, 6, 2, 7, 3, 9])  # position 1 differs
    result = trace(model, clean, corrupt, answer=4, wrong=8)
    assert result.restored.shape == (3, 6)
    # the stream entering layer 0 at position 1 is everything that differs: restoring it is the clean run
    assert result.restored[0, 1] == pytest.approx(1.0, abs=1e-5)
    # elsewhere at layer 0 the two runs already agree: restoring changes nothing
    assert result.restored[0, [0, 2, 3, 4, 5]].abs().max() < 1e-5
    # positions before the corruption never carry it, at any layer
    assert result.restored[:, 0].abs().max() < 1e-5
    # attention branches before the corrupted position read nothing corrupted either
    attn = trace(model, clean, corrupt, answer=4, wrong=8, kind="attn_out")
    assert attn.restored[:, 0].abs().max() < 1e-5
    plot_trace(result, list("abcdef"), tmp_path / "t.png", title="t")
    with pytest.raises(ConfigError, match="same number of tokens"):
        trace(model, clean, corrupt[:5], answer=4, wrong=8)
