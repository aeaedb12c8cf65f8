"""Data parallelism on a CPU: 2 processes x 1 thread against 1 process x 2 threads, and the memory
planner's figures against measured peaks.

python bench/bench_distributed.py [--preset cpu-medium --batch 8 --steps 6 --rounds 2]
    Trains lmforge's GPT with AdamW (fp32, random tokens, the same global batch of `--batch` sequences)
    four ways, each launched as its own job:
      one process, 2 threads, no wrapper (OMP_NUM_THREADS=2), and the same with 1 thread;
      2 processes x 1 thread, DDP over gloo (torchrun --standalone --nproc_per_node 2, batch/2 per rank);
      2 processes x 1 thread, FSDP2 `fully_shard` per block and at the root, gloo.
    Reports tokens/s (global), the step time, and for DDP the communication share of a step: the step
    with its gradient all-reduce against the same step under `no_sync()` (no all-reduce), and a bare
    all-reduce of a tensor the size of the gradients. Jobs alternate over `--rounds`; the best round of
    each is kept, since the machine is shared.
    Memory: each process reads its resident set (VmRSS) once the process group is up and the batch is
    built ("at start": interpreter, torch, gloo), then trains the "tiny" preset for two steps with the
    same wrapper to warm the runtime up (kernels' code pages, autograd and gloo threads, allocator
    arenas) and reads it again: the baseline. It builds the real model and optimizer, resets the
    high-water mark (clear_refs), trains, and reads the high-water mark (VmHWM). Reported per rank: both
    readings, the peak above the baseline, and `lmforge.models.memory.plan_memory` for the same preset,
    strategy, world size and per-rank batch.

python bench/bench_distributed.py --trainer [--preset cpu-medium --batch 8 --steps 6]
    The same check through `lmforge train` itself: 1 process, then DDP and FSDP under torchrun, fp32,
    `--batch`/2 sequences per process, on char-level Shakespeare (so the vocabulary is small). The peak
    RSS of the largest process (ru_maxrss of the waited-for children) of each run minus that of the same
    run with the "tiny" preset, which cancels the process, the data, evaluation and plotting, against
    the difference of the planner's two figures.

python bench/bench_distributed.py --worker ddp|fsdp|none ...
    One job (what the driver launches; under torchrun for ddp and fsdp). Prints one JSON line on rank 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: its high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current VmRSS (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from lmforge.models import GPT, GPTConfig
    from lmforge.models.memory import plan_memory

    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.worker != "none":
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    config = GPTConfig.preset(args.preset)
    per_rank = args.batch // world
    generator = torch.Generator().manual_seed(1000 + rank)  # each rank its own rows
    x = torch.randint(0, config.vocab_size, (per_rank, config.block_size), generator=generator)
    y = torch.randint(0, config.vocab_size, (per_rank, config.block_size), generator=generator)
    gc.collect()
    started = _status("VmRSS")

    def build(config: GPTConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model: torch.nn.Module = GPT(config)
        if args.worker == "ddp":
            model = DistributedDataParallel(model)
        elif args.worker == "fsdp":
            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y) -> float:
        start = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    # Warm up the runtime (kernels' code pages, autograd and gloo threads, allocator arenas) on the
    # "tiny" preset, so that the baseline holds the process and the peak above it the model alone.
    tiny = GPTConfig.preset("tiny")
    warm_model, warm_optimizer = build(tiny)
    warm_x = torch.randint(0, tiny.vocab_size, (per_rank, tiny.block_size))
    for _ in range(2):
        train_step(warm_model, warm_optimizer, warm_x, warm_x)
    del warm_model, warm_optimizer
    gc.collect()
    baseline = _status("VmRSS")

    model, optimizer = build(config)
    with torch.device("meta"):
        n_params = GPT(config).num_params()  # distinct parameters (a tied head once)

    def step() -> float:
        return train_step(model, optimizer, x, y)

    gc.collect()
    _reset_peak()
    times = [step() for _ in range(args.steps)]
    peak = _status("VmHWM") - baseline
    result: dict = {
        "job": args.worker,
        "world_size": world,
        "threads": args.threads,
        "batch_per_rank": per_rank,
        "step_s": min(times[1:]),  # the first step allocates the AdamW states
        "started": started,
        "baseline": baseline,
        "peak_above_baseline": peak,
    }
    strategy = "fsdp" if args.worker == "fsdp" else "ddp"
    plan = plan_memory(config, world_size=world, strategy=strategy, batch_size=per_rank, precision="fp32")
    result["planned"] = plan.total
    result["planned_parts"] = {
        "weights": plan.weights,
        "gradients": plan.gradients,
        "optimizer": plan.optimizer,
        "activations": plan.activations,
        "buffers": plan.buffers,
    }
    if args.worker == "ddp":

        def step_no_sync() -> float:
            with model.no_sync():
                return step()

        result["step_no_sync_s"] = min(step_no_sync() for _ in range(max(2, args.steps - 2)))
        grads = torch.zeros(n_params)  # the all-reduce of one step, as one tensor
        dist.all_reduce(grads)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            dist.all_reduce(grads)
            timings.append(time.perf_counter() - start)
        result["allreduce_s"] = min(timings)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(
            gathered, {k: result[k] for k in ("started", "baseline", "peak_above_baseline", "step_s")}
        )
        result["ranks"] = gathered
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(result), flush=True)


JOBS = {  # name: (worker, threads per process)
    "1 process x 2 threads": ("none", 2),
    "1 process x 1 thread": ("none", 1),
    "DDP, 2 processes x 1 thread": ("ddp", 1),
    "FSDP2, 2 processes x 1 thread": ("fsdp", 1),
}


def run_job(job: str, threads: int, args: argparse.Namespace) -> dict:
    """Launch one job (torchrun for 2 processes) and return rank 0's JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    script = [str(Path(__file__).resolve()), "--worker", job, "--threads", str(threads)]
    script += ["--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps)]
    if job == "none":
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += script
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{job} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _peak_rss_of(command: list[str], env: dict[str, str]) -> int:
    """Run `command` in a fresh Python and return the largest peak RSS (bytes) of any process it
    started: ru_maxrss of RUSAGE_CHILDREN is the largest over the waited-for descendants (torchrun's
    workers included), so each command gets its own wrapper process."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:] if done.returncode else '')\n"
        "sys.exit(done.returncode)\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return int(done.stdout.split()[-1])


def trainer_memory(args: argparse.Namespace) -> None:
    """Peak RSS of `lmforge train` itself (1 process, and DDP / FSDP under torchrun), fp32, on
    char-level Shakespeare: the `--preset` model minus the same run with the "tiny" preset (which
    cancels the process, the data, evaluation and plotting), against the planner's difference."""
    import tempfile

    from lmforge.data.builtin import builtin_text
    from lmforge.data.dedup import DedupConfig
    from lmforge.data.prepare import prepare
    from lmforge.models import GPTConfig
    from lmforge.models.memory import plan_memory
    from lmforge.tokenizers import CharTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    text = builtin_text("shakespeare")[:400_000]
    docs = [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    (work / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = CharTokenizer.train(docs)
    prepare(
        [str(work / "docs.jsonl")],
        tokenizer=tokenizer,
        out=work / "data",
        dedup=DedupConfig(mode="none"),
        val=0.1,
        verbose=False,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    print("| run | batch/rank | peak RSS, tiny | peak RSS, model | difference | planned difference | ratio |")
    print("|---|---|---|---|---|---|---|")
    for parallel, world in (("none", 1), ("ddp", 2), ("fsdp", 2)):
        peaks, plans = [], []
        for preset in ("tiny", args.preset):
            config = GPTConfig.preset(preset, vocab_size=tokenizer.vocab_size)
            settings = {
                "model.preset": preset,
                "data.dir": work / "data",
                "train.out_dir": work / f"run-{parallel}-{preset}",
                "train.max_iters": args.steps,
                "train.batch_size": args.batch // 2,
                "train.eval_interval": 0,
                "train.eval_batches": 2,
                "train.checkpoint": "false",
                "train.parallel": parallel,
                "train.precision": "fp32",
                "train.device": "cpu",
                "train.peak_tflops": 1.0,
                "train.progress": "false",
            }
            overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
            launcher = [sys.executable] if world == 1 else torchrun
            peaks.append(_peak_rss_of([*launcher, "-m", "lmforge", "train", *overrides], env))
            strategy = "fsdp" if parallel == "fsdp" else "ddp"
            plan = plan_memory(
                config, world_size=world, strategy=strategy, batch_size=args.batch // 2, precision="fp32"
            )
            plans.append(plan.total)
        measured, planned = peaks[1] - peaks[0], plans[1] - plans[0]
        print(
            f"| {parallel}, {world} process{'es' if world > 1 else ''} | {args.batch // 2} "
            f"| {_mib(peaks[0])} | {_mib(peaks[1])} | {_mib(measured)} | {_mib(planned)} "
            f"| {measured / planned:.2f} |",
            flush=True,
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["none", "ddp", "fsdp"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="cpu-medium")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trainer", action="store_true", help="measure `lmforge train` itself (see above)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.trainer:
        trainer_memory(args)
        return
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, (job, threads) in JOBS.items():
            result = run_job(job, threads, args)
            print(name, json.dumps(result), flush=True)
            if name not in best or result["step_s"] < best[name]["step_s"]:
                best[name] = result
    from lmforge.models import GPTConfig

    T = GPTConfig.preset(args.preset).block_size
    tokens = args.batch * T
    print(f"\n{args.preset}, fp32 AdamW, global batch {args.batch} x {T} = {tokens} tokens per step")
    print("| run | step | tokens/s | communication |")
    print("|---|---|---|---|")
    for name, r in best.items():
        comm = "-"
        if r["job"] == "ddp":
            share = 1 - r["step_no_sync_s"] / r["step_s"]
            comm = (
                f"step without all-reduce {r['step_no_sync_s'] * 1000:.0f} ms ({share:.0%} of the step); "
                f"bare all-reduce of the gradients {r['allreduce_s'] * 1000:.0f} ms"
            )
        print(f"| {name} | {r['step_s'] * 1000:.0f} ms | {tokens / r['step_s']:,.0f} | {comm} |")
    print(
        "\n| run | batch/rank | RSS at start / after warm-up, per rank | peak above that | planned | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in best.items():
        ranks = r.get("ranks", [r])
        peak = max(rank["peak_above_baseline"] for rank in ranks)
        base = ", ".join(f"{_mib(rank['started'])} / {_mib(rank['baseline'])}" for rank in ranks)
        parts = ", ".join(f"{k} {_mib(v)}" for k, v in r["planned_parts"].items() if v)
        print(
            f"| {name} | {r['batch_per_rank']} | {base} | {_mib(peak)} "
            f"| {_mib(r['planned'])} ({parts}) | {peak / r['planned']:.2f} |"
        )


if __name__ == "__main__":
    main()
