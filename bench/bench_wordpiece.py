"""WordPiece benchmark: lmforge vs Hugging Face `tokenizers` (Rust), in one process on the same data.

    .venv/bin/python bench/bench_wordpiece.py                  # encoding, then training (several minutes)
    .venv/bin/python bench/bench_wordpiece.py --skip-train     # encoding only
    .venv/bin/python bench/bench_wordpiece.py --skip-encode --train-mb 30 --vocab-sizes 8000 30522

Encoding: every Wikipedia lead (`wiki-leads`, 5.0 MB) with all-MiniLM-L6-v2's vocab.txt, as BERT model
inputs with offsets ([CLS] ... [SEP]); the two encoders give identical output (tests/parity). Each
measurement is the best of `--repeats`, peer and lmforge alternating.

Training: the built-in corpora concatenated (wiki-leads, shakespeare, python-stdlib) up to `--train-mb`,
every 20th lead held out. Both trainers see the same texts with the same normalizer; HF runs with
min_frequency=1 and no alphabet limit, as ours has neither. The two algorithms differ (see
docs/tokenizer.md): ours merges the pair with the highest freq(pair) / (freq(first) * freq(second)); HF's
WordPieceTrainer is its BPE trainer with the "##" prefix (the most frequent pair wins), whose vocabulary
is then used as a WordPiece model. So besides the time, the held-out tokens per word and the overlap of
the two vocabularies are printed.
"""

from __future__ import annotations

import argparse
import time

from lmforge.data.builtin import builtin_documents
from lmforge.models.builtin import minilm_dir
from lmforge.tokenizers import WordPieceTokenizer
from lmforge.tokenizers.wordpiece import SPECIAL_TOKENS, BertNormalizer


def best_of(repeats: int, fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of the fastest of `repeats` runs."""
    times = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return min(times)


def bench_encoding(repeats: int) -> None:
    from tokenizers import BertWordPieceTokenizer, Tokenizer

    texts = [doc.text for doc in builtin_documents("wiki-leads")]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    vocab = minilm_dir() / "vocab.txt"
    ours = WordPieceTokenizer.from_vocab_file(vocab, lowercase=True)
    peer = BertWordPieceTokenizer(str(vocab), lowercase=True)
    ids_only = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))  # the same model, as MiniLM ships it
    ids_only.no_truncation()
    ids_only.no_padding()
    assert [ours.encode(t).ids for t in texts[:200]] == [e.ids for e in peer.encode_batch(texts[:200])]
    cold = WordPieceTokenizer(ours.vocab)  # its chunk cache is empty: the first pass fills it
    cold_seconds = best_of(1, lambda: cold.encode_batch(texts))
    rows = {
        "HF tokenizers `encode`, one call per text": lambda: [peer.encode(t) for t in texts],
        "lmforge `encode`, one call per text": lambda: [ours.encode(t) for t in texts],
        "HF tokenizers `encode_batch` (Rust threads)": lambda: peer.encode_batch(texts),
        "lmforge `encode_batch`": lambda: ours.encode_batch(texts),
        "HF tokenizers `encode_batch_fast` (ids only, no offsets)": lambda: ids_only.encode_batch_fast(texts),
        "lmforge `encode_ordinary` (ids only, no offsets)": lambda: ours.encode_ordinary_batch(texts),
    }
    seconds = {name: best_of(repeats, fn) for name, fn in rows.items()}
    print(f"encoding {len(texts):,} Wikipedia leads, {mb:.2f} MB, MiniLM vocab.txt (best of {repeats}):")
    print("| encoder | wall s | MB/s | CPU s |")
    print("|---|---|---|---|")
    seconds["lmforge `encode_batch`, first pass (empty chunk cache)"] = cold_seconds
    for name, (wall, cpu) in seconds.items():
        print(f"| {name} | {wall:.2f} | {mb / wall:.2f} | {cpu:.2f} |")
    pairs = {
        "one call per text": (
            "lmforge `encode`, one call per text",
            "HF tokenizers `encode`, one call per text",
        ),
        "batch": ("lmforge `encode_batch`", "HF tokenizers `encode_batch` (Rust threads)"),
        "ids only": (
            "lmforge `encode_ordinary` (ids only, no offsets)",
            "HF tokenizers `encode_batch_fast` (ids only, no offsets)",
        ),
    }
    for what, (ours_row, peer_row) in pairs.items():
        wall = seconds[ours_row][0] / seconds[peer_row][0]
        cpu = seconds[ours_row][1] / seconds[peer_row][1]
        print(f"lmforge / HF time, {what}: wall {wall:.2f}x, CPU {cpu:.2f}x")


def training_corpus(megabytes: float) -> tuple[list[str], list[str]]:
    """(training texts, held-out leads): the built-in corpora in order up to `megabytes`."""
    train, held_out, size = [], [], 0
    for name in ("wiki-leads", "shakespeare", "python-stdlib"):
        for i, doc in enumerate(builtin_documents(name)):
            if name == "wiki-leads" and i % 20 == 0:
                held_out.append(doc.text)
                continue
            if size >= megabytes * 1e6:
                return train, held_out
            train.append(doc.text)
            size += len(doc.text.encode("utf-8"))
    return train, held_out


def tokens_per_word(tokenizer: WordPieceTokenizer, texts: list[str]) -> tuple[float, float]:
    normalizer = BertNormalizer()
    n_words = sum(len(normalizer.words(t)) for t in texts)
    ids = [i for t in texts for i in tokenizer.encode_ordinary(t)]
    return len(ids) / n_words, ids.count(tokenizer.unk_id) / len(ids)


def bench_training(megabytes: float, vocab_sizes: list[int]) -> None:
    from tokenizers import BertWordPieceTokenizer

    train, held_out = training_corpus(megabytes)
    mb = sum(len(t.encode("utf-8")) for t in train) / 1e6
    print(f"\ntraining on {mb:.1f} MB ({len(train):,} documents), held out {len(held_out)} leads:")
    print(
        "| vocab | lmforge wall (CPU) s | HF wall (CPU) s | wall ratio | tokens/word lmforge "
        "| tokens/word HF | shared tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    for vocab_size in vocab_sizes:
        start, cpu = time.perf_counter(), time.process_time()
        ours = WordPieceTokenizer.train(train, vocab_size)
        ours_seconds, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
        peer = BertWordPieceTokenizer(lowercase=True)
        start, cpu = time.perf_counter(), time.process_time()
        peer.train_from_iterator(
            train,
            vocab_size=vocab_size,
            min_frequency=1,
            limit_alphabet=1_000_000,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
        peer_seconds, peer_cpu = time.perf_counter() - start, time.process_time() - cpu
        peer_vocab = peer.get_vocab()
        as_ours = WordPieceTokenizer(sorted(peer_vocab, key=peer_vocab.__getitem__))
        ours_tpw, ours_unk = tokens_per_word(ours, held_out)
        peer_tpw, peer_unk = tokens_per_word(as_ours, held_out)
        shared = len(set(ours.vocab) & set(peer_vocab))
        print(
            f"| {vocab_size:,} (HF: {len(peer_vocab):,}) | {ours_seconds:.1f} ({ours_cpu:.1f}) "
            f"| {peer_seconds:.1f} ({peer_cpu:.1f}) | "
            f"{ours_seconds / peer_seconds:.1f}x | {ours_tpw:.3f} (UNK {ours_unk:.2%}) | "
            f"{peer_tpw:.3f} (UNK {peer_unk:.2%}) | {shared:,} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-encode", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-mb", type=float, default=30.0)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[8000, 30522])
    args = parser.parse_args()
    if not args.skip_encode:
        bench_encoding(args.repeats)
    if not args.skip_train:
        bench_training(args.train_mb, args.vocab_sizes)


if __name__ == "__main__":
    main()
