"""The arithmetic recipe: problem text, splits, tokenizer, answer-only targets, exact-match evaluation, CLI.

Expected values are worked out by hand in the docstrings; the evaluation is checked with an oracle model
(always right) and a mute one (always ends at once), so it is tested independently of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.recipes.arithmetic import (
    END,
    IGNORE_INDEX,
    PAD,
    ArithmeticConfig,
    Problem,
    ProblemBatches,
    RecipeConfig,
    Splits,
    _problem_at,
    accuracy_table,
    arithmetic_tokenizer,
    bucket_size,
    check_disjoint,
    encode_problems,
    exact_match,
    final_answer,
    make_splits,
)
from lmforge.training.config import load_config, to_toml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "arithmetic.toml"
SMALL = dict(
    operators=["+", "-", "*"],
    train_digits=[1, 2, 3],
    ood_digits=[4],
    train_size=3000,
    val_size=200,
    test_size=300,
)


# ------------------------------------------------------------------ problem text


def test_problem_text_worked_by_hand() -> None:
    """123+456 = 579 (reversed 975); 35-18 = 17; 12*34 = 408 = 48 + 360."""
    assert Problem(123, "+", 456).prompt() == "123+456="
    assert Problem(123, "+", 456).completion(reverse=False, scratchpad=False) == "579"
    assert Problem(123, "+", 456).completion(reverse=True, scratchpad=False) == "975"
    assert Problem(950, "+", 75).completion(reverse=True, scratchpad=False) == "5201"  # 1025 reversed
    # 2+9+0 = 11 writes 1 carries 1; 1+3+1 = 5 -> 51
    assert Problem(12, "+", 39).completion(reverse=False, scratchpad=True) == "[2+9+0=11,1+3+1=5]51"
    # 5-8-0 = -3 writes 7 borrows 1; 3-1-1 = 1 -> 17
    assert Problem(35, "-", 18).completion(reverse=False, scratchpad=True) == "[5-8-0=-3,3-1-1=1]17"
    assert Problem(12, "*", 34).completion(reverse=True, scratchpad=True) == "[12*4=48,12*30=360]804"
    assert final_answer("[12*4=48,12*30=360]804", reverse=True) == "408"
    assert final_answer("975", reverse=True) == "579"


def test_bucket_sizes_and_enumeration() -> None:
    """1-digit operands are 0..9: 100 sums; a >= b leaves 10 * 11 / 2 = 55 differences; 90^2 = 8100."""
    assert bucket_size("+", 1) == 100
    assert bucket_size("-", 1) == 55
    assert bucket_size("*", 2) == 8100
    # the triangle of a >= b, row by row: 0-0, 1-0, 1-1, 2-0, 2-1, 2-2
    assert [(p.a, p.b) for p in (_problem_at("-", 1, k) for k in range(6))] == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    every = {_problem_at("-", 2, k) for k in range(bucket_size("-", 2))}
    assert len(every) == 4095 and all(p.a >= p.b and p.digits == 2 and len(str(p.b)) == 2 for p in every)


# ------------------------------------------------------------------ splits


def test_splits_are_deterministic_and_seed_dependent() -> None:
    first, again = make_splits(ArithmeticConfig(**SMALL)), make_splits(ArithmeticConfig(**SMALL))
    assert first.train == again.train and first.val == again.val and first.test == again.test
    other = make_splits(ArithmeticConfig(**SMALL, seed=1))
    assert other.test[("+", 3)] != first.test[("+", 3)]
    # adding a bucket does not change the problems of the others
    fewer = make_splits(ArithmeticConfig(**(SMALL | {"operators": ["*"]})))
    assert fewer.test[("*", 2)] == first.test[("*", 2)]


def test_splits_never_overlap_and_have_the_configured_sizes() -> None:
    splits = make_splits(ArithmeticConfig(**SMALL))
    check_disjoint(splits)  # make_splits checks too; this would raise DataError
    everything = [p for name in ("train", "val", "test") for ps in getattr(splits, name).values() for p in ps]
    assert len(everything) == len(set(everything))
    # 1-digit addition: 100 problems, a tenth (10) each for test and val, the remaining 80 for training
    assert [len(s[("+", 1)]) for s in (splits.test, splits.val, splits.train)] == [10, 10, 80]
    # 3-digit: 810,000 problems, so the configured sizes apply
    assert [len(s[("*", 3)]) for s in (splits.test, splits.val, splits.train)] == [300, 200, 3000]
    assert splits.ood == {("+", 4), ("-", 4), ("*", 4)} and not set(splits.train) & splits.ood
    for bucket, problems in splits.test.items():
        assert all(p.op == bucket[0] and p.digits == bucket[1] == len(str(p.b)) for p in problems)
        assert all(p.result >= 0 for p in problems)


def test_check_disjoint_catches_a_leak() -> None:
    leaked = Problem(12, "+", 34)
    splits = Splits(train={("+", 2): [leaked]}, val={("+", 2): []}, test={("+", 2): [leaked]}, ood=set())
    with pytest.raises(DataError, match="12\\+34= is in train and test"):
        check_disjoint(splits)


# ------------------------------------------------------------------ tokenizer and targets


def test_tokenizer_round_trip_one_token_per_character() -> None:
    tokenizer = arithmetic_tokenizer()
    # 17 characters (10 digits, + - *, =, [ ] ,) and the two special tokens
    assert tokenizer.vocab_size == 19
    assert set(tokenizer.special_tokens) == {END, PAD} and tokenizer.eot_id == tokenizer.special_tokens[END]
    for problem in make_splits(ArithmeticConfig(**SMALL)).test[("-", 3)][:50]:
        for reverse in (False, True):
            for scratchpad in (False, True):
                text = problem.prompt() + problem.completion(reverse=reverse, scratchpad=scratchpad)
                ids = tokenizer.encode_ordinary(text)
                assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode(f"1+2=3{END}", allowed_special="all")) == f"1+2=3{END}"
    from lmforge.tokenizers import tokenizer_from_dict

    rebuilt = tokenizer_from_dict(tokenizer.to_dict())
    assert rebuilt.encode_ordinary("12*34=804") == tokenizer.encode_ordinary("12*34=804")
    assert rebuilt.fingerprint() == tokenizer.fingerprint()


def test_answer_only_targets_worked_by_hand() -> None:
    """Ids: digits 0-9 -> 0-9, '+' 10, '=' 13, END 17, PAD 18. "12+34=" then "46" (not reversed), length 9:
    tokens 1 2 + 3 4 = 4 6 END PAD; targets at t = 5, 6, 7 predict 4, 6, END; the rest are -100."""
    tokens, targets = encode_problems(
        [Problem(12, "+", 34)], arithmetic_tokenizer(), reverse=False, scratchpad=False, length=9
    )
    assert tokens.tolist() == [[1, 2, 10, 3, 4, 13, 4, 6, 17, 18]]
    m = IGNORE_INDEX
    assert targets.tolist() == [[m, m, m, m, m, 4, 6, 17, m]]


def test_validation_loss_over_several_batches_is_weighted_by_answer_tokens() -> None:
    """The recipe's validation loss (`evaluate_lm` over `problem_batches`) spread over batches of 2 rows:
    "1+1=" scores 2 targets (2, END), "99*99=" 5 (9801, END), so batches hold different numbers of
    targets. The result must be the mean over all 2+5+... targets, computed here in one cross_entropy
    over every row; the mean of the per-batch means would differ."""
    from lmforge.evaluation.metrics import evaluate_lm
    from lmforge.models import GPT, GPTConfig
    from lmforge.recipes.arithmetic import problem_batches

    problems = [Problem(1, "+", 1), Problem(99, "*", 99), Problem(5, "-", 3), Problem(12, "+", 34)]
    problems += [Problem(7, "*", 8)]
    tokenizer = arithmetic_tokenizer()
    tokens, targets = encode_problems(problems, tokenizer, reverse=False, scratchpad=False, length=10)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    x, y = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(targets)
    with torch.no_grad():
        logits, _ = model(x, y)
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    mask = y.flatten() != IGNORE_INDEX
    expected = float(losses[mask].mean())
    measured = evaluate_lm(model, problem_batches(tokens, targets, batch_size=2))["loss"]
    assert measured == pytest.approx(expected, rel=1e-5)
    per_batch = [float(losses.view(5, 10)[i : i + 2][y[i : i + 2] != IGNORE_INDEX].mean()) for i in (0, 2, 4)]
    assert abs(sum(per_batch) / 3 - expected) > 1e-3  # the unweighted mean is measurably different


def test_batches_mask_everything_but_answers_and_resume_exactly() -> None:
    tokenizer = arithmetic_tokenizer()
    splits = make_splits(ArithmeticConfig(**SMALL))
    buckets = {
        b: encode_problems(p, tokenizer, reverse=True, scratchpad=False, length=14)
        for b, p in splits.train.items()
    }
    batches = ProblemBatches(buckets, batch_size=64, seed=3)
    x, y = batches.next_batch()
    assert x.shape == y.shape == (64, 14) and x.dtype == y.dtype == torch.int64
    equals = tokenizer.encode_ordinary("=")[0]
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        prompt_end = row_x.index(equals)  # the target at the '=' position is the first answer token
        kept = [t for t in row_y if t != IGNORE_INDEX]
        assert all(t == IGNORE_INDEX for t in row_y[:prompt_end])
        assert row_y[prompt_end] != IGNORE_INDEX and kept[-1] == tokenizer.special_tokens[END]
        prompt = tokenizer.decode(row_x[: prompt_end + 1])
        a, op, b = _parse(prompt)
        assert tokenizer.decode(kept[:-1]) == Problem(a, op, b).answer(reverse=True)
    state = batches.state_dict()
    expected = batches.next_batch()
    resumed = ProblemBatches(buckets, batch_size=64, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert all(torch.equal(u, v) for u, v in zip(resumed.next_batch(), expected, strict=True))


def _parse(prompt: str) -> tuple[int, str, int]:
    for op in "+-*":
        if op in prompt[1:]:
            a, _, b = prompt.rstrip("=").partition(op)
            return int(a), op, int(b)
    raise AssertionError(prompt)


# ------------------------------------------------------------------ evaluation


def _oracle(*, reverse: bool, mute: bool = False):
    """A `Generate` function answering every prompt correctly in the given format (or only ending: mute)."""
    tokenizer = arithmetic_tokenizer()
    end = tokenizer.special_tokens[END]

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        rows = []
        for prompt in prompts:
            problem = Problem(*_parse(tokenizer.decode(prompt)))
            answer = [] if mute else tokenizer.encode_ordinary(problem.answer(reverse=reverse))
            rows.append((answer + [end])[:max_new_tokens])
        return rows

    return generate


def test_exact_match_with_an_oracle_and_a_mute_model() -> None:
    tokenizer = arithmetic_tokenizer()
    problems = make_splits(ArithmeticConfig(**SMALL)).test[("*", 3)][:40] + [Problem(0, "+", 0)]
    assert exact_match(_oracle(reverse=True), problems, tokenizer, reverse=True, scratchpad=False) == 1.0
    # the plain format graded as reversed is right only on palindromic answers (0+0=0, ...)
    wrong_format = exact_match(_oracle(reverse=False), problems, tokenizer, reverse=True, scratchpad=False)
    palindromes = sum(str(p.result) == str(p.result)[::-1] for p in problems)
    assert wrong_format == palindromes / len(problems) < 1
    mute = _oracle(reverse=True, mute=True)
    assert exact_match(mute, problems, tokenizer, reverse=True, scratchpad=False) == 0


def test_greedy_generation_with_the_engine_matches_a_plain_argmax_loop() -> None:
    """The Engine's KV-cached greedy decoding equals re-running the full forward and taking the argmax."""
    from lmforge.models import GPT, GPTConfig
    from lmforge.recipes.arithmetic import greedy_generator

    torch.manual_seed(0)
    tokenizer = arithmetic_tokenizer()
    model = GPT(GPTConfig(vocab_size=19, block_size=16, n_layer=1, n_head=2, n_embd=16))
    prompts = tokenizer.encode_ordinary_batch(["12+34=", "99+99="])
    idx = torch.tensor(prompts)
    with torch.no_grad():
        for _ in range(5):
            idx = torch.cat([idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    end = tokenizer.special_tokens[END]
    expected = [row[6:] for row in idx.tolist()]
    expected = [row[: row.index(end) + 1] if end in row else row for row in expected]
    assert greedy_generator(model, end_id=end)(prompts, 5) == expected


def test_accuracy_table_rows() -> None:
    table = accuracy_table(
        {("*", 2): 0.5, ("+", 4): 0.0, ("+", 3): 0.995},
        {("*", 2): 810, ("+", 4): 2000, ("+", 3): 2000},
        ood={("+", 4)},
    )
    lines = table.splitlines()
    assert lines[0].split() == ["operator", "digits", "seen", "problems", "exact", "match"]
    assert [line.split() for line in lines[1:]] == [
        ["+", "3", "train", "2000", "99.50%"],
        ["+", "4", "OOD", "2000", "0.00%"],
        ["*", "2", "train", "810", "50.00%"],
    ]


# ------------------------------------------------------------------ config and the whole recipe


def test_config_file_overrides_and_round_trip(tmp_path: Path) -> None:
    config = load_config(
        CONFIG, sections=RecipeConfig, overrides=['arithmetic.operators=["+","*"]', "train.max_iters=7"]
    )
    assert config.arithmetic.operators == ["+", "*"] and config.train.max_iters == 7
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    assert load_config(path, sections=RecipeConfig) == config
    with pytest.raises(ConfigError, match="arithmetic.operators"):
        load_config(CONFIG, sections=RecipeConfig, overrides=['arithmetic.operators=["/"]'])
    with pytest.raises(ConfigError, match="ood_digits"):
        load_config(CONFIG, sections=RecipeConfig, overrides=["arithmetic.ood_digits=[2]"])
    with pytest.raises(ConfigError, match="unknown key arithmetic.digits"):
        load_config(CONFIG, sections=RecipeConfig, overrides=["arithmetic.digits=3"])


def test_whole_recipe_smoke_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmforge.cli import main

    out = tmp_path / "run"
    settings = [
        "arithmetic.train_digits=[1,2]",
        "arithmetic.ood_digits=[3]",
        "arithmetic.val_size=50",
        "arithmetic.test_size=60",
        "arithmetic.train_size=500",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "train.max_iters=12",
        "train.eval_interval=6",
        "train.batch_size=32",
        "train.progress=false",
        "train.tensorboard=false",
        "train.peak_tflops=1.0",
        "optim.warmup_iters=2",
    ]
    argv = ["recipe", "arithmetic", "--config", str(CONFIG), "--out", str(out)]
    assert main(argv + [arg for s in settings for arg in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert "exact match" in printed and "OOD" in printed
    results = json.loads((out / "results.json").read_text())
    assert [(r["operator"], r["digits"], r["ood"], r["problems"]) for r in results["test"]] == [
        ("+", 1, False, 10),
        ("+", 2, False, 60),
        ("+", 3, True, 60),
    ]
    # a fraction of whole problems (k right of n), not a per-token or per-batch average
    assert all(
        abs(r["exact_match"] * r["problems"] - round(r["exact_match"] * r["problems"])) < 1e-9
        for r in results["test"]
    )
    assert [h["step"] for h in results["validation"]] == [6, 12]
    assert (out / "plots" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(out / "config.toml", sections=RecipeConfig).model.options["vocab_size"] == 19
    from lmforge.models import GPT, checkpoint_meta
    from lmforge.tokenizers import load_tokenizer

    assert load_tokenizer(out / "tokenizer.json").encode_ordinary("1+2=") == [1, 10, 2, 13]
    checkpoint = sorted((out / "checkpoints").glob("step_*"))[-1]
    assert checkpoint_meta(checkpoint)["arithmetic"]["ood_digits"] == [3]
    GPT.from_checkpoint(checkpoint)
