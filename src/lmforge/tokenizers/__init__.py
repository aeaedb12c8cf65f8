"""Tokenizers: byte-level BPE (trained or imported), character-level, and their file formats."""
