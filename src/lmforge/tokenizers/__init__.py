"""Tokenizers: byte-level BPE (trained, or imported from GPT-2 / tiktoken / HF tokenizer.json files),
character-level, and their file formats. See docs/tokenizer.md.

    from lmforge.tokenizers import BPETokenizer, load_tokenizer
    tok = BPETokenizer.train(texts, vocab_size=4096, pattern="gpt4")
    tok.save("tokenizer.json"); tok = load_tokenizer("tokenizer.json")
"""

from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.formats import (
    Tokenizer,
    from_hf_file,
    load_gpt2,
    load_tokenizer,
    tokenizer_from_dict,
)
from lmforge.tokenizers.pretokenize import PATTERNS
from lmforge.tokenizers.simple import CharTokenizer

__all__ = [
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "from_hf_file",
    "load_gpt2",
    "load_tokenizer",
    "tokenizer_from_dict",
]
