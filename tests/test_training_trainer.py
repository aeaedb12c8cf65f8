"""The training loop: gradient accumulation, resume, checkpoints, non-finite steps, early stopping, CLI.

Everything runs a 2-layer, 32-wide GPT on a small character-level Shakespeare dataset for a few steps.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.errors import FormatError
from lmforge.models import GPT, GPTConfig
from lmforge.training.checkpoint import (
    CheckpointManager,
    NonFiniteError,
    load_trainer_state,
    restore_training_state,
    save_checkpoint,
)
from lmforge.training.config import load_config
from lmforge.training.optim import build_optimizer
from lmforge.training.trainer import Trainer, TrainingDiverged, accumulate_gradients, train_from_config

TINY_MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=16"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory, shakespeare_sample: str) -> Path:
    """12 documents of ~16 kB, char-level, 3 of them in val (prepared by the data pipeline)."""
    from lmforge.data.dedup import DedupConfig
    from lmforge.data.prepare import prepare
    from lmforge.tokenizers import CharTokenizer

    root = tmp_path_factory.mktemp("data")
    text = shakespeare_sample[:192_000]
    docs = [text[i : i + 16_000] for i in range(0, len(text), 16_000)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(
        [str(root / "docs.jsonl")],
        tokenizer=CharTokenizer.train(docs),
        out=root / "char",
        dedup=DedupConfig(mode="none"),
        val=0.25,
        verbose=False,
    )
    return root / "char"


def _config(dataset_dir: Path, out_dir: Path, *extra: str):
    return load_config(
        None,
        overrides=[
            *TINY_MODEL,
            f"data.dir={dataset_dir}",
            f"train.out_dir={out_dir}",
            "train.batch_size=4",
            "train.max_iters=6",
            "train.eval_interval=3",
            "train.eval_batches=2",
            "train.log_interval=1",
            "train.progress=false",
            "train.tensorboard=false",
            "train.peak_tflops=1",
            "train.precision=fp32",
            "optim.warmup_iters=2",
            "optim.decay_iters=6",
            "optim.lr=3e-3",
            *extra,
        ],
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the timing columns, which differ from run to run."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "elapsed_s")}
            for r in csv.DictReader(f)
        ]


def test_grad_accumulation_equals_one_big_batch() -> None:
    """Micro-batches of 3 and 1 rows with different masks (11 and 2 scored targets) must give the gradient
    of the single 4-row batch: each micro-batch weighted by its share of target tokens, 11/13 and 2/13
    (dividing by k = 2 instead would weight the short one 3.25x too much and this test would fail)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    twin = copy.deepcopy(model)
    x = torch.randint(0, 50, (4, 8))
    y = torch.randint(0, 50, (4, 8))
    y[0, :4] = -100  # rows 0-2 keep 4 + 3 + 4 = 11 targets; row 3 keeps 2
    y[1, :5] = -100
    y[2, 4:] = -100
    y[3, 2:] = -100
    accumulated = accumulate_gradients(model, [(x[:3], y[:3]), (x[3:], y[3:])])
    _, loss = twin(x, y)
    loss.backward()
    assert accumulated == pytest.approx(loss.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_resume_equals_uninterrupted(dataset_dir: Path, tmp_path: Path) -> None:
    """6 steps in one go vs 3 steps, stop, resume to 6 (dropout on, so the RNG state matters too):
    the same metrics rows, the same final weights and optimizer state."""
    dropout = "model.dropout=0.1"
    whole = train_from_config(_config(dataset_dir, tmp_path / "a", dropout, "train.tensorboard=true"))
    assert whole.step == 6
    train_from_config(_config(dataset_dir, tmp_path / "b", dropout, "train.max_iters=3"))
    resumed = train_from_config(_config(dataset_dir, tmp_path / "b", dropout), resume=True)
    assert resumed.step == 6
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert len(_rows(tmp_path / "a")) == 6 + 2  # a train row per step and two evaluations
    final_a = tmp_path / "a/checkpoints/step_00000006"
    final_b = tmp_path / "b/checkpoints/step_00000006"
    model_a = GPT.from_checkpoint(final_a)
    model_b = GPT.from_checkpoint(final_b)
    for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    from lmforge.fileio import load_safetensors

    opt_a = load_safetensors(final_a / "optimizer.safetensors")
    opt_b = load_safetensors(final_b / "optimizer.safetensors")
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0
    for key in opt_a:
        torch.testing.assert_close(opt_a[key], opt_b[key], msg=key)

    # the run dir is observable and reproducible
    run = tmp_path / "a"
    for name in ("loss", "lr", "grad_norm"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000
    assert any((run / "events").iterdir())
    assert load_config(run / "config.toml") == _config(
        dataset_dir,
        run,
        dropout,
        "train.tensorboard=true",
        f"model.vocab_size={GPT.from_checkpoint(final_a).config.vocab_size}",
    )
    val = [r for r in _rows(run) if r["split"] == "val"]
    assert {"loss", "ppl", "bpb"} <= {k for k, v in val[0].items() if v}
    # char-level data: one token is about one byte, so bpb ~ loss / ln 2 and ppl = exp(loss)
    loss = float(val[-1]["loss"])
    assert float(val[-1]["ppl"]) == pytest.approx(math.exp(loss), rel=1e-4)
    assert float(val[-1]["bpb"]) == pytest.approx(loss / math.log(2), rel=0.05)
    # keep_last=2 and best: step 3 and 6 kept, best/ holds the lower of the two evals
    kept = [p.name for p in CheckpointManager(run / "checkpoints").step_dirs()]
    assert kept == ["step_00000003", "step_00000006"]
    assert (run / "checkpoints/best/model.safetensors").is_file()


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_survives(dataset_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    train_from_config(_config(dataset_dir, run))
    ckpts = run / "checkpoints"
    weights = ckpts / "step_00000006/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(FormatError, match=r"step_00000006/model\.safetensors.*step_00000003"):
        train_from_config(_config(dataset_dir, run, "train.max_iters=9"), resume=True)
    # the previous checkpoint loads, and resuming from it works
    model = GPT.from_checkpoint(ckpts / "step_00000003")
    assert restore_training_state(ckpts / "step_00000003", model=model)["step"] == 3
    state = ckpts / "step_00000003/trainer_state.json"
    state.write_text(state.read_text()[:-20])
    with pytest.raises(FormatError, match=r"trainer_state\.json.*corrupt or truncated"):
        restore_training_state(ckpts / "step_00000003", model=model)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = build_optimizer(model, load_config(None, overrides=["data.dir=x"]).optim)
    manager = CheckpointManager(tmp_path, keep_last=2)
    state = {"step": 1, "rng": {}, "batches": {}}
    manager.save(1, is_best=True, model=model, optimizer=optimizer, trainer_state=state)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lmforge.training.checkpoint.save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, is_best=True, model=model, optimizer=optimizer, trainer_state=state | {"step": 2})
    assert [p.name for p in manager.step_dirs()] == ["step_00000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_00000001"]  # no temporary left
    assert GPT.from_checkpoint(tmp_path / "step_00000001").num_params() == model.num_params()


def test_never_writes_a_checkpoint_with_nan(tmp_path: Path) -> None:
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        save_checkpoint(tmp_path / "ckpt", model=model, optimizer=None, trainer_state={})
    assert list(tmp_path.iterdir()) == []


class Poisoned(torch.nn.Module):
    """Wraps a GPT; the loss of the forward calls numbered in `nan_calls` (0-based) becomes NaN."""

    def __init__(self, model: GPT, nan_calls: set[int]):
        super().__init__()
        self.model, self.nan_calls, self.calls = model, nan_calls, 0

    def forward(self, x, y):
        logits, loss = self.model(x, y)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        self.calls += 1
        return logits, loss


def _trainer(dataset_dir: Path, tmp_path: Path, model: torch.nn.Module, *extra: str, evaluate=None):
    from lmforge.data.datasets import RandomWindows
    from lmforge.data.shards import open_split

    config = _config(dataset_dir, tmp_path, "train.checkpoint=false", *extra)
    batches = RandomWindows(open_split(dataset_dir, "train"), block_size=16, batch_size=4, seed=0)
    optimizer = build_optimizer(model, config.optim)
    return Trainer(model, optimizer, batches, optim=config.optim, train=config.train, evaluate=evaluate)


def _gpt(dataset_dir: Path) -> GPT:
    from lmforge.data.shards import load_meta

    torch.manual_seed(0)
    return GPT(
        GPTConfig(
            vocab_size=load_meta(dataset_dir)["vocab_size"], block_size=16, n_layer=1, n_head=2, n_embd=16
        )
    )


def test_non_finite_steps_are_skipped_then_the_run_stops(dataset_dir: Path, tmp_path: Path) -> None:
    gpt = _gpt(dataset_dir)
    poisoned = Poisoned(gpt, nan_calls={2})
    trainer = _trainer(dataset_dir, tmp_path / "a", poisoned, "train.max_iters=4", "train.eval_interval=0")
    weights_after = []
    original_step = trainer.optimizer.step

    def record_step(*args, **kwargs):
        original_step(*args, **kwargs)
        weights_after.append(gpt.lm_head.weight.detach().clone())

    trainer.optimizer.step = record_step
    result = trainer.fit()
    assert result.step == 4 and result.skipped_steps == 1
    assert len(weights_after) == 3  # step index 2 made no update
    assert all(torch.isfinite(p).all() for p in gpt.parameters())
    skipped_column = [r["skipped"] for r in _rows(tmp_path / "a") if r["split"] == "train"]
    assert skipped_column == ["0.0", "0.0", "1.0", "1.0"]

    always_nan = Poisoned(_gpt(dataset_dir), nan_calls=set(range(1, 100)))
    trainer = _trainer(dataset_dir, tmp_path / "b", always_nan, "train.max_nonfinite_steps=3")
    with pytest.raises(TrainingDiverged, match="3 steps in a row had a non-finite loss"):
        trainer.fit()
    assert trainer.step == 4  # one good step, then three skipped


def test_early_stopping_with_patience(dataset_dir: Path, tmp_path: Path) -> None:
    """Eval losses 3.0, 2.0, 2.5, 2.6 with patience 2: two evaluations without beating 2.0 -> stop after
    the 4th evaluation (step 4 with eval_interval 1), best 2.0."""
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])
    trainer = _trainer(
        dataset_dir,
        tmp_path,
        _gpt(dataset_dir),
        "train.eval_interval=1",
        "train.early_stopping_patience=2",
        "train.max_iters=10",
        evaluate=lambda model: {"loss": next(losses)},
    )
    result = trainer.fit()
    assert (result.stopped, result.step, result.best_eval_loss) == ("early_stopping", 4, 2.0)


def test_cli_train_eval_sample(dataset_dir: Path, tmp_path: Path, capsys) -> None:
    from lmforge.cli import main

    run = tmp_path / "cli"
    args = [
        "train",
        *[x for s in TINY_MODEL for x in ("--set", s)],
        "--set",
        f"data.dir={dataset_dir}",
        "--set",
        f"train.out_dir={run}",
        "--set",
        "train.max_iters=2",
        "--set",
        "train.progress=false",
        "--set",
        "train.tensorboard=false",
        "--set",
        "train.peak_tflops=1",
        "--set",
        "train.eval_batches=1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "done: 2 steps" in out
    # the evaluation after the last step, one "name value" pair per metric
    assert re.search(r"^step 2: loss [\d.]+, ppl [\d.]+, accuracy [\d.]+", out, re.MULTILINE), out
    assert main(["eval", "--ckpt", str(run / "checkpoints/best"), "--max-batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "val: loss" in out and "bits/byte" in out
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(run / "checkpoints/best"),
                "--max-new-tokens",
                "20",
                "--prompt",
                "ROMEO:",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert main(["train", "--set", "optim.lr=-1", "--set", "data.dir=x"]) == 2
    assert "optim.lr=-1.0 is invalid" in capsys.readouterr().err


def _norm_at_each_update(trainer: Trainer) -> list[float]:
    """Wraps the optimizer's step: the global norm of the gradients it is handed, per update."""
    norms: list[float] = []
    original_step = trainer.optimizer.step

    def record_step(*args, **kwargs):
        grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))
        return original_step(*args, **kwargs)

    trainer.optimizer.step = record_step
    return norms


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(
    dataset_dir: Path, tmp_path: Path, clip
) -> None:
    """grad_clip=0.05 (far below a fresh model's gradient norm): the optimizer steps with gradients of
    norm exactly 0.05, while the logged grad_norm is the norm before clipping. grad_clip=0: untouched.
    SGD without momentum or decay, so the update itself is -lr x the gradient handed over."""
    model = _gpt(dataset_dir)
    trainer = _trainer(
        dataset_dir,
        tmp_path,
        model,
        "train.max_iters=2",
        "train.eval_interval=0",
        "optim.name=sgd",
        "optim.momentum=0",
        "optim.weight_decay=0",
        f"optim.grad_clip={clip}",
    )
    before = [p.detach().clone() for p in model.parameters()]
    norms = _norm_at_each_update(trainer)
    trainer.fit()
    logged = [r for r in trainer.history if r["split"] == "train"]
    assert len(norms) == 2 and all(r["grad_norm"] > 0.5 for r in logged)
    expected = [clip] * 2 if clip else [r["grad_norm"] for r in logged]
    assert norms == pytest.approx(expected, rel=1e-3)
    if clip:  # two SGD steps of norm lr_i * 0.05 each: the total update is at most their sum
        moved = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
        )
        assert float(moved.norm()) <= sum(r["lr"] for r in logged) * clip * (1 + 1e-4)


def test_pruning_keeps_the_newest_keep_last_steps_and_best(tmp_path: Path) -> None:
    """Five saves with keep_last=2, the best at step 3: step_4, step_5 and best/ (holding step 3) remain."""
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        state = {"step": step, "rng": {}, "batches": {}}
        manager.save(step, is_best=step in (1, 3), model=model, optimizer=None, trainer_state=state)
    assert [p.name for p in manager.step_dirs()] == ["step_00000004", "step_00000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_00000004", "step_00000005"]
    assert json.loads((tmp_path / "best" / "trainer_state.json").read_text())["step"] == 3
    assert manager.latest() == tmp_path / "step_00000005"


@pytest.mark.parametrize("key", ["step", "rng", "batches"])
def test_trainer_state_without_a_required_key_names_the_file_and_the_key(tiny_run, tmp_path, key) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "checkpoints" / "best", ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state[key]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(FormatError) as error:
        load_trainer_state(ckpt)
    assert error.value.path == ckpt / "trainer_state.json" and f"missing '{key}'" in str(error.value)


def test_resume_without_the_optional_counters_starts_them_afresh(dataset_dir: Path, tmp_path: Path) -> None:
    """A trainer_state.json with only step, rng, batches and the optimizer layout resumes: the
    counters it lacks start at 0, the history empty, no best step; the step and weights are restored."""
    model = _gpt(dataset_dir)
    first = _trainer(dataset_dir, tmp_path / "a", model, "train.max_iters=2", "train.eval_interval=0")
    first.fit()
    first.skipped_steps, first.evals_without_improvement = 3, 1  # as if some steps had been skipped
    state = first.state_dict()
    assert state["tokens_seen"] == 2 * 4 * 16 and state["history"]  # 2 steps of 4 windows of 16 tokens
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=first.optimizer, trainer_state=state)
    whole = _trainer(dataset_dir, tmp_path / "w", _gpt(dataset_dir), "train.max_iters=3")
    whole.resume(ckpt)  # the full state first: every counter comes back
    assert (whole.step, whole.tokens_seen, whole.skipped_steps) == (2, first.tokens_seen, 3)
    assert whole.evals_without_improvement == 1 and whole.history == first.history
    saved = json.loads((ckpt / "trainer_state.json").read_text())
    kept = {k: saved[k] for k in ("format_version", "step", "rng", "batches", "optimizer")}
    (ckpt / "trainer_state.json").write_text(json.dumps(kept))

    second = _trainer(dataset_dir, tmp_path / "b", _gpt(dataset_dir), "train.max_iters=3")
    second.resume(ckpt)
    assert second.step == 2 and second.tokens_seen == 0 and second.skipped_steps == 0
    assert second.history == [] and second.best_step is None and second.evals_without_improvement == 0
    for p, q in zip(second.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_keeps_the_best_eval_loss_while_its_model_exists(dataset_dir: Path, tmp_path: Path) -> None:
    """The best loss and its step come back from trainer_state.json when that step's checkpoint still
    exists (and best/ is refreshed from it): a resumed run that forgot them would take its next
    evaluation, however bad, for a new best."""
    model = _gpt(dataset_dir)
    first = _trainer(dataset_dir, tmp_path / "a", model, "train.max_iters=2", "train.eval_interval=0")
    first.fit()
    first.best_eval_loss, first.best_step = 2.5, 2
    ckpt = save_checkpoint(
        tmp_path / "run" / "step_00000002",
        model=model,
        optimizer=first.optimizer,
        trainer_state=first.state_dict(),
    )
    resumed = _trainer(dataset_dir, tmp_path / "b", _gpt(dataset_dir), "train.max_iters=3")
    resumed.resume(ckpt)
    assert (resumed.best_eval_loss, resumed.best_step) == (2.5, 2)
    assert (tmp_path / "b/checkpoints/best/model.safetensors").is_file()


def test_mfu_is_throughput_times_flops_per_token_over_the_measured_peak(
    dataset_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """train.peak_tflops=0 measures the matmul peak at start (stubbed here to 2 TFLOP/s, and it must not
    move the RNG a resumed run restores); each train row's mfu = tokens_per_s x flops_per_token / peak."""

    def fake_peak(*, dtype, device):
        torch.rand(3)  # a measurement draws random matrices: the trainer must shield its RNG from it
        return 2e12

    monkeypatch.setattr("lmforge.training.trainer.measure_matmul_peak", fake_peak)
    model = _gpt(dataset_dir)
    trainer = _trainer(
        dataset_dir, tmp_path, model, "train.max_iters=2", "train.eval_interval=0", "train.peak_tflops=0"
    )
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    trainer._peak_flops()
    assert torch.rand(1) == expected_draw
    trainer.fit()
    rows = [r for r in trainer.history if r["split"] == "train"]
    assert len(rows) == 2
    for row in rows:
        expected = row["tokens_per_s"] * model.flops_per_token() / 2e12
        assert row["mfu"] == pytest.approx(expected, rel=1e-5)


def test_measured_matmul_peak_is_a_plausible_flop_rate() -> None:
    """2 n^3 FLOPs per (n x n) @ (n x n) product: any CPU does a 64 x 64 product between 10 MFLOP/s and
    100 TFLOP/s."""
    from lmforge.training.logging import measure_matmul_peak

    assert 1e7 < measure_matmul_peak(size=64, seconds=0.01) < 1e14


def test_precision_resolution_and_bf16_autocast(monkeypatch) -> None:
    """ "auto" on a CPU is bf16 only with AVX-512-BF16 or AMX; bf16 autocast runs matmuls in bf16 while
    the weights stay fp32; fp32 is a no-op context."""
    from lmforge.training.trainer import autocast_for, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    for avx512_bf16, amx, expected in [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", cpu) == expected
    linear = torch.nn.Linear(4, 3)
    with autocast_for(cpu, "bf16")():
        assert linear(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast_for(cpu, "fp32")():
        assert linear(torch.randn(2, 4)).dtype == torch.float32
    assert linear.weight.dtype == torch.float32


def test_bf16_training_steps_run_in_bf16_with_fp32_weights(dataset_dir: Path, tmp_path: Path) -> None:
    """The same 2 steps in bf16 and fp32 from the same weights and batches: finite, fp32 parameters, and
    losses that differ by bf16 rounding only (|diff| < 0.05 nats but not 0, so autocast really ran)."""
    losses = {}
    for precision in ("bf16", "fp32"):
        model = _gpt(dataset_dir)
        trainer = _trainer(
            dataset_dir,
            tmp_path / precision,
            model,
            "train.max_iters=2",
            "train.eval_interval=0",
            f"train.precision={precision}",
        )
        assert trainer.precision == precision
        trainer.fit()
        losses[precision] = [r["loss"] for r in trainer.history if r["split"] == "train"]
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)


def test_compiled_training_matches_eager(dataset_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """train.compile=true trains through torch.compile's graph (TorchDynamo; the "eager" backend here,
    so the test does not spend a minute generating C++ kernels): 2 steps give the eager losses."""
    compiled_models = []

    def compile_eagerly(model, **kwargs):
        compiled_models.append(model)
        return real_compile(model, backend="eager", **kwargs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    losses = {}
    for compiled in (True, False):
        trainer = _trainer(
            dataset_dir,
            tmp_path / str(compiled),
            _gpt(dataset_dir),
            "train.max_iters=2",
            "train.eval_interval=0",
            f"train.compile={str(compiled).lower()}",
        )
        assert (trainer.forward_model is not trainer.model) == compiled
        trainer.fit()
        losses[compiled] = [r["loss"] for r in trainer.history if r["split"] == "train"]
    assert len(compiled_models) == 1
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_reconcile_best_refreshes_best_from_the_step_the_state_names(tmp_path: Path) -> None:
    """A crash after saving step 2 (the new best) but before copying it to best/ leaves best/ at step 1:
    resuming copies step 2 to best/ and says so. When best/ already holds the named step nothing
    changes; when no copy of it is left anywhere, the best loss is forgotten."""
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2):
        state = {"step": step, "rng": {}, "batches": {}}
        manager.save(step, is_best=step == 1, model=model, optimizer=None, trainer_state=state)
    claimed = {"best_eval_loss": 1.5, "best_step": 2}

    loss, note = manager.reconcile_best(tmp_path / "step_00000002", claimed)
    assert loss == 1.5 and note == f"best/ refreshed from {tmp_path / 'step_00000002'} (step 2)"
    assert load_trainer_state(manager.best)["step"] == 2
    assert manager.reconcile_best(tmp_path / "step_00000002", claimed) == (1.5, None)
    gone = {"best_eval_loss": 1.5, "best_step": 7}
    assert manager.reconcile_best(tmp_path / "step_00000002", gone) == (
        None,
        "the best model (step 7) is gone; the best loss starts afresh",
    )


def test_resuming_into_a_different_model_or_with_a_broken_rng_names_the_file(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint of a 16-wide model does not resume a 24-wide one: meta.json is named with the field
    that differs (before any weight is touched). A trainer_state.json whose 'rng' is not one lmforge
    saved is named as well."""
    model = _gpt(dataset_dir)
    trainer = _trainer(dataset_dir, tmp_path / "a", model, "train.max_iters=1", "train.eval_interval=0")
    ckpt = save_checkpoint(
        tmp_path / "ckpt", model=model, optimizer=trainer.optimizer, trainer_state=trainer.state_dict()
    )
    wider = GPT(GPTConfig(vocab_size=model.config.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=24))
    with pytest.raises(FormatError) as error:
        restore_training_state(ckpt, model=wider)
    assert error.value.path == ckpt / "meta.json" and "n_embd 16 -> 24" in str(error.value)

    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps(state | {"rng": {"torch": "not base64"}}))
    fresh = _trainer(dataset_dir, tmp_path / "b", _gpt(dataset_dir), "train.max_iters=2")
    with pytest.raises(FormatError) as error:
        fresh.resume(ckpt)
    assert error.value.path == ckpt / "trainer_state.json"
    assert "'rng' is not an RNG state saved by lmforge" in str(error.value)


@pytest.fixture
def rank_zero_of_two(monkeypatch):
    """This process as rank 0 of a 2-process torchrun job: torchrun's variables, and a gloo process group
    the test opens itself, which `init_world` then uses (as when a caller opened one). The group holds
    only this rank, so its collectives return rank 0's own values: enough to drive rank 0 through the
    distributed paths in process (which trainer, which checkpoint writer), not to compare numbers with
    one process (tests/test_training_distributed.py runs real 2-process jobs for that)."""
    import torch.distributed as dist

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_rank_zero_of_an_fsdp_job_trains_as_part_of_it_and_saves_sharded_checkpoints(
    rank_zero_of_two, dataset_dir: Path, tmp_path: Path, capsys
) -> None:
    """`run_training` under torchrun hands the job to the trainer: rank 0 reports the global batch of
    both processes (2 per process x 2 processes = 4), and with FSDP its checkpoint is the sharded kind:
    shards/ holding the same weights as the consolidated model.safetensors, and no optimizer.safetensors
    (the optimizer's state is in the shards). Resuming it into a wider model is refused naming meta.json
    and the field that differs, before any shard is read."""
    from lmforge.data.datasets import RandomWindows
    from lmforge.data.shards import open_split
    from lmforge.fileio import load_safetensors
    from lmforge.training.trainer import run_training

    config = _config(dataset_dir, tmp_path, "train.parallel=fsdp", "train.batch_size=2", "train.max_iters=1")
    tokens = open_split(dataset_dir, "train")
    batches = RandomWindows(tokens, block_size=16, batch_size=2, seed=0, rank=0, world_size=2)
    run_training(config, _gpt(dataset_dir), batches)
    job = "global batch 4 sequences = 2 per micro-batch x 1 accumulation steps x 2 processes (fsdp, gloo)"
    assert job in capsys.readouterr().out
    ckpt = tmp_path / "checkpoints" / "step_00000001"
    shards = {}
    for path in sorted((ckpt / "shards").glob("*.safetensors")):
        shards |= load_safetensors(path)
    assert not (ckpt / "optimizer.safetensors").exists()
    weights = load_safetensors(ckpt / "model.safetensors")
    assert weights and any(name.startswith("state.") for name in shards)
    for name, tensor in weights.items():
        torch.testing.assert_close(shards[name], tensor, rtol=0, atol=0, msg=name)
    wider = GPT(
        GPTConfig(
            vocab_size=len(weights["transformer.wte.weight"]), block_size=16, n_layer=1, n_head=2, n_embd=24
        )
    )
    with pytest.raises(FormatError) as error:
        _trainer(dataset_dir, tmp_path / "wider", wider).resume(ckpt)
    assert error.value.path == ckpt / "meta.json" and "n_embd 16 -> 24" in str(error.value)


def test_a_set_vocab_size_is_kept_and_one_below_the_tokenizer_is_refused(dataset_dir: Path, tmp_path: Path):
    """model.vocab_size left unset takes the tokenizer's size (other tests); set larger (room for ids
    added later) it is kept, as the resolved config.toml shows; set smaller than the tokenizer it is
    refused before any training, with both numbers."""
    from lmforge.data.shards import load_meta
    from lmforge.errors import ConfigError

    vocab = load_meta(dataset_dir)["vocab_size"]
    one_step = ("train.max_iters=1", "train.checkpoint=false", "train.eval_batches=1")
    train_from_config(_config(dataset_dir, tmp_path / "a", f"model.vocab_size={vocab + 10}", *one_step))
    assert load_config(tmp_path / "a" / "config.toml").model.build().vocab_size == vocab + 10
    with pytest.raises(
        ConfigError, match=rf"model.vocab_size={vocab - 1} is smaller than the tokenizer's {vocab}"
    ):
        train_from_config(_config(dataset_dir, tmp_path / "b", f"model.vocab_size={vocab - 1}", *one_step))
    assert not (tmp_path / "b").exists()


def test_a_resumed_run_counts_its_progress_from_the_step_it_resumed_at(
    dataset_dir: Path, tmp_path: Path, capsys
) -> None:
    """With progress on (the default) and output to a log, the progress bar is a plain line per tenth
    of the run (lmforge.progress). A run resumed at step 2 of 4 counts on from 2: 3/4 (75%), 4/4 (100%)
    (counting from 0 it would print 1/4 and 2/4 and end at 2/4)."""
    model = _gpt(dataset_dir)
    first = _trainer(dataset_dir, tmp_path / "a", model, "train.max_iters=2")
    first.step = 2  # as if it had trained 2 steps: only the step matters here
    state = first.state_dict()
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=first.optimizer, trainer_state=state)
    resumed = _trainer(
        dataset_dir, tmp_path / "b", _gpt(dataset_dir), "train.max_iters=4", "train.progress=true"
    )
    resumed.fit(resume_from=ckpt)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    assert [line.split(" step/s")[0].rsplit(" ", 1)[0] for line in lines] == [
        "train: 3/4 step (75%)",
        "train: 4/4 step (100%)",
    ]


def test_mfu_of_a_cross_encoder_counts_positions_not_stacked_rows(dataset_dir: Path, tmp_path: Path) -> None:
    """A re-ranker's batch x is (B, G, 3, T): ids, token types and mask of each query's G pairs. Tokens
    are B * G * T = 2 * 2 * 8 = 32 a step (not the 96 elements), and each row's mfu / tokens_per_s =
    flops_per_token at the batch's T = 8 over the 1 TFLOP/s peak: 6 * 6560 + 12 * 2 * 16 * 8 +
    6 * 289 / 8 = 42648.75 -> 42649 (the blocks' 6560 and the heads' 289 parameters as in test_bert's
    worked example), where the old count (3x the tokens, attention at block_size 64, heads on every
    position) gave 3 * 65670."""
    from lmforge.models import BERT, BERTConfig
    from lmforge.training.rerank import group_logits, group_loss

    class PairBatches:
        def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.randint(1, 100, (2, 2, 8))
            x = torch.stack([ids, torch.zeros_like(ids), torch.ones_like(ids)], dim=2)  # (2, 2, 3, 8)
            return x, torch.zeros(2, dtype=torch.long)

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    torch.manual_seed(0)
    config = BERTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=2, n_embd=16, mlm_head=False)
    model = BERT(BERTConfig(**(config.__dict__ | {"num_labels": 1})))
    run = _config(
        dataset_dir, tmp_path, "train.checkpoint=false", "train.max_iters=2", "train.eval_interval=0"
    )
    optimizer = build_optimizer(model, run.optim)
    trainer = Trainer(
        model,
        optimizer,
        PairBatches(),
        optim=run.optim,
        train=run.train,
        objective=lambda m, x, y: group_loss(group_logits(m, x), "listwise"),
    )
    trainer.fit()
    assert trainer.tokens_seen == 2 * 32
    rows = [r for r in trainer.history if r["split"] == "train"]
    assert len(rows) == 2
    for row in rows:
        assert row["mfu"] / row["tokens_per_s"] == pytest.approx(42649 / 1e12, rel=1e-9)
