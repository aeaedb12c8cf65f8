"""Progress on long work that fits where it goes: a live tqdm bar in a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns; written to a log file, a pipe or CI it becomes one
ever-growing line (hundreds of redraws). `progress_bar(...)` therefore returns a real tqdm bar only when
its stream is a terminal, and otherwise a `PlainProgress` that prints one complete line at every tenth
of the work (or every `interval` seconds when the total is unknown) and a last line at the end.

Example of the plain output (training, 1,000 steps):
    train: 100/1000 step (10%) 12.3 step/s, loss=2.1, tok_s=8,400
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class PlainProgress:
    """The subset of tqdm's interface lmforge uses (update, set_postfix[_str], write, close), as lines."""

    def __init__(
        self,
        *,
        total: float | None,
        desc: str,
        unit: str,
        initial: float = 0,
        file: IO[str],
        interval: float = 30.0,
    ):
        self.total, self.desc, self.unit, self.file, self.interval = total, desc, unit.strip(), file, interval
        self.n = initial
        self._postfix = ""
        self._start = self._last_time = time.perf_counter()
        self._initial = initial
        self._last_tenth = self._tenth(initial)
        self._printed_at: float | None = None

    def _tenth(self, n: float) -> int:
        return int(10 * n / self.total) if self.total else 0

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        due = self._tenth(self.n) > self._last_tenth if self.total else now - self._last_time >= self.interval
        if due:
            self._print()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self._postfix = text

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._printed_at != self.n and self.n != self._initial:
            self._print()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _print(self) -> None:
        now = time.perf_counter()
        rate = (self.n - self._initial) / max(now - self._start, 1e-9)
        done = f"{self.n:,.0f}" + (
            f"/{self.total:,.0f} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else f" {self.unit}"
        )
        line = f"{self.desc + ': ' if self.desc else ''}{done} {rate:,.1f} {self.unit}/s"
        print(line + (f", {self._postfix}" if self._postfix else ""), file=self.file, flush=True)
        self._last_time, self._last_tenth, self._printed_at = now, self._tenth(self.n), self.n


def progress_bar(
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    initial: float = 0,
    disable: bool = False,
    file: IO[str] | None = None,
    **tqdm_options: Any,
) -> Any:
    """A tqdm bar on a terminal, a `PlainProgress` elsewhere, or a silent tqdm when `disable`."""
    from tqdm.auto import tqdm

    file = sys.stderr if file is None else file
    is_terminal = hasattr(file, "isatty") and file.isatty()
    if disable or is_terminal:
        return tqdm(
            total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file, **tqdm_options
        )
    return PlainProgress(total=total, desc=desc, unit=unit, initial=initial, file=file)
