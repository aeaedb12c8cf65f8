"""Training the cross-encoder re-ranker on query/passage pairs from the Wikipedia leads.

The pairs (`rerank_pairs`) come from `evaluation.retrieval.wiki_retrieval_set("train")`: each training
query (a lead's first sentence) with its passage (the rest of the lead) labelled 1, and as 0 the
`hard_negatives` passages BM25 ranks highest that are not its own (other leads that share its words:
the mistakes a first-stage retriever makes and a re-ranker exists to fix) plus `random_negatives`
other leads drawn at random. Queries of the test split never appear, neither as training queries nor
in the held-out pairs scored during training (those come from a slice of the training articles).

`run_rerank` is a fine-tuning run like `finetune.run_classify`: a `RowBatches` source of encoded pairs,
an objective (`cross_encoder.relevance_loss`, binary cross-entropy on the one logit), the shared
`run_training` wiring (optimizer, schedule, clipping, run directory, metrics.csv, plots), and at the end
the model written as a BERT checkpoint in `<out_dir>/model` with its tokenizer, which
`lmforge search --rerank` reads. A batch is x (B, 3, T) = ids, token types, attention mask stacked,
y (B,) the 0/1 labels as floats.

Deliberately not here: the model (`models/cross_encoder.py`), retrieval metrics (`evaluation/retrieval.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.data.finetune_data import RowBatches
from lmforge.errors import check, is_int, is_number
from lmforge.evaluation.retrieval import bm25_rankings, wiki_retrieval_set
from lmforge.fileio import atomic_write_json
from lmforge.models.bert import BERT
from lmforge.models.cross_encoder import cross_encoder_from, pair_inputs, relevance_logits, relevance_loss
from lmforge.training.config import OptimSection, TrainSection


@dataclass
class RerankSection:
    # training queries used (the first n of the train split's, in title order); 0 = all
    queries: int = 1000
    # negatives per query taken from BM25's top-ranked other passages
    hard_negatives: int = 2
    # negatives per query drawn at random among the other passages
    random_negatives: int = 1
    # tokens of [CLS] query [SEP] passage [SEP] kept (longest-first truncation)
    max_tokens: int = 256
    # training queries whose pairs are held out to score the model during training
    eval_queries: int = 50
    # share of the articles in the test split (the same split `lmforge search --evaluate` scores)
    test_fraction: float = 0.2
    # seed of the random negatives
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("queries", "hard_negatives", "random_negatives", "eval_queries", "seed"):
            check(
                is_int(getattr(self, name), 0), f"rerank.{name}", getattr(self, name), "use an integer >= 0"
            )
        check(is_int(self.max_tokens, 8), "rerank.max_tokens", self.max_tokens, "use an integer >= 8")
        check(
            self.hard_negatives + self.random_negatives >= 1,
            "rerank.hard_negatives",
            self.hard_negatives,
            "a re-ranker needs at least one negative per query (hard or random)",
        )
        check(
            is_number(self.test_fraction) and 0 < self.test_fraction < 1,
            "rerank.test_fraction",
            self.test_fraction,
            "use 0 < f < 1",
        )


@dataclass
class RerankConfig:
    """configs/rerank-wiki.toml: [rerank] plus the trainer's [optim] and [train]."""

    rerank: RerankSection
    optim: OptimSection
    train: TrainSection


Pair = tuple[str, str, float]  # (query, passage, label)


def rerank_pairs(task: RerankSection) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs) from the train split's queries (module docstring)."""
    data = wiki_retrieval_set("train", test_fraction=task.test_fraction)
    n = len(data.queries) if task.queries == 0 else min(task.queries + task.eval_queries, len(data.queries))
    queries, positives = data.queries[:n], data.positives[:n]
    ranked = bm25_rankings(queries, data.passages, task.hard_negatives + 1) if task.hard_negatives else None
    rng = np.random.default_rng(task.seed)
    pairs: list[list[Pair]] = []
    for q, (query, positive) in enumerate(zip(queries, positives, strict=True)):
        rows = [(query, data.passages[positive], 1.0)]
        if ranked is not None:
            hard = [int(p) for p in ranked[q] if p != positive][: task.hard_negatives]
            rows += [(query, data.passages[p], 0.0) for p in hard]
        taken = {positive, *(int(p) for p in (ranked[q] if ranked is not None else []))}
        while len(rows) < 1 + task.hard_negatives + task.random_negatives:
            p = int(rng.integers(len(data.passages)))
            if p not in taken:
                taken.add(p)
                rows.append((query, data.passages[p], 0.0))
        pairs.append(rows)
    held_out = min(task.eval_queries, len(pairs) - 1)
    train = [p for rows in pairs[held_out:] for p in rows]
    evaluation = [p for rows in pairs[:held_out] for p in rows]
    return train, evaluation


def pair_batch(tokenizer: Any, pairs: Sequence[Pair], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, 3, T) = ids, token types, attention mask; y (B,) float labels."""
    ids, types, mask = pair_inputs(
        tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], max_length=max_tokens
    )
    return torch.stack([ids, types, mask], dim=1).numpy(), np.asarray([p[2] for p in pairs], dtype=np.float32)


def pair_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The trainer's objective: binary cross-entropy of the relevance logits of x (B, 3, T)."""
    return relevance_loss(relevance_logits(model, x[:, 0], x[:, 1], x[:, 2]), y)


def run_rerank(
    config: RerankConfig,
    encoder: BERT,
    tokenizer: Any,
    meta: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a cross-encoder from `encoder`'s weights; write <out_dir>/model and results.json."""
    from lmforge.training.trainer import run_training

    task, run_dir = config.rerank, Path(config.train.out_dir)
    train, held_out = rerank_pairs(task)
    model = cross_encoder_from(encoder)
    config.train.checkpoint = False  # the re-ranker is written once, at the end, as model/
    log(
        f"{len(train):,} training pairs, {len(held_out):,} held-out pairs (1 relevant : "
        f"{task.hard_negatives} BM25 + {task.random_negatives} random negatives per query)"
    )
    batches = RowBatches(
        train,
        lambda rows: pair_batch(tokenizer, rows, task.max_tokens),
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(held_out), 32):
            x, y = (
                torch.from_numpy(a)
                for a in pair_batch(tokenizer, held_out[start : start + 32], task.max_tokens)
            )
            logits = relevance_logits(m, x[:, 0], x[:, 1], x[:, 2])
            loss_sum += float(relevance_loss(logits, y)) * len(y)
            correct += int(((logits > 0).float() == y).sum())
        return {"loss": loss_sum / len(held_out), "accuracy": correct / len(held_out)}

    trainer, result = run_training(
        config, model, batches, evaluate=evaluate, objective=pair_objective, overwrite=overwrite
    )
    model.eval()
    scores = evaluate(model)
    info = {"max_length": task.max_tokens, "trained_from": meta.get("builtin", ""), "pairs": len(train)}
    extra = {k: v for k, v in meta.items() if k in ("tokenizer", "tokenizer_fingerprint")}
    model.save_checkpoint(run_dir / "model", meta=extra | {"reranker": info})
    results = {"task": "rerank", "steps": result.step, "held_out": scores, **info}
    atomic_write_json(run_dir / "results.json", results)
    log(
        f"held-out pairs: loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.1%}; "
        f"wrote {run_dir / 'model'}"
    )
    return results
