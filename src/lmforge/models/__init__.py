"""lmforge.models: the GPT language model (`gpt.py`), the BERT encoder (`bert.py`), their layers
(`layers.py`), the sequence classifier built on a GPT (`classifier.py`), LoRA adapters (`lora.py`) and HF
weight conversion (`convert.py`).

Image models live in `vision.py` (CNN, ResNet, ViT) and `generative.py` (VAE, GAN, DDPM); import them
from there.

`from lmforge.models import GPT, GPTConfig, BERT, BERTConfig, GPTClassifier, checkpoint_meta`.
"""

from lmforge.models.bert import BERT, BERTConfig
from lmforge.models.classifier import GPTClassifier, set_trainable
from lmforge.models.gpt import GPT, IGNORE_INDEX, GPTConfig, checkpoint_meta
from lmforge.models.layers import KVCache

__all__ = [
    "BERT",
    "GPT",
    "BERTConfig",
    "IGNORE_INDEX",
    "GPTClassifier",
    "GPTConfig",
    "KVCache",
    "checkpoint_meta",
    "set_trainable",
]
