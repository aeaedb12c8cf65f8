"""Progress fits where it goes: a tqdm bar on a terminal, a plain line per tenth of the work elsewhere."""

from __future__ import annotations

import io

from lmforge.progress import PlainProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_plain_line_per_tenth_and_no_redraws():
    out = io.StringIO()
    bar = progress_bar(total=600, desc="train", unit="step", file=out)
    assert isinstance(bar, PlainProgress)
    for step in range(600):
        bar.set_postfix(loss=f"{3 - step / 600:.2f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10  # at 60, 120, ..., 600 steps; close() adds nothing after the last
    assert lines[0].startswith("train: 60/600 step (10%)") and lines[-1].startswith(
        "train: 600/600 step (100%)"
    )
    assert lines[-1].endswith("loss=2.00")


def test_close_prints_the_last_position_once_and_a_resumed_run_counts_from_its_start():
    out = io.StringIO()
    with progress_bar(total=100, initial=50, desc="train", unit="step", file=out) as bar:
        bar.update(3)  # 53: not yet a new tenth
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("train: 53/100 step (53%)")


def test_a_terminal_gets_tqdm():
    bar = progress_bar(total=10, file=_Terminal())
    from tqdm import tqdm

    assert isinstance(bar, tqdm) and not isinstance(bar, PlainProgress)
    bar.close()


def test_the_run_logger_shows_mfu_only_for_a_model_that_counts_flops(tmp_path, capsys):
    from lmforge.training.logging import RunLogger

    logger = RunLogger(tmp_path, total_steps=2, tensorboard=False)
    logger.log(1, "train", {"loss": 1.0, "tokens_per_s": 10.0})
    logger.advance()
    logger.log(2, "train", {"loss": 0.5, "tokens_per_s": 20.0, "mfu": 0.25})
    logger.advance()
    logger.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    assert lines[0].endswith("loss=1.0000, tok_s=10") and lines[-1].endswith("tok_s=20, mfu=25.0%")
