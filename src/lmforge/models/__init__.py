"""lmforge.models: the GPT language model (`gpt.py`), its layers (`layers.py`), the sequence classifier
built on it (`classifier.py`), LoRA adapters (`lora.py`) and HF weight conversion (`convert.py`).

Image models live in `vision.py` (CNN, ResNet, ViT) and `generative.py` (VAE, GAN, DDPM); import them
from there.

`from lmforge.models import GPT, GPTConfig, GPTClassifier, checkpoint_meta`.
"""

from lmforge.models.classifier import GPTClassifier, set_trainable
from lmforge.models.gpt import GPT, IGNORE_INDEX, GPTConfig, checkpoint_meta
from lmforge.models.layers import KVCache

__all__ = ["GPT", "IGNORE_INDEX", "GPTClassifier", "GPTConfig", "KVCache", "checkpoint_meta", "set_trainable"]
