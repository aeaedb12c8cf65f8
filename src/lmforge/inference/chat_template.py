"""Chat templates: render a conversation into the prompt text a chat model was trained on.

A chat template is a Jinja program shipped with the model (Hugging Face's `tokenizer_config.json`
"chat_template", GGUF's `tokenizer.chat_template`). It sees `messages` (a list of {"role", "content"}
dicts), `add_generation_prompt` (open an assistant turn at the end, for generation) and the special
tokens (`bos_token`, `eos_token`, ...), and returns one string, e.g. for SmolLM2 (ChatML):

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

Templates are code from a file, so they run in Jinja's immutable sandbox, configured as transformers
configures it so that the same template gives the same text: `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, a `tojson` filter that does not escape HTML, and the globals `raise_exception`
and `strftime_now`. The rendered text is then encoded with special tokens allowed (the caller does that).

Deliberately not here: tokenization, tool-call and document arguments beyond passing them through,
transformers' `{% generation %}` assistant masks and `continue_final_message`.
Reference: transformers `utils/chat_template_utils.py` (`_compile_jinja_template`, `render_jinja_template`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from lmforge.errors import ConfigError, DataError


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ConfigError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from None


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **variables: Any,
) -> str:
    """The text of `messages` under the Jinja `template`, as transformers' `apply_chat_template(...,
    tokenize=False)` renders it. Extra `variables` (pad_token, tools, ...) are passed to the template.

    ConfigError for a template that is not valid Jinja; DataError when the template rejects the
    conversation (its `raise_exception(...)`, e.g. "roles must alternate") or fails on it.
    """
    import jinja2

    compiled = _compile(template)
    conversation = [dict(message) for message in messages]  # plain dicts: the sandbox sees nothing else
    try:
        return compiled.render(
            **{"tools": None, "documents": None} | variables,  # defined, as transformers defines them
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"the chat template rejected the conversation: {e}") from None
