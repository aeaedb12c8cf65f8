"""lmforge: from raw text to a trained, evaluated, fine-tuned and served language model.

Every mechanism on that path (tokenizers, data pipeline, models, training, generation) is implemented
here in readable code; PyTorch supplies tensors and autograd. Sub-packages are imported on demand so
that `import lmforge` stays cheap for the command line.
"""

from __future__ import annotations

from lmforge.version import __version__

__all__ = ["__version__", "embed", "generate", "seed_everything"]


def __getattr__(name: str):
    """`lmforge.generate`, `lmforge.embed` and `lmforge.seed_everything`, imported on first use so
    `import lmforge` stays cheap; they live in `lmforge.inference.text`, `lmforge.inference.encoder` and
    `lmforge.training.rng`."""
    if name == "embed":
        from lmforge.inference.encoder import embed

        return embed
    if name == "generate":
        from lmforge.inference.text import generate

        return generate
    if name == "seed_everything":
        from lmforge.training.rng import seed_everything

        return seed_everything
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
