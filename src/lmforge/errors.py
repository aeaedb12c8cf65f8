"""The exceptions lmforge raises for problems a user can fix.

Each one carries a message that names the file or field and says what to do. The CLI prints the
message on one line and exits non-zero; anything that is *not* an `LmforgeError` is a bug in lmforge
and keeps its traceback.
"""

from __future__ import annotations

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
