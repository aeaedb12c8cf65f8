"""Training word2vec: skip-gram with negative sampling, as word2vec.c and gensim train it.

The steps, each a function of its own:

1. `corpus_sentences`: text -> lists of lowercase words, one list per line (a window never crosses a
   line; a Wikipedia lead is one line, a verse line of a play is one).
2. `build_vocab`: words seen at least `min_count` times, most frequent first.
3. `keep_probabilities`: subsampling of frequent words. With t = sample · (total count) and f the
   count of a word, it is kept with probability min(1, (√(f/t) + 1) · t/f) (word2vec.c's formula, which
   gensim shares; the paper's 1 - √(t/f) is its simpler ancestor). Example: sample=1e-3, total=1,000,000
   -> t=1,000; a word seen 100,000 times is kept with (√100 + 1) · 0.01 = 0.11; one seen 1,000 times
   with (1 + 1) · 1 -> 1 (always).
4. `noise_distribution`: negatives are drawn from the unigram distribution raised to 0.75 (word2vec.c
   fills a table of 1e8 slots in these proportions; we keep its cumulative sum and sample with
   `searchsorted`, which draws from the same distribution without the table's rounding).
5. `skipgram_pairs`: each epoch drops words by subsampling, then for every center word draws a reduced
   window b uniform in [0, window) and pairs it with the words within window - b on each side
   ("dynamic window": near words are used more often than far ones, in expectation weight
   (window - d + 1) / window at distance d).
6. `train_word2vec`: SGD over shuffled batches of pairs with K negatives each, the learning rate
   decaying linearly from `lr` to `min_lr` over all pairs of all epochs (as word2vec.c and gensim).

Batching is the one departure from word2vec.c (one pair at a time, Hogwild threads): B pairs share one
SGD step (`SkipGram.sgd_step`, the gradients written out), so a word occurring twice in a batch gets
both gradients at once. With B in the thousands and frequent words subsampled this changes little
(BENCHMARKS.md compares with gensim).

This loop is not `Trainer`: there are no checkpoints or evaluation during training, and the unit is a
word pair, not a token window. Deliberately not here: the model and the saved vectors
(`lmforge.models.word2vec`), similarity benchmarks (`lmforge.evaluation.word_similarity`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import regex
import torch

from lmforge.errors import DataError, check, is_int, is_number
from lmforge.models.word2vec import SkipGram, WordVectors
from lmforge.progress import progress_bar

# Letters, digits and in-word apostrophes or hyphens: "don't", "twenty-one", "1990s".
WORD_PATTERN = regex.compile(r"[\p{L}\p{N}]+(?:['’\-][\p{L}\p{N}]+)*")


@dataclass
class Word2VecConfig:
    # size of each word vector
    dim: int = 100
    # the largest distance between a center and a context word (the dynamic window draws 1..window)
    window: int = 5
    # noise words per observed pair (K)
    negative: int = 5
    # words seen fewer times are dropped from the vocabulary
    min_count: int = 5
    # subsampling threshold (word2vec.c's -sample); 0 keeps every word
    sample: float = 1e-3
    # passes over the corpus
    epochs: int = 5
    # starting SGD learning rate (word2vec.c's skip-gram default)
    lr: float = 0.025
    # the rate it decays to linearly by the end of the last epoch
    min_lr: float = 0.0001
    # word pairs per SGD step
    batch_size: int = 1024
    # exponent of the noise distribution
    noise_power: float = 0.75
    # seed of the initialisation, subsampling, windows, negatives and batch order
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negative", "min_count", "epochs", "batch_size"):
            check(
                is_int(getattr(self, name), 1), f"word2vec.{name}", getattr(self, name), "use an integer >= 1"
            )
        check(is_int(self.seed, 0), "word2vec.seed", self.seed, "use an integer >= 0")
        check(
            is_number(self.sample) and self.sample >= 0,
            "word2vec.sample",
            self.sample,
            "use 0 or a small number like 1e-3",
        )
        check(is_number(self.lr) and self.lr > 0, "word2vec.lr", self.lr, "use a positive number")
        check(
            is_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
            "word2vec.min_lr",
            self.min_lr,
            "use a number between 0 and word2vec.lr",
        )
        check(
            is_number(self.noise_power) and self.noise_power >= 0,
            "word2vec.noise_power",
            self.noise_power,
            "use a number >= 0",
        )


def corpus_sentences(texts: Iterable[str]) -> list[list[str]]:
    """Texts -> one list of lowercase words per non-empty line.

    Example: ["The cat.\\n\\nA dog's bone"] -> [["the", "cat"], ["a", "dog's", "bone"]]
    """
    sentences = []
    for text in texts:
        for line in text.lower().splitlines():
            words = WORD_PATTERN.findall(line)
            if words:
                sentences.append(words)
    return sentences


def build_vocab(sentences: Iterable[list[str]], min_count: int) -> tuple[list[str], list[int]]:
    """(words, counts) of the words seen at least `min_count` times, most frequent first (ties: first
    seen)."""
    counts = Counter(word for sentence in sentences for word in sentence)
    kept = [(word, n) for word, n in counts.items() if n >= min_count]  # Counter keeps first-seen order
    kept.sort(key=lambda item: -item[1])
    if not kept:
        raise DataError(
            f"no word occurs {min_count} times or more in the corpus ({sum(counts.values()):,} words); "
            "use a larger corpus or a smaller --min-count"
        )
    return [w for w, _ in kept], [n for _, n in kept]


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Per word, the probability that subsampling keeps one occurrence (see the module docstring)."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample == 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1) * threshold / counts)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """P(w) ∝ count(w)^power. Example: counts [16, 1], power 0.75 -> [8, 1] / 9 = [0.889, 0.111]."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    return weights / weights.sum()


def skipgram_pairs(
    ids: np.ndarray, sentence_of: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(centers, contexts) of one pass with a dynamic window.

    ids (N,) are the word ids of the (already subsampled) corpus, sentence_of (N,) the sentence of each;
    pairs never cross sentences. Each center i draws b_i uniform in [0, window) and pairs with the words
    at distance d <= window - b_i on both sides. Example: ids [7, 8, 9] in one sentence, window 1 ->
    (7, 8), (8, 7), (8, 9), (9, 8).
    """
    reach = window - rng.integers(0, window, size=len(ids))  # (N,) each center's effective window
    centers, contexts = [], []
    for d in range(1, window + 1):
        left, right = np.arange(len(ids) - d), np.arange(d, len(ids))
        same = sentence_of[left] == sentence_of[right]
        forward = same & (reach[left] >= d)  # center left, context d to its right
        backward = same & (reach[right] >= d)  # center right, context d to its left
        centers += [ids[left[forward]], ids[right[backward]]]
        contexts += [ids[right[forward]], ids[left[backward]]]
    return np.concatenate(centers), np.concatenate(contexts)


def train_word2vec(
    sentences: list[list[str]],
    config: Word2VecConfig,
    *,
    corpus: str = "",
    log: Callable[[str], None] = print,
) -> WordVectors:
    """Train SGNS on tokenized sentences; returns the normalised input vectors."""
    words, counts = build_vocab(sentences, config.min_count)
    index = {w: i for i, w in enumerate(words)}
    encoded = [[index[w] for w in s if w in index] for s in sentences]
    ids = np.fromiter((i for s in encoded for i in s), dtype=np.int64)
    sentence_of = np.repeat(np.arange(len(encoded)), [len(s) for s in encoded])
    log(f"{len(sentences):,} sentences, {len(ids):,} words in a vocabulary of {len(words):,}")

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model = SkipGram(len(words), config.dim)
    keep = keep_probabilities(np.asarray(counts), config.sample)
    cumulative = torch.from_numpy(np.cumsum(noise_distribution(np.asarray(counts), config.noise_power)))
    generator = torch.Generator().manual_seed(config.seed)
    # the decay runs over the expected number of pairs, so the schedule is fixed before the first epoch
    expected_kept = float((keep * np.asarray(counts)).sum())
    pairs_per_word = config.window + 1  # 2 sides x mean reach (window + 1) / 2
    total_steps = max(1, math.ceil(config.epochs * expected_kept * pairs_per_word / config.batch_size))

    step, losses = 0, []
    # One thread: a step's tensors are a few hundred KB, too small for intra-op parallelism to pay, and
    # on a busy machine torch's worker threads spin-wait (measured 8x slower with 2 threads than with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with progress_bar(total=total_steps, desc="word2vec", unit="batch") as bar:
            for epoch in range(config.epochs):
                kept = rng.random(len(ids)) < keep[ids]
                centers, contexts = skipgram_pairs(ids[kept], sentence_of[kept], config.window, rng)
                order = torch.from_numpy(rng.permutation(len(centers)))
                centers, contexts = torch.from_numpy(centers)[order], torch.from_numpy(contexts)[order]
                epoch_loss, epoch_pairs = 0.0, 0
                for start in range(0, len(centers), config.batch_size):
                    c, o = (
                        centers[start : start + config.batch_size],
                        contexts[start : start + config.batch_size],
                    )
                    u = torch.rand(len(c), config.negative, generator=generator, dtype=torch.float64)
                    negatives = torch.searchsorted(cumulative, u).clamp_(max=len(words) - 1)  # (B, K)
                    lr = config.lr - (config.lr - config.min_lr) * min(1.0, step / total_steps)
                    epoch_loss += model.sgd_step(c, o, negatives, lr)
                    epoch_pairs, step = epoch_pairs + len(c), step + 1
                    bar.update(1)
                losses.append(epoch_loss / max(epoch_pairs, 1))
                log(
                    f"epoch {epoch + 1}/{config.epochs}: {epoch_pairs:,} pairs, "
                    f"loss per pair {losses[-1]:.4f}"
                )
    finally:
        torch.set_num_threads(threads)
    settings = {"corpus": corpus, **asdict(config), "loss_per_pair": losses}
    return WordVectors.from_matrix(words, counts, model.input_vectors.detach().numpy(), settings)
