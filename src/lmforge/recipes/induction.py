"""Induction heads appear with two attention layers and not with one: train both, test both.

The recipe (`run_recipe`, driven by `lmforge recipe induction`):

1. Data. Each training row is `seq_len + 1` uniform random tokens in which one random span (length
   `min_span` .. seq_len // 2, at a random place) is copied once further along. Only the copy is
   predictable, and only by finding the earlier occurrence of the current token and reading the token
   after it. Span lengths and places vary so that no fixed positional offset solves the task.
2. Models. Attention-only GPTs (`GPTConfig.attn_only`) with ALiBi positions, identical except for the
   number of layers (`layers`, default 1 and 2), trained on the same batches with lmforge's trainer.
3. Test. `lmforge.interpret.induction` on repeated random sequences (N tokens, then the same N again):
   each head's induction score, the in-context loss drop on the repeat, and the last layer's strongest
   fixed-distance look-back (the largest mean weight on one key t - d, d >= 2, and where: t - N + shift).

Why one layer is not enough (Elhage et al. 2021): an induction head's query (current token) must match
a key that holds "the token before me", which exists only after an earlier head has moved the previous
token into the stream (K-composition). A single layer's keys see token and position only, so the best
it can do is a positional guess or favouring tokens already seen.

Why ALiBi: with rotary positions the two-layer models learned the repeat just as well but built a
shifted circuit (layer-0 heads copying the token 7 or 8 back, layer-1 heads attending to t - N + 7), so
the standard score, which reads only t - N + 1, stayed below the one-layer model's; with learned
positions they learned little in the same budget. ALiBi's penalty is monotone in distance, so it has no
far offset that looks like a near one, and its steepest head (slope 1/4) already averages the last few
tokens, most weight on the nearest: layer 1 builds its induction heads on that, at t - N + 1
(docs/interpret.md, "Induction heads").

Deliberately not here: the analysis itself (`lmforge.interpret.induction`), natural-text training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import check, is_int
from lmforge.fileio import atomic_write_json, save_figure
from lmforge.training.config import OptimSection, TrainSection


@dataclass
class InductionConfig:
    """[induction] of configs/induction.toml."""

    layers: list[int] = field(default_factory=lambda: [1, 2])  # one model per entry, with this many layers
    vocab_size: int = 128  # random tokens 0 .. vocab_size - 1
    seq_len: int = 32  # training context length
    min_span: int = 4  # shortest copied span
    n_head: int = 4  # heads per layer
    n_embd: int = 64  # residual stream width
    pos_encoding: str = "alibi"  # "alibi" | "rope" | "learned" | "sinusoidal" (GPTConfig.pos_encoding)
    test_half: int = 14  # N of the repeated-random test (2N tokens, at most seq_len)
    test_rows: int = 64  # sequences in the test

    def __post_init__(self) -> None:
        check(
            isinstance(self.layers, list) and len(self.layers) > 0 and all(is_int(n, 1) for n in self.layers),
            "induction.layers",
            self.layers,
            "use a list of positive layer counts, e.g. [1, 2]",
        )
        for name in ("vocab_size", "seq_len", "min_span", "n_head", "n_embd", "test_half", "test_rows"):
            check(
                is_int(getattr(self, name), 1),
                f"induction.{name}",
                getattr(self, name),
                "use a positive integer",
            )
        check(
            2 <= self.min_span <= self.seq_len // 2,
            "induction.min_span",
            self.min_span,
            f"use a length between 2 and seq_len // 2 ({self.seq_len // 2})",
        )
        check(
            2 * self.test_half <= self.seq_len,
            "induction.test_half",
            self.test_half,
            f"use at most seq_len / 2 ({self.seq_len // 2})",
        )
        check(
            self.n_embd % self.n_head == 0,
            "induction.n_embd",
            self.n_embd,
            f"use a multiple of n_head ({self.n_head})",
        )


@dataclass
class RecipeConfig:
    """configs/induction.toml: [induction] plus the trainer's [optim] and [train] (one run per model,
    in `train.out_dir`/layers{n})."""

    induction: InductionConfig
    optim: OptimSection
    train: TrainSection


class SpanCopyBatches:
    """Random rows with one copied span: `next_batch() -> (x, y)`, int64 (B, seq_len) each.

    Batch k is a pure function of (seed, k); `state_dict()` is the batch counter.
    Example (seq_len + 1 = 10, span 3 at 1 copied to 6): [7 2 9 4 0 5 2 9 4 1].
    """

    def __init__(self, task: InductionConfig, *, batch_size: int, seed: int):
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.batches_drawn = 0

    def next_batch(self) -> tuple[Any, Any]:
        import torch

        rng = np.random.default_rng([self.seed, self.batches_drawn])
        self.batches_drawn += 1
        length = self.task.seq_len + 1
        rows = rng.integers(self.task.vocab_size, size=(self.batch_size, length))
        for row in rows:
            span = int(rng.integers(self.task.min_span, self.task.seq_len // 2 + 1))
            source = int(rng.integers(0, length - 2 * span + 1))
            target = int(rng.integers(source + span, length - span + 1))
            row[target : target + span] = row[source : source + span]
        tokens = torch.from_numpy(rows)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.batches_drawn = int(state["seed"]), int(state["batches_drawn"])


def run_recipe(
    config: RecipeConfig, *, log: Callable[[str], None] = print, overwrite: bool = False
) -> dict[str, Any]:
    """Train one attention-only model per `induction.layers` entry and test each; returns (and writes to
    `train.out_dir`/results.json) the per-head scores, the losses and the loss drop of every model, plus
    plots/induction.png (loss by position on the repeated test, all models)."""
    import dataclasses

    import torch

    from lmforge.interpret.induction import induction_report, repeated_random_tokens
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.training.rng import seed_everything
    from lmforge.training.trainer import run_training

    task = config.induction
    out_dir = Path(config.train.out_dir)
    test_ids = repeated_random_tokens(task.vocab_size, task.test_half, batch_size=task.test_rows, seed=12345)
    results: dict[str, Any] = {"chance_loss": float(np.log(task.vocab_size)), "models": {}}
    curves: dict[int, torch.Tensor] = {}
    for n_layer in task.layers:
        seed_everything(config.train.seed)
        model_config = GPTConfig(
            vocab_size=task.vocab_size,
            block_size=task.seq_len,
            n_layer=n_layer,
            n_head=task.n_head,
            n_embd=task.n_embd,
            pos_encoding=task.pos_encoding,
            attn_only=True,
        )
        model = GPT(model_config)
        run = dataclasses.replace(
            config, train=dataclasses.replace(config.train, out_dir=str(out_dir / f"layers{n_layer}"))
        )
        batches = SpanCopyBatches(task, batch_size=config.train.batch_size, seed=config.train.seed)
        log(f"training a {n_layer}-layer attention-only model ({model.num_params():,} parameters)")
        run_training(run, model, batches, checkpoint_meta={"recipe": "induction"}, overwrite=overwrite)
        model.eval()
        report = induction_report(model, test_ids)
        curves[n_layer] = report.loss_by_position
        best = int(report.scores.argmax())
        layer, head = divmod(best, task.n_head)
        # last layer (where induction heads sit), keys t - 2 .. t - N (beyond the local heads): (nh, N - 1)
        far = report.by_offset[-1, :, 2:]
        peak_head, peak_d = divmod(int(far.argmax()), far.shape[1])
        results["models"][str(n_layer)] = {
            "scores": report.scores.tolist(),
            "max_score": float(report.scores.max()),
            "max_head": [layer, head],
            "by_offset": report.by_offset.tolist(),
            # the last layer's strongest fixed-distance look-back: weight, [layer, head], key t - N + shift
            "peak": float(far.max()),
            "peak_head": [n_layer - 1, peak_head],
            "peak_shift": task.test_half - (peak_d + 2),
            "loss_first": report.loss_first,
            "loss_second": report.loss_second,
            "loss_drop": report.loss_drop,
        }
    atomic_write_json(out_dir / "results.json", results)
    plot_loss_by_position(curves, task.test_half, results["chance_loss"], out_dir / "plots" / "induction.png")
    return results


def results_table(results: dict[str, Any]) -> str:
    """One line per model: best induction score (and where), losses on both copies, the drop, and the
    strongest fixed-distance look-back of a last-layer head (weight, head, key position t - N + shift)."""
    lines = [
        f"{'layers':>6} {'best score':>10} {'at':>6} {'loss 1st':>8} {'loss 2nd':>8} {'drop':>6} "
        f"{'peak':>6} {'at':>6} {'key':>9}"
    ]
    for n_layer, r in results["models"].items():
        where = f"L{r['max_head'][0]}H{r['max_head'][1]}"
        peak_at = f"L{r['peak_head'][0]}H{r['peak_head'][1]}"
        key = f"t-N{r['peak_shift']:+d}"
        lines.append(
            f"{n_layer:>6} {r['max_score']:>10.3f} {where:>6} {r['loss_first']:>8.3f} "
            f"{r['loss_second']:>8.3f} {r['loss_drop']:>6.3f} {r['peak']:>6.3f} {peak_at:>6} {key:>9}"
        )
    return "\n".join(lines) + f"\n(chance loss ln V = {results['chance_loss']:.3f})"


def plot_loss_by_position(curves: dict[int, Any], half: int, chance: float, path: Path) -> Path:
    """Mean next-token loss at each position of the repeated test, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3), dpi=80)
    for n_layer, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve.numpy(), label=f"{n_layer} layer{'s' if n_layer > 1 else ''}")
    ax.axhline(chance, color="gray", linestyle=":", label="ln V (chance)")
    ax.axvline(half, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("position of the predicted token (repeat starts at the dashed line)")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
