"""Conversations as token ids: a checkpoint's chat format, and fitting a conversation into the context.

`ChatFormat(tokenizer, template)` turns messages into ids. With a template (meta.json "chat_template":
{"system": "<|system|>{content}<|end|>", "user": ..., "assistant": ..., "generation_prompt":
"<|assistant|>", "stop": ["<|end|>"]}) every message is its role's pattern with the message in place of
{content}; the pattern's own text may hold special tokens, the message is encoded as plain text so that
a user cannot type a control token. Without a template the conversation is plain text: each user
message followed by a newline, each reply as the model wrote it, and the model simply continues the
transcript.

`fit_conversation` drops the oldest turns so that a conversation plus the reply fits the window.

Deliberately not here: the terminal loop (`lmforge chat`, cli/generate.py), generation (engine.py,
text.py). The loss mask of instruction fine-tuning will be built from the same format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError, FormatError

if TYPE_CHECKING:
    from lmforge.tokenizers.base import Tokenizer

TEMPLATE_KEYS = ("user", "assistant", "generation_prompt")  # required; "system" and "stop" are optional


class ChatFormat:
    """How a conversation becomes token ids (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, template: dict[str, Any] | None, *, source: str = "meta.json"):
        self.tokenizer = tokenizer
        self.template = template
        if template is not None:
            missing = [k for k in TEMPLATE_KEYS if k not in template]
            if missing:
                raise FormatError(source, f"chat_template lacks {', '.join(missing)}")

    def message(self, role: str, content: str | list[int]) -> list[int]:
        """Ids of one message; `content` is text, or the ids the model generated for a reply."""
        if isinstance(content, str):
            content = self.tokenizer.encode_ordinary(content + "\n" if self.template is None else content)
        if self.template is None:
            return content
        if role not in self.template:
            raise ConfigError(f"this checkpoint's chat template has no '{role}' role")
        before, _, after = self.template[role].partition("{content}")
        return self._encode_template_text(before) + content + self._encode_template_text(after)

    def generation_prompt(self) -> list[int]:
        """The ids that open the assistant's turn (none for plain continuation)."""
        return [] if self.template is None else self._encode_template_text(self.template["generation_prompt"])

    def stop_ids(self) -> tuple[int, ...]:
        """A reply ends at the end-of-text token or at any special token the template lists under "stop"."""
        ids = {self.tokenizer.eot_id} - {None}
        for s in (self.template or {}).get("stop", []):
            if s in self.tokenizer.special_tokens:
                ids.add(self.tokenizer.special_tokens[s])
        return tuple(sorted(ids))

    def _encode_template_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allowed_special="all")  # the template's own text may hold specials


def fit_conversation(messages: list[list[int]], budget: int, *, keep_first: bool) -> list[int]:
    """Concatenate message ids, dropping the oldest messages (but the first if `keep_first`, e.g. a system
    message) until at most `budget` tokens remain; if the newest alone is too long, keep its last tokens.

    Example: messages of 3, 4 and 2 tokens with budget 7 -> the last two (6 tokens).
    """
    first = messages[:1] if keep_first else []
    rest = messages[1:] if keep_first else list(messages)
    while rest and sum(map(len, first + rest)) > budget:
        if len(rest) == 1:
            room = budget - sum(map(len, first))
            rest = [rest[0][-room:] if room > 0 else []]
            break
        rest.pop(0)
    return [t for m in first + rest for t in m][-budget:]
