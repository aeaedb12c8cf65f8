"""Where the shipped configs are, so that `--config` defaults work from any directory.

The presets live in the repository's `configs/` folder. A default such as `configs/arithmetic.toml` is
first looked up relative to the working directory (a user's own copy wins), then in the `configs/` folder
beside the source tree lmforge runs from (an editable install, as `make` sets up).
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY_CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def shipped_config(path: str) -> str:
    """`path` if it exists here, else the shipped config of that name when there is one, else `path`
    unchanged (the reader then says it is missing)."""
    if Path(path).exists() or not path.startswith("configs/"):
        return path
    shipped = REPOSITORY_CONFIGS / Path(path).name
    return str(shipped) if shipped.is_file() else path
