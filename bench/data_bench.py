"""Data pipeline benchmark: lmforge's tokenization stage vs raw tiktoken, end-to-end throughput, memory.

1. Tokenization stage alone: the cleaned python-stdlib documents encoded by `shards.encode_jobs` and
   written with `SplitWriter` (2 MB jobs, uint16 arrays, eot separators, files on disk), against one
   call of tiktoken's `encode_ordinary_batch` on the same documents (GPT-2 vocabulary, 8 threads) that
   keeps the ids as Python lists. Target: lmforge <= 1.2x the tiktoken time.
2. End to end: `prepare` on the built-in python-stdlib corpus (near dedup), in MB/s of input.
3. Peak RSS of a fresh `prepare` process on the corpus as JSONL at 1x and 4x its size (each copy's
   documents get a distinct first line, and exact dedup, so 4x really is 4x the documents).

Run: .venv/bin/python bench/data_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
from lmforge.data.dedup import DedupConfig
from lmforge.data.prepare import prepare
from lmforge.tokenizers import load_gpt2
start = time.perf_counter()
meta = prepare([sys.argv[1]], tokenizer=load_gpt2(), out=sys.argv[2], dedup=DedupConfig(mode="exact"),
               verbose=False)
seconds = time.perf_counter() - start
tokens = sum(s["tokens"] for s in meta["splits"].values())
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent's size.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak_kb / 1024, seconds, tokens)
"""


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()

    from lmforge.data.builtin import builtin_documents
    from lmforge.data.clean import normalize_text
    from lmforge.data.prepare import JOB_BYTES, prepare
    from lmforge.data.shards import SplitWriter, encode_jobs
    from lmforge.tokenizers import load_gpt2

    tokenizer = load_gpt2()
    texts = [normalize_text(doc.text) for doc in builtin_documents("python-stdlib")]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    encoding = tokenizer.tiktoken_encoding()
    print(f"python-stdlib: {len(texts):,} documents, {megabytes:.1f} MB; GPT-2 tokenizer (tiktoken inside)")

    jobs, current, size = [], [], 0
    for text in texts:
        current.append(text)
        size += len(text)
        if size >= JOB_BYTES:
            jobs.append(("train", current))
            current, size = [], 0
    jobs.append(("train", current))

    def lmforge_stage(workers: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            writer = SplitWriter(Path(tmp), dtype="uint16", splits=["train"])
            for split, ids in encode_jobs(tokenizer, jobs, dtype="uint16", workers=workers):
                writer.append(split, ids)
            writer.close()

    raw = best_of(args.repeat, lambda: encoding.encode_ordinary_batch(texts, num_threads=8))
    print(f"\n1. tokenization stage (best of {args.repeat})")
    print(f"   tiktoken encode_ordinary_batch      {raw:6.2f} s  {megabytes / raw:6.1f} MB/s")
    for workers in (1, 2):
        ours = best_of(args.repeat, lambda w=workers: lmforge_stage(w))
        print(
            f"   lmforge stage, workers={workers}            {ours:6.2f} s  {megabytes / ours:6.1f} MB/s"
            f"  ratio {ours / raw:.2f}x (target <= 1.2x)"
        )

    print("\n2. end to end: prepare(['python-stdlib'], dedup near, workers=1)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepare(["python-stdlib"], tokenizer=tokenizer, out=Path(tmp) / "ds", verbose=False)
        seconds = time.perf_counter() - start
    print(f"   {seconds:.1f} s, {megabytes / seconds:.1f} MB/s of input")

    print("\n3. peak RSS of a fresh prepare process (JSONL input, exact dedup)")
    with tempfile.TemporaryDirectory() as tmp:
        for copies in (1, 4):
            source = Path(tmp) / f"corpus{copies}"
            source.mkdir()
            for copy in range(copies):
                with open(source / f"copy{copy}.jsonl", "w", encoding="utf-8") as f:
                    for i, text in enumerate(texts):
                        f.write(json.dumps({"text": f"# copy {copy} document {i}\n{text}"}) + "\n")
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(source), str(Path(tmp) / f"ds{copies}")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            rss, seconds, tokens = float(out[0]), float(out[1]), int(out[2])
            size = f"{copies * megabytes:6.1f} MB, {tokens:>11,} tokens"
            print(f"   {copies}x ({size}): peak RSS {rss:7.1f} MB, {seconds:5.1f} s")


if __name__ == "__main__":
    main()
