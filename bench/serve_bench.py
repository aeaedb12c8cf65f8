"""Serving throughput: continuous batching vs one request at a time, same scheduler, in one process.

A GPT with random weights (6 layers, 384 wide, vocabulary 4096, context 256: the "cpu-medium" shape)
answers N concurrent greedy requests (prompts of 16..47 tokens, --new-tokens each), first through a
`Scheduler` with max_batch=N (continuous batching), then with max_batch=1 (the requests wait in the
queue and run one after another). Measured: total generated tokens/s, p50/p95 request latency and time
to first token, from the scheduler's own emit callbacks (no HTTP). Both runs must produce identical
tokens (checked): batching changes the speed, not the output.

Run: .venv/bin/python bench/serve_bench.py [--streams 16 --new-tokens 64 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from lmforge.inference import SamplingParams
from lmforge.models import GPT, GPTConfig
from lmforge.serving.scheduler import Request, Scheduler


def run(model: GPT, prompts: list[list[int]], *, max_batch: int, new_tokens: int) -> dict:
    """Submit every prompt at once; -> throughput, latency and TTFT figures and the tokens."""
    scheduler = Scheduler(model, max_batch=max_batch, max_waiting=len(prompts))
    done = threading.Semaphore(0)
    first: list[float | None] = [None] * len(prompts)
    last = [0.0] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]

    def emitter(i: int):
        def emit(token, finish):
            now = time.perf_counter()
            if token is not None:
                tokens[i].append(token)
                first[i] = first[i] or now
            if finish:
                last[i] = now
                done.release()

        return emit

    scheduler.start()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        scheduler.submit(
            Request(
                prompt=prompt, params=SamplingParams(temperature=0), max_tokens=new_tokens, emit=emitter(i)
            )
        )
    for _ in prompts:
        done.acquire()
    elapsed = time.perf_counter() - start
    scheduler.stop()
    latency = sorted(t - start for t in last)
    ttft = sorted(t - start for t in first)

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "tokens/s": sum(map(len, tokens)) / elapsed,
        "p50 latency": statistics.median(latency),
        "p95 latency": pct(latency, 0.95),
        "p50 TTFT": statistics.median(ttft),
        "p95 TTFT": pct(ttft, 0.95),
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("cpu-medium")).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, 4096, (16 + (7 * i) % 32,), generator=generator).tolist()
        for i in range(args.streams)
    ]
    run(model, prompts[:2], max_batch=2, new_tokens=4)  # warm-up
    batched = run(model, prompts, max_batch=args.streams, new_tokens=args.new_tokens)
    serial = run(model, prompts, max_batch=1, new_tokens=args.new_tokens)
    assert batched["tokens"] == serial["tokens"], "batched and one-at-a-time outputs differ"
    print(f"{args.streams} streams x {args.new_tokens} new tokens, greedy, {args.threads} thread(s)")
    print(f"{'':28} {'batched':>10} {'one at a time':>14}")
    for key in ("tokens/s", "p50 latency", "p95 latency", "p50 TTFT", "p95 TTFT"):
        unit = "" if key == "tokens/s" else " s"
        print(f"{key + unit:28} {batched[key]:10.2f} {serial[key]:14.2f}")
    print(f"throughput ratio: {batched['tokens/s'] / serial['tokens/s']:.2f}x (outputs identical)")


if __name__ == "__main__":
    main()
