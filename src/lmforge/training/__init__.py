"""Training: configs, optimizers and schedules, the loop, checkpoints, and what a run logs.

    from lmforge.training import Trainer, build_optimizer, load_config, train_from_config
    train_from_config(load_config("configs/shakespeare-char.toml", overrides=["train.max_iters=100"]))

`Trainer(model, optimizer, batches, optim=..., train=..., evaluate=...)` takes any batch source with
`next_batch()/state_dict()/load_state_dict()` and any eval callable, so recipes with their own data
(answer-only loss masks, SFT) reuse the same loop. See docs/training.md.
"""

from lmforge.training.checkpoint import CheckpointManager, restore_training_state, save_checkpoint
from lmforge.training.config import (
    Config,
    DataSection,
    ModelSection,
    OptimSection,
    TrainSection,
    config_from_dict,
    load_config,
    to_toml,
)
from lmforge.training.optim import build_optimizer, lr_at, param_groups
from lmforge.training.rng import seed_everything
from lmforge.training.trainer import (
    BatchSource,
    Trainer,
    TrainingDiverged,
    TrainResult,
    accumulate_gradients,
    run_training,
    train_from_config,
)

__all__ = [
    "BatchSource",
    "CheckpointManager",
    "Config",
    "DataSection",
    "ModelSection",
    "OptimSection",
    "TrainResult",
    "TrainSection",
    "Trainer",
    "TrainingDiverged",
    "accumulate_gradients",
    "build_optimizer",
    "config_from_dict",
    "load_config",
    "lr_at",
    "param_groups",
    "restore_training_state",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "to_toml",
    "train_from_config",
]
