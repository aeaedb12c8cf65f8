"""One tiny causal-LM training, run the same way by one process (in the test) and by each rank of a
torchrun job (`python -m torch.distributed.run ... tests/distributed_worker.py SPEC.json`).

SPEC.json is a list of runs, trained one after the other in one process group (a torchrun start costs
seconds on a shared 2-core machine): {"out_dir", "parallel", "batch_size", "accum", "max_iters",
"eval_interval", "resume"}. Each run leaves the usual run directory (metrics.csv, checkpoints/).
Synthetic tokens: a fixed random sequence with a repeating pattern, so the loss moves in 4 steps.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.data.datasets import RandomWindows, spread_windows
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.training.config import OptimSection, TrainSection
from lmforge.training.distributed import close_world, init_world
from lmforge.training.rng import seed_everything
from lmforge.training.trainer import evaluate_on_ranks, run_training

VOCAB, BLOCK = 32, 16


@dataclass
class Sections:
    optim: OptimSection
    train: TrainSection


def tokens(n: int, seed: int) -> np.ndarray:
    pattern = np.random.default_rng(seed).integers(0, VOCAB, 50)
    noise = np.random.default_rng(seed + 1).integers(0, VOCAB, n)
    return np.where(np.arange(n) % 3 == 0, noise, np.resize(pattern, n)).astype(np.uint16)


def train_run(run: dict) -> None:
    """Train one run as described in the module docstring (in whatever process group is open)."""
    seed_everything(0)  # the same initial weights on every rank (FSDP2 does not broadcast them)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    train = TrainSection(
        out_dir=run["out_dir"],
        max_iters=run["max_iters"],
        batch_size=run["batch_size"],
        grad_accum_steps=run["accum"],
        eval_interval=run["eval_interval"],
        log_interval=1,
        keep_last=10,
        precision="fp32",
        device="cpu",
        seed=0,
        peak_tflops=1.0,
        tensorboard=False,
        progress=False,
        parallel=run["parallel"],
        dist_timeout=60,
    )
    optim = OptimSection(lr=1e-2, min_lr=1e-3, warmup_iters=1, grad_clip=0.5)  # clipping active
    batches = RandomWindows(
        tokens(3000, 0),
        block_size=BLOCK,
        batch_size=run["batch_size"],
        seed=0,
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        accum_steps=run["accum"],
    )
    # 5 batches of 3 rows: 15 rows, so the ranks score 8 and 7 rows, in batches of 2 (+1 padding batch)
    windows = list(spread_windows(tokens(1000, 7), block_size=BLOCK, batch_size=3, num_batches=5))
    run_training(
        Sections(optim, train),
        model,
        batches,
        evaluate=lambda m: evaluate_on_ranks(m, windows, device=torch.device("cpu"), batch_size=2),
        resume=run.get("resume") or False,
    )


if __name__ == "__main__":
    world = init_world(device=torch.device("cpu"), timeout_s=60)
    for run in json.loads(Path(sys.argv[1]).read_text()):
        train_run(run)
    close_world(world)
