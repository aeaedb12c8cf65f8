"""Conversations as token ids: a checkpoint's chat format, and fitting a conversation into the context.

`ChatFormat(tokenizer, template)` turns messages into ids. With a template (meta.json "chat_template":
{"system": "<|system|>{content}<|end|>", "user": ..., "assistant": ..., "generation_prompt":
"<|assistant|>", "stop": ["<|end|>"]}) every message is its role's pattern with the message in place of
{content}; the pattern's own text may hold special tokens, the message is encoded as plain text so that
a user cannot type a control token. Without a template the conversation is plain text: each user
message followed by a newline, each reply as the model wrote it, and the model simply continues the
transcript.

A model converted from GGUF or Hugging Face carries its own Jinja template (meta.json
"chat_template_jinja", e.g. SmolLM2's ChatML); `JinjaChatFormat` renders the whole conversation with it
exactly as transformers' `apply_chat_template` does (`chat_template.py`) and encodes the text, special
tokens included. `chat_format(tokenizer, meta)` picks the right one for a checkpoint.

Both take the conversation as `{"role", "content"}` messages (an assistant message may also carry the
"ids" the model generated, which the per-role format reuses instead of re-encoding the text), and
`prompt(messages, budget)` returns the ids to generate from: the oldest turns (a system message
excepted) are dropped until the conversation and the opening of the reply fit `budget` tokens.

Deliberately not here: the terminal loop (`lmforge chat`, cli/generate.py), generation (engine.py,
text.py). The loss mask of instruction fine-tuning is built from the same format
(`lmforge.data.finetune_data.render_conversation`, which is given the format and never imports this module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError, FormatError
from lmforge.inference.chat_template import render_chat_template
from lmforge.models.gguf import JINJA_TEMPLATE_KEY
from lmforge.tokenizers.base import encode_user_text

if TYPE_CHECKING:
    from lmforge.tokenizers.base import Tokenizer

TEMPLATE_KEYS = ("user", "assistant", "generation_prompt")  # required; "system" and "stop" are optional


class ChatFormat:
    """How a conversation becomes token ids (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: dict[str, Any] | None,
        *,
        source: str = "meta.json",
        allow_special: bool = False,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.allow_special = allow_special
        if template is not None:
            missing = [k for k in TEMPLATE_KEYS if k not in template]
            if missing:
                raise FormatError(source, f"chat_template lacks {', '.join(missing)}")

    def message(self, role: str, content: str | list[int]) -> list[int]:
        """Ids of one message; `content` is text, or the ids the model generated for a reply."""
        if isinstance(content, str):
            text = content + "\n" if self.template is None else content
            content = encode_user_text(self.tokenizer, text, allow_special=self.allow_special)
        if self.template is None:
            return content
        if role not in self.template:
            raise ConfigError(f"this checkpoint's chat template has no '{role}' role")
        before, _, after = self.template[role].partition("{content}")
        return self.encode_template_text(before) + content + self.encode_template_text(after)

    def generation_prompt(self) -> list[int]:
        """The ids that open the assistant's turn (none for plain continuation)."""
        return [] if self.template is None else self.encode_template_text(self.template["generation_prompt"])

    def stop_ids(self) -> tuple[int, ...]:
        """A reply ends at the end-of-text token or at any special token the template lists under "stop"."""
        ids = {self.tokenizer.eot_id} - {None}
        for s in (self.template or {}).get("stop", []):
            if s in self.tokenizer.special_tokens:
                ids.add(self.tokenizer.special_tokens[s])
        return tuple(sorted(ids))

    def prompt(self, messages: Sequence[Mapping[str, Any]], budget: int) -> list[int]:
        """Ids of the conversation plus the opening of the reply, oldest turns dropped to fit `budget`."""
        ids = [self.message(m["role"], m.get("ids", m["content"])) for m in messages]
        opening = self.generation_prompt()
        keep_first = bool(messages) and messages[0]["role"] == "system"
        return fit_conversation(ids, budget - len(opening), keep_first=keep_first) + opening

    def encode_template_text(self, text: str) -> list[int]:
        """Ids of the template's own text (not a message): its special tokens are always special. Public
        because the SFT loss mask (`data.finetune_data.render_conversation`) builds rows from the same
        pieces."""
        return self.tokenizer.encode(text, allowed_special="all")


class JinjaChatFormat:
    """A conversation rendered by the model's own Jinja chat template (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str,
        *,
        bos_token: str | None,
        eos_token: str | None,
        allow_special: bool = False,
    ):
        self.tokenizer, self.template = tokenizer, template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.allow_special = allow_special

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return render_chat_template(
            self.template,
            plain,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def prompt(self, messages: Sequence[Mapping[str, Any]], budget: int) -> list[int]:
        """Ids of the rendered conversation; the oldest turns (not a system message) are dropped first."""
        if not self.allow_special:
            for m in messages:  # the same policy as every prompt: typed control tokens only when allowed
                if "ids" not in m:
                    encode_user_text(self.tokenizer, m["content"])
        kept = list(messages)
        while True:
            ids = self.tokenizer.encode(self.render(kept), allowed_special="all")
            first = 1 if kept and kept[0]["role"] == "system" else 0
            if len(ids) <= budget or len(kept) - first <= 1:
                return ids[-budget:]
            del kept[first]

    def stop_ids(self) -> tuple[int, ...]:
        """A reply ends at the template's end-of-turn token (eos_token) or the end-of-text token."""
        ids = {self.tokenizer.eot_id} - {None}
        if self.eos_token in self.tokenizer.special_tokens:
            ids.add(self.tokenizer.special_tokens[self.eos_token])
        return tuple(sorted(ids))


def chat_format(
    tokenizer: Tokenizer, meta: Mapping[str, Any], *, source: str = "meta.json", allow_special: bool = False
) -> Any:
    """The chat format of a checkpoint: its Jinja template, else its per-role template, else plain text.
    `allow_special`: whether a message may type special tokens (`tokenizers.base.encode_user_text`)."""
    template = meta.get(JINJA_TEMPLATE_KEY)
    if isinstance(template, str):
        return JinjaChatFormat(
            tokenizer,
            template,
            bos_token=meta.get("bos_token"),
            eos_token=meta.get("eos_token"),
            allow_special=allow_special,
        )
    return ChatFormat(tokenizer, meta.get("chat_template"), source=source, allow_special=allow_special)


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
