"""lmforge: from raw text to a trained, evaluated, fine-tuned and served language model.

Every mechanism on that path (tokenizers, data pipeline, models, training, generation) is implemented
here in readable code; PyTorch supplies tensors and autograd. Sub-packages are imported on demand so
that `import lmforge` stays cheap for the command line.
"""

from __future__ import annotations

import random

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "seed_everything"]


def __getattr__(name: str):
    """`lmforge.generate` (lmforge.inference.text), imported on first use so `import lmforge` stays cheap."""
    if name == "generate":
        from lmforge.inference.text import generate

        return generate
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices) so that a run can be repeated."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
