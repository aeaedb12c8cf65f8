"""`lmforge eval --text-source`: any model scored on text it tokenizes itself, checked against a direct
computation of the same windows' mean loss and bits per byte."""

from __future__ import annotations

import math
import re

import torch

from lmforge.cli import main
from lmforge.models import GPT, GPTConfig
from lmforge.tokenizers import CharTokenizer


def test_eval_on_a_text_file_equals_the_direct_loss(tmp_path, capsys):
    text = "the cat sat on the mat. é\n" * 20  # one two-byte character per line: bytes != characters
    tokenizer = CharTokenizer.train([text])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    model.save_checkpoint(tmp_path / "ckpt", meta={"tokenizer": tokenizer.to_dict()})
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")

    argv = ["eval", "--ckpt", str(tmp_path / "ckpt"), "--text-source", str(tmp_path / "t.txt")]
    assert main([*argv, "--max-tokens", "100", "--block-size", "16"]) == 0
    out = capsys.readouterr().out
    loss, bpb = (float(x) for x in re.search(r"loss (\S+) .* bits/byte (\S+)", out).groups())

    # the same 100 tokens (the file, then end-of-text, cut at 100), windows of 16 with 16-token steps
    ids = (tokenizer.encode_ordinary(text) + [tokenizer.eot_id])[:100]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 16):
            x = torch.tensor([ids[start : start + 16]])
            y = torch.tensor([ids[start + 1 : start + 17]])
            x = x[:, : y.shape[1]]
            nll += float(model(x, y)[1]) * y.numel()
            count += y.numel()
    assert count == 99 and math.isclose(loss, nll / count, abs_tol=1e-4)
    n_bytes = len(tokenizer.decode(ids[1:]).encode("utf-8"))
    assert math.isclose(bpb, nll / (n_bytes * math.log(2)), rel_tol=1e-3)


def test_eval_needs_exactly_one_model_and_sane_sizes(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):  # argparse: one of --ckpt and --model is required
        main(["eval", "--text-source", "shakespeare"])
    assert main(["eval", "--model", "nope", "--text-source", "shakespeare"]) == 2
    assert "not a built-in model" in capsys.readouterr().err
