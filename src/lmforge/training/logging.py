"""What a run shows and leaves behind: progress bar, `metrics.csv`, TensorBoard events, PNG plots, MFU.

`RunLogger` receives rows of metrics (`log(step, "train" | "val", {...})`) and fans them out:
- a progress bar whose postfix shows loss, tokens/s and MFU (tqdm in a terminal, a plain line per
  tenth of the run in a log or CI: `lmforge.progress`);
- `metrics.csv` (one row per log line, a fixed set of columns so the file is easy to read in pandas);
- TensorBoard scalars under `events/` (`tensorboard --logdir RUN_DIR/events`);
- `plots/loss.png`, `plots/lr.png`, `plots/grad_norm.png` (matplotlib, Agg backend: no display needed).

The rows are also kept in memory (`history`) and saved in each checkpoint, so a resumed run rewrites
`metrics.csv` to exactly the rows up to its checkpoint and continues from there. Only the main rank
logs: other ranks create a disabled logger (`enabled=False`) and every method is a no-op.

MFU (model FLOPs utilisation) = achieved FLOP/s / peak FLOP/s, with achieved = tokens/s x model FLOPs
per token (6N + attention, from the model) and the peak measured with a large matmul in the run's
precision (Chowdhery et al. 2022, PaLM, appendix B).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.fileio import atomic_write_text

COLUMNS = (
    "step",
    "split",
    "loss",
    "ppl",
    "bpb",
    "accuracy",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "elapsed_s",
    "skipped",
)


def measure_matmul_peak(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    size: int = 1024,
    seconds: float = 0.5,
) -> float:
    """FLOP/s of repeated (size x size) @ (size x size) matmuls: the practical peak for the MFU estimate."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pools, kernels
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 3:
        a @ b
        count += 1
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
    return 2 * size**3 * count / elapsed


class RunLogger:
    """Progress bar + metrics.csv + TensorBoard + plots for one run directory (see module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        initial_step: int = 0,
        history: list[dict[str, Any]] | None = None,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.history: list[dict[str, Any]] = list(history or [])
        self._bar = None
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        # Rewrite the CSV from the history: on resume this drops rows written after the checkpoint.
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.csv_path, buffer.getvalue())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events at or after the resumed step left by the interrupted run
            self._tb = SummaryWriter(str(self.run_dir / "events"), purge_step=initial_step or None)
        if progress:
            from lmforge.progress import progress_bar

            self._bar = progress_bar(
                total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True
            )

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record one row: CSV, TensorBoard (`split/name`), history, and the bar's postfix for train rows."""
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: _round(v) for k, v in metrics.items()}}
        self.history.append(row)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(f"{split}/{name}", value, step)
        if self._bar is not None and split == "train":
            shown = {"loss": f"{metrics['loss']:.4f}", "tok_s": f"{metrics.get('tokens_per_s', 0):,.0f}"}
            if "mfu" in metrics:  # only for a model that counts its FLOPs
                shown["mfu"] = f"{100 * metrics['mfu']:.1f}%"
            self._bar.set_postfix(refresh=False, **shown)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def plot(self) -> list[Path]:
        """Write the PNG plots from the history; returns their paths."""
        if not self.enabled or not self.history:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = self.run_dir / "plots"
        out.mkdir(exist_ok=True)
        train = [r for r in self.history if r["split"] == "train"]
        evals = [r for r in self.history if r["split"] != "train"]
        written = []
        for name, series, ylabel in (
            ("loss", [("train", train, "loss"), ("eval", evals, "loss")], "loss (nats/token)"),
            ("lr", [("lr", train, "lr")], "learning rate"),
            ("grad_norm", [("grad norm", train, "grad_norm")], "global gradient norm (before clipping)"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
            for label, rows, key in series:
                points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), label=label, marker="o" if rows is evals else None)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend()
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
        return written

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def _round(value: float) -> float:
    """Six significant digits keep metrics.csv readable without losing anything a plot could show."""
    return float(f"{value:.6g}") if isinstance(value, float) else value
