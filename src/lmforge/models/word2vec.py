"""Static word embeddings: the skip-gram model with negative sampling (SGNS) and the trained vectors.

`SkipGram(vocab_size, dim)` holds the two matrices of word2vec (Mikolov et al., 2013, "Distributed
Representations of Words and Phrases and their Compositionality"): `input_vectors` (syn0 in word2vec.c,
the vectors we keep) and `output_vectors` (syn1neg, the context side). For a center word c, an observed
context word o and K noise words n_1..n_K its loss is

    L = -log σ(u_o · v_c) - Σ_k log σ(-u_{n_k} · v_c)        v = input vector, u = output vector

whose gradients are the ones word2vec.c applies by hand:

    ∂L/∂v_c = (σ(u_o·v_c) - 1) u_o + Σ_k σ(u_{n_k}·v_c) u_{n_k}
    ∂L/∂u_o = (σ(u_o·v_c) - 1) v_c          ∂L/∂u_{n_k} = σ(u_{n_k}·v_c) v_c

Initialisation as word2vec.c and gensim: input vectors uniform in [-0.5/dim, 0.5/dim], output vectors 0.

`WordVectors` is what training leaves: the words (most frequent first), their counts and the unit-length
input vectors, with cosine nearest neighbours and 3CosAdd analogies ("man is to king as woman is to ?"
-> nearest to king - man + woman, the three question words excluded). Saved as `vectors.safetensors` +
`words.json`.

Deliberately not here: reading a corpus, subsampling, the noise distribution and the training loop
(`lmforge.training.word2vec`); similarity benchmarks (`lmforge.evaluation.word_similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors

VECTORS_FILE = "vectors.safetensors"
WORDS_FILE = "words.json"
FORMAT = "lmforge-word-vectors"


class SkipGram(nn.Module):
    """The two embedding matrices of SGNS. `loss` is the formula above through autograd; `sgd_step`
    applies the hand-written gradients in place (what training uses: no autograd graph, and only the
    rows of the batch's words are touched)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.input_vectors = nn.Parameter(torch.empty(vocab_size, dim).uniform_(-0.5 / dim, 0.5 / dim))
        self.output_vectors = nn.Parameter(torch.zeros(vocab_size, dim))

    def loss(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """centers (B,), contexts (B,), negatives (B, K) word ids -> the loss summed over the B pairs.

        A sum, not a mean: with SGD at learning rate α each pair moves its vectors by α times its own
        gradient, as word2vec.c's per-pair updates do.
        """
        v = self.input_vectors[centers]  # (B, D)
        positive = (self.output_vectors[contexts] * v).sum(-1)  # (B,)
        negative = torch.bmm(self.output_vectors[negatives], v.unsqueeze(2)).squeeze(2)  # (B, K)
        return -(F.logsigmoid(positive).sum() + F.logsigmoid(-negative).sum())

    @torch.no_grad()
    def sgd_step(
        self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor, lr: float
    ) -> float:
        """One SGD step on the summed loss with the gradients of the module docstring; returns the loss.

        All gradients are computed from the vectors before the step, then added with `index_add_` (a word
        that occurs several times in the batch receives the sum of its gradients).
        """
        B, K = negatives.shape
        v = self.input_vectors[centers]  # (B, D)
        u_pos = self.output_vectors[contexts]  # (B, D)
        u_neg = self.output_vectors[negatives]  # (B, K, D)
        positive = (u_pos * v).sum(-1)  # (B,)
        negative = (u_neg * v[:, None, :]).sum(-1)  # (B, K)
        loss = -(F.logsigmoid(positive).sum() + F.logsigmoid(-negative).sum())
        g_pos = torch.sigmoid(positive) - 1  # (B,)   ∂L/∂(u_o·v)
        g_neg = torch.sigmoid(negative)  # (B, K)     ∂L/∂(u_n·v)
        grad_v = g_pos[:, None] * u_pos + torch.bmm(g_neg.unsqueeze(1), u_neg).squeeze(1)  # (B, D)
        grad_u_pos = g_pos[:, None] * v  # (B, D)
        grad_u_neg = g_neg[:, :, None] * v[:, None, :]  # (B, K, D)
        self.input_vectors.index_add_(0, centers, grad_v, alpha=-lr)
        self.output_vectors.index_add_(0, contexts, grad_u_pos, alpha=-lr)
        self.output_vectors.index_add_(0, negatives.reshape(-1), grad_u_neg.reshape(B * K, -1), alpha=-lr)
        return float(loss)


@dataclass
class WordVectors:
    """Trained static embeddings: `words[i]` has `counts[i]` occurrences and unit vector `vectors[i]`."""

    words: list[str]  # most frequent first
    counts: list[int]
    vectors: np.ndarray  # (V, D) float32, each row L2-normalised
    settings: dict[str, Any]  # how they were trained (the training config and corpus), saved with them

    def __post_init__(self) -> None:
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def from_matrix(
        cls, words: list[str], counts: list[int], matrix: np.ndarray, settings: dict[str, Any]
    ) -> WordVectors:
        """Normalise the rows of a raw (V, D) input-vector matrix."""
        matrix = np.asarray(matrix, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return cls(list(words), list(counts), matrix / np.maximum(norms, 1e-12), dict(settings))

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def vector(self, word: str) -> np.ndarray:
        if word not in self.index:
            raise ConfigError(f"{word!r} is not in the vocabulary ({len(self.words):,} words)")
        return self.vectors[self.index[word]]

    def similarity(self, first: str, second: str) -> float:
        """Cosine similarity of two words."""
        return float(self.vector(first) @ self.vector(second))

    def nearest(
        self, query: str | np.ndarray, k: int = 10, *, exclude: tuple[str, ...] = ()
    ) -> list[tuple[str, float]]:
        """The k words closest by cosine to a word (itself excluded) or to a vector."""
        if isinstance(query, str):
            exclude = (*exclude, query)
            query = self.vector(query)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = self.vectors @ query  # (V,)
        for word in exclude:
            if word in self.index:
                scores[self.index[word]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.words[i], float(scores[i])) for i in top]

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """ "a is to b as c is to ?": the words nearest to b - a + c (3CosAdd), a, b, c excluded.

        Example: analogy("man", "king", "woman") -> [("queen", ...), ...] on a good model.
        """
        target = self.vector(b) - self.vector(a) + self.vector(c)
        return self.nearest(target, k, exclude=(a, b, c))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(directory / VECTORS_FILE, {"vectors": torch.from_numpy(self.vectors)})
        info = {"format": FORMAT, "words": self.words, "counts": self.counts, "settings": self.settings}
        atomic_write_json(directory / WORDS_FILE, info, indent=None)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> WordVectors:
        """Read what `save` wrote, checking that the words and the vectors belong together."""
        directory = Path(directory)
        info = read_json(directory / WORDS_FILE, what="word list")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise FormatError(
                directory / WORDS_FILE,
                f"not {FORMAT!r} data (train vectors with 'lmforge embed train-words')",
            )
        words, counts = info.get("words"), info.get("counts")
        if not isinstance(words, list) or not isinstance(counts, list) or len(words) != len(counts):
            raise FormatError(directory / WORDS_FILE, "'words' and 'counts' must be lists of the same length")
        tensors = load_safetensors(directory / VECTORS_FILE, what="word vectors")
        matrix = tensors.get("vectors")
        if matrix is None or matrix.ndim != 2 or matrix.shape[0] != len(words):
            shape = None if matrix is None else tuple(matrix.shape)
            raise FormatError(
                directory / VECTORS_FILE, f"expected a 'vectors' tensor of {len(words)} rows, found {shape}"
            )
        return cls(words, counts, matrix.float().numpy(), info.get("settings") or {})
