"""lmforge.models: the GPT language model (`gpt.py`), its layers (`layers.py`) and HF weight conversion.

Image models live in `vision.py` (CNN, ResNet, ViT) and `generative.py` (VAE, GAN, DDPM); import them
from there.

`from lmforge.models import GPT, GPTConfig, checkpoint_meta`.
"""

from lmforge.models.gpt import GPT, GPTConfig, checkpoint_meta
from lmforge.models.layers import KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "checkpoint_meta"]
