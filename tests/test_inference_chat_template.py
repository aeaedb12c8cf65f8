"""Chat templates (`lmforge.inference.chat_template`) render exactly as transformers' apply_chat_template."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError, DataError  # noqa: E402
from lmforge.inference.chat_template import render_chat_template  # noqa: E402

# Indented block tags (trim_blocks / lstrip_blocks), a namespace, loop controls, filters, tojson of
# non-ASCII and HTML characters (transformers' tojson escapes neither), raise_exception, the special tokens.
TEMPLATE = """{{ bos_token }}
{% set ns = namespace(system="") %}
{% for message in messages %}
    {% if message.role == "system" %}
        {% set ns.system = message.content %}
        {% continue %}
    {% endif %}
    {% if message.role not in ["user", "assistant"] %}
        {{ raise_exception("unknown role: " + message.role) }}
    {% endif %}
[{{ message.role | upper }}] {{ message.content | trim }}
    {% if loop.last and ns.system %}
(system: {{ ns.system | tojson }})
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% else %}
{{ eos_token }}
{% endif %}"""

MESSAGES = [
    {"role": "system", "content": "Be brief <b>café</b> → 東京"},
    {"role": "user", "content": "  What is 2 + 2?  "},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models

    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_equals_transformers(hf_tokenizer, add_generation_prompt):
    expected = hf_tokenizer.apply_chat_template(
        MESSAGES, chat_template=TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ours = render_chat_template(
        TEMPLATE, MESSAGES, add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>"
    )
    assert ours == expected
    assert '"Be brief <b>café</b> → 東京"' in ours and "\n    " not in ours  # no escaping, blocks trimmed


def test_template_errors(hf_tokenizer):
    bad = [*MESSAGES, {"role": "tool", "content": "x"}]
    with pytest.raises(transformers.utils.chat_template_utils.jinja2.exceptions.TemplateError):
        hf_tokenizer.apply_chat_template(bad, chat_template=TEMPLATE, tokenize=False)
    with pytest.raises(DataError, match="unknown role: tool"):
        render_chat_template(TEMPLATE, bad, add_generation_prompt=True)
    with pytest.raises(ConfigError, match="not valid Jinja"):
        render_chat_template("{% for m in messages %}", MESSAGES, add_generation_prompt=True)


def test_sandbox_refuses_python_internals():
    with pytest.raises(DataError):
        render_chat_template("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [],
                             add_generation_prompt=False)  # fmt: skip
