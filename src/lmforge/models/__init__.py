"""lmforge.models: the GPT language model (`gpt.py`), its layers (`layers.py`) and HF weight conversion.

`from lmforge.models import GPT, GPTConfig, checkpoint_meta`.
"""

from lmforge.models.gpt import GPT, IGNORE_INDEX, GPTConfig, checkpoint_meta
from lmforge.models.layers import KVCache

__all__ = ["GPT", "IGNORE_INDEX", "GPTConfig", "KVCache", "checkpoint_meta"]
