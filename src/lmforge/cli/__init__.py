"""The `lmforge` command: one sub-module per command group, each mapping subcommands to library calls.

Command modules hold argument parsing and printing only; the work happens in the library. Heavy
imports (torch, tiktoken) happen inside the handlers, so `lmforge --help` is instant. A user mistake
(`LmforgeError`) prints one line and exits with status 2; a filesystem error (`OSError`: permission
denied, no space left, read-only file system, a path that is a file...) prints one line naming the path
and the problem and exits with status 1; Ctrl-C exits with 130 without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lmforge.errors import LmforgeError
from lmforge.version import __version__

# Each module defines `register(subparsers)`, adding its parsers with `set_defaults(func=handler)`.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "model",
    "convert",
    "tokenizer",
    "data",
    "scratch",
    "train",
    "recipe",
    "generate",
    "vision",
    "models",
    "serve",
    "interpret",
    "finetune",
    "encoder",
    "search",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train, evaluate, fine-tune and serve language models; every mechanism in plain code.",
        epilog="Run 'lmforge COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"lmforge.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LmforgeError as e:
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmforge tokenizer encode ... | head`
        return 0
    except OSError as e:
        print(f"lmforge {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1


def describe_os_error(error: OSError) -> str:
    """'PATH: problem' from an OSError, e.g. "out/meta.json: No space left on device"."""
    problem = error.strerror or str(error) or type(error).__name__
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {problem}" if paths else problem


if __name__ == "__main__":
    sys.exit(main())
