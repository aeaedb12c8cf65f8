"""Tokenizers: byte-level BPE (trained, or imported from GPT-2 / tiktoken / HF tokenizer.json files),
BERT's WordPiece (trained, or read from vocab.txt / HF tokenizer.json), character-level, and their file
formats. See docs/tokenizer.md.

    from lmforge.tokenizers import BPETokenizer, load_tokenizer
    tok = BPETokenizer.train(texts, vocab_size=4096, pattern="gpt4")
    tok.save("tokenizer.json"); tok = load_tokenizer("tokenizer.json")

Modules, each importing only those above it: special, pretokenize -> base (the `Tokenizer` protocol,
tokenizer.json text, fingerprint) -> bpe, wordpiece, simple (the tokenizers) -> foreign (GPT-2, tiktoken and
Hugging Face files) -> formats (`load_tokenizer`). Nothing inside this package imports this `__init__`.
"""

from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.foreign import (
    export_hf,
    from_hf_file,
    from_tiktoken_file,
    gpt2_from_files,
    load_gpt2,
)
from lmforge.tokenizers.formats import load_tokenizer, tokenizer_from_dict
from lmforge.tokenizers.pretokenize import PATTERNS
from lmforge.tokenizers.simple import CharTokenizer
from lmforge.tokenizers.wordpiece import WordPieceEncoding, WordPieceTokenizer

__all__ = [
    "PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WordPieceEncoding",
    "WordPieceTokenizer",
    "export_hf",
    "from_hf_file",
    "from_tiktoken_file",
    "gpt2_from_files",
    "load_gpt2",
    "load_tokenizer",
    "tokenizer_from_dict",
]
