"""Serving throughput: continuous batching vs one request at a time, same scheduler, in one process.

A GPT with random weights (6 layers, 384 wide, vocabulary 4096, context 256: the "cpu-medium" shape)
answers N concurrent greedy requests (prompts of 16..47 tokens, --new-tokens each), first through a
`Scheduler` with max_batch=N (continuous batching), then with max_batch=1 (the requests wait in the
queue and run one after another). Measured: total generated tokens/s, p50/p95 request latency and time
to first token, from the scheduler's own emit callbacks (no HTTP). Both runs must produce identical
tokens (checked): batching changes the speed, not the output. Also measured: the CPU time of the
scheduler's thread (the model), so "tokens per CPU-second" compares the two modes even when other
processes take the cores away (on a shared machine the wall-clock figures move with the load).

With --http the same comparison runs end to end: the app on 127.0.0.1 (uvicorn in a thread of this
process) with max_batch=N and then 1, and N threads of the official `openai` client streaming the
completions (token ids as the prompt, so both runs see the same inputs) from a separate client process,
as real clients are (client threads inside the server's process would compete for its GIL); TTFT is
then the first streamed chunk that carries text. The load average of the machine is printed too: on a
shared machine the figures move with it.

Run: .venv/bin/python bench/serve_bench.py [--streams 16 --new-tokens 64 --threads 1 --http]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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
    cpu = _cpu_clock(scheduler._thread)
    start, cpu_start = time.perf_counter(), cpu()
    for i, prompt in enumerate(prompts):
        scheduler.submit(
            Request(
                prompt=prompt, params=SamplingParams(temperature=0), max_tokens=new_tokens, emit=emitter(i)
            )
        )
    for _ in prompts:
        done.acquire()
    elapsed, model_cpu = time.perf_counter() - start, cpu() - cpu_start
    scheduler.stop()
    latency = sorted(t - start for t in last)
    ttft = sorted(t - start for t in first)

    return {
        "tokens/s": sum(map(len, tokens)) / elapsed,
        "p50 latency": statistics.median(latency),
        "p95 latency": _pct(latency, 0.95),
        "p50 TTFT": statistics.median(ttft),
        "p95 TTFT": _pct(ttft, 0.95),
        "model thread CPU": model_cpu,
        "tokens/CPU-s": sum(map(len, tokens)) / model_cpu,
        "tokens": tokens,
    }


def run_http(model: GPT, prompts: list[list[int]], *, max_batch: int, new_tokens: int) -> dict:
    """The same measurement through HTTP: a server on a free loopback port, one openai client thread per
    prompt, greedy streamed completions."""
    import socket

    import openai
    import uvicorn

    from lmforge.serving.server import ServerConfig, create_app
    from lmforge.tokenizers import CharTokenizer

    tokenizer = CharTokenizer("".join(chr(0x4E00 + i) for i in range(4096)))  # one character per id
    config = ServerConfig(
        model_name="bench", max_batch=max_batch, max_waiting=len(prompts), max_tokens=new_tokens
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(lambda: (model, tokenizer, {}), config)
    server = uvicorn.Server(uvicorn.Config(app, port=port, host="127.0.0.1", log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
    while True:  # until the model is loaded
        try:
            client.models.list()
            client.completions.create(model="bench", prompt=prompts[0][:4], max_tokens=1)
            break
        except openai.APIError:
            time.sleep(0.1)
    model_cpu = _cpu_clock(app.state.lmforge["served"].scheduler._thread)
    loop_cpu = _cpu_clock(thread)
    model_start, loop_start = model_cpu(), loop_cpu()
    clients, answer = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=client_load, args=(port, prompts, new_tokens, answer)
    )
    process.start()
    first, last, counts, texts, elapsed = clients.recv()
    model_used, loop_used = model_cpu() - model_start, loop_cpu() - loop_start
    process.join()
    server.should_exit = True
    thread.join()
    latency, ttft = sorted(last), sorted(first)
    return {
        "tokens/s": sum(counts) / elapsed,  # counted by the server (usage)
        "p50 latency": statistics.median(latency),
        "p95 latency": _pct(latency, 0.95),
        "p50 TTFT": statistics.median(ttft),
        "p95 TTFT": _pct(ttft, 0.95),
        "model thread CPU": model_used,
        "tokens/CPU-s": sum(counts) / model_used,
        "event-loop thread CPU": loop_used,
        "tokens": texts,
    }


def client_load(port: int, prompts: list[list[int]], new_tokens: int, answer) -> None:
    """In a client process: one thread per prompt streams a greedy completion; sends back the times of
    the first text and of the end of each stream (seconds from the start), token counts, texts and the
    elapsed time."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)
    client.models.list()  # connect once before the clock starts
    first: list[float] = [0.0] * len(prompts)
    last: list[float] = [0.0] * len(prompts)
    counts = [0] * len(prompts)
    texts = [""] * len(prompts)
    start = time.perf_counter()

    def worker(i: int) -> None:
        stream = client.completions.create(
            model="bench",
            prompt=prompts[i],
            max_tokens=new_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            text = "".join(choice.text for choice in chunk.choices)
            if text and not first[i]:
                first[i] = time.perf_counter() - start
            texts[i] += text
            if chunk.usage is not None:
                counts[i] = chunk.usage.completion_tokens
        last[i] = time.perf_counter() - start

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    answer.send((first, last, counts, texts, time.perf_counter() - start))


def _cpu_clock(thread: threading.Thread):
    """A function giving the CPU seconds `thread` has used so far (readable from another thread)."""
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--http", action="store_true", help="through the HTTP server and openai clients")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("cpu-medium")).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, 4096, (16 + (7 * i) % 32,), generator=generator).tolist()
        for i in range(args.streams)
    ]
    measure = run_http if args.http else run
    measure(model, prompts[:2], max_batch=2, new_tokens=4)  # warm-up
    batched = measure(model, prompts, max_batch=args.streams, new_tokens=args.new_tokens)
    serial = measure(model, prompts, max_batch=1, new_tokens=args.new_tokens)
    assert batched["tokens"] == serial["tokens"], "batched and one-at-a-time outputs differ"
    where = "through HTTP" if args.http else "at the scheduler"
    print(f"{args.streams} streams x {args.new_tokens} new tokens, greedy, {args.threads} thread(s), {where}")
    print("load average (1, 5, 15 min) after the runs: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{'':28} {'batched':>10} {'one at a time':>14}")
    keys = ["tokens/s", "p50 latency", "p95 latency", "p50 TTFT", "p95 TTFT", "model thread CPU"]
    keys += ["event-loop thread CPU"] if args.http else []
    for key in [*keys, "tokens/CPU-s"]:
        unit = " s" if key not in ("tokens/s", "tokens/CPU-s") else ""
        print(f"{key + unit:28} {batched[key]:10.2f} {serial[key]:14.2f}")
    print(f"throughput ratio: {batched['tokens/s'] / serial['tokens/s']:.2f}x (outputs identical)")
    print(
        f"tokens per CPU-second of the model thread: {batched['tokens/CPU-s'] / serial['tokens/CPU-s']:.2f}x"
    )


if __name__ == "__main__":
    main()
