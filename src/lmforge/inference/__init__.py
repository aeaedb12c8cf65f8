"""Generation: token ids in, token ids out (`Engine`, `SamplingParams`); the text layer lives in `text.py`."""

from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams"]
