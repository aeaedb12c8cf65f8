"""Teach a small GPT to add, subtract and multiply: problems, tokenizer, masked batches, exact-match eval.

The recipe, in the order it runs (`run_recipe`, driven by `lmforge recipe arithmetic`):

1. Problems. `Problem(a, "+", b)` is written `123+456=` (the prompt) followed by its completion `579`
   and the end token. Both operands of an n-digit problem have exactly n digits (1-digit operands are
   0..9); subtraction keeps a >= b so that answers are never negative. Two optional formats:
   - reversed answers (`reverse=true`): `123+456=975`, least significant digit first. The model then
     writes digits in the order a person computes them, so each one depends on the two operand digits
     of its column and one carry, already written, instead of on a carry it has not produced yet; this
     is the best known trick for teaching addition to small transformers (Lee et al. 2023, "Teaching
     Arithmetic to Small Transformers"; Shen et al. 2023, "Positional Description Matters").
   - a scratchpad (`scratchpad=true`): the column work comes first, in brackets, then the answer
     (`12+39=[2+9+0=11,1+3+1=5]51`, `35-18=[5-8-0=-3,3-1-1=1]17`, `12*34=[12*4=48,12*30=360]408`);
     Nye et al. 2021, "Show Your Work".
2. Splits. For every (operator, digit count) "bucket" the problems are drawn without replacement from
   one seeded RNG, then cut into test, validation and training sets, so the sets cannot overlap, and
   `check_disjoint` verifies it anyway. Held-out sets take at most a tenth of a bucket (there are only
   100 one-digit additions). Out-of-distribution buckets use more digits than any training problem.
3. Tokenizer. `arithmetic_tokenizer()` is a `CharTokenizer`: one token per digit, operator, `=` and
   scratchpad character, plus `<|endoftext|>` (ends an answer) and `<|pad|>` (fills rows).
4. Batches. `ProblemBatches` yields one problem per row, `y = -100` except where the target is an
   answer token or the end token: the operands are random, so grading the model on predicting them
   would only add noise to the loss (the answer-only loss mask).
5. Evaluation. Greedy decoding of every prompt of a bucket in one batch with lmforge's inference
   `Engine`, then exact match of the final answer; `accuracy_table` prints one row per bucket and
   `plot_accuracy` draws validation accuracy against the training step.

Deliberately not here: the model (lmforge.models), the training loop and optimizer (lmforge.training),
the generation loop (lmforge.inference); this file only feeds them and grades the result. Problems are
never written to disk: the seed and the config regenerate them exactly.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.errors import ConfigError, DataError, check, is_int
from lmforge.evaluation.metrics import evaluate_lm
from lmforge.fileio import atomic_write_json
from lmforge.models.gpt import IGNORE_INDEX
from lmforge.tokenizers.special import ENDOFTEXT
from lmforge.training.config import ModelSection, OptimSection, TrainSection

if TYPE_CHECKING:
    from lmforge.tokenizers import CharTokenizer, Tokenizer

OPERATORS = ("+", "-", "*")
END = ENDOFTEXT  # ends every answer
PAD = "<|pad|>"
# Every character a problem, an answer or a scratchpad can contain; one token each.
CHARS = "0123456789+-*=[],"


# ---------------------------------------------------------------------------------------------------
# problems and their text


@dataclass(frozen=True, order=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def digits(self) -> int:
        """Digit count of the operands (both have the same)."""
        return len(str(self.a))

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]

    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    def answer(self, *, reverse: bool) -> str:
        """The answer as the model writes it: `579`, or `975` reversed."""
        text = str(self.result)
        return text[::-1] if reverse else text

    def completion(self, *, reverse: bool, scratchpad: bool) -> str:
        """Everything after `=` except the end token: optional `[scratchpad]`, then the answer."""
        work = f"[{','.join(_scratchpad_steps(self))}]" if scratchpad else ""
        return work + self.answer(reverse=reverse)


def _scratchpad_steps(problem: Problem) -> list[str]:
    """The column work, least significant column first.

    Examples: 12+39 -> ["2+9+0=11", "1+3+1=5"] (digit, digit, carry in = column total; the carry out is
    the total's tens digit); 35-18 -> ["5-8-0=-3", "3-1-1=1"] (a negative column total borrows 1 from
    the next column); 12*34 -> ["12*4=48", "12*30=360"] (partial products, summed in the answer).
    """
    a, b = problem.a, problem.b
    if problem.op == "*":
        digits_b = str(b)[::-1]
        return [f"{a}*{int(d) * 10**i}={a * int(d) * 10**i}" for i, d in enumerate(digits_b)]
    steps, carry = [], 0
    for da, db in zip(str(a)[::-1], str(b)[::-1], strict=True):
        if problem.op == "+":
            total = int(da) + int(db) + carry
            steps.append(f"{da}+{db}+{carry}={total}")
            carry = total // 10
        else:
            total = int(da) - int(db) - carry
            steps.append(f"{da}-{db}-{carry}={total}")
            carry = 1 if total < 0 else 0
    return steps


def final_answer(completion: str, *, reverse: bool) -> str:
    """The answer in ordinary digit order from a completion: the text after a scratchpad, un-reversed.

    Example: final_answer("[2+9+0=11,1+3+1=5]15", reverse=True) -> "51".
    """
    answer = completion.rpartition("]")[2]
    return answer[::-1] if reverse else answer


# ---------------------------------------------------------------------------------------------------
# config


@dataclass
class ArithmeticConfig:
    # operators to train and test on, any of "+", "-", "*"
    operators: list[str] = field(default_factory=lambda: ["+"])
    # operand digit counts seen in training; each (operator, digit count) pair is one bucket
    train_digits: list[int] = field(default_factory=lambda: [1, 2, 3])
    # digit counts tested but never trained on (out of distribution); must exceed every train digit count
    ood_digits: list[int] = field(default_factory=lambda: [4])
    # write answers least significant digit first (the known trick; see the module docstring)
    reverse: bool = True
    # write the column work in brackets before the answer
    scratchpad: bool = False
    # most training problems per bucket (fewer when the bucket is small)
    train_size: int = 100_000
    # most validation problems per bucket, scored during training for the accuracy curve
    val_size: int = 500
    # most test problems per bucket (in-distribution and out-of-distribution), scored once at the end
    test_size: int = 2_000
    # seed of the problem generator (the training run has its own seed for weights and batch order)
    seed: int = 0

    def __post_init__(self) -> None:
        def rule(ok: bool, name: str, text: str) -> None:
            check(ok, f"arithmetic.{name}", getattr(self, name), text)

        rule(
            _is_list(self.operators, str)
            and set(self.operators) <= set(OPERATORS)
            and len(set(self.operators)) == len(self.operators)
            and bool(self.operators),
            "operators",
            f"use a non-empty list of distinct operators from {list(OPERATORS)}",
        )
        rule(
            _is_list(self.train_digits, int)
            and bool(self.train_digits)
            and min(self.train_digits) >= 1
            and len(set(self.train_digits)) == len(self.train_digits),
            "train_digits",
            "use a non-empty list of distinct digit counts >= 1",
        )
        rule(
            _is_list(self.ood_digits, int)
            and all(d > max(self.train_digits) for d in self.ood_digits)
            and len(set(self.ood_digits)) == len(self.ood_digits),
            "ood_digits",
            "use distinct digit counts larger than every train digit count (or [])",
        )
        rule(max(self.train_digits + self.ood_digits) <= 9, "train_digits", "use at most 9 digits")
        for name in ("train_size", "val_size", "test_size"):
            rule(is_int(getattr(self, name), 1), name, "use an integer >= 1")
        for name in ("reverse", "scratchpad"):
            rule(isinstance(getattr(self, name), bool), name, "use true or false")
        rule(is_int(self.seed), "seed", "use an integer")

    def train_buckets(self) -> list[tuple[str, int]]:
        return [(op, n) for op in self.operators for n in self.train_digits]

    def ood_buckets(self) -> list[tuple[str, int]]:
        return [(op, n) for op in self.operators for n in self.ood_digits]


def _is_list(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


# ---------------------------------------------------------------------------------------------------
# splits


@dataclass
class Splits:
    """Problems per bucket: `train[(op, n)]`, `val[(op, n)]`, `test[(op, n)]` (test includes OOD buckets)."""

    train: dict[tuple[str, int], list[Problem]]
    val: dict[tuple[str, int], list[Problem]]
    test: dict[tuple[str, int], list[Problem]]
    ood: set[tuple[str, int]]  # buckets of `test` never trained on


def _operand_range(n: int) -> tuple[int, int]:
    """Smallest and largest n-digit operand: 1 -> (0, 9), 3 -> (100, 999)."""
    return (0 if n == 1 else 10 ** (n - 1)), 10**n - 1


def bucket_size(op: str, n: int) -> int:
    """Distinct problems with two n-digit operands; "-" keeps a >= b. Example: ("-", 1) -> 10*11/2 = 55."""
    low, high = _operand_range(n)
    count = high - low + 1
    return count * (count + 1) // 2 if op == "-" else count * count


def _problem_at(op: str, n: int, index: int) -> Problem:
    """The bucket's problem number `index`, 0 <= index < bucket_size(op, n), with operands in order.

    "+" and "*" enumerate all (a, b) pairs row by row. "-" enumerates the pairs with a >= b as a
    triangle: row r holds r + 1 problems, so index k is in row r = floor((sqrt(8k + 1) - 1) / 2);
    e.g. for 1 digit, k = 0 -> 0-0, k = 1 -> 1-0, k = 2 -> 1-1, k = 3 -> 2-0.
    """
    low, high = _operand_range(n)
    if op == "-":
        row = (math.isqrt(8 * index + 1) - 1) // 2
        return Problem(low + row, op, low + index - row * (row + 1) // 2)
    width = high - low + 1
    return Problem(low + index // width, op, low + index % width)


def make_splits(config: ArithmeticConfig) -> Splits:
    """Deterministic train/val/test problems for every bucket (same config, same problems)."""
    splits = Splits(train={}, val={}, test={}, ood=set(config.ood_buckets()))
    for op, n in config.train_buckets() + config.ood_buckets():
        # One RNG per bucket, seeded by a string (hashed with SHA-512 by `random`, so stable across runs
        # and Python processes): adding a bucket to the config does not change the others.
        rng = random.Random(f"arithmetic:{config.seed}:{op}:{n}")
        size = bucket_size(op, n)
        if (op, n) in splits.ood:
            picks = rng.sample(range(size), min(config.test_size, size))
            splits.test[(op, n)] = [_problem_at(op, n, k) for k in picks]
            continue
        held = max(1, size // 10)  # held-out sets take at most a tenth of a bucket each
        n_test, n_val = min(config.test_size, held), min(config.val_size, held)
        n_train = min(config.train_size, size - n_test - n_val)
        # Sampling indices without replacement is what makes the three sets disjoint.
        picks = rng.sample(range(size), n_test + n_val + n_train)
        problems = [_problem_at(op, n, k) for k in picks]
        splits.test[(op, n)] = problems[:n_test]
        splits.val[(op, n)] = problems[n_test : n_test + n_val]
        splits.train[(op, n)] = problems[n_test + n_val :]
    check_disjoint(splits)
    return splits


def check_disjoint(splits: Splits) -> None:
    """Raise `DataError` if a problem appears twice in one split or in two splits."""
    seen: dict[Problem, str] = {}
    for name in ("train", "val", "test"):
        for problems in getattr(splits, name).values():
            for problem in problems:
                if problem in seen:
                    where = "twice in " + name if seen[problem] == name else f"in {seen[problem]} and {name}"
                    raise DataError(f"arithmetic splits overlap: {problem.prompt()} is {where}")
                seen[problem] = name


# ---------------------------------------------------------------------------------------------------
# tokenizer and batches


def arithmetic_tokenizer() -> CharTokenizer:
    """The task's `CharTokenizer`: ids 0..16 for the characters of `CHARS`, then the end and pad tokens."""
    from lmforge.tokenizers import CharTokenizer

    return CharTokenizer(CHARS, special_tokens=(END, PAD))


def encode_problems(
    problems: Sequence[Problem], tokenizer: Tokenizer, *, reverse: bool, scratchpad: bool, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token rows and loss targets for whole problems, one problem per row.

    Returns `tokens` (N, length + 1) int64 (the problem, its end token, then pad tokens) and `targets`
    (N, length) int64: `targets[i, t]` is `tokens[i, t + 1]` where that token belongs to the completion
    or is the end token, else IGNORE_INDEX. A batch is then x = tokens[:, :-1], y = targets.

    Worked example, "12+34=" with completion "46" (not reversed), length 9: tokens are
    1 2 + 3 4 = 4 6 END PAD; the prompt has 6 tokens, so targets t = 5, 6, 7 (predicting the tokens at
    positions 6, 7, 8) are 4, 6, END and the other six targets are -100.
    """
    end_id, pad_id = tokenizer.special_tokens[END], tokenizer.special_tokens[PAD]
    prompts = tokenizer.encode_ordinary_batch([p.prompt() for p in problems])
    completions = tokenizer.encode_ordinary_batch(
        [p.completion(reverse=reverse, scratchpad=scratchpad) for p in problems]
    )
    tokens = np.full((len(problems), length + 1), pad_id, dtype=np.int64)
    targets = np.full((len(problems), length), IGNORE_INDEX, dtype=np.int64)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        row = prompt + completion + [end_id]
        if len(row) > length + 1:
            raise DataError(f"problem {problems[i].prompt()} needs {len(row)} tokens; rows hold {length + 1}")
        tokens[i, : len(row)] = row
        start, stop = len(prompt) - 1, len(row) - 1  # targets predicting completion tokens and END
        targets[i, start:stop] = row[start + 1 : stop + 1]
    return tokens, targets


class ProblemBatches:
    """Random batches of training problems: `next_batch() -> (x, y)`, int64 tensors of shape (B, T).

    Each row draws a bucket uniformly (so 3-digit problems are not drowned by 1-digit ones, nor the
    reverse), then a problem of that bucket uniformly. Batch k is a pure function of (seed, k), so
    `state_dict()` is just the batch counter and a resumed run draws the same batches.
    """

    def __init__(
        self, buckets: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]], *, batch_size: int, seed: int
    ):
        if not buckets or any(len(tokens) == 0 for tokens, _ in buckets.values()):
            raise DataError("ProblemBatches needs at least one non-empty bucket")
        self.buckets = list(buckets.values())  # [(tokens (N, T+1), targets (N, T))]
        self.batch_size = batch_size
        self.seed = seed
        self.batches_drawn = 0

    def next_batch(self) -> tuple[Any, Any]:
        import torch

        rng = np.random.default_rng([self.seed, self.batches_drawn])
        self.batches_drawn += 1
        which = rng.integers(len(self.buckets), size=self.batch_size)
        x_rows, y_rows = [], []
        for bucket in range(len(self.buckets)):
            tokens, targets = self.buckets[bucket]
            rows = rng.integers(len(tokens), size=int((which == bucket).sum()))
            x_rows.append(tokens[rows, :-1])
            y_rows.append(targets[rows])
        order = rng.permutation(self.batch_size)
        x = np.concatenate(x_rows)[order]
        y = np.concatenate(y_rows)[order]
        return torch.from_numpy(x), torch.from_numpy(y)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.batches_drawn = int(state["seed"]), int(state["batches_drawn"])


# ---------------------------------------------------------------------------------------------------
# evaluation


# prompts (token ids), max_new_tokens -> the new ids of each row, ending with the end id if it stopped
Generate = Callable[[list[list[int]], int], list[list[int]]]


def greedy_generator(model: Any, *, end_id: int) -> Generate:
    """Greedy decoding with lmforge's `Engine` (KV cache, all prompts of a call in one batch)."""
    from lmforge.inference import Engine, SamplingParams

    engine, greedy = Engine(model), SamplingParams(temperature=0.0)
    return lambda prompts, max_new_tokens: engine.generate(
        prompts, greedy, max_new_tokens=max_new_tokens, stop_ids=[end_id]
    )


def exact_match(
    generate: Generate, problems: Sequence[Problem], tokenizer: Tokenizer, *, reverse: bool, scratchpad: bool
) -> float:
    """Fraction of problems whose generated final answer equals the true result exactly.

    Generation may run to the longest completion of the set plus its end token; a row that has not
    emitted the end token by then is wrong (as is one that ends early or writes another number).
    """
    if not problems:
        return math.nan
    end_id = tokenizer.special_tokens[END]
    longest = max(len(p.completion(reverse=reverse, scratchpad=scratchpad)) for p in problems)
    generated = generate(tokenizer.encode_ordinary_batch([p.prompt() for p in problems]), longest + 1)
    correct = 0
    for problem, ids in zip(problems, generated, strict=True):
        if ids and ids[-1] == end_id:
            correct += final_answer(tokenizer.decode(ids[:-1]), reverse=reverse) == str(problem.result)
    return correct / len(problems)


def evaluate_buckets(
    model: Any,
    sets: dict[tuple[str, int], list[Problem]],
    tokenizer: Tokenizer,
    *,
    reverse: bool,
    scratchpad: bool,
) -> dict[tuple[str, int], float]:
    """Exact match per bucket, decoding greedily with the model."""
    generate = greedy_generator(model, end_id=tokenizer.special_tokens[END])
    return {
        bucket: exact_match(generate, problems, tokenizer, reverse=reverse, scratchpad=scratchpad)
        for bucket, problems in sets.items()
    }


def accuracy_table(
    accuracy: dict[tuple[str, int], float],
    counts: dict[tuple[str, int], int],
    *,
    ood: Iterable[tuple[str, int]],
) -> str:
    """A fixed-width table, one row per bucket, e.g. `+        3    train     2000     99.60%`."""
    ood = set(ood)
    lines = [f"{'operator':<9}{'digits':>6}  {'seen':<6}{'problems':>9}{'exact match':>13}"]
    for op, n in sorted(accuracy, key=lambda b: (OPERATORS.index(b[0]), b[1])):
        seen = "OOD" if (op, n) in ood else "train"
        lines.append(f"{op:<9}{n:>6}  {seen:<6}{counts[(op, n)]:>9}{accuracy[(op, n)]:>12.2%}")
    return "\n".join(lines)


def plot_accuracy(history: Sequence[dict[str, Any]], path: Any, *, title: str) -> None:
    """PNG of validation exact match against training step, one line per bucket.

    `history` rows are `{"step": int, "accuracy": {"+3": 0.98, ...}}` (as in accuracy.json).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in history[0]["accuracy"] if history else []:
        ax.plot(
            [h["step"] for h in history],
            [100 * h["accuracy"][name] for h in history],
            marker="o",
            markersize=3,
            label=f"{name[0]} {name[1:]}-digit",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("exact match on validation problems (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def bucket_name(bucket: tuple[str, int]) -> str:
    """("+", 3) -> "+3" (JSON keys and plot labels)."""
    return f"{bucket[0]}{bucket[1]}"


# ---------------------------------------------------------------------------------------------------
# the recipe's config file and the run


@dataclass
class RecipeConfig:
    """configs/arithmetic.toml: [arithmetic] (this file) plus the trainer's [model], [optim], [train].

    Read with `lmforge.training.config.load_config(path, sections=RecipeConfig)`, written with `to_toml`.
    """

    arithmetic: ArithmeticConfig
    model: ModelSection
    optim: OptimSection
    train: TrainSection


def problem_batches(tokens: np.ndarray, targets: np.ndarray, *, batch_size: int = 1000) -> Iterator[Any]:
    """The encoded problems in order as (x, y) batches, for `evaluate_lm`'s answer-only loss."""
    import torch

    for start in range(0, len(tokens), batch_size):
        yield (
            torch.from_numpy(tokens[start : start + batch_size, :-1]),
            torch.from_numpy(targets[start : start + batch_size]),
        )


def run_recipe(
    config: RecipeConfig, *, log: Callable[[str], None] = print, overwrite: bool = False
) -> dict[str, Any]:
    """Generate the problems, train a GPT with lmforge's trainer, test it; returns what results.json holds.

    Writes into `config.train.out_dir`: config.toml, tokenizer.json, the trainer's metrics.csv, plots/
    and checkpoints, plus plots/accuracy.png (validation exact match per bucket against step) and
    results.json (test exact match per bucket, training time, model size). A directory that already
    holds a run is refused unless `overwrite` (see `lmforge.training.rundir`).
    """
    import torch

    from lmforge.models import GPT
    from lmforge.models.checkpoints import load_checkpoint
    from lmforge.training.rng import seed_everything
    from lmforge.training.rundir import refuse_existing_run
    from lmforge.training.trainer import run_training

    task, train = config.arithmetic, config.train
    text_format = {"reverse": task.reverse, "scratchpad": task.scratchpad}
    seed_everything(train.seed)
    run_dir = Path(train.out_dir)
    splits = make_splits(task)
    tokenizer = arithmetic_tokenizer()

    def longest(sets: dict[tuple[str, int], list[Problem]]) -> int:
        """Tokens of the longest problem: prompt, completion and end token (one token per character)."""
        return max(len(p.prompt() + p.completion(**text_format)) + 1 for ps in sets.values() for p in ps)

    length = longest(splits.test)  # OOD problems, all in the test sets, are the longest
    config.model.options.setdefault("vocab_size", tokenizer.vocab_size)
    # the engine decodes up to the end token, so the longest (OOD) problem must fit whole
    config.model.options.setdefault("block_size", length)
    model_config = config.model.build()
    if model_config.block_size < length or model_config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.block_size must be >= {length} and model.vocab_size >= "
            f"{tokenizer.vocab_size} for these problems"
        )
    model = GPT(model_config)
    # x drops a row's last token, so rows of the longest training problem are 1 shorter than it;
    # they need not fit OOD problems, which are only ever decoded.
    train_length = max(longest(splits.train), longest(splits.val)) - 1

    def encode(problems: Sequence[Problem], width: int) -> tuple[np.ndarray, np.ndarray]:
        return encode_problems(problems, tokenizer, length=width, **text_format)

    batches = ProblemBatches(
        {b: encode(p, train_length) for b, p in splits.train.items()},
        batch_size=train.batch_size,
        seed=train.seed,
    )
    val_tokens, val_targets = encode([p for problems in splits.val.values() for p in problems], train_length)
    eval_seconds = 0.0

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        nonlocal eval_seconds
        start = time.perf_counter()
        accuracy = evaluate_buckets(m, splits.val, tokenizer, **text_format)
        metrics = {
            "loss": evaluate_lm(m, problem_batches(val_tokens, val_targets))["loss"],
            "accuracy": sum(accuracy.values()) / len(accuracy),
        }
        metrics |= {f"accuracy_{bucket_name(b)}": value for b, value in accuracy.items()}
        eval_seconds += time.perf_counter() - start
        return metrics

    refuse_existing_run(run_dir, resume=False, overwrite=overwrite)  # before writing anything into it
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run_dir / "tokenizer.json")
    counts = {name: sum(len(p) for p in getattr(splits, name).values()) for name in ("train", "val", "test")}
    log(
        f"problems: {counts['train']:,} train, {counts['val']:,} val, {counts['test']:,} test "
        f"(+{len(splits.ood)} OOD buckets); model: {model.num_params():,} parameters; "
        f"rows of {train_length} tokens"
    )

    start = time.perf_counter()
    trainer, result = run_training(
        config,
        model,
        batches,
        evaluate=evaluate,
        checkpoint_meta={
            "tokenizer": tokenizer.to_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "recipe": "arithmetic",
            "arithmetic": dataclasses.asdict(task),
        },
        overwrite=overwrite,
    )
    wall_seconds = time.perf_counter() - start

    # The test scores belong to the model as saved: the final checkpoint, read by the one loader.
    final = trainer.checkpoints.latest() if train.checkpoint else None
    if final is not None:
        model = load_checkpoint(final)[0]
    accuracy = evaluate_buckets(model, splits.test, tokenizer, **text_format)
    sizes = {bucket: len(problems) for bucket, problems in splits.test.items()}
    table = accuracy_table(accuracy, sizes, ood=splits.ood)
    log("test exact match (greedy decoding):\n" + table)
    history = [
        {
            "step": row["step"],
            "accuracy": {bucket_name(b): row[f"accuracy_{bucket_name(b)}"] for b in splits.val},
        }
        for row in trainer.history
        if row["split"] == "val"
    ]
    title = f"{'reversed' if task.reverse else 'plain'} answers{', scratchpad' if task.scratchpad else ''}"
    plot_accuracy(history, run_dir / "plots" / "accuracy.png", title=f"arithmetic ({title})")
    results = {
        "format_version": 1,
        "test": [
            {
                "operator": op,
                "digits": n,
                "ood": (op, n) in splits.ood,
                "problems": sizes[(op, n)],
                "exact_match": accuracy[(op, n)],
            }
            for op, n in accuracy
        ],
        "steps": result.step,
        "train_seconds": round(wall_seconds - eval_seconds, 1),  # the loop without periodic evaluation
        "wall_seconds": round(wall_seconds, 1),
        "parameters": model.num_params(),
        "precision": trainer.precision,
        "problems": counts,
        "validation": history,
    }
    atomic_write_json(run_dir / "results.json", results)
    log(
        f"trained {result.step} steps in {results['train_seconds']:.0f} s (+{eval_seconds:.0f} s of periodic "
        f"evaluation, {trainer.precision}); wrote results.json and plots/accuracy.png in {run_dir}"
    )
    results["table"] = table
    return results
