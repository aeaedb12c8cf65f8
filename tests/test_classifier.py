"""GPTClassifier: pooling invariants (a right-padded row gives what it gives alone), mean pooling by hand,
`from_lm` sharing the backbone, the GPT's own forward unchanged by `hidden_states`, and `set_trainable`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models import GPT, GPTClassifier, GPTConfig, set_trainable


def _config(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", vocab_size=61, **overrides)


def _classifier(pooling: str = "last", **overrides) -> GPTClassifier:
    torch.manual_seed(0)
    return GPTClassifier(_config(**overrides), num_classes=3, pooling=pooling).eval()


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_padded_rows_give_what_they_give_alone(pooling, pos_encoding):
    model = _classifier(pooling, pos_encoding=pos_encoding)
    generator = torch.Generator().manual_seed(1)
    short, long = (
        torch.randint(0, 61, (1, 4), generator=generator),
        torch.randint(0, 61, (1, 7), generator=generator),
    )
    batch = torch.cat([F.pad(short, (0, 3), value=0), long])  # right-padded with an arbitrary id
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    logits, _ = model(batch, attention_mask=mask)
    torch.testing.assert_close(logits[0], model(short)[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], model(long)[0][0], rtol=1e-5, atol=1e-5)


def test_pooling_by_hand():
    """ "last" reads position length-1; "mean" is (h_0 + ... + h_{L-1}) / L, compared to a direct sum."""
    model = _classifier("mean")
    idx = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    h = model.backbone.hidden_states(idx)
    expected = torch.stack([(h[0, 0] + h[0, 1]) / 2, h[1].sum(0) / 5])
    torch.testing.assert_close(model.pool(h, mask), expected)
    model.pooling = "last"
    torch.testing.assert_close(model.pool(h, mask), torch.stack([h[0, 1], h[1, 4]]))
    logits, loss = model(idx, torch.tensor([2, 0]), attention_mask=mask)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([2, 0])))


def test_bad_masks_and_options():
    model = _classifier()
    idx = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="right padding"):
        model(idx, attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))  # left padding
    with pytest.raises(ConfigError, match="right padding"):
        model(idx, attention_mask=torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))  # an empty row
    with pytest.raises(ConfigError, match="pooling"):
        GPTClassifier(_config(), 2, pooling="max")
    with pytest.raises(ConfigError, match="num_classes"):
        GPTClassifier(_config(), 1)


def test_from_lm_reuses_the_backbone_and_gpt_forward_is_unchanged():
    torch.manual_seed(0)
    gpt = GPT(_config()).eval()
    idx = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(3))
    logits, _ = gpt(idx)
    torch.testing.assert_close(logits, gpt.lm_head(gpt.hidden_states(idx)))  # forward = head(hidden states)
    classifier = GPTClassifier.from_lm(gpt, num_classes=2)
    assert classifier.backbone is gpt and classifier.head.weight.device.type == "cpu"
    assert classifier.head.weight.shape == (2, 64) and torch.count_nonzero(classifier.head.bias) == 0
    expected = classifier.head(gpt.hidden_states(idx)[:, -1])
    torch.testing.assert_close(classifier(idx)[0], expected)


def test_set_trainable():
    """tiny: n_embd 64, 2 blocks of 4*64^2 + 8*64^2 + 13*64 = 49,984 each (12 c^2 weights, biases and norms),
    final norm 128, 3-class head 64*3 + 3 = 195."""
    counts = {}
    for mode in ("head", "last-k", "all", "lora"):
        model = set_trainable(_classifier(), mode, k=1, rank=2)
        counts[mode] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    block = 12 * 64 * 64 + 13 * 64
    assert counts["head"] == 195
    assert counts["last-k"] == 195 + block + 128
    embeddings = 61 * 64 + 64 * 64  # token (tied with the unused LM head) and learned positions
    assert counts["all"] == 195 + 2 * block + 128 + embeddings
    # lora: q, k, v, c_proj 2 * (64 + 64) each, c_fc and mlp c_proj 2 * (64 + 256) each, per block
    assert counts["lora"] == 195 + 2 * (4 * 2 * 128 + 2 * 2 * 320)
    with pytest.raises(ConfigError, match="trainable"):
        set_trainable(_classifier(), "some")
    with pytest.raises(ConfigError, match="k must be"):
        set_trainable(_classifier(), "last-k", k=3)


def test_flops_per_token_leaves_the_lm_head_out_and_spreads_the_head_over_the_sequence():
    """1 layer, n_embd 16, MLP 64, vocab 100 (tied), 2 classes, T = 16. The block: c_attn 16*48 + 48 = 816,
    c_proj 272, c_fc 1088, c_proj 1040, two LayerNorms 64 -> 3280, plus ln_f 32. The GPT LM counts its
    tied head (100 * 16 = 1600): 6 * (3312 + 1600) + 12 * 1 * 16 * 16 = 29472 + 3072 = 32544. The
    classifier never runs the LM head and runs its own (16 * 2 + 2 = 34) once per sequence:
    6 * 3312 + 3072 + 6 * 34 / 16 = 22956.75 -> 22957."""
    config = GPTConfig(vocab_size=100, block_size=32, n_layer=1, n_head=2, n_embd=16)
    assert GPT(config).flops_per_token(seq_len=16) == 32544
    assert GPTClassifier(config, 2).flops_per_token(seq_len=16) == 22957


def test_flops_per_token_of_frozen_weights_and_lora():
    """Frozen weights cost 4 per token (forward + input gradient), trained ones 6. Same model as above;
    LoRA rank 2 on attention and MLP adds c_attn 6*16 + 48*2 = 192, c_proj 2*16 + 16*2 = 64, c_fc
    2*16 + 64*2 = 160 and c_proj 2*64 + 16*2 = 160: 576 trained values. GPT LM (head tied, frozen):
    4 * (3312 + 1600) + 6 * 576 + 3072 = 19648 + 3456 + 3072 = 26176. Classifier with its head trained:
    4 * 3312 + 6 * 576 + 3072 + 6 * 34 / 16 = 19788.75 -> 19789."""
    from lmforge.models.lora import apply_lora

    config = GPTConfig(vocab_size=100, block_size=32, n_layer=1, n_head=2, n_embd=16)
    lm = apply_lora(GPT(config), rank=2, targets=["attn", "mlp"])
    assert sum(p.numel() for p in lm.parameters() if p.requires_grad) == 576
    assert lm.flops_per_token(seq_len=16) == 26176
    classifier = apply_lora(GPTClassifier(config, 2), rank=2, targets=["attn", "mlp"])
    classifier.head.requires_grad_(True)
    assert classifier.flops_per_token(seq_len=16) == 19789
