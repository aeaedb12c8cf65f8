"""Fine-tuning data: the real corpora, the JSONL shapes and their bad inputs, the SFT loss mask."""

import bz2
import json

import numpy as np
import pytest

from lmforge.data.finetune_data import (
    pad_rows,
    read_chatterbot,
    read_labelled_jsonl,
    read_preference_jsonl,
    read_rotten_tomatoes,
    read_sft_jsonl,
    render_conversation,
    sft_rows,
)
from lmforge.errors import FormatError
from lmforge.inference.chat import ChatFormat, JinjaChatFormat
from lmforge.models.gpt import IGNORE_INDEX
from lmforge.tokenizers import CharTokenizer

SPECIALS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>")
TEMPLATE = {
    "user": "<|user|>{content}<|end|>",
    "assistant": "<|assistant|>{content}<|end|>",
    "generation_prompt": "<|assistant|>",
    "stop": ["<|end|>"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer("abcdefghijklmnopqrstuvwxyz ?!.\n", special_tokens=SPECIALS)


def test_rotten_tomatoes_is_the_real_corpus():
    examples = read_rotten_tomatoes()
    # 7,403 fresh and 5,405 rotten rows; the 1,097 plot rows are not examples
    assert len(examples) == 12_808
    assert sum(e.label for e in examples) == 7_403
    assert all(e.text.strip() for e in examples)


def test_chatterbot_is_real_and_alternates_roles():
    conversations = read_chatterbot()
    assert len(conversations) > 500
    for messages in conversations:
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_sft_jsonl_both_shapes(tmp_path):
    path = _write(
        tmp_path / "sft.jsonl",
        [
            {"instruction": "add", "input": "2 3", "output": "5"},
            {"instruction": "hi", "output": "hello"},
            {
                "messages": [
                    {"role": "system", "content": "be kind"},
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
        ],
    )
    conversations = read_sft_jsonl(path)
    assert conversations[0] == [
        {"role": "user", "content": "add\n\n2 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert conversations[1][0]["content"] == "hi"
    assert [m["role"] for m in conversations[2]] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"instruction": "add"}, "line 2: field 'output' is missing"),
        ({"instruction": "add", "output": "  "}, "line 2: field 'output' is empty"),
        ({"messages": [{"role": "user", "content": "x"}]}, "line 2: the last message must be"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "line 2: message 0 needs a 'role'"),
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_sft_jsonl_bad_lines_name_file_and_line(tmp_path, line, problem):
    path = _write(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, line])
    with pytest.raises(FormatError, match=problem) as e:
        read_sft_jsonl(path)
    assert "bad.jsonl" in str(e.value)


def test_labelled_and_preference_jsonl_bad_input(tmp_path):
    good = _write(tmp_path / "l.jsonl", [{"text": "great", "label": "pos"}, {"text": "bad", "label": "neg"}])
    assert [e.label for e in read_labelled_jsonl(good, ["neg", "pos"])] == [1, 0]
    bad = _write(tmp_path / "b.jsonl", [{"text": "great", "label": "meh"}])
    with pytest.raises(FormatError, match=r"b.jsonl: line 1: label 'meh' is not one of \['neg', 'pos'\]"):
        read_labelled_jsonl(bad, ["neg", "pos"])
    pairs = _write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert read_preference_jsonl(pairs)[0].chosen == "a"
    same = _write(tmp_path / "s.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(FormatError, match="line 1: 'chosen' and 'rejected' are the same"):
        read_preference_jsonl(same)
    missing = _write(tmp_path / "m.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(FormatError, match="line 1: field 'rejected' is missing"):
        read_preference_jsonl(missing)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(FormatError, match="holds no records"):
        read_preference_jsonl(empty)


def test_rotten_tomatoes_bad_category_names_line(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(b"category,text\nfresh,good film\nmeh,so so\n"))
    with pytest.raises(FormatError, match="rt.csv.bz2: line 3: category 'meh'"):
        read_rotten_tomatoes(path)
    path.write_bytes(b"not bz2")
    with pytest.raises(FormatError, match="bz2"):
        read_rotten_tomatoes(path)


def test_chatterbot_bad_yaml(tmp_path):
    (tmp_path / "a.yml").write_text("conversations: 3\n")
    with pytest.raises(FormatError, match="a.yml: needs a 'conversations' list"):
        read_chatterbot(tmp_path)


CONVERSATION = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "ok?"},
    {"role": "assistant", "content": "ok."},
]


def test_mask_equals_hand_built_one_per_role(tokenizer):
    """<|user|> h i <|end|> <|assistant|> y o <|end|> <|user|> o k ? <|end|> <|assistant|> o k . <|end|>
    The assistant writes 'y o <|end|>' and 'o k . <|end|>': positions 5-7 and 13-16."""
    ids, mask = render_conversation(ChatFormat(tokenizer, TEMPLATE), CONVERSATION)
    s = tokenizer.special_tokens
    c = tokenizer.encode_ordinary
    assert ids == [
        s["<|user|>"],
        *c("hi"),
        s["<|end|>"],
        s["<|assistant|>"],
        *c("yo"),
        s["<|end|>"],
        s["<|user|>"],
        *c("ok?"),
        s["<|end|>"],
        s["<|assistant|>"],
        *c("ok."),
        s["<|end|>"],
    ]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_mask_equals_hand_built_one_jinja(tokenizer):
    """A ChatML-like Jinja template; the generation prompt '<|assistant|>' belongs to the prompt."""
    jinja = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    chat = JinjaChatFormat(tokenizer, jinja, bos_token=None, eos_token="<|end|>")
    ids, mask = render_conversation(chat, CONVERSATION)
    whole = tokenizer.encode(chat.render(CONVERSATION, add_generation_prompt=False), allowed_special="all")
    assert ids == whole
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_sft_rows_targets_padding_and_skips(tokenizer):
    chat = ChatFormat(tokenizer, TEMPLATE)
    short = CONVERSATION[:2]  # 8 tokens: <|user|> h i <|end|> <|assistant|> y o <|end|>
    result = sft_rows(chat, [short, CONVERSATION], block_size=10)
    assert (result.skipped, result.longest_skipped) == (1, 18)
    assert "1 skipped as longer than the context (the longest has 18 tokens)" in result.report()
    tokens, targets = result.rows[0]
    s = tokenizer.special_tokens
    # target t predicts token t+1; tokens 5, 6, 7 (y, o, <|end|>) are the assistant's
    expected = [IGNORE_INDEX] * 4 + [*tokenizer.encode_ordinary("yo"), s["<|end|>"]]
    assert targets.tolist() == expected
    wider = sft_rows(chat, [CONVERSATION], block_size=20).rows[0]
    x, y = pad_rows([result.rows[0], wider], pad_id=0)
    assert x.shape == y.shape == (2, 17)
    assert y[0, 7:].tolist() == [IGNORE_INDEX] * 10 and x[0, 7:].tolist() == [0] * 10
    assert np.array_equal(x[1], wider[0][:-1]) and np.array_equal(y[1], wider[1])
