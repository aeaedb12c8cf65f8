"""Training on 2 processes (gloo, float32, CPU) gives what 1 process with the global batch gives.

Every 2-process run is a real torchrun job (`python -m torch.distributed.run --standalone`) of
tests/distributed_worker.py, which trains a 2-layer, 32-wide GPT for 4 steps with clipping active
(grad_clip 0.5 < the gradient norms ~0.8-1.4) and evaluates at steps 2 and 4. The reference is the same
worker function in this process with batch 4. Because a step's windows are one draw of the global batch
(RandomWindows), these must all give the same loss curve, val losses and final weights:
  1 process x 4 sequences (reference)      1 process x 2 sequences x 2 accumulation steps
  DDP 2 x 2    FSDP 2 x 2    DDP 2 x 1 x 2 accumulation    FSDP 2 x 1 x 2 accumulation
and resuming changes nothing: FSDP's step-2 checkpoint continued on 1 process (2 -> 1), the single
process's step-2 checkpoint continued by FSDP on 2 (1 -> 2), and an FSDP job whose rank 1 is killed
(SIGKILL) in the middle of its second save and restarted by torchrun (--max-restarts 1).
Tolerances: float32 sums in another order (all-reduce, sharded matmuls) differ by ~1e-7 relative. The
weights get atol 5e-5 because of the attention key biases: softmax ignores a shift common to a query's
scores, so their true gradient is 0 and AdamW turns the ~1e-9 float noise in it into steps of up to lr
(measured: one key-bias element 1.3e-5 apart after 4 steps, every other weight within 1e-5).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import distributed_worker
from lmforge.data.datasets import RandomWindows
from lmforge.errors import ConfigError
from lmforge.fileio import load_safetensors
from lmforge.models.checkpoints import load_checkpoint
from lmforge.training import distributed
from lmforge.training.distributed import World, close_world, resolve_parallel

WORKER = Path(distributed_worker.__file__)
SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = {"max_iters": 4, "eval_interval": 2}


def torchrun(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` with one thread per process and our source first."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> list[tuple[int, str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["split"], float(r["loss"])) for r in csv.DictReader(f)]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run_dir / "checkpoints" / "step_00000004" / "model.safetensors")


def assert_same_run(run_dir: Path, reference: Path) -> None:
    mine, theirs = losses(run_dir), losses(reference)
    assert [(s, split) for s, split, _ in mine] == [(s, split) for s, split, _ in theirs]
    torch.testing.assert_close(
        torch.tensor([loss for *_, loss in mine]),
        torch.tensor([loss for *_, loss in theirs]),
        rtol=1e-5,
        atol=0,
    )
    a, b = final_weights(run_dir), final_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=5e-5, msg=name)


def test_a_step_draws_the_same_windows_for_every_split_of_the_global_batch() -> None:
    """Global batch 4: 2 ranks x 2, 1 rank x 4, 1 rank x 2 x 2 accumulation, 2 ranks x 1 x 2 accumulation
    all take the same 4 windows at each step, in the same order when read rank-major per micro-batch."""
    data = np.arange(1000)

    def step_windows(world: int, batch: int, accum: int, step: int) -> list[list[int]]:
        sources = [
            RandomWindows(
                data, block_size=8, batch_size=batch, seed=3, rank=r, world_size=world, accum_steps=accum
            )
            for r in range(world)
        ]
        return [
            row[:1].tolist() for j in range(accum) for s in sources for row in s.batch_at(step * accum + j)[0]
        ]

    for step in (0, 5):
        reference = step_windows(1, 4, 1, step)
        assert step_windows(2, 2, 1, step) == reference
        assert step_windows(1, 2, 2, step) == reference
        assert step_windows(2, 1, 2, step) == reference
    assert step_windows(1, 4, 1, 0) != step_windows(1, 4, 1, 1)


def test_resuming_with_another_accumulation_continues_at_the_same_optimizer_step() -> None:
    """6 micro-batches drawn with accumulation 2 = 3 optimizer steps; with accumulation 3 the next
    micro-batch is number 3 x 3 = 9, the first of optimizer step 3."""
    source = RandomWindows(np.arange(1000), block_size=8, batch_size=2, seed=0, accum_steps=2)
    for _ in range(6):
        source.next_batch()
    resumed = RandomWindows(np.arange(1000), block_size=8, batch_size=2, seed=0, accum_steps=3)
    resumed.load_state_dict(source.state_dict())
    assert resumed.step == 9


def test_parallel_choice() -> None:
    assert resolve_parallel("auto", 1) == "none"
    assert resolve_parallel("fsdp", 1) == "none"  # a 2-process config resumed on one process
    assert resolve_parallel("auto", 4) == "ddp"
    assert resolve_parallel("fsdp", 4) == "fsdp"
    with pytest.raises(ConfigError, match="unrelated models"):
        resolve_parallel("none", 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference (1 process), then one torchrun job with the five 2-process runs."""
    root = tmp_path_factory.mktemp("dist")
    distributed_worker.train_run(
        {"out_dir": str(root / "one"), "parallel": "auto", "batch_size": 4, "accum": 1, **STEPS}
    )
    spec = [
        {"out_dir": str(root / "ddp"), "parallel": "ddp", "batch_size": 2, "accum": 1, **STEPS},
        {"out_dir": str(root / "fsdp"), "parallel": "fsdp", "batch_size": 2, "accum": 1, **STEPS},
        {"out_dir": str(root / "ddp_accum"), "parallel": "ddp", "batch_size": 1, "accum": 2, **STEPS},
        {"out_dir": str(root / "fsdp_accum"), "parallel": "fsdp", "batch_size": 1, "accum": 2, **STEPS},
        {
            "out_dir": str(root / "one_to_fsdp"),
            "parallel": "fsdp",
            "batch_size": 2,
            "accum": 1,
            "resume": str(root / "one" / "checkpoints" / "step_00000002"),
            **STEPS,
        },
    ]
    (root / "spec.json").write_text(json.dumps(spec))
    done = torchrun(str(WORKER), str(root / "spec.json"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (root / "torchrun.log").write_text(done.stdout)
    return root


@pytest.mark.parametrize("name", ["ddp", "fsdp", "ddp_accum", "fsdp_accum"])
def test_two_processes_equal_one_with_the_global_batch(runs: Path, name: str) -> None:
    assert_same_run(runs / name, runs / "one")


def test_accumulation_on_one_process_equals_the_global_batch(runs: Path, tmp_path: Path) -> None:
    distributed_worker.train_run(
        {"out_dir": str(tmp_path), "parallel": "auto", "batch_size": 2, "accum": 2, **STEPS}
    )
    assert_same_run(tmp_path, runs / "one")


def test_rank_zero_alone_reports_the_global_batch(runs: Path) -> None:
    log = (runs / "torchrun.log").read_text()
    assert (
        log.count(
            "global batch 4 sequences = 2 per micro-batch x 1 accumulation steps x 2 processes (ddp, gloo)"
        )
        == 1
    )
    assert (
        "global batch 4 sequences = 1 per micro-batch x 2 accumulation steps x 2 processes (fsdp, gloo)"
        in log
    )


def test_fsdp_checkpoint_is_sharded_and_consolidated(runs: Path) -> None:
    """Two shard files, one per rank, that together hold the weights and both AdamW moments once and
    split them about evenly (FSDP2 splits dim 0; DCP writes a replicated tensor, such as AdamW's scalar
    step count, once), plus one model.safetensors that the ordinary loader opens."""
    ckpt = runs / "fsdp" / "checkpoints" / "step_00000004"
    shards = [load_safetensors(p) for p in sorted((ckpt / "shards").glob("*.safetensors"))]
    assert len(shards) == 2
    weights = load_safetensors(ckpt / "model.safetensors")
    n_params = sum(t.numel() for t in weights.values())
    steps = sum(1 for shard in shards for name in shard if name.endswith(".step"))
    per_rank = [sum(t.numel() for t in shard.values()) for shard in shards]
    assert sum(per_rank) == 3 * n_params + steps  # weights + exp_avg + exp_avg_sq, no copy
    assert abs(per_rank[0] - per_rank[1]) < 0.1 * sum(per_rank)
    model, _, meta = load_checkpoint(ckpt, require_tokenizer=False)
    assert meta["model"] == "gpt"
    reference = final_weights(runs / "one")
    for name, tensor in model.state_dict().items():
        if name in reference:
            torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=5e-5)


def test_fsdp_checkpoint_resumed_on_one_process(runs: Path, tmp_path: Path) -> None:
    """2 -> 1: the step-2 shards of the 2-process run, continued by 1 process with batch 4."""
    distributed_worker.train_run(
        {
            "out_dir": str(tmp_path),
            "parallel": "fsdp",  # what the 2-process config said; one process runs it as "none"
            "batch_size": 4,
            "accum": 1,
            "resume": str(runs / "fsdp" / "checkpoints" / "step_00000002"),
            **STEPS,
        }
    )
    assert_same_run(tmp_path, runs / "one")


def test_single_process_checkpoint_resumed_by_fsdp(runs: Path) -> None:
    """1 -> 2: a single-process checkpoint (model.safetensors + optimizer.safetensors) resharded."""
    assert_same_run(runs / "one_to_fsdp", runs / "one")


@pytest.mark.slow
def test_rank_killed_during_save_leaves_the_previous_checkpoint_and_torchrun_resumes(
    runs: Path, tmp_path: Path
) -> None:
    """Rank 1 SIGKILLs itself after writing its shards of the step-4 checkpoint, before the commit.
    torchrun stops rank 0 and restarts both (--max-restarts 1); the restarted job finds step 2 intact,
    resumes it (the unfinished step-4 directory is removed) and ends exactly like the reference."""
    spec = [{"out_dir": str(tmp_path / "run"), "parallel": "fsdp", "batch_size": 2, "accum": 1, **STEPS}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = torchrun(
        "--max-restarts",
        "1",
        str(WORKER),
        str(tmp_path / "spec.json"),
        env={"LMFORGE_FAULT": "checkpoint:shards-written-rank1@2"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr  # torchrun saw rank 1 die and stopped rank 0, then restarted
    assert "torchrun restart 1: continuing from" in done.stdout
    assert "step_00000002" in done.stdout.split("torchrun restart 1: continuing from")[1].splitlines()[0]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "best",
        "step_00000002",
        "step_00000004",
    ]
    assert_same_run(tmp_path / "run", runs / "one")


DRAINS = """
import sys
import weakref

import torch
import torch.distributed as dist

from lmforge.training.distributed import close_world, drain_collectives, init_world

world = init_world(device=torch.device("cpu"), timeout_s=60)
held = 0
for _ in range(50):
    tensors = [torch.ones(1000) for _ in range(4)]
    alive = [weakref.ref(t) for t in tensors]
    works = [dist.all_reduce(t, async_op=True) for t in tensors]
    dist.barrier()  # gloo's barrier work keeps the all-reduces (and their tensors) until it is dropped
    del tensors, works
    drain_collectives(world)
    held += sum(ref() is not None for ref in alive)
if held:
    sys.exit(f"rank {world.rank}: {held} of 200 tensors still held by gloo after drain_collectives")
close_world(world)
"""


def test_drain_collectives_waits_until_gloo_has_let_go_of_every_tensor(tmp_path: Path) -> None:
    """A gloo worker thread that frees a finished collective's tensors after the interpreter began to
    shut down aborts the process (SIGABRT at the end of a finished torchrun job); close_world drains
    first (next test). Checked by hand, 4 jobs each: without the drain one rank or both still held
    25-142 of the 200 tensors, with the barrier but no pause 18-79; with the drain none, also beside a
    busy loop."""
    script = tmp_path / "drains.py"
    script.write_text(DRAINS)
    done = torchrun(str(script))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("finished", [True, False])
def test_close_world_drains_a_finished_job_only(monkeypatch: pytest.MonkeyPatch, finished: bool) -> None:
    """After an error the other ranks may never reach a barrier: leave at once, without draining."""
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "drain_collectives", lambda world: calls.append("drain"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    world = World(
        rank=0, local_rank=0, world_size=2, device=torch.device("cpu"), backend="gloo", owns_group=True
    )
    close_world(world, finished=finished)
    assert calls == (["drain", "destroy"] if finished else ["destroy"])


@pytest.mark.slow
def test_lmforge_train_under_torchrun_end_to_end(tmp_path: Path, shakespeare_sample: str) -> None:
    """`torchrun -m lmforge train` with the demo's model size (4 layers, 128 wide, 128-token windows,
    16 sequences per step) on char-level Shakespeare, FSDP: rank 0 alone prints, and the consolidated
    checkpoint is an ordinary one for `lmforge eval` and generation."""
    from lmforge.data.dedup import DedupConfig
    from lmforge.data.prepare import prepare
    from lmforge.inference.text import generate
    from lmforge.tokenizers import CharTokenizer

    docs = [shakespeare_sample[i : i + 20_000] for i in range(0, 200_000, 20_000)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    data = tmp_path / "char"
    prepare(
        [str(tmp_path / "docs.jsonl")],
        tokenizer=CharTokenizer.train(docs),
        out=data,
        dedup=DedupConfig(mode="none"),
        val=0.2,
        verbose=False,
    )
    settings = {
        "model.n_layer": 4,
        "model.n_head": 4,
        "model.n_embd": 128,
        "model.block_size": 128,
        "model.dropout": 0.0,
        "data.dir": data,
        "train.out_dir": tmp_path / "run",
        "train.max_iters": 6,
        "train.batch_size": 8,
        "train.eval_interval": 3,
        "train.eval_batches": 3,
        "train.log_interval": 3,
        "train.parallel": "fsdp",
        "train.device": "cpu",
        "train.peak_tflops": 1.0,
        "train.progress": "false",
    }
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    done = torchrun("-m", "lmforge", "train", *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[:3000]
    assert done.stdout.count("global batch 16 sequences = 8 per micro-batch") == 1  # rank 0 only
    assert done.stdout.count("step 6: checkpoint") == 1
    best = tmp_path / "run" / "checkpoints" / "best"
    text = generate(best, "ROMEO", max_new_tokens=10, temperature=0.0)
    assert len(text) == 10  # char-level: one character per token
    scored = subprocess.run(
        [sys.executable, "-m", "lmforge", "eval", "--ckpt", str(best)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert scored.returncode == 0, scored.stderr
