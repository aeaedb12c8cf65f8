"""The exceptions lmforge raises for problems a user can fix.

Each one carries a message that names the file or field and says what to do; `check` validates one
field and words that message the same way everywhere. The CLI prints the message on one line and exits
non-zero; anything that is *not* an `LmforgeError` is a bug in lmforge and keeps its traceback.
"""

from __future__ import annotations

import math
from pathlib import Path


class LmforgeError(Exception):
    """Base class: a user-facing problem with a clear message."""


class ConfigError(LmforgeError, ValueError):
    """A configuration value or command-line option is invalid."""


class FormatError(LmforgeError, ValueError):
    """A file we read is missing, corrupt, truncated, or of the wrong kind or version."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DataError(LmforgeError, ValueError):
    """Input data is unusable (empty corpus, bad record, missing field...)."""


class TokenizerError(LmforgeError, ValueError):
    """Text or ids that a tokenizer cannot handle (disallowed special token, id out of range...)."""


def check(ok: bool, name: str, value: object, rule: str) -> None:
    """Raise `ConfigError("{name}={value!r} is invalid; {rule}")` unless `ok`: the one shape of every
    validation message, so each names the field, the value given and what to use instead.

    Example: check(lr > 0, "optim.lr", -1.0, "use a positive number")
    -> ConfigError: optim.lr=-1.0 is invalid; use a positive number
    """
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid; {rule}")


def is_int(value: object, low: int | None = None) -> bool:
    """An int (not a bool), at least `low` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool): what a numeric config field accepts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
