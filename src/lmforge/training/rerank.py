"""Training the cross-encoder re-ranker on query/passage groups from the Wikipedia leads.

The groups (`rerank_groups`) come from `evaluation.retrieval.wiki_retrieval_set("train")`: each training
query (a lead's first sentence) with its passage (the rest of the lead) first, then as negatives the
`hard_negatives` passages BM25 ranks highest that are not its own (other leads that share its words:
the mistakes a first-stage retriever makes and a re-ranker exists to fix) and `random_negatives` other
leads drawn at random. Queries of the test split never appear, neither as training queries nor in the
held-out groups scored during training (those come from a slice of the training articles).

`run_rerank` is a fine-tuning run like `finetune.run_classify`: a `RowBatches` source of encoded groups,
an objective (`rerank.loss`: "listwise", the softmax cross-entropy over each group,
`cross_encoder.listwise_loss`; or "bce", binary cross-entropy on every pair, `relevance_loss`), the
shared `run_training` wiring (optimizer, schedule, clipping, run directory, metrics.csv, plots), and at
the end the model written as a BERT checkpoint in `<out_dir>/model` with its tokenizer, which
`lmforge search --rerank` reads. A batch is x (B, G, 3, T) = per query its G = 1 + k pairs' ids, token
types and attention masks, the relevant pair first; y (B,) the relevant pair's column (0). The
held-out score is ranking: the share of held-out queries whose passage outscores its group's negatives
(accuracy) and the mean reciprocal rank of the passage within its group (mrr).

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
from lmforge.errors import DataError, check, is_int, is_number
from lmforge.evaluation.retrieval import bm25_rankings, wiki_retrieval_set
from lmforge.fileio import atomic_write_json
from lmforge.models.bert import BERT, POOLINGS
from lmforge.models.cross_encoder import (
    cross_encoder_from,
    listwise_loss,
    pair_inputs,
    relevance_logits,
    relevance_loss,
)
from lmforge.training.config import OptimSection, TrainSection

LOSSES = ("listwise", "bce")


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
    # "listwise" (softmax cross-entropy over each query's 1 + k passages) or "bce" (per pair)
    loss: str = "listwise"
    # what the 1-logit head reads: "mean" (mean of the pair's hidden states, what a sentence-embedding
    # backbone such as all-MiniLM-L6-v2 was trained for) or "cls" (BERT's pooler on [CLS])
    pooling: str = "mean"

    def __post_init__(self) -> None:
        for name in ("queries", "hard_negatives", "random_negatives", "eval_queries", "seed"):
            check(
                is_int(getattr(self, name), 0), f"rerank.{name}", getattr(self, name), "use an integer >= 0"
            )
        check(self.pooling in POOLINGS, "rerank.pooling", self.pooling, f"choose one of {POOLINGS}")
        check(self.loss in LOSSES, "rerank.loss", self.loss, f"choose one of {', '.join(LOSSES)}")
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


Group = tuple[str, list[str]]  # (query, [relevant passage, negative, ...])


def rerank_groups(task: RerankSection) -> tuple[list[Group], list[Group]]:
    """(training groups, held-out groups) from the train split's queries (module docstring)."""
    data = wiki_retrieval_set("train", test_fraction=task.test_fraction)
    n = len(data.queries) if task.queries == 0 else min(task.queries + task.eval_queries, len(data.queries))
    queries, positives = data.queries[:n], data.positives[:n]
    ranked = bm25_rankings(queries, data.passages, task.hard_negatives + 1) if task.hard_negatives else None
    rng = np.random.default_rng(task.seed)
    groups: list[Group] = []
    for q, (query, positive) in enumerate(zip(queries, positives, strict=True)):
        chosen = [positive]
        if ranked is not None:
            chosen += [int(p) for p in ranked[q] if p != positive][: task.hard_negatives]
        taken = {positive, *(int(p) for p in (ranked[q] if ranked is not None else []))}
        while len(chosen) < 1 + task.hard_negatives + task.random_negatives:
            p = int(rng.integers(len(data.passages)))
            if p not in taken:
                taken.add(p)
                chosen.append(p)
        groups.append((query, [data.passages[p] for p in chosen]))
    held_out = min(task.eval_queries, len(groups) - 1)
    return groups[held_out:], groups[:held_out]


def group_batch(tokenizer: Any, groups: Sequence[Group], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, G, 3, T) = ids, token types, attention mask of each query's G pairs; y (B,) zeros (the
    relevant passage's column)."""
    width = {len(passages) for _, passages in groups}
    if len(width) != 1:
        raise DataError(f"every query needs as many passages; got groups of sizes {sorted(width)}")
    (G,) = width
    ids, types, mask = pair_inputs(
        tokenizer,
        [query for query, passages in groups for _ in passages],
        [p for _, passages in groups for p in passages],
        max_length=max_tokens,
    )  # each (B * G, T)
    x = torch.stack([ids, types, mask], dim=1).view(len(groups), G, 3, -1)
    return x.numpy(), np.zeros(len(groups), dtype=np.int64)


def group_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (B, G, 3, T) -> relevance logits (B, G)."""
    B, G, _, T = x.shape
    flat = x.reshape(B * G, 3, T)
    return relevance_logits(model, flat[:, 0], flat[:, 1], flat[:, 2]).view(B, G)


def group_loss(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss of (B, G) logits whose column 0 is the relevant passage."""
    if loss == "listwise":
        return listwise_loss(logits)
    labels = torch.zeros_like(logits, dtype=torch.float32)
    labels[:, 0] = 1.0
    return relevance_loss(logits.flatten(), labels.flatten())


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
    train, held_out = rerank_groups(task)
    model = cross_encoder_from(encoder, pooling=task.pooling)
    config.train.checkpoint = False  # the re-ranker is written once, at the end, as model/
    log(
        f"{len(train):,} training queries, {len(held_out):,} held-out queries (1 relevant : "
        f"{task.hard_negatives} BM25 + {task.random_negatives} random negatives each; {task.loss} loss)"
    )
    batches = RowBatches(
        train,
        lambda rows: group_batch(tokenizer, rows, task.max_tokens),
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        loss_sum, correct, reciprocal = 0.0, 0, 0.0
        for start in range(0, len(held_out), 8):
            x, _ = group_batch(tokenizer, held_out[start : start + 8], task.max_tokens)
            logits = group_logits(m, torch.from_numpy(x))  # (B, G)
            loss_sum += float(group_loss(logits, task.loss)) * len(logits)
            rank = 1 + (logits[:, 1:] > logits[:, :1]).sum(1)  # (B,): the relevant passage's rank, ties won
            correct += int((rank == 1).sum())
            reciprocal += float((1.0 / rank).sum())
        n = len(held_out)
        return {"loss": loss_sum / n, "accuracy": correct / n, "mrr": reciprocal / n}

    trainer, result = run_training(
        config,
        model,
        batches,
        evaluate=evaluate,
        objective=lambda m, x, y: group_loss(group_logits(m, x), task.loss),
        overwrite=overwrite,
    )
    model.eval()
    scores = evaluate(model)
    info = {
        "max_length": task.max_tokens,
        "trained_from": meta.get("builtin", ""),
        "queries": len(train),
        "loss": task.loss,
    }
    extra = {k: v for k, v in meta.items() if k in ("tokenizer", "tokenizer_fingerprint")}
    model.save_checkpoint(run_dir / "model", meta=extra | {"reranker": info})
    results = {"task": "rerank", "steps": result.step, "held_out": scores, **info}
    atomic_write_json(run_dir / "results.json", results)
    log(
        f"held-out queries: loss {scores['loss']:.4f}, passage ranked first {scores['accuracy']:.1%}, "
        f"MRR {scores['mrr']:.3f}; "
        f"wrote {run_dir / 'model'}"
    )
    return results
