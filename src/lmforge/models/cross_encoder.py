"""The cross-encoder re-ranker: a BERT with a 1-logit head on `[CLS] query [SEP] passage [SEP]`.

A cross-encoder reads a query and a passage in one sequence (segment A = query, token type 0; segment B
= passage, token type 1), so every layer's attention relates the two; BERT's pooler (tanh(dense(h[CLS])))
and a Linear(C, 1) give one relevance logit, σ(logit) the probability that the passage answers the
query. This is `BertForSequenceClassification` with num_labels = 1, which sentence-transformers'
`CrossEncoder` trains with binary cross-entropy; here it is `BERT.classify` with `num_labels=1`.

`cross_encoder_from(bert)` starts one from an encoder's weights (all of them, the pooler included; a
fresh head N(0, init_std), zero bias; no MLM head); `pair_inputs` tokenizes query/passage pairs (longest-
first truncation to `max_length`, as HF tokenizers do); `relevance_loss` is the binary cross-entropy
the re-ranker is trained with.

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


def cross_encoder_from(encoder: BERT) -> BERT:
    """A BERT with the encoder's weights, no MLM head and a new 1-logit head on the pooler."""
    if encoder.pooler is None:
        raise ConfigError("a cross-encoder reads BERT's pooler; this encoder has none (pooler = false)")
    config = dataclasses.replace(encoder.config, num_labels=1, mlm_head=False)
    model = BERT(config)
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("mlm.", "classifier."))}
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


def relevance_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits (B,) against labels (B,) in {0, 1}.

    Example: logit 0 for a relevant passage costs -log σ(0) = ln 2 = 0.693; logit 2 for an irrelevant
    one costs -log(1 - σ(2)) = log(1 + e^2) = 2.127.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
