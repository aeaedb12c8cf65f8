"""Generation: token ids in, token ids out (`Engine`, `SamplingParams`); the text layer lives in `text.py`,
the CPU weight layout (`for_cpu_inference`) in `cpu.py`."""

from lmforge.inference.cpu import for_cpu_inference
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "for_cpu_inference"]
