"""word2vec: the SGNS loss and its hand-written gradients, subsampling, the noise distribution, dynamic
windows, Spearman against scipy, training on a tiny two-topic corpus, saved vectors, and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError, FormatError
from lmforge.evaluation.word_similarity import (
    evaluate_similarity,
    ranks,
    read_pairs,
    spearman,
)
from lmforge.models.word2vec import SkipGram, WordVectors
from lmforge.training.word2vec import (
    Word2VecConfig,
    build_vocab,
    corpus_sentences,
    keep_probabilities,
    noise_distribution,
    skipgram_pairs,
    train_word2vec,
)


def _tiny_model() -> SkipGram:
    """Words 0, 1, 2 with v_0 = [1, 0], u_1 = [0.5, 0.5], u_2 = [2, 1]."""
    model = SkipGram(3, 2)
    with torch.no_grad():
        model.input_vectors.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        model.output_vectors.copy_(torch.tensor([[0.0, 0.0], [0.5, 0.5], [2.0, 1.0]]))
    return model


def test_sgns_loss_and_step_by_hand():
    """Center 0, context 1, negative 2: u_1·v_0 = 0.5, u_2·v_0 = 2.
    L = -log σ(0.5) - log σ(-2) = 0.474077 + 2.126928 = 2.601005.
    σ(0.5) = 0.622459 -> g_pos = -0.377541; σ(2) = 0.880797 = g_neg.
    ∂L/∂v_0 = -0.377541 [0.5, 0.5] + 0.880797 [2, 1] = [1.572823, 0.692027]
    ∂L/∂u_1 = -0.377541 [1, 0];  ∂L/∂u_2 = 0.880797 [1, 0]
    After SGD with lr 0.1: v_0 = [0.842718, -0.069203], u_1 = [0.537754, 0.5], u_2 = [1.911920, 1]."""
    model = _tiny_model()
    c, o, n = torch.tensor([0]), torch.tensor([1]), torch.tensor([[2]])
    assert float(model.loss(c, o, n).detach()) == pytest.approx(2.601005, abs=1e-6)
    assert model.sgd_step(c, o, n, lr=0.1) == pytest.approx(2.601005, abs=1e-6)
    torch.testing.assert_close(model.input_vectors[0], torch.tensor([0.842718, -0.069203]), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.output_vectors[1], torch.tensor([0.537754, 0.5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.output_vectors[2], torch.tensor([1.911920, 1.0]), atol=1e-6, rtol=0)


def test_sgd_step_equals_autograd_with_repeated_words():
    """The hand-written gradients equal autograd's of the summed loss, words repeating in the batch."""
    torch.manual_seed(0)
    model = SkipGram(6, 4)
    with torch.no_grad():
        model.output_vectors.normal_()
    c = torch.tensor([0, 1, 0, 3])
    o = torch.tensor([1, 2, 1, 0])
    n = torch.tensor([[2, 5], [0, 0], [4, 1], [5, 3]])
    reference = SkipGram(6, 4)
    reference.load_state_dict(model.state_dict())
    reference.loss(c, o, n).backward()
    expected_in = reference.input_vectors.detach() - 0.05 * reference.input_vectors.grad
    expected_out = reference.output_vectors.detach() - 0.05 * reference.output_vectors.grad
    model.sgd_step(c, o, n, lr=0.05)
    torch.testing.assert_close(model.input_vectors.detach(), expected_in)
    torch.testing.assert_close(model.output_vectors.detach(), expected_out)


def test_subsampling_and_noise_by_hand():
    """sample 1e-3, total 1,000,000 -> t = 1,000. Kept: 100,000 -> (√100 + 1) · 0.01 = 0.11; 1,000 -> 1;
    899,000 -> (√899 + 1) · 1000 / 899,000 = 0.034464. Noise: [16, 1]^0.75 = [8, 1] -> [8/9, 1/9]."""
    keep = keep_probabilities(np.array([100_000, 1_000, 899_000]), 1e-3)
    np.testing.assert_allclose(keep, [0.11, 1.0, (math.sqrt(899) + 1) / 899], rtol=1e-9)
    np.testing.assert_allclose(keep_probabilities(np.array([5, 7]), 0), [1, 1])
    np.testing.assert_allclose(noise_distribution(np.array([16, 1])), [8 / 9, 1 / 9])


def test_skipgram_pairs_window_and_sentences():
    rng = np.random.default_rng(0)
    centers, contexts = skipgram_pairs(np.array([7, 8, 9]), np.zeros(3, dtype=int), 1, rng)
    assert sorted(zip(centers.tolist(), contexts.tolist(), strict=True)) == [(7, 8), (8, 7), (8, 9), (9, 8)]
    # a sentence boundary between 8 and 9: no pair crosses it
    centers, contexts = skipgram_pairs(np.array([7, 8, 9]), np.array([0, 0, 1]), 2, rng)
    assert sorted(zip(centers.tolist(), contexts.tolist(), strict=True)) == [(7, 8), (8, 7)]
    # dynamic window 2: distance 1 always, distance 2 when the draw is the full window (probability 1/2)
    ids = np.arange(20_000)
    centers, contexts = skipgram_pairs(ids, np.zeros(len(ids), dtype=int), 2, rng)
    distance = np.abs(centers - contexts)
    assert (distance == 2).sum() / (distance == 1).sum() == pytest.approx(0.5, abs=0.02)


def test_corpus_and_vocab():
    sentences = corpus_sentences(["The cat.\n\nA dog's bone, the CAT"])
    assert sentences == [["the", "cat"], ["a", "dog's", "bone", "the", "cat"]]
    assert build_vocab(sentences, 2) == (["the", "cat"], [2, 2])
    with pytest.raises(DataError, match="min-count"):
        build_vocab(sentences, 3)
    with pytest.raises(ConfigError, match="word2vec.window"):
        Word2VecConfig(window=0)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    np.testing.assert_allclose(ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_training_puts_related_words_closer():
    """Two topics whose words never share a sentence: after training, words of one topic are closer to
    each other than to the other topic's words."""
    rng = np.random.default_rng(0)
    topics = [["cat", "dog", "pet", "fur", "paw"], ["car", "road", "wheel", "engine", "fuel"]]
    texts = [" ".join(rng.choice(topics[i % 2], size=8)) for i in range(600)]
    config = Word2VecConfig(
        dim=16, window=3, negative=3, min_count=1, sample=0, epochs=3, lr=0.05, batch_size=256
    )
    vectors = train_word2vec(corpus_sentences(texts), config, log=lambda _: None)
    assert vectors.similarity("cat", "dog") > vectors.similarity("cat", "car") + 0.3
    assert vectors.similarity("road", "fuel") > vectors.similarity("road", "paw") + 0.3
    assert vectors.nearest("cat", 1)[0][0] in topics[0]


def test_analogy_and_save_load(tmp_path):
    """king - man + woman = queen exactly with these vectors (dimensions: royalty, male, female)."""
    words = ["king", "man", "woman", "queen", "apple"]
    matrix = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0.1, 0.1, 0.1]], dtype=np.float32)
    vectors = WordVectors.from_matrix(words, [5, 4, 3, 2, 1], matrix, {"corpus": "hand"})
    assert vectors.analogy("man", "king", "woman", 1)[0][0] == "queen"
    vectors.save(tmp_path)
    loaded = WordVectors.load(tmp_path)
    assert loaded.words == words and loaded.settings == {"corpus": "hand"}
    np.testing.assert_array_equal(loaded.vectors, vectors.vectors)
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        loaded.vector("pear")
    (tmp_path / "words.json").write_text('{"format": "lmforge-word-vectors", "words": ["a"], "counts": [1]}')
    with pytest.raises(FormatError, match="1 rows"):
        WordVectors.load(tmp_path)


def test_similarity_file_and_coverage(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("# comment\nking\tqueen\t8\nking\tapple\t1\nman\tpear\t3\n")
    pairs = read_pairs(path)
    vectors = WordVectors.from_matrix(
        ["king", "queen", "apple"], [1, 1, 1], np.array([[1, 0], [0.9, 0.1], [0, 1]]), {}
    )
    score = evaluate_similarity(vectors, pairs, "hand")
    assert (score.covered, score.total, score.spearman) == (2, 3, pytest.approx(1.0))
    path.write_text("king queen 8\n")
    with pytest.raises(FormatError, match="line 1"):
        read_pairs(path)


def test_cli_train_words_neighbors_analogy(tmp_path, capsys):
    from lmforge.cli import main

    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    topics = [["cat", "dog", "pet", "fur"], ["car", "road", "wheel", "fuel"]]
    corpus.write_text("\n".join(" ".join(rng.choice(topics[i % 2], size=6)) for i in range(200)))
    out = tmp_path / "words"
    args = ["embed", "train-words", "--corpus", str(corpus), "--out", str(out), "--dim", "8", "--epochs", "1"]
    assert main([*args, "--min-count", "1", "--sample", "0"]) == 0
    assert "wordsim353: Spearman" in capsys.readouterr().out  # pairs not covered still print a line
    assert main(["embed", "neighbors", str(out), "cat", "-k", "2"]) == 0
    assert capsys.readouterr().out.startswith("cat: ")
    assert main(["embed", "analogy", str(out), "cat", "dog", "car"]) == 0
    assert main(["embed", "neighbors", str(out), "zebra"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("...\n")
    assert main(["embed", "train-words", "--corpus", str(empty), "--out", str(out)]) == 2
    assert "no words" in capsys.readouterr().err
