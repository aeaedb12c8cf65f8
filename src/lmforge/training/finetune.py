"""Fine-tuning runs: classification, supervised fine-tuning (SFT), DPO and distillation, each one readable
function that builds its batches and objective and hands them to the shared `run_training` wiring.

What they share with pretraining is everything numeric: the optimizer and LR schedule, gradient
accumulation weighted by scored targets, clipping, the run directory (config.toml, metrics.csv, plots/,
its lock), periodic evaluation and checkpoints. What each adds is only its data and its loss:

- `run_classify`: a `GPTClassifier` on the model (`finetune.trainable`: head, last-k, all or lora);
  cross-entropy on the class; at the end accuracy, per-class precision / recall / F1 and a confusion
  matrix on the held-out split (`evaluation/classification.py`).
- `run_sft`: conversations through the model's chat format; next-token loss on the assistant's tokens
  only (`data/finetune_data.render_conversation`).
- `run_dpo`: a batch is B chosen rows then the B rejected rows of the same prompts; the loss is
  `objectives.dpo_loss` against a frozen copy of the starting model (so step 0 scores ln 2).
- `run_distill`: next-token cross-entropy mixed with `objectives.distillation_loss` against a frozen
  teacher that shares the tokenizer (`finetune.teacher_weight` 0 trains the same student alone).

With `finetune.lora_rank > 0` the model trains LoRA adapters (attention and MLP) instead of all weights;
the run then writes only its final model (merged, `model/`), since a checkpoint of an adapted model is
not a plain GPT checkpoint. Every run ends by writing `model/`: a GPT checkpoint (plus `head.safetensors`
and the class names in meta.json for a classifier) that `lmforge chat`, `generate` and `classify` read.

Deliberately not here: reading and validating data (`lmforge.data.finetune_data`), the losses
(`objectives.py`), argument parsing (`cli/finetune.py`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.data import finetune_data as fd
from lmforge.errors import ConfigError, FormatError, check, is_int, is_number
from lmforge.fileio import atomic_write_json, load_safetensors, save_safetensors
from lmforge.models.gpt import GPT, IGNORE_INDEX
from lmforge.training.config import OptimSection, TrainSection
from lmforge.training.objectives import distillation_loss, dpo_loss, sequence_logprobs

TASKS = ("classify", "sft", "dpo", "distill")
HEAD_FILE = "head.safetensors"


@dataclass
class FinetuneSection:
    # "rotten-tomatoes" (classify, distill), "chatterbot" (sft), or a JSONL file of the task's shape
    data: str = "rotten-tomatoes"
    # class names of a {"text", "label"} JSONL file (classify); rotten-tomatoes is ["rotten", "fresh"]
    classes: list[str] = field(default_factory=lambda: list(fd.SENTIMENT_CLASSES))
    # tokens a text keeps (classify, distill): the rest is cut
    max_tokens: int = 64
    # share of the examples held out for the final scores (and evaluation during training)
    test_fraction: float = 0.1
    # seed of the train / held-out split
    split_seed: int = 0
    # classify: "head", "last-k", "all" (set_trainable); lora_rank > 0 overrides it with "lora"
    trainable: str = "all"
    # classify: "last" or "mean" pooling
    pooling: str = "last"
    # LoRA rank on attention and MLP projections; 0 trains the weights themselves
    lora_rank: int = 0
    # LoRA alpha (the update is scaled by alpha / rank)
    lora_alpha: float = 16.0
    # dpo: the beta of the DPO loss
    beta: float = 0.1
    # distill: the teacher checkpoint directory (same tokenizer as the student)
    teacher: str = ""
    # distill: loss = (1 - w) * cross-entropy + w * T^2 KL(teacher || student); 0 = no teacher
    teacher_weight: float = 0.5
    # distill: the softmax temperature T
    temperature: float = 2.0

    def __post_init__(self) -> None:
        def rule(ok: bool, name: str, text: str) -> None:
            check(ok, f"finetune.{name}", getattr(self, name), text)

        rule(
            isinstance(self.data, str) and bool(self.data),
            "data",
            "use rotten-tomatoes, chatterbot or a path",
        )
        rule(
            isinstance(self.classes, list)
            and len(self.classes) >= 2
            and all(isinstance(c, str) and c for c in self.classes)
            and len(set(self.classes)) == len(self.classes),
            "classes",
            "use a list of two or more distinct names",
        )
        rule(is_int(self.max_tokens, 1), "max_tokens", "use an integer >= 1")
        rule(is_number(self.test_fraction) and 0 < self.test_fraction < 1, "test_fraction", "use 0 < f < 1")
        rule(is_int(self.split_seed, 0), "split_seed", "use an integer >= 0")
        rule(
            self.trainable in ("head", "last-k", "all", "lora"), "trainable", "use head, last-k, all or lora"
        )
        rule(self.pooling in ("last", "mean"), "pooling", "use last or mean")
        rule(is_int(self.lora_rank, 0), "lora_rank", "use an integer >= 0 (0 = no LoRA)")
        rule(is_number(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "use a positive number")
        rule(is_number(self.beta) and self.beta > 0, "beta", "use a positive number")
        rule(isinstance(self.teacher, str), "teacher", "use a checkpoint directory")
        rule(is_number(self.teacher_weight) and 0 <= self.teacher_weight <= 1, "teacher_weight", "use 0..1")
        rule(is_number(self.temperature) and self.temperature > 0, "temperature", "use a positive number")


@dataclass
class FinetuneConfig:
    """configs/finetune-*.toml: [finetune] plus the trainer's [optim] and [train] (the model comes from
    --ckpt or --model)."""

    finetune: FinetuneSection
    optim: OptimSection
    train: TrainSection


# ---------------------------------------------------------------------------------------------------
# shared pieces


def plain_gpt(model: GPT) -> GPT:
    """The model with any LoRA adapters folded in, as a plain GPT (a new module when it had adapters) on
    the model's device and in its dtype (a bf16 model stays bf16, so a head beside it still fits)."""
    from lmforge.models.lora import lora_modules, merge_lora

    if not lora_modules(model):
        return model
    merge_lora(model)
    weights = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    like = model.transformer.wte.weight
    plain = GPT(model.config).to(device=like.device, dtype=like.dtype)
    plain.load_state_dict(weights)
    return plain


def _maybe_lora(model: nn.Module, task: FinetuneSection) -> bool:
    """Apply LoRA (attention + MLP) when `lora_rank > 0`; returns whether it did."""
    if task.lora_rank == 0:
        return False
    from lmforge.models.lora import apply_lora

    apply_lora(model, rank=task.lora_rank, alpha=task.lora_alpha, targets=["attn", "mlp"])
    return True


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout of the model to 0, in place (the `nn.Dropout` layers and attention's dropout
    probability). DPO needs it, as trl's `disable_dropout` does: a policy with dropout active would differ
    from its eval-mode reference at step 0, and the loss would not start at ln 2."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return model


def pad_id_of(tokenizer: Any) -> int:
    """Padding is the end-of-text id: plain text never encodes to it, so `x != pad` marks real tokens."""
    if tokenizer.eot_id is None:
        raise ConfigError("fine-tuning needs a tokenizer with an end-of-text token (used as padding)")
    return int(tokenizer.eot_id)


def _batches_of(rows: Sequence[Any], collate: Callable, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows in order as tensor batches (for evaluation)."""
    out = []
    for start in range(0, len(rows), size):
        x, y = collate(rows[start : start + size])
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
    return out


def _finish(model: GPT, run_dir: Path, meta: dict[str, Any]) -> Path:
    model = plain_gpt(model)
    model.save_checkpoint(run_dir / "model", meta=meta)
    return run_dir / "model"


def _prepare(config: FinetuneConfig, lora: bool) -> None:
    if lora:
        config.train.checkpoint = False  # see the module docstring: only the merged final model is written


# ---------------------------------------------------------------------------------------------------
# classification


def classification_examples(task: FinetuneSection) -> list[fd.LabelledText]:
    if task.data == "rotten-tomatoes":
        if task.classes != list(fd.SENTIMENT_CLASSES):
            raise ConfigError(f"finetune.classes of rotten-tomatoes are {list(fd.SENTIMENT_CLASSES)}")
        return fd.read_rotten_tomatoes()
    return fd.read_labelled_jsonl(task.data, task.classes)


def run_classify(
    config: FinetuneConfig,
    model: GPT,
    tokenizer: Any,
    meta: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a classifier on the model; score it on the held-out split; write model/, results.json and
    plots/confusion.png into the run dir. Returns results.json's content."""
    from lmforge.evaluation.classification import (
        class_probabilities,
        classification_report,
        plot_confusion,
        report_table,
    )
    from lmforge.models.classifier import GPTClassifier, set_trainable
    from lmforge.training.trainer import run_training

    task, run_dir = config.finetune, Path(config.train.out_dir)
    pad_id = pad_id_of(tokenizer)
    train, test = fd.split_examples(
        classification_examples(task), test_fraction=task.test_fraction, seed=task.split_seed
    )
    classifier = GPTClassifier.from_lm(model, len(task.classes), task.pooling)
    mode = "lora" if task.lora_rank else task.trainable
    set_trainable(classifier, mode, rank=task.lora_rank or 8, alpha=task.lora_alpha)
    config.train.checkpoint = False  # a classifier is written once, at the end, as model/
    trained = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    log(f"{len(train):,} training and {len(test):,} held-out texts; training {trained:,} parameters ({mode})")

    def collate(rows: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
        return fd.pad_labelled(rows, pad_id=pad_id)

    batches = fd.RowBatches(
        fd.encode_labelled(tokenizer, train, max_tokens=task.max_tokens),
        collate,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
    )
    test_rows = fd.encode_labelled(tokenizer, test, max_tokens=task.max_tokens)

    def objective(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m(x, y, attention_mask=x != pad_id)[1]

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        losses, correct = [], 0
        for x, y in _batches_of(test_rows, collate, 64):
            logits, loss = m(x, y, attention_mask=x != pad_id)
            losses.append(float(loss) * len(y))
            correct += int((logits.argmax(-1) == y).sum())
        return {"loss": sum(losses) / len(test_rows), "accuracy": correct / len(test_rows)}

    trainer, result = run_training(
        config, classifier, batches, evaluate=evaluate, objective=objective, overwrite=overwrite
    )
    classifier.backbone = plain_gpt(classifier.backbone)
    classifier.eval()
    probabilities = class_probabilities(
        classifier, tokenizer, [e.text for e in test], max_tokens=task.max_tokens, pad_id=pad_id
    )
    report = classification_report([e.label for e in test], probabilities.argmax(1).tolist(), task.classes)
    log("held-out split:\n" + report_table(report))
    plot_confusion(
        np.asarray(report["confusion"]),
        task.classes,
        run_dir / "plots" / "confusion.png",
        title=f"{mode}: {report['accuracy']:.1%}",
    )
    save_classifier(
        classifier,
        run_dir / "model",
        meta={k: v for k, v in meta.items() if k not in ("format_version", "model", "config")},
        classes=task.classes,
        max_tokens=task.max_tokens,
    )
    results = {
        "task": "classify",
        "trainable": mode,
        "trained_parameters": trained,
        "steps": result.step,
        **report,
    }
    atomic_write_json(run_dir / "results.json", results)
    log(f"wrote {run_dir / 'model'}, results.json and plots/confusion.png")
    return results


def save_classifier(
    classifier: Any, directory: Path, *, meta: dict[str, Any], classes: Sequence[str], max_tokens: int
) -> None:
    """The backbone as a GPT checkpoint whose meta.json names the classes, and the head beside it."""
    info = {"classes": list(classes), "pooling": classifier.pooling, "max_tokens": max_tokens}
    classifier.backbone.save_checkpoint(directory, meta=meta | {"classifier": info})
    head = {
        "weight": classifier.head.weight.detach().contiguous(),
        "bias": classifier.head.bias.detach().contiguous(),
    }
    save_safetensors(directory / HEAD_FILE, head)


def load_classifier(directory: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """`save_classifier`'s output -> (GPTClassifier in eval mode, tokenizer, meta["classifier"])."""
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.models.classifier import GPTClassifier

    directory = Path(directory)
    gpt, tokenizer, meta = load_checkpoint(directory)
    info = meta.get("classifier")
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list) or len(info["classes"]) < 2:
        raise FormatError(
            directory / "meta.json",
            "not a classifier: no 'classifier' with its 'classes' "
            "(train one with 'lmforge finetune classify')",
        )
    classifier = GPTClassifier.from_lm(gpt, len(info["classes"]), info.get("pooling", "last"))
    head = load_safetensors(directory / HEAD_FILE, what="classifier head")
    expected = {name: tuple(t.shape) for name, t in classifier.head.state_dict().items()}
    if {name: tuple(t.shape) for name, t in head.items()} != expected:
        raise FormatError(directory / HEAD_FILE, f"expected tensors {expected}")
    classifier.head.load_state_dict(head)
    return classifier.eval(), tokenizer, info


# ---------------------------------------------------------------------------------------------------
# supervised fine-tuning


def sft_conversations(task: FinetuneSection) -> list[list[fd.Message]]:
    return fd.read_chatterbot() if task.data == "chatterbot" else fd.read_sft_jsonl(task.data)


def run_sft(
    config: FinetuneConfig,
    model: GPT,
    tokenizer: Any,
    chat: Any,
    meta: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Next-token loss on the assistant's tokens of the conversations, rendered by `chat` (the model's
    chat format). Writes model/ (a checkpoint `lmforge chat` reads, with the same chat template)."""
    from lmforge.evaluation.metrics import evaluate_lm
    from lmforge.training.trainer import run_training

    task, run_dir = config.finetune, Path(config.train.out_dir)
    pad_id = pad_id_of(tokenizer)
    train, test = fd.split_examples(
        sft_conversations(task), test_fraction=task.test_fraction, seed=task.split_seed
    )
    block = model.config.block_size
    train_rows, test_rows = (
        fd.sft_rows(chat, train, block_size=block),
        fd.sft_rows(chat, test, block_size=block),
    )
    log(f"training: {train_rows.report()}; held out: {test_rows.report()}")
    _prepare(config, _maybe_lora(model, task))

    def collate(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return fd.pad_rows(rows, pad_id=pad_id)

    batches = fd.RowBatches(
        train_rows.rows, collate, batch_size=config.train.batch_size, seed=config.train.seed
    )
    held_out = _batches_of(test_rows.rows, collate, 32)
    keep = {k: v for k, v in meta.items() if k not in ("format_version", "model", "config")}
    trainer, result = run_training(
        config,
        model,
        batches,
        evaluate=lambda m: {"loss": evaluate_lm(m, held_out)["loss"]},
        checkpoint_meta=keep,
        overwrite=overwrite,
    )
    final = _finish(model, run_dir, keep)
    results = {
        "task": "sft",
        "steps": result.step,
        "held_out_loss": result.last_eval["loss"] if result.last_eval else None,
        "train_conversations": len(train_rows.rows),
        "skipped": train_rows.skipped + test_rows.skipped,
    }
    atomic_write_json(run_dir / "results.json", results)
    log(f"wrote {final} (chat with it: lmforge chat --ckpt {final})")
    return results


# ---------------------------------------------------------------------------------------------------
# preference optimization


def completion_row(tokenizer: Any, prompt: str, response: str) -> tuple[np.ndarray, np.ndarray]:
    """tokens = prompt, response, end-of-text; targets score the response and the end only.

    Example: prompt ids [p1, p2], response [r1] -> tokens [p1, p2, r1, END], targets [-100, r1, END].
    """
    prompt_ids = tokenizer.encode_ordinary(prompt)
    tokens = np.asarray(
        prompt_ids + tokenizer.encode_ordinary(response) + [pad_id_of(tokenizer)], dtype=np.int64
    )
    targets = tokens[1:].copy()
    targets[: max(len(prompt_ids) - 1, 0)] = IGNORE_INDEX
    return tokens, targets


def preference_rows(
    tokenizer: Any, pairs: Sequence[fd.PreferencePair], *, block_size: int
) -> tuple[list[tuple[Any, Any]], int]:
    """(chosen row, rejected row) per pair that fits the context, and how many pairs did not."""
    rows, skipped = [], 0
    for pair in pairs:
        chosen = completion_row(tokenizer, pair.prompt, pair.chosen)
        rejected = completion_row(tokenizer, pair.prompt, pair.rejected)
        if max(len(chosen[0]), len(rejected[0])) > block_size + 1:
            skipped += 1
            continue
        rows.append((chosen, rejected))
    if not rows:
        raise ConfigError(f"no preference pair fits a context of {block_size} tokens")
    return rows, skipped


def dpo_objective(
    reference: nn.Module, *, beta: float
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The DPO loss of a batch whose first half are chosen rows and second half the rejected rows of the
    same prompts, against the frozen `reference`."""

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mask = y != IGNORE_INDEX  # (2B, T)
        logps = sequence_logprobs(model(x)[0], y, mask)  # (2B,)
        with torch.no_grad():
            ref_logps = sequence_logprobs(reference(x)[0], y, mask)
        half = len(x) // 2
        return dpo_loss(logps[:half], logps[half:], ref_logps[:half], ref_logps[half:], beta=beta)[0]

    return objective


def run_dpo(
    config: FinetuneConfig,
    model: GPT,
    tokenizer: Any,
    meta: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """DPO on the JSONL pairs `finetune.data` against a frozen copy of the starting model."""
    from lmforge.training.trainer import run_training

    task, run_dir = config.finetune, Path(config.train.out_dir)
    pad_id = pad_id_of(tokenizer)
    pairs = fd.read_preference_jsonl(task.data)
    train, test = fd.split_examples(pairs, test_fraction=task.test_fraction, seed=task.split_seed)
    block = model.config.block_size
    (train_rows, skipped), (test_rows, test_skipped) = (
        preference_rows(tokenizer, p, block_size=block) for p in (train, test)
    )
    log(
        f"{len(train_rows):,} training and {len(test_rows):,} held-out pairs "
        f"({skipped + test_skipped} longer than the context skipped)"
    )
    disable_dropout(model)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    _prepare(config, _maybe_lora(model, task))
    objective = dpo_objective(reference, beta=task.beta)

    def collate(rows: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
        return fd.pad_rows([c for c, _ in rows] + [r for _, r in rows], pad_id=pad_id)

    held_out = _batches_of(test_rows, collate, 16)

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        losses, wins = [], 0
        for x, y in held_out:
            losses.append(float(objective(m, x, y)) * (len(x) // 2))
            mask = y != IGNORE_INDEX
            margin = sequence_logprobs(m(x)[0], y, mask) - sequence_logprobs(reference(x)[0], y, mask)
            half = len(x) // 2
            wins += int((margin[:half] > margin[half:]).sum())
        return {"loss": sum(losses) / len(test_rows), "reward_accuracy": wins / len(test_rows)}

    batches = fd.RowBatches(train_rows, collate, batch_size=config.train.batch_size, seed=config.train.seed)
    keep = {k: v for k, v in meta.items() if k not in ("format_version", "model", "config")}
    trainer, result = run_training(
        config,
        model,
        batches,
        evaluate=evaluate,
        objective=objective,
        checkpoint_meta=keep,
        overwrite=overwrite,
    )
    first_loss = next(row["loss"] for row in trainer.history if row["split"] == "train")
    final = _finish(model, run_dir, keep)
    results = {
        "task": "dpo",
        "steps": result.step,
        "first_train_loss": first_loss,
        "ln2": math.log(2),
        "held_out": result.last_eval,
    }
    atomic_write_json(run_dir / "results.json", results)
    log(f"first training loss {first_loss:.6f} (ln 2 = {math.log(2):.6f}); wrote {final}")
    return results


# ---------------------------------------------------------------------------------------------------
# distillation


def text_rows(
    tokenizer: Any, texts: Sequence[str], *, max_tokens: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A language-modelling row per text: its first `max_tokens` tokens and the end-of-text id, every
    next token scored."""
    rows = []
    for ids in tokenizer.encode_ordinary_batch(list(texts)):
        tokens = np.asarray(ids[:max_tokens] + [pad_id_of(tokenizer)], dtype=np.int64)
        rows.append((tokens, tokens[1:].copy()))
    return rows


def distill_objective(teacher: nn.Module | None, *, weight: float, temperature: float) -> Callable:
    """(1 - weight) * cross-entropy + weight * distillation_loss on the scored positions; the plain
    cross-entropy without a teacher."""

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, ce = model(x, y)
        if teacher is None or weight == 0:
            return ce
        with torch.no_grad():
            teacher_logits = teacher(x)[0]
        soft = distillation_loss(logits, teacher_logits, temperature, mask=y != IGNORE_INDEX)
        return (1 - weight) * ce + weight * soft

    return objective


def run_distill(
    config: FinetuneConfig,
    model: GPT,
    tokenizer: Any,
    meta: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Language modelling on the texts of `finetune.data` (movie reviews by default) with the teacher's
    soft targets mixed in; the held-out score is the plain next-token loss, teacher or not."""
    from lmforge.evaluation.metrics import evaluate_lm
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training.trainer import run_training

    task, run_dir = config.finetune, Path(config.train.out_dir)
    teacher = None
    if task.teacher_weight > 0:
        if not task.teacher:
            raise ConfigError(
                "finetune.teacher: give the teacher's checkpoint directory (or teacher_weight=0)"
            )
        teacher, teacher_tokenizer, _ = load_checkpoint(task.teacher)
        if teacher_tokenizer.fingerprint() != tokenizer.fingerprint():
            raise ConfigError(f"finetune.teacher={task.teacher}: its tokenizer differs from the student's")
        teacher.requires_grad_(False)
    texts = (
        [e.text for e in classification_examples(task)]
        if task.data == "rotten-tomatoes"
        else [e.text for e in fd.read_labelled_jsonl(task.data, task.classes)]
    )
    train, test = fd.split_examples(texts, test_fraction=task.test_fraction, seed=task.split_seed)
    width = min(task.max_tokens, model.config.block_size - 1)
    train_rows, test_rows = (text_rows(tokenizer, t, max_tokens=width) for t in (train, test))
    _prepare(config, _maybe_lora(model, task))
    pad_id = pad_id_of(tokenizer)

    def collate(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return fd.pad_rows(rows, pad_id=pad_id)

    held_out = _batches_of(test_rows, collate, 64)
    batches = fd.RowBatches(train_rows, collate, batch_size=config.train.batch_size, seed=config.train.seed)
    objective = distill_objective(teacher, weight=task.teacher_weight, temperature=task.temperature)
    keep = {k: v for k, v in meta.items() if k not in ("format_version", "model", "config")}
    log(
        f"{len(train_rows):,} training and {len(test_rows):,} held-out texts; "
        f"teacher: {task.teacher or 'none'}"
    )
    trainer, result = run_training(
        config,
        model,
        batches,
        evaluate=lambda m: {"loss": evaluate_lm(m, held_out)["loss"]},
        checkpoint_meta=keep,
        objective=objective,
        overwrite=overwrite,
    )
    final = _finish(model, run_dir, keep)
    results = {
        "task": "distill",
        "teacher": task.teacher or None,
        "teacher_weight": task.teacher_weight,
        "steps": result.step,
        "held_out_loss": result.last_eval["loss"] if result.last_eval else None,
    }
    atomic_write_json(run_dir / "results.json", results)
    log(f"held-out next-token loss {results['held_out_loss']:.4f}; wrote {final}")
    return results
