"""WordPiece, BERT's tokenizer: its normalizer and pre-tokenizer, greedy longest-match-first encoding into
`##` pieces, model inputs (`[CLS] a [SEP] b [SEP]`, token types, truncation, padding, attention masks,
character offsets), BERT `vocab.txt` and Hugging Face `tokenizer.json` files, and training.

Text goes through three steps, as in BERT's own tokenizer and HF `tokenizers`' `BertNormalizer` +
`BertPreTokenizer` + `WordPiece` model:
1. normalize, character by character: drop NUL, U+FFFD and control/format/unassigned/private-use
   characters (Unicode "C*" categories, except tab, newline and carriage return); turn whitespace into a
   space; if `strip_accents`, decompose (NFD) and drop non-spacing marks ("é" -> "e"); if `lowercase`, lower
   each character. Each normalized character remembers the original character it came from, which gives
   the offsets. `strip_accents=None` means "same as lowercase", as in BERT's uncased models.
2. pre-tokenize: split on whitespace, then every punctuation character (Unicode "P*" categories, plus all
   ASCII symbols such as `$+<=>^`|~`) and every CJK ideograph is a word of its own.
3. per word, greedy longest-match-first: take the longest vocabulary entry that starts the word, then
   the longest `##`-prefixed entry that continues it, and so on. A word with a position no entry covers,
   or longer than `max_input_chars_per_word` (100, as BERT), becomes one `[UNK]`.
   Example with vocab {hu, ##gg, ##ing, ##i, ##n, ##g}: "hugging" -> hu ##gg ##ing.

The `Tokenizer` protocol (base.py) and this class: `encode_ordinary(text)` returns the plain ids of a
text (no [CLS]/[SEP]), which is what data preparation and `tokenizer encode` use for every kind;
`encode(text, pair=None, ...)` returns model inputs, a `WordPieceEncoding` (ids with [CLS]/[SEP], token
types, attention mask, offsets), as BERT tokenizers do. That is a richer return type than the protocol's
`encode -> list[int]`, on purpose: an encoder's input is more than its ids. Special-token text in the
input ("[MASK]") follows the house policy of special.py: refused unless `allowed_special` lets it through.

Training (`train_vocab`, readable; `train_vocab_fast`, the same result quickly), as the algorithm is
taught (Schuster & Nakajima 2012; the Hugging Face course's WordPiece chapter): count the words of the
pre-tokenized corpus; the vocabulary starts as the special tokens, then the sorted alphabet of first
characters and `##`-prefixed continuation characters; every word is split into those characters; then
repeatedly merge the adjacent pair with the highest score freq(pair) / (freq(first) * freq(second))
(ties: the first pair met, scanning words in order of first appearance and each word left to right)
until the vocabulary has `vocab_size` entries or no pair is left. Merging "a"+"##b" makes "ab",
"##a"+"##b" makes "##ab". A merge whose token already exists adds nothing new to the vocabulary.

Deliberately not here: overflowing windows/stride, left padding, other pre-tokenizers (only BERT's), a
byte fallback. Reading lmforge's tokenizer.json of any kind: formats.py.

References: Schuster & Nakajima 2012 (WordPiece); Wu et al. 2016 (GNMT); Devlin et al. 2019 (BERT,
`tokenization.py`); Hugging Face course, chapter 6.6 (WordPiece tokenization).
"""

from __future__ import annotations

import heapq
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import regex

from lmforge.errors import ConfigError, DataError, FormatError, TokenizerError
from lmforge.fileio import atomic_write_json, atomic_write_text, read_json
from lmforge.tokenizers.base import FORMAT_VERSION, fingerprint, read_training_text, save_tokenizer_dict
from lmforge.tokenizers.special import AllowedSpecial, check_disallowed, resolve_allowed, split_on_special

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PREFIX = "##"  # marks a piece that continues a word
MAX_WORD_CHARS = 100  # longer words become [UNK] (BERT's max_input_chars_per_word)

# ---------------------------------------------------------------------------------------------------
# Normalizer and pre-tokenizer

_ASCII_PUNCT = r"!-/:-@\[-`{-~"
_CJK = (
    r"\u4E00-\u9FFF\u3400-\u4DBF\U00020000-\U0002A6DF\U0002A700-\U0002B73F\U0002B740-\U0002B81F"
    r"\U0002B820-\U0002CEAF\uF900-\uFAFF\U0002F800-\U0002FA1F"
)
# One word = a run of characters that are neither space, punctuation nor CJK; punctuation and CJK alone.
_WORDS = regex.compile(rf"[^\s\p{{P}}{_ASCII_PUNCT}{_CJK}]+|[\p{{P}}{_ASCII_PUNCT}{_CJK}]")
_WORDS_NO_CJK = regex.compile(rf"[^\s\p{{P}}{_ASCII_PUNCT}]+|[\p{{P}}{_ASCII_PUNCT}]")
_CHUNKS = re.compile(r"\S+")  # after normalization every whitespace character is a space, tab or newline
_ASCII_CONTROL = regex.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _normalize_char(c: str, *, lowercase: bool, strip_accents: bool) -> str:
    """What one character becomes: "" (dropped), " " (whitespace), or its text.

    Examples (lowercase, strip_accents): "É" -> "e"; "\\x00" -> ""; "\\u00a0" -> " "; "한" -> 3 jamo.
    """
    if c in "\t\n\r":
        return " "
    if c in "\x00\ufffd" or unicodedata.category(c).startswith("C"):
        return ""
    if c.isspace():
        return " "
    if strip_accents:
        c = "".join(d for d in unicodedata.normalize("NFD", c) if unicodedata.category(d) != "Mn")
    return c.lower() if lowercase else c


@dataclass
class BertNormalizer:
    """BERT's normalizer and pre-tokenizer (module docstring, steps 1 and 2), with offsets."""

    lowercase: bool = True
    strip_accents: bool = True
    handle_chinese_chars: bool = True
    _table: dict[int, str] = field(default_factory=dict, repr=False)  # code point -> changed text
    _seen: set[str] = field(default_factory=set, repr=False)

    def _translation(self, text: str) -> dict[int, str]:
        for c in set(text) - self._seen:
            self._seen.add(c)
            normalized = _normalize_char(c, lowercase=self.lowercase, strip_accents=self.strip_accents)
            if normalized != c:
                self._table[ord(c)] = normalized
        return self._table

    def normalize(self, text: str) -> tuple[str, list[int] | None]:
        """The normalized text and, for each of its characters, the index of the original character it
        came from (None when that is the identity, the common case)."""
        if text.isascii() and not _ASCII_CONTROL.search(text):  # fast path: only case can change
            return (text.lower() if self.lowercase else text), None
        table = self._translation(text)
        normalized = text.translate(table)
        if len(normalized) == len(text) and all(len(table.get(ord(c), c)) == 1 for c in set(text)):
            return normalized, None
        origin: list[int] = []
        for i, c in enumerate(text):
            origin.extend([i] * len(table.get(ord(c), c)))
        return normalized, origin

    def words(self, text: str) -> list[tuple[str, int, int]]:
        """(word, start, end) of each pre-tokenized word, start/end in characters of the original text.

        Example (lowercase): "Hi, you!" -> [("hi", 0, 2), (",", 2, 3), ("you", 4, 7), ("!", 7, 8)].
        """
        normalized, origin = self.normalize(text)
        pattern = _WORDS if self.handle_chinese_chars else _WORDS_NO_CJK
        if origin is None:
            return [(m.group(), m.start(), m.end()) for m in pattern.finditer(normalized)]
        return [(m.group(), origin[m.start()], origin[m.end() - 1] + 1) for m in pattern.finditer(normalized)]

    def chunk_words(self, chunk: str) -> list[str]:
        """The words of a whitespace-free chunk of normalized text. Example: "hi," -> ["hi", ","]."""
        if chunk.isascii() and chunk.isalnum():  # fast path: a plain ASCII word
            return [chunk]
        return (_WORDS if self.handle_chinese_chars else _WORDS_NO_CJK).findall(chunk)


# ---------------------------------------------------------------------------------------------------
# Model inputs

# The decoder's cleanup, applied to each piece after its joining space is added (HF's WordPiece decoder).
_CLEANUP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


@dataclass
class WordPieceEncoding:
    """One model input. Lists are parallel; a pair's second text has token type 1. Padding has id
    `[PAD]`, type 0, mask 0 and offsets (0, 0); special tokens have offsets (0, 0). Offsets are character
    positions in the text the token came from (the first text or the pair)."""

    ids: list[int]
    tokens: list[str]
    token_type_ids: list[int]
    attention_mask: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


def _truncate_pair(n_first: int, n_second: int, budget: int) -> tuple[int, int]:
    """Lengths kept by "longest first", as HF `tokenizers` does it: a text that fits in half the budget
    keeps all its tokens and the other gets the rest; when both are longer, the shorter gets the floor
    of half the budget and the longer the remainder (the second, on a tie).

    Examples with budget 7: (10, 2) -> (5, 2); (2, 10) -> (2, 5); (10, 9) -> (4, 3); (9, 9) -> (3, 4).
    """
    if n_first + n_second <= budget:
        return n_first, n_second
    if n_first > n_second:
        keep_second = min(n_second, max(budget - n_first, budget // 2))
        return budget - keep_second, keep_second
    keep_first = min(n_first, max(budget - n_second, budget // 2))
    return keep_first, budget - keep_first


# ---------------------------------------------------------------------------------------------------
# The tokenizer


class WordPieceTokenizer:
    """BERT's WordPiece tokenizer (module docstring).

    Example: tok = WordPieceTokenizer.from_vocab_file("vocab.txt"); tok.tokenize("Hugging")
    -> ["hugging"] with bert-base-uncased's vocab; tok.encode("a", pair="b").token_type_ids
    -> [0, 0, 0, 1, 1].
    """

    kind = "wordpiece"

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_chinese_chars: bool = True,
        max_input_chars_per_word: int = MAX_WORD_CHARS,
        special_tokens: Sequence[str] | None = None,
    ):
        tokens = list(vocab)
        if len(set(tokens)) != len(tokens):
            duplicate = next(t for t, n in Counter(tokens).items() if n > 1)
            raise TokenizerError(f"the vocabulary lists {duplicate!r} twice")
        if not all(isinstance(t, str) and t for t in tokens):
            raise TokenizerError("vocabulary entries must be non-empty strings")
        if UNK not in tokens:
            raise TokenizerError(
                f"the vocabulary has no {UNK} token, which WordPiece needs for unknown words"
            )
        self.vocab: list[str] = tokens  # the tokens in id order
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        names = SPECIAL_TOKENS if special_tokens is None else tuple(special_tokens)
        self.special_tokens: dict[str, int] = {t: self.token_to_id[t] for t in names if t in self.token_to_id}
        self.vocab_size: int = len(tokens)
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.handle_chinese_chars = handle_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.normalizer = BertNormalizer(lowercase, self.strip_accents, handle_chinese_chars)
        self.unk_id = self.token_to_id[UNK]
        self._max_token_chars = max(len(t) for t in tokens)
        # whitespace-free chunk of normalized text -> (ids, (start, end) of each within the chunk)
        self._chunk_cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_vocab_file(
        cls, path: str | Path, *, lowercase: bool = True, strip_accents: bool | None = None
    ) -> WordPieceTokenizer:
        """Read BERT's `vocab.txt`: one token per line, the line number is the id. An uncased model
        (e.g. bert-base-uncased, all-MiniLM-L6-v2) needs lowercase=True, a cased one lowercase=False."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise FormatError(path, "vocab file not found") from None
        except IsADirectoryError:
            raise FormatError(path, "expected a vocab.txt file, found a directory") from None
        except UnicodeDecodeError as e:
            raise FormatError(path, f"vocab file is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise FormatError(path, f"cannot read vocab file: {e.strerror}") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        tokens = [line.removesuffix("\r") for line in lines]
        if not tokens:
            raise FormatError(path, "vocab file is empty")
        seen: dict[str, int] = {}
        for number, token in enumerate(tokens, start=1):
            if not token.strip():
                raise FormatError(path, f"line {number} is empty; every line must hold one token")
            if token in seen:
                raise FormatError(path, f"line {number} repeats {token!r} from line {seen[token]}")
            seen[token] = number
        if UNK not in seen:
            raise FormatError(
                path, f"the vocabulary has no {UNK} line, which WordPiece needs for unknown words"
            )
        return cls(tokens, lowercase=lowercase, strip_accents=strip_accents)

    def save_vocab(self, path: str | Path) -> None:
        """Write BERT's `vocab.txt` (one token per line, in id order)."""
        atomic_write_text(path, "".join(t + "\n" for t in self.vocab))

    # --- text to pieces ----------------------------------------------------------------------------

    def _word_pieces(self, word: str) -> list[tuple[int, int, int]]:
        """(id, start, end) of each piece, start/end in characters of the normalized word; one [UNK]
        covering the word when it cannot be built. Example: "hugging" -> [(id("hu"), 0, 2), (id("##gg"),
        2, 4), (id("##ing"), 4, 7)]."""
        n = len(word)
        pieces = []
        if n > self.max_input_chars_per_word:
            pieces = [(self.unk_id, 0, n)]
        else:
            start = 0
            while start < n:
                end = min(n, start + self._max_token_chars)
                while end > start:
                    piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                    token_id = self.token_to_id.get(piece)
                    if token_id is not None:
                        pieces.append((token_id, start, end))
                        break
                    end -= 1
                if end == start:  # nothing matches here: the whole word is unknown
                    pieces = [(self.unk_id, 0, n)]
                    break
                start = end
        return pieces

    def _chunk_pieces(self, chunk: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of a whitespace-free chunk of normalized text and their spans in it, cached (a text repeats
        its chunks). Example: "hugging," -> ([hu, ##gg, ##ing, ","], [(0, 2), (2, 4), (4, 7), (7, 8)])."""
        cached = self._chunk_cache.get(chunk)
        if cached is not None:
            return cached
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        if chunk.isascii() and chunk.isalnum():  # fast path: one plain ASCII word
            words = [(chunk, 0)]
        else:
            pattern = _WORDS if self.handle_chinese_chars else _WORDS_NO_CJK
            words = [(m.group(), m.start()) for m in pattern.finditer(chunk)]
        for word, base in words:
            for token_id, start, end in self._word_pieces(word):
                ids.append(token_id)
                spans.append((base + start, base + end))
        if len(self._chunk_cache) < 500_000:
            self._chunk_cache[chunk] = ids, spans
        return ids, spans

    def _encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and offsets of ordinary text (no special tokens)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        normalized, origin = self.normalizer.normalize(text)
        for match in _CHUNKS.finditer(normalized):
            chunk_ids, spans = self._chunk_pieces(match.group())
            base = match.start()
            ids += chunk_ids
            if origin is None:
                offsets += [(base + start, base + end) for start, end in spans]
            else:
                offsets += [(origin[base + start], origin[base + end - 1] + 1) for start, end in spans]
        return ids, offsets

    def _encode_segment(
        self, text: str, allowed_special: AllowedSpecial
    ) -> tuple[list[int], list[tuple[int, int]]]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        check_disallowed(text, self.special_tokens, allowed)
        if not allowed:
            return self._encode_text(text)
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        position = 0
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
                offsets.append((position, position + len(piece)))
            else:
                piece_ids, piece_offsets = self._encode_text(piece)
                ids += piece_ids
                offsets += [(s + position, e + position) for s, e in piece_offsets]
            position += len(piece)
        return ids, offsets

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text`, e.g. ["hu", "##gging"]; no [CLS]/[SEP]."""
        return [self.vocab[i] for i in self.encode_ordinary(text)]

    def encode_ordinary(self, text: str) -> list[int]:
        """The ids of `text`, without [CLS]/[SEP]; special-token text is encoded as plain text. No
        offsets, so the chunks come from `str.split` (faster than the regex that gives positions)."""
        ids: list[int] = []
        for chunk in self.normalizer.normalize(text)[0].split():
            ids += self._chunk_pieces(chunk)[0]
        return ids

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    # --- model inputs ------------------------------------------------------------------------------

    def _special_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise TokenizerError(f"this vocabulary has no {token} token, which BERT inputs need")
        return self.special_tokens[token]

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool = False,
        padding: bool = False,
        allowed_special: AllowedSpecial = "none_raise",
    ) -> WordPieceEncoding:
        """Model input for `text` (and `pair`): `[CLS] text [SEP]` or `[CLS] text [SEP] pair [SEP]`,
        token types 0 then 1, attention mask 1 (0 on padding), offsets into each text.

        `truncation` cuts to `max_length` tokens (specials included), longest text first; `padding`
        pads with [PAD] up to `max_length`. Both need `max_length`.
        """
        if (truncation or padding) and max_length is None:
            raise ConfigError("truncation and padding need max_length (e.g. max_length=128)")
        first_ids, first_offsets = self._encode_segment(text, allowed_special)
        second_ids, second_offsets = ([], []) if pair is None else self._encode_segment(pair, allowed_special)
        n_special = (2 if pair is None else 3) if add_special_tokens else 0
        if truncation and max_length is not None:
            budget = max_length - n_special
            if budget < 0:
                raise ConfigError(
                    f"max_length={max_length} leaves no room for the {n_special} special tokens"
                )
            if pair is None:
                n_first, n_second = min(len(first_ids), budget), 0
            else:
                n_first, n_second = _truncate_pair(len(first_ids), len(second_ids), budget)
            first_ids, first_offsets = first_ids[:n_first], first_offsets[:n_first]
            second_ids, second_offsets = second_ids[:n_second], second_offsets[:n_second]
        ids, offsets, types = list(first_ids), list(first_offsets), [0] * len(first_ids)
        if add_special_tokens:
            cls_id, sep_id = self._special_id(CLS), self._special_id(SEP)
            ids = [cls_id, *ids, sep_id]
            offsets = [(0, 0), *offsets, (0, 0)]
            types = [0, *types, 0]
        if pair is not None:
            ids += second_ids
            offsets += second_offsets
            types += [1] * len(second_ids)
            if add_special_tokens:
                ids.append(self._special_id(SEP))
                offsets.append((0, 0))
                types.append(1)
        encoding = WordPieceEncoding(ids, [self.vocab[i] for i in ids], types, [1] * len(ids), offsets)
        if padding and max_length is not None:
            self.pad(encoding, max_length)
        return encoding

    def pad(self, encoding: WordPieceEncoding, length: int) -> WordPieceEncoding:
        """Pad `encoding` in place (on the right) to `length` tokens; longer encodings are left as is."""
        n = length - len(encoding.ids)
        if n > 0:
            pad_id = self._special_id(PAD)
            encoding.ids += [pad_id] * n
            encoding.tokens += [PAD] * n
            encoding.token_type_ids += [0] * n
            encoding.attention_mask += [0] * n
            encoding.offsets += [(0, 0)] * n
        return encoding

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool = False,
        padding: bool | str = False,
        allowed_special: AllowedSpecial = "none_raise",
        num_threads: int = 8,
    ) -> list[WordPieceEncoding]:
        """`encode` for each text (and pair). padding="longest" pads every encoding to the longest of the
        batch; padding=True pads to `max_length`."""
        if pairs is not None and len(pairs) != len(texts):
            raise ConfigError(f"encode_batch got {len(texts)} texts but {len(pairs)} pairs")
        encodings = [
            self.encode(
                text,
                None if pairs is None else pairs[i],
                add_special_tokens=add_special_tokens,
                max_length=max_length,
                truncation=truncation,
                padding=padding is True,
                allowed_special=allowed_special,
            )
            for i, text in enumerate(texts)
        ]
        if padding == "longest" and encodings:
            longest = max(len(e) for e in encodings)
            for e in encodings:
                self.pad(e, longest)
        return encodings

    # --- ids to text -------------------------------------------------------------------------------

    @property
    def eot_id(self) -> int | None:
        """[SEP], which ends every BERT segment: the separator between documents in prepared shards."""
        return self.special_tokens.get(SEP)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Pieces joined by spaces, `##` continuations glued to the piece before, and no space before
        ". , ! ?" (HF's WordPiece decoder with cleanup, applied piece by piece as it does). Lowercasing
        and accent stripping are not undone: decode(encode(s)) is the normalized text, not always s."""
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(
                    f"token id {i} is not in this tokenizer's vocabulary (size {self.vocab_size})"
                )
            if not (skip_special_tokens and self.vocab[i] in self.special_tokens):
                tokens.append(self.vocab[i])
        pieces = []
        for k, token in enumerate(tokens):
            if k:
                token = token[len(PREFIX) :] if token.startswith(PREFIX) else " " + token
            for before, after in _CLEANUP:
                token = token.replace(before, after)
            pieces.append(token)
        return "".join(pieces)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    # --- files -------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "handle_chinese_chars": self.handle_chinese_chars,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "special_tokens": dict(self.special_tokens),
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, d: dict, *, source: str | Path = "<tokenizer dict>") -> WordPieceTokenizer:
        """Inverse of `to_dict()` (format_version and kind already checked by formats.py)."""
        vocab = _typed(d, "vocab", list, source)
        specials = _typed(d, "special_tokens", dict, source)
        if not all(isinstance(t, str) for t in vocab):
            raise FormatError(source, "field 'vocab' must be a list of token strings")
        try:
            tokenizer = cls(
                vocab,
                lowercase=_typed(d, "lowercase", bool, source),
                strip_accents=_typed(d, "strip_accents", bool, source),
                handle_chinese_chars=_typed(d, "handle_chinese_chars", bool, source),
                max_input_chars_per_word=_typed(d, "max_input_chars_per_word", int, source),
                special_tokens=list(specials),
            )
        except TokenizerError as e:
            raise FormatError(source, f"inconsistent tokenizer: {e}") from None
        if tokenizer.special_tokens != specials:
            raise FormatError(
                source, "field 'special_tokens' does not match the ids of those tokens in 'vocab'"
            )
        return tokenizer

    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    def save(self, path: str | Path) -> None:
        """lmforge's tokenizer.json (read back by `load_tokenizer`)."""
        save_tokenizer_dict(self.to_dict(), path)

    def to_hf_dict(self) -> dict:
        """A Hugging Face tokenizer.json: BertNormalizer, BertPreTokenizer, WordPiece model,
        `[CLS] $A [SEP] $B [SEP]` template and the WordPiece decoder."""
        cls_id, sep_id = self._special_id(CLS), self._special_id(SEP)
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t, i in sorted(self.special_tokens.items(), key=lambda item: item[1])
            ],  # fmt: skip
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": True,
                "handle_chinese_chars": self.handle_chinese_chars,
                "strip_accents": self.strip_accents,
                "lowercase": self.lowercase,
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": CLS, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": SEP, "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": CLS, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": SEP, "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                    {"SpecialToken": {"id": SEP, "type_id": 1}},
                ],
                "special_tokens": {
                    CLS: {"id": CLS, "ids": [cls_id], "tokens": [CLS]},
                    SEP: {"id": SEP, "ids": [sep_id], "tokens": [SEP]},
                },
            },
            "decoder": {"type": "WordPiece", "prefix": PREFIX, "cleanup": True},
            "model": {
                "type": "WordPiece",
                "unk_token": UNK,
                "continuing_subword_prefix": PREFIX,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "vocab": dict(self.token_to_id),
            },
        }

    def save_hf(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_hf_dict(), indent=2)

    @classmethod
    def from_hf_dict(cls, d: Any, *, source: str | Path = "<HF tokenizer dict>") -> WordPieceTokenizer:
        """The tokenizer of a Hugging Face WordPiece tokenizer.json (BERT's layout). Anything else
        (another normalizer or pre-tokenizer, another subword prefix, ids with gaps) is refused with a
        FormatError naming `source`, never approximated."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise FormatError(source, "a Hugging Face tokenizer.json needs a 'model' object")
        model = d["model"]
        if model.get("type") != "WordPiece":
            raise FormatError(source, f"model type {model.get('type')!r} is not WordPiece")
        if model.get("continuing_subword_prefix", PREFIX) != PREFIX:
            raise FormatError(source, f"continuing_subword_prefix must be {PREFIX!r}")
        if model.get("unk_token", UNK) != UNK:
            raise FormatError(source, f"unk_token must be {UNK!r}, found {model.get('unk_token')!r}")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
            raise FormatError(source, "model.vocab must map each token to an integer id")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise FormatError(source, "model.vocab ids must run 0..n-1 without gaps or repeats")
        normalizer = d.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer" or normalizer.get("clean_text") is False:
            raise FormatError(
                source, f"normalizer {normalizer.get('type')!r} is not supported (BertNormalizer)"
            )
        pre_tokenizer = d.get("pre_tokenizer") or {}
        if pre_tokenizer.get("type") != "BertPreTokenizer":
            raise FormatError(
                source, f"pre_tokenizer {pre_tokenizer.get('type')!r} is not supported (BertPreTokenizer)"
            )
        added = d.get("added_tokens") or []
        specials = [a["content"] for a in added if isinstance(a, dict) and a.get("special")]
        try:
            return cls(
                sorted(vocab, key=vocab.__getitem__),
                lowercase=bool(normalizer.get("lowercase", True)),
                strip_accents=normalizer.get("strip_accents"),
                handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
                max_input_chars_per_word=int(model.get("max_input_chars_per_word", MAX_WORD_CHARS)),
                special_tokens=specials or None,
            )
        except TokenizerError as e:
            raise FormatError(source, f"inconsistent tokenizer: {e}") from None

    @classmethod
    def from_hf_file(cls, path: str | Path) -> WordPieceTokenizer:
        return cls.from_hf_dict(read_json(path, what="Hugging Face tokenizer.json"), source=path)

    # --- training ----------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str | Path],
        vocab_size: int,
        lowercase: bool = True,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        *,
        strip_accents: bool | None = None,
        readable: bool = False,
    ) -> WordPieceTokenizer:
        """Train on texts (strings, or Paths of UTF-8 files) with the fast trainer, or with the readable
        reference when `readable` (same vocabulary, much slower)."""
        if UNK not in special_tokens:
            raise ConfigError(f"special_tokens must include {UNK}, got {tuple(special_tokens)!r}")
        accents = lowercase if strip_accents is None else strip_accents
        counts = count_words(texts, BertNormalizer(lowercase, accents))
        vocab = (train_vocab if readable else train_vocab_fast)(counts, vocab_size, special_tokens)
        return cls(vocab, lowercase=lowercase, strip_accents=accents, special_tokens=special_tokens)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


def _typed(d: dict, name: str, kind: type, source: str | Path) -> Any:
    if name not in d:
        raise FormatError(source, f"tokenizer file has no {name!r} field")
    if not isinstance(d[name], kind) or (kind is int and isinstance(d[name], bool)):
        raise FormatError(source, f"field {name!r} has the wrong type ({type(d[name]).__name__})")
    return d[name]


# ---------------------------------------------------------------------------------------------------
# Training


def count_words(texts: Iterable[str | Path], normalizer: BertNormalizer) -> dict[str, int]:
    """Word frequencies after normalization and pre-tokenization, in order of first appearance.

    Example (lowercase): ["Hug, hug"] -> {"hug": 2, ",": 1}.
    """
    # Whitespace-separated chunks are counted first (at C speed), then each distinct chunk is split
    # into words once. Words keep their order of first appearance: the first chunk holding a word is the
    # first distinct chunk holding it.
    chunks: Counter[str] = Counter()
    for item in texts:
        chunks.update(normalizer.normalize(read_training_text(item))[0].split())
    counts: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for word in normalizer.chunk_words(chunk):
            counts[word] += n
    if not counts:
        raise DataError("the training corpus is empty (no words to build a vocabulary from)")
    return counts


def _start(word_freqs: dict[str, int], vocab_size: int, special_tokens: Sequence[str]) -> list[str]:
    """Special tokens, then the sorted alphabet of first characters and ##-continuation characters."""
    alphabet = set()
    for word in word_freqs:
        alphabet.add(word[0])
        alphabet.update(PREFIX + c for c in word[1:])
    vocab = list(special_tokens) + sorted(alphabet - set(special_tokens))
    if vocab_size < len(vocab):
        raise ConfigError(
            f"vocab_size={vocab_size} is smaller than the special tokens plus the alphabet of this corpus "
            f"({len(vocab)}); use at least {len(vocab)}"
        )
    return vocab


def _merged(first: str, second: str) -> str:
    """ "a" + "##b" -> "ab"; "##a" + "##b" -> "##ab"."""
    return first + second.removeprefix(PREFIX)


def train_vocab(word_freqs: dict[str, int], vocab_size: int, special_tokens: Sequence[str]) -> list[str]:
    """The readable trainer: recompute every pair's score after each merge, as the algorithm is taught.

    Worked example, words {"hug": 10, "pug": 5, "hugs": 5}, specials ("[UNK]",), vocab_size 9:
    alphabet sorted: ##g ##s ##u h p -> vocab [UNK] ##g ##s ##u h p (6). Splits h ##u ##g | p ##u ##g |
    h ##u ##g ##s. Token freqs: h 15, p 5, ##u 20, ##g 20, ##s 5. Pair freqs: (h,##u) 15, (##u,##g) 20,
    (p,##u) 5, (##g,##s) 5. Scores: (h,##u) 15/(15*20) = 0.05, (##u,##g) 20/(20*20) = 0.05,
    (p,##u) 5/(5*20) = 0.05, (##g,##s) 5/(20*5) = 0.05: a four-way tie, the first met wins: "hu".
    Then splits hu ##g | p ##u ##g | hu ##g ##s; freqs hu 15, ##g 20, p 5, ##u 5, ##s 5; pairs (hu,##g) 15
    -> 15/(15*20) = 0.05, (p,##u) 5/(5*5) = 0.2, (##u,##g) 5/(5*20) = 0.05, (##g,##s) 5/(20*5) = 0.05:
    "pu" wins. Then (hu,##g) 15/(15*20) = 0.05, (pu,##g) 5/(5*20) = 0.05, (##g,##s) 0.05: "hug" (first).
    Vocab: [UNK] ##g ##s ##u h p hu pu hug.
    """
    vocab = _start(word_freqs, vocab_size, special_tokens)
    known = set(vocab)
    splits = {word: [word[0]] + [PREFIX + c for c in word[1:]] for word in word_freqs}
    while len(vocab) < vocab_size:
        token_freqs: Counter[str] = Counter()
        pair_freqs: Counter[tuple[str, str]] = Counter()  # insertion order = order first met
        for word, freq in word_freqs.items():
            split = splits[word]
            for token in split:
                token_freqs[token] += freq
            for pair in pairwise(split):
                pair_freqs[pair] += freq
        best, best_score = None, 0.0
        for pair, freq in pair_freqs.items():
            score = freq / (token_freqs[pair[0]] * token_freqs[pair[1]])
            if best is None or score > best_score:
                best, best_score = pair, score
        if best is None:  # every word is a single token
            break
        new = _merged(*best)
        for split in splits.values():
            i = 0
            while i < len(split) - 1:
                if split[i] == best[0] and split[i + 1] == best[1]:
                    split[i : i + 2] = [new]
                i += 1
        if new not in known:
            known.add(new)
            vocab.append(new)
    return vocab


def train_vocab_fast(word_freqs: dict[str, int], vocab_size: int, special_tokens: Sequence[str]) -> list[str]:
    """The same vocabulary as `train_vocab`, without rescoring every pair after each merge.

    Pairs live in a max-heap keyed (score, first place met); an entry is stale when its pair's frequency,
    either token's frequency or its first place has changed since, and is then skipped. Every such change
    pushes a fresh entry: a merge changes the frequencies of the two tokens merged and the new token (so
    every pair containing one of them gets a new score; `partners` indexes them) and the pairs of the
    words containing the merged pair (`pair_words` indexes those). "First place met" of a pair is
    (index of the first word containing it, character position in that word): the order in which
    `train_vocab` meets the pairs, since merges keep the left-to-right order inside a word.
    """
    vocab = _start(word_freqs, vocab_size, special_tokens)
    ids: dict[str, int] = {t: i for i, t in enumerate(vocab)}
    strings = list(vocab)  # every token ever made, by id (vocab plus merges that already existed)

    words: list[list[int]] = [[ids[w[0]]] + [ids[PREFIX + c] for c in w[1:]] for w in word_freqs]
    freqs = list(word_freqs.values())
    token_freq: defaultdict[int, int] = defaultdict(int)
    pair_freq: defaultdict[tuple[int, int], int] = defaultdict(int)
    pair_words: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    partners: defaultdict[int, set[tuple[int, int]]] = defaultdict(set)  # token -> live pairs with it
    for w, (split, freq) in enumerate(zip(words, freqs, strict=True)):
        for token in split:
            token_freq[token] += freq
        for pair in pairwise(split):
            pair_freq[pair] += freq
            pair_words[pair].add(w)
            partners[pair[0]].add(pair)
            partners[pair[1]].add(pair)

    def length(token: int) -> int:
        return len(strings[token].removeprefix(PREFIX))

    def first_place(pair: tuple[int, int], w: int) -> tuple[int, int]:
        """(w, character position of the pair's first occurrence in word w)."""
        split, position = words[w], 0
        for i in range(len(split) - 1):
            if (split[i], split[i + 1]) == pair:
                return w, position
            position += length(split[i])
        raise AssertionError("pair index out of date")

    places = {pair: first_place(pair, min(ws)) for pair, ws in pair_words.items()}

    def entry(pair: tuple[int, int]) -> tuple[float, int, int, int, int]:
        score = pair_freq[pair] / (token_freq[pair[0]] * token_freq[pair[1]])
        return (-score, *places[pair], *pair)

    heap = [entry(pair) for pair in pair_freq]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        top = heapq.heappop(heap)
        pair = (top[3], top[4])
        if pair not in places or entry(pair) != top:
            continue  # stale
        new_string = _merged(strings[pair[0]], strings[pair[1]])
        new = ids.get(new_string)
        if new is None:
            new = ids[new_string] = len(strings)
            strings.append(new_string)
            vocab.append(new_string)
        first_affected: dict[tuple[int, int], int] = {}  # pair -> first word rewritten that holds it
        for w in sorted(pair_words[pair]):
            split, freq = words[w], freqs[w]
            merged: list[int] = []
            i = 0
            while i < len(split):
                if i < len(split) - 1 and (split[i], split[i + 1]) == pair:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(split[i])
                    i += 1
            old_pairs = Counter(pairwise(split))
            new_pairs = Counter(pairwise(merged))
            for token in split:
                token_freq[token] -= freq
            for token in merged:
                token_freq[token] += freq
            words[w] = merged
            for p in old_pairs | new_pairs:
                delta = new_pairs[p] - old_pairs[p]
                if delta:
                    pair_freq[p] += delta * freq
                if p not in new_pairs:
                    pair_words[p].discard(w)
                else:
                    pair_words[p].add(w)
                first_affected.setdefault(p, w)
        for p, w in first_affected.items():
            if pair_freq[p] == 0:
                del pair_freq[p], pair_words[p], places[p]
                partners[p[0]].discard(p)
                partners[p[1]].discard(p)
                continue
            partners[p[0]].add(p)
            partners[p[1]].add(p)
            if p not in places or w <= places[p][0]:  # its first place may have moved
                places[p] = first_place(p, w if w in pair_words[p] else min(pair_words[p]))
        changed_pairs = set(first_affected)
        changed_tokens = {pair[0], pair[1], new}
        for token in changed_tokens:
            changed_pairs |= partners[token]
        for p in changed_pairs:
            if p in places:
                heapq.heappush(heap, entry(p))
    return vocab
