"""BERT pieces lmforge owns beyond the HF parity (tests/parity/test_bert_hf.py): pooling worked by hand,
padding invariance, checkpoints, the masked-LM masking statistics and a tiny masked-LM run through the
shared trainer (loss below the unigram baseline, same masks on resume)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_TRAIN
from lmforge.errors import ConfigError
from lmforge.evaluation.metrics import unigram_loss
from lmforge.models import BERT, IGNORE_INDEX, BERTConfig
from lmforge.models.bert import pool
from lmforge.training.objectives import mask_tokens

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def test_mean_pooling_leaves_padding_out():
    """Row [[1, 1], [3, 5], [9, 9]] with mask [1, 1, 0]: (1+3)/2 = 2, (1+5)/2 = 3; [CLS] pooling: [1, 1]."""
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask).tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, pooling="cls").tolist() == [[1.0, 1.0]]
    with pytest.raises(ConfigError, match="pooling 'max' is unknown"):
        pool(hidden, mask, pooling="max")


def test_padded_row_equals_the_row_alone():
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        batched = model.hidden_states(ids, attention_mask=mask)
        alone = model.hidden_states(ids[1:, :3])
    torch.testing.assert_close(batched[1, :3], alone[0])
    with pytest.raises(ConfigError, match="sequence length 17 exceeds block_size 16"):
        model.hidden_states(torch.zeros(1, 17, dtype=torch.long))


def test_checkpoint_round_trip_and_tied_head(tmp_path):
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY, num_labels=3)).eval()
    assert model.mlm.embeddings[0].weight is model.wte.weight  # the decoder is the embedding matrix
    model.save_checkpoint(tmp_path, meta={"mask_id": 4})
    back = BERT.from_checkpoint(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(back(ids)[0], model(ids)[0], atol=0, rtol=0)
    torch.testing.assert_close(back.classify(ids)[0], model.classify(ids)[0], atol=0, rtol=0)
    with pytest.raises(ConfigError, match="no masked-LM head"):
        BERT(BERTConfig(**TINY, mlm_head=False))(ids)


def test_masked_lm_head_on_the_scored_positions_only_equals_the_full_head():
    """With targets, `forward` runs the MLM head on the scored positions only, logits (N, V); they, the
    loss and every gradient equal the full (B, T, V) head's with the other positions ignored (what
    transformers computes: tests/parity/test_bert_hf.py compares the loss and gradients with it)."""
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY))
    ids = torch.randint(5, 50, (3, 12))
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[0, 2], targets[1, 0], targets[1, 11], targets[2, 7] = 9, 10, 11, 12  # row-major: 4 targets
    logits, loss = model(ids, targets)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]  # all but the pooler's
    model.zero_grad()
    full = model.mlm(model.hidden_states(ids))  # (B, T, V)
    full_loss = torch.nn.functional.cross_entropy(
        full.view(-1, 50), targets.view(-1), ignore_index=IGNORE_INDEX
    )
    full_loss.backward()
    assert logits.shape == (4, 50)
    torch.testing.assert_close(logits, full[targets != IGNORE_INDEX])
    torch.testing.assert_close(logits[3], full[2, 7])  # the last scored position, in row-major order
    torch.testing.assert_close(loss, full_loss)
    for got, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True):
        torch.testing.assert_close(got, p.grad)
    assert model(ids)[0].shape == (3, 12, 50)  # without targets (fill-mask): every position


def test_flops_per_token_counts_the_mlm_head_at_the_scored_fraction():
    """TINY (V=50, C=16, 2 layers, MLP 64, T=16), by hand: two blocks of 3,280 (see the test below) run at
    every position; the MLM head (dense 16 x 16 + 16, norm 32, decoder bias 50, tied decoder 800 = 1,154)
    at 15% of them: 173.1; the embedding lookups and the pooler (unused in pretraining) not at all.
    6 x (6,560 + 173.1) + 12 x 2 x 16 x 16 = 40,398.6 + 6,144 = 46,542.6 -> 46,543."""
    model = BERT(BERTConfig(**TINY))
    assert model.num_params() == 8306
    assert model.flops_per_token() == 46543
    assert model.flops_per_token(scored_fraction=1.0) == 6 * (6560 + 1154) + 6144


def test_evaluate_lm_accuracy_with_logits_of_the_scored_positions_only():
    """evaluate_lm's accuracy for a model whose logits are (N, V) for the N scored targets. Targets
    [[7, -100, 3], [-100, 5, -100]] -> scored 7, 3, 5; the stub predicts 7, 4, 5 -> accuracy 2/3; the
    loss it returns (1.5) is the mean over the 3 targets."""
    from lmforge.evaluation.metrics import evaluate_lm

    class Stub(torch.nn.Module):
        def forward(self, x, y):
            logits = torch.zeros(3, 10)
            logits[0, 7] = logits[1, 4] = logits[2, 5] = 1.0
            return logits, torch.tensor(1.5)

    y = torch.tensor([[7, IGNORE_INDEX, 3], [IGNORE_INDEX, 5, IGNORE_INDEX]])
    metrics = evaluate_lm(Stub(), [(torch.zeros_like(y), y)])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["loss"] == 1.5 and metrics["tokens"] == 3


def test_mask_tokens_statistics():
    """200,000 positions, 10% of them special: 180,000 maskable, of which 15% = 27,000 expected chosen;
    of those 80% -> [MASK] (21,600), 10% random (2,700, of which 1/50 equal the original by chance),
    10% kept (2,700). Binomial standard deviations are ~150 for the chosen count, so the bounds below
    (about 4 sigma) fail for a wrong rule, not for noise."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (200, 1000), generator=g)
    ids[:, ::10] = 2  # a special token ([CLS]-like) at every tenth position
    inputs, targets = mask_tokens(ids, mask_id=4, vocab_size=50, special_ids=[2, 4], generator=g)
    chosen = targets != IGNORE_INDEX
    assert not chosen[:, ::10].any()  # specials are never chosen
    assert (targets[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    n = int(chosen.sum())
    assert abs(n - 27_000) < 600
    masked = int((inputs[chosen] == 4).sum())
    unchanged = int((inputs[chosen] == ids[chosen]).sum())
    assert abs(masked / n - 0.8) < 0.012
    assert abs(unchanged / n - (0.1 + 0.1 / 50)) < 0.01
    assert abs((n - masked - unchanged) / n - 0.1 * 49 / 50) < 0.01
    # the same generator state gives the same masks (a resumed run restores torch's RNG state)
    again = mask_tokens(
        ids, mask_id=4, vocab_size=50, special_ids=[2, 4], generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    torch.randint(5, 50, (200, 1000))  # the draw of `ids` above, on the global RNG this time
    assert not torch.equal(again[1], targets)  # a different generator state, different masks
    one = mask_tokens(torch.tensor([[2, 7, 8]]), mask_id=4, vocab_size=50, special_ids=[2], probability=0.0)
    assert one[1].tolist() == [[IGNORE_INDEX, 7, IGNORE_INDEX]]  # never a batch without a target


def test_unigram_loss_by_hand():
    """train [0, 0, 1], vocab 3, add-one: p = (3, 2, 1)/6; targets 0 and 2 -> (ln 2 + ln 6)/2 = 1.2425."""
    import numpy as np

    loss = unigram_loss(np.array([0, 0, 1]), [torch.tensor([[0, IGNORE_INDEX, 2]])], vocab_size=3)
    assert loss == pytest.approx((math.log(2) + math.log(6)) / 2)


def test_mlm_pretraining_through_the_trainer(tmp_path, tiny_dataset):
    """A tiny BERT through the shared trainer: evaluation reports the masked-token loss beside the
    unigram baseline of the same tokens, the checkpoint says it is a BERT with its [MASK] id (the char
    tokenizer has none, so it is the id after the last), and resuming reproduces the uninterrupted run
    (the masks come from torch's RNG, which checkpoints save). That the loss falls well below the
    baseline takes minutes, not a test's seconds: BENCHMARKS.md ("Masked-LM pretraining")."""
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training.config import load_config
    from lmforge.training.trainer import train_from_config

    common = [
        *TINY_TRAIN,
        "model.architecture=bert",
        f"data.dir={tiny_dataset}",
        "train.eval_interval=4",
        "train.eval_batches=2",
        "optim.decay_iters=8",  # the same schedule for the 4-step run as for the 8-step one
    ]

    def run(name: str, steps: int, **kwargs):
        overrides = [*common, f"train.out_dir={tmp_path / name}", f"train.max_iters={steps}"]
        return train_from_config(load_config(None, overrides=overrides), **kwargs)

    full = run("a", 8)
    assert math.isfinite(full.last_eval["loss"]) and 0.0 <= full.last_eval["accuracy"] <= 1.0
    assert full.last_eval["unigram_loss"] < math.log(tiny_vocab := 66)  # frequencies beat uniform ids
    model, tokenizer, meta = load_checkpoint(full.run_dir / "checkpoints" / "best", architecture="bert")
    assert isinstance(model, BERT) and meta["mask_id"] == tokenizer.vocab_size == model.config.vocab_size - 1
    assert tokenizer.vocab_size <= tiny_vocab
    assert run("b", 4).step == 4
    resumed = run("b", 8, resume=True)  # dropout 0.1 and the masks both draw from the restored RNG
    assert resumed.last_eval["loss"] == pytest.approx(full.last_eval["loss"], rel=1e-6)


def test_a_vocab_size_without_room_for_the_mask_id_is_refused(tmp_path, tiny_dataset):
    """The char tokenizer has no [MASK], so it gets the id after the last one: V, the tokenizer's size.
    model.vocab_size=V is then one short: refused before training, with the size to use, V + 1."""
    from lmforge.data.shards import load_meta
    from lmforge.training.config import load_config
    from lmforge.training.trainer import train_from_config

    v = load_meta(tiny_dataset)["vocab_size"]
    overrides = [*TINY_TRAIN, "model.architecture=bert", f"model.vocab_size={v}", f"data.dir={tiny_dataset}"]
    config = load_config(None, overrides=[*overrides, f"train.out_dir={tmp_path / 'run'}"])
    message = (
        f"model.vocab_size={v} leaves no room for the [MASK] id {v}; use at least {v + 1} or leave it unset"
    )
    with pytest.raises(ConfigError) as error:
        train_from_config(config)
    assert str(error.value) == message
    assert not (tmp_path / "run").exists()


def test_mlm_pretraining_starts_at_the_unigram_baseline(tmp_path, tiny_dataset):
    """The trainer sets the MLM decoder's bias to the log unigram frequencies of the training tokens, so
    the untrained model already scores the baseline instead of ln V (the zero bias of BERT's init): one
    step at lr 1e-7 (warmup 10,000 steps) leaves it within the small logits of the random hidden states
    (std about 0.02 x sqrt(32) = 0.11) of unigram_loss on the same ~75 masked tokens, far below
    ln 66 = 4.19, where a zero bias would start."""
    from lmforge.training.config import load_config
    from lmforge.training.trainer import train_from_config

    overrides = [
        *TINY_TRAIN,
        "model.architecture=bert",
        "model.dropout=0.0",
        f"data.dir={tiny_dataset}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.max_iters=1",
        "train.eval_interval=1",
        "train.eval_batches=8",
        "optim.lr=1e-3",
        "optim.warmup_iters=10000",
    ]
    result = train_from_config(load_config(None, overrides=overrides))
    baseline = result.last_eval["unigram_loss"]
    assert baseline < math.log(66) - 0.3
    assert result.last_eval["loss"] == pytest.approx(baseline, abs=0.15)


def test_config_architecture_round_trip(tmp_path):
    from lmforge.training.config import load_config, to_toml

    overrides = [
        "model.architecture=bert",
        "model.preset=bert-cpu-small",
        "model.vocab_size=99",
        "data.dir=d",
    ]
    config = load_config(None, overrides=overrides)
    assert isinstance(config.model.build(), BERTConfig) and config.model.build().n_layer == 4
    (tmp_path / "c.toml").write_text(to_toml(config))
    assert load_config(tmp_path / "c.toml") == config
    with pytest.raises(ConfigError, match="model.architecture='t5' is invalid; choose one of gpt, bert"):
        load_config(None, overrides=["model.architecture=t5", "data.dir=d"])


def test_flops_per_token_worked_by_hand():
    """L=2, C=16, MLP 64, V=100, T=32. A block: c_attn 16*48 + 48 = 816, c_proj 16*16 + 16 = 272,
    c_fc 16*64 + 64 = 1088, c_proj 64*16 + 16 = 1040, two LayerNorms 2 * 32: 3280; two blocks 6560.
    Attention 12 * L * C * T = 12 * 2 * 16 * 32 = 12288.
    MLM pretraining, the head (dense 272 + norm 32 + bias 100 + tied decoder 100 * 16 = 1600) at every
    position: 6 * (6560 + 2004) + 12288 = 63672; at the 15% it runs on: 6 * (6560 + 300.6) + 12288 =
    53451.6 -> 53452.
    Cross-encoder (no MLM head, pooler 272 and 1-logit classifier 17 once per sequence):
    6 * 6560 + 12288 + 6 * 289 / 32 = 51702.19 -> 51702 (the old count, 6 * 6849 + attention at the
    block size 64, gave 65670)."""
    config = BERTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=2, n_embd=16)
    assert BERT(config).flops_per_token(seq_len=32, scored_fraction=1.0) == 63672
    assert BERT(config).flops_per_token(seq_len=32) == 53452
    cross_encoder = BERT(BERTConfig(**(config.__dict__ | {"mlm_head": False, "num_labels": 1})))
    assert cross_encoder.flops_per_token(seq_len=32) == 51702
    assert cross_encoder.flops_per_token() == 6 * 6560 + 12 * 2 * 16 * 64 + round(6 * 289 / 64)
