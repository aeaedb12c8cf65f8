"""Semantic search: retrieval metrics by hand, sentence splitting, BM25, exact top-k against numpy, the
usearch index's recall, index files and mismatched models, the cross-encoder (pair inputs, logits equal
transformers' BertForSequenceClassification with one label, its loss by hand), a tiny re-ranker run
through the shared trainer, and `lmforge search` on a text file with bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError, FormatError
from lmforge.evaluation.retrieval import bm25_rankings, retrieval_metrics, split_sentences
from lmforge.inference.search import (
    ApproximateIndex,
    SearchIndex,
    cosine_top_k,
    cross_encoder_scores,
    recall_against_exact,
)
from lmforge.models import BERT, BERTConfig
from lmforge.models.cross_encoder import (
    cross_encoder_from,
    listwise_loss,
    pair_inputs,
    relevance_logits,
    relevance_loss,
)

TEXTS = [
    "the cat sat on the mat",
    "a dog chased the cat in the garden",
    "rivers flow into the sea",
    "the sea is salty and deep",
    "cars drive on the road",
]


def test_metrics_by_hand():
    """rankings [[3, 1], [2, 0]], positives [1, 5]: recall@1 = 0, recall@2 = 1/2, MRR@2 = (1/2 + 0)/2."""
    metrics = retrieval_metrics(np.array([[3, 1], [2, 0]]), [1, 5], ks=(1, 2))
    assert metrics == {"recall@1": 0.0, "recall@2": 0.5, "mrr@2": 0.25}
    with pytest.raises(DataError, match="rankings must be"):
        retrieval_metrics(np.array([1, 2]), [1, 2])


def test_split_sentences_keeps_initials_and_abbreviations():
    text = "J. R. R. Tolkien was a writer. Dr. Smith met him in 1950. It rained."
    assert split_sentences(text) == [
        "J. R. R. Tolkien was a writer.",
        "Dr. Smith met him in 1950.",
        "It rained.",
    ]


def test_bm25_ranks_the_passage_sharing_rare_words_first():
    rankings = bm25_rankings(["salty sea", "cat mat"], TEXTS, 2)
    assert rankings[:, 0].tolist() == [3, 0]
    with pytest.raises(DataError):
        bm25_rankings([], TEXTS, 2)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_cosine_top_k_equals_numpy_and_ann_recall():
    rng = np.random.default_rng(0)
    passages, queries = _unit(rng.normal(size=(600, 16))), _unit(rng.normal(size=(7, 16)))
    scores, rows = cosine_top_k(queries, passages, 5, chunk=3)  # chunks of 3 queries
    expected = np.argsort(-(queries @ passages.T), axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ passages.T, expected, 1), rtol=1e-5)
    approximate = ApproximateIndex(passages).search(queries, 5)
    assert recall_against_exact(approximate, rows) >= 0.9
    assert recall_against_exact(np.array([[2, 7]]), np.array([[1, 2]])) == 0.5
    with pytest.raises(DataError, match="do not match"):
        cosine_top_k(queries[:, :8], passages, 5)


def test_index_files_and_model_check(tmp_path):
    model = {"name": "m1", "width": 4, "tokenizer_fingerprint": "abc"}
    index = SearchIndex(["a", "b"], ["x", "y"], _unit(np.eye(2, 4) + 0.1), model)
    index.save(tmp_path)
    loaded = SearchIndex.load(tmp_path)
    assert loaded.passages == ["a", "b"] and loaded.ids == ["x", "y"]
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    loaded.check_model(model)
    with pytest.raises(FormatError, match="built with model 'm1'"):
        loaded.check_model(model | {"name": "m2"}, path=tmp_path)
    SearchIndex(["a"], ["x"], index.vectors[:1], model).save(tmp_path / "one")
    (tmp_path / "one" / "index.safetensors").replace(tmp_path / "index.safetensors")
    with pytest.raises(FormatError, match=r"expected 'vectors' of shape \(2, 4\)"):
        SearchIndex.load(tmp_path)


@pytest.fixture(scope="module")
def tiny():
    """A WordPiece tokenizer trained on TEXTS and a 2-layer BERT (with pooler) on its vocabulary."""
    from lmforge.tokenizers import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.train(TEXTS, 80)
    torch.manual_seed(0)
    config = BERTConfig(
        vocab_size=len(tokenizer.vocab), block_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0
    )
    return tokenizer, BERT(config).eval()


def test_pair_inputs_and_cross_encoder_from(tiny):
    tokenizer, encoder = tiny
    ids, types, mask = pair_inputs(tokenizer, ["the cat", "sea"], ["a dog", "the sea is deep"], max_length=32)
    first = tokenizer.encode("the cat", "a dog")
    assert ids[0, : len(first.ids)].tolist() == first.ids
    assert types[0, : len(first.ids)].tolist() == [0, 0, 0, 0, 1, 1, 1]  # [CLS] the cat [SEP] | a dog [SEP]
    assert mask.sum(1).tolist() == [7, len(tokenizer.encode("sea", "the sea is deep").ids)]
    cross = cross_encoder_from(encoder).eval()
    assert cross.config.num_labels == 1 and cross.mlm is None
    with torch.no_grad():  # the encoder's weights, untouched
        torch.testing.assert_close(
            cross.hidden_states(ids, token_type_ids=types, attention_mask=mask),
            encoder.hidden_states(ids, token_type_ids=types, attention_mask=mask),
        )
    with pytest.raises(ConfigError, match="pooler"):
        cross_encoder_from(BERT(BERTConfig(vocab_size=10, n_layer=1, n_head=1, n_embd=4, pooler=False)))


def test_cross_encoder_logits_equal_transformers(tiny, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.models.convert import to_hf_bert

    tokenizer, encoder = tiny
    cross = cross_encoder_from(encoder).eval()
    to_hf_bert(cross, tmp_path)
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.num_labels == 1
    ids, types, mask = pair_inputs(tokenizer, ["the cat", "salty sea"], TEXTS[:2], max_length=32)
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(relevance_logits(cross, ids, types, mask), expected)


def test_mean_pooled_head_reads_the_masked_mean(tiny, tmp_path):
    """classifier_pooling = "mean": the logit is Linear(mean of the real tokens' hidden states), padding
    left out, no pooler needed; transformers' class cannot hold it, so export refuses."""
    from lmforge.models.convert import to_hf_bert

    tokenizer, encoder = tiny
    cross = cross_encoder_from(encoder, pooling="mean").eval()
    ids, types, mask = pair_inputs(tokenizer, ["the cat", "sea"], TEXTS[:2], max_length=32)
    assert (mask.sum(1) < mask.shape[1]).any()  # one pair is padded
    with torch.no_grad():
        hidden = cross.hidden_states(ids, token_type_ids=types, attention_mask=mask)
        for b in range(2):
            real = hidden[b, : int(mask[b].sum())]  # (T_b, C)
            expected = real.mean(0) @ cross.classifier.weight[0] + cross.classifier.bias[0]
            torch.testing.assert_close(relevance_logits(cross, ids, types, mask)[b], expected)
    no_pooler = BERT(BERTConfig(vocab_size=10, n_layer=1, n_head=1, n_embd=4, pooler=False))
    assert cross_encoder_from(no_pooler, pooling="mean").config.classifier_pooling == "mean"
    with pytest.raises(ConfigError, match="mean pooling"):
        to_hf_bert(cross, tmp_path)


def test_relevance_loss_by_hand():
    """logit 0, relevant: -log σ(0) = ln 2; logit 2, irrelevant: log(1 + e^2) = 2.126928."""
    loss = relevance_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx((math.log(2) + math.log(1 + math.e**2)) / 2, abs=1e-6)


def test_listwise_loss_by_hand():
    """Row [2, 0, 0]: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.239552; a row of equal logits costs
    log(1 + k) = log 3 whatever their value; the mean over the two rows."""
    loss = listwise_loss(torch.tensor([[2.0, 0.0, 0.0], [5.0, 5.0, 5.0]]))
    assert float(loss) == pytest.approx((math.log(1 + 2 * math.exp(-2)) + math.log(3)) / 2, abs=1e-6)
    assert float(listwise_loss(torch.tensor([[0.0, 2.0]]))) == pytest.approx(math.log(1 + math.e**2))
    with pytest.raises(DataError, match="1 \\+ k"):
        listwise_loss(torch.tensor([1.0, 2.0]))


def test_group_batch_scores_each_pair_as_alone(tiny):
    """group_logits on x (B, G, 3, T) equals relevance_logits of every pair encoded on its own."""
    from lmforge.training.rerank import group_batch, group_logits, group_loss

    tokenizer, encoder = tiny
    cross = cross_encoder_from(encoder).eval()
    groups = [("cat", [TEXTS[0], TEXTS[2], TEXTS[4]]), ("salty sea", [TEXTS[3], TEXTS[1], TEXTS[0]])]
    x, y = group_batch(tokenizer, groups, 32)
    assert x.shape[:3] == (2, 3, 3) and y.tolist() == [0, 0]
    with torch.no_grad():
        logits = group_logits(cross, torch.from_numpy(x))
        for b, (query, passages) in enumerate(groups):
            for g, passage in enumerate(passages):
                alone = relevance_logits(cross, *pair_inputs(tokenizer, [query], [passage], max_length=32))
                torch.testing.assert_close(logits[b, g], alone[0])
    bce = group_loss(logits, "bce")  # mean over the 6 pairs, labels 1 0 0 per row
    expected = relevance_loss(logits.flatten(), torch.tensor([1.0, 0, 0, 1, 0, 0]))
    torch.testing.assert_close(bce, expected)
    with pytest.raises(DataError, match="as many passages"):
        group_batch(tokenizer, [("cat", TEXTS[:2]), ("sea", TEXTS[:3])], 32)


def test_rerank_run_trains_through_the_shared_trainer(tiny, tmp_path, monkeypatch):
    """A tiny re-ranker on hand-made groups: the loss falls, model/ is a 1-logit BERT that ranks the
    relevant passages first."""
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training import rerank
    from lmforge.training.config import OptimSection, TrainSection

    tokenizer, encoder = tiny
    groups = [("cat", [TEXTS[0], TEXTS[2], TEXTS[4]]), ("sea", [TEXTS[3], TEXTS[4], TEXTS[0]])]
    monkeypatch.setattr(rerank, "rerank_groups", lambda task: (groups, groups))
    config = rerank.RerankConfig(
        rerank.RerankSection(max_tokens=32),
        OptimSection(lr=3e-3, min_lr=3e-3, warmup_iters=0, weight_decay=0.0),
        TrainSection(
            out_dir=str(tmp_path / "run"),
            max_iters=60,
            batch_size=8,
            eval_interval=60,
            log_interval=60,
            tensorboard=False,
            progress=False,
            device="cpu",
            precision="fp32",
        ),
    )
    meta = {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint()}
    results = rerank.run_rerank(config, encoder, tokenizer, meta, log=lambda _: None)
    assert results["held_out"]["loss"] < 0.4 and results["held_out"]["mrr"] == 1.0
    model, loaded_tokenizer, saved = load_checkpoint(tmp_path / "run" / "model", architecture="bert")
    assert model.config.num_labels == 1 and saved["reranker"]["max_length"] == 32
    assert model.config.classifier_pooling == "mean"  # the trained head's pooling travels with it
    continued = cross_encoder_from(model, pooling="mean")  # a second run starts from the trained head
    torch.testing.assert_close(continued.classifier.weight, model.classifier.weight)
    assert not torch.equal(
        cross_encoder_from(model, pooling="cls").classifier.weight, model.classifier.weight
    )
    scores = cross_encoder_scores(model, loaded_tokenizer, "cat", [TEXTS[2], TEXTS[0]], max_length=32)
    assert scores[1] > scores[0]


def test_search_cli_on_a_text_file(tiny, tmp_path, capsys):
    from lmforge.cli import main

    tokenizer, encoder = tiny
    meta = {"tokenizer": tokenizer.to_dict(), "tokenizer_fingerprint": tokenizer.fingerprint()}
    encoder.save_checkpoint(tmp_path / "enc", meta=meta)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n\n")
    args = [
        "search",
        "--corpus",
        str(corpus),
        "--model",
        str(tmp_path / "enc"),
        "--index",
        str(tmp_path / "ix"),
    ]
    assert main([*args, "the cat", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1. [cosine ")
    assert (tmp_path / "ix" / "index.json").is_file()
    assert main([*args, "the cat", "--approximate", "-k", "5"]) == 0  # the saved index is loaded
    assert len(capsys.readouterr().out.splitlines()) == 5
    # bad inputs: an empty query, an empty corpus, an index built by another model
    assert main([*args, "  "]) == 2
    assert "non-empty QUERY" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert main(["search", "x", "--corpus", str(empty), "--model", str(tmp_path / "enc")]) == 2
    assert "corpus is empty" in capsys.readouterr().err
    torch.manual_seed(1)
    other = BERT(BERTConfig(vocab_size=len(tokenizer.vocab), block_size=64, n_layer=1, n_head=2, n_embd=8))
    other.save_checkpoint(tmp_path / "other", meta=meta)
    assert main(["search", "x", "--model", str(tmp_path / "other"), "--index", str(tmp_path / "ix")]) == 2
    assert "the index was built with model" in capsys.readouterr().err
