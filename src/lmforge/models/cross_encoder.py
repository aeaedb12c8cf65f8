"""The cross-encoder re-ranker: a BERT with a 1-logit head on `[CLS] query [SEP] passage [SEP]`.

A cross-encoder reads a query and a passage in one sequence (segment A = query, token type 0; segment B
= passage, token type 1), so every layer's attention relates the two; BERT's pooler (tanh(dense(h[CLS])))
and a Linear(C, 1) give one relevance logit, σ(logit) the probability that the passage answers the
query. This is `BertForSequenceClassification` with num_labels = 1, which sentence-transformers'
`CrossEncoder` trains with binary cross-entropy; here it is `BERT.classify` with `num_labels=1`.
With `pooling="mean"` the head reads the mean of the pair's last hidden states instead of the pooler:
the right choice for a backbone trained as a mean-pooling sentence encoder (all-MiniLM-L6-v2), whose
[CLS] state and pooler were never trained to summarise anything (such a model cannot be exported to
transformers' class, which reads the pooler).

`cross_encoder_from(bert)` starts one from an encoder's weights (all of them, the pooler included; a
fresh head N(0, init_std), zero bias; no MLM head); `pair_inputs` tokenizes query/passage pairs (longest-
first truncation to `max_length`, as HF tokenizers do). Two losses train it: `listwise_loss`, the
softmax cross-entropy over one query's relevant passage and its k negatives scored together (the
"n-pair" / InfoNCE form sentence-transformers' CrossEncoder `CrossEntropyLoss` uses), and
`relevance_loss`, binary cross-entropy on each pair alone. The listwise loss asks only that the relevant
passage score above the others of its group, which is what re-ranking needs; binary cross-entropy also
asks for calibrated probabilities and with one relevant pair in k + 1 its first easy minimum is the base
rate (a constant logit of log(1/k)), where a fresh head can sit for hundreds of steps.

Deliberately not here: training pairs and the training run (`training/rerank.py`), retrieve-then-rerank
(`inference/search.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError
from lmforge.models.bert import BERT


def cross_encoder_from(encoder: BERT, *, pooling: str = "cls") -> BERT:
    """A BERT with the encoder's weights, no MLM head and a new 1-logit head on the pooler ("cls") or on
    the mean of the pair's hidden states ("mean"). A re-ranker with the same pooling keeps its head, so
    training continues from it."""
    if pooling == "cls" and encoder.pooler is None:
        raise ConfigError("a cross-encoder reads BERT's pooler; this encoder has none (pooler = false)")
    config = dataclasses.replace(encoder.config, num_labels=1, mlm_head=False, classifier_pooling=pooling)
    model = BERT(config)
    continuing = is_cross_encoder(encoder) and encoder.config.classifier_pooling == pooling
    dropped = ("mlm.",) if continuing else ("mlm.", "classifier.")
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith(dropped)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(name.startswith("classifier.") for name in missing), (missing, unexpected)
    return model.to(next(encoder.parameters()).dtype)


def is_cross_encoder(model: Any) -> bool:
    return isinstance(model, BERT) and model.config.num_labels == 1


def pair_inputs(
    tokenizer: Any, queries: Sequence[str], passages: Sequence[str], *, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] query [SEP] passage [SEP] per pair -> ids, token types, attention mask, each (B, T) int64,
    right-padded to the longest pair of the batch."""
    if getattr(tokenizer, "kind", None) != "wordpiece":
        raise ConfigError(
            f"a cross-encoder needs a WordPiece tokenizer, not {getattr(tokenizer, 'kind', '?')}"
        )
    if len(queries) != len(passages) or not queries:
        raise DataError(
            f"pair_inputs needs as many queries as passages (>= 1), got {len(queries)} and {len(passages)}"
        )
    encodings = tokenizer.encode_batch(
        list(queries), list(passages), max_length=max_length, truncation=True, padding="longest"
    )
    return (
        torch.tensor([e.ids for e in encodings]),
        torch.tensor([e.token_type_ids for e in encodings]),
        torch.tensor([e.attention_mask for e in encodings]),
    )


def relevance_logits(
    model: BERT, ids: torch.Tensor, token_types: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) pair inputs -> (B,) relevance logits."""
    return model.classify(ids, token_type_ids=token_types, attention_mask=mask)[0][:, 0]


def listwise_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over queries of -log softmax(logits[q])[0]: logits (Q, 1 + k), each row one query's relevant
    passage (column 0) and its k negatives.

    Example: a row [2, 0, 0] costs -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.2395; a row of equal
    logits costs log(1 + k), the loss of not ranking at all (log 4 = 1.386 for three negatives).
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise DataError(f"listwise_loss needs (queries, 1 + k >= 2) logits, got shape {tuple(logits.shape)}")
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the relevant passage
    return F.cross_entropy(logits.float(), target)


def relevance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits (B,) against labels (B,) in {0, 1}.

    Example: logit 0 for a relevant passage costs -log σ(0) = ln 2 = 0.693; logit 2 for an irrelevant
    one costs -log(1 - σ(2)) = log(1 + e^2) = 2.127.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
