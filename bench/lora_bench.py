"""LoRA fine-tuning benchmark: tokens/s and training memory of lmforge LoRA, lmforge full fine-tuning and
peft + transformers on the same GPT-2-shaped model and batch, side by side in one process.

OMP_NUM_THREADS=1 python bench/lora_bench.py [--steps 2 --rounds 7 --rank 8 --precision fp32|bf16]

The model is a random `GPT2LMHeadModel` (L6/H6/d384/T256/vocab 4096, no dropout), saved and imported into
lmforge with `convert.from_hf`, so both libraries start from the same weights. One step = forward +
backward + AdamW step (lr 1e-4) over the trainable parameters, batch 8 of fixed random tokens. Runners:
  lmforge LoRA        apply_lora(rank r, alpha 2r, attn + mlp): separate q/k/v adapters of rank r
  lmforge full FT     every parameter trained
  peft (c_attn 3r)    LoRA on c_attn/c_proj/c_fc with c_attn at rank 3r, alpha 6r: the peft adapter
                      that holds lmforge's exactly (convert.to_peft_adapter); its c_attn B is dense
                      (1152 x 3r) where ours is block-diagonal, so it trains more values
  peft (c_attn r)     the usual peft setting, rank r everywhere (fewer parameters on c_attn)
Rounds are interleaved (the runners' order rotates from round to round) and every ratio is the median over
rounds of that round's ratio, so a burst of load from other processes moves a round's runners together
rather than one runner's figure. Each step is timed both on the wall clock (tokens/s, the figure asked
for) and in the process's CPU time (tokens per CPU-second: with one thread it leaves out the time the
process waits for a core on a shared machine). The 1-minute load average is printed before and after.

Memory is counted, not sampled (CPU torch keeps no allocator statistics): the bytes of every distinct
parameter, gradient and AdamW state after a step, plus every other distinct tensor autograd saves for
the backward in one forward (`torch.autograd.graph.saved_tensors_hooks`). Temporaries that live
only inside one operator are not counted, so the figure is a lower bound on the peak, equal in kind for
all runners.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=4096)
BATCH = 8


def hf_model(directory: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"],
                        n_positions=SHAPE["block_size"], vocab_size=SHAPE["vocab_size"], resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    config._attn_implementation = "sdpa"  # torch SDPA, as lmforge uses
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    return model


def saved_tensor_storages(forward: Callable[[], torch.Tensor]) -> dict[int, int]:
    """{storage address: bytes} of the tensors autograd saves for backward during one forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    return storages


def state_storages(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """{storage address: bytes} of the parameters, gradients and optimizer states."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        if p.grad is not None:
            seen[p.grad.untyped_storage().data_ptr()] = p.grad.untyped_storage().nbytes()
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return seen


def runner(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], precision: str):
    """(run(steps) -> (wall, CPU) seconds, memory bytes, trainable count) of a plain AdamW loop."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward() -> torch.Tensor:
        with autocast():
            return loss_of()

    def run(steps: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of `steps` steps."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            forward().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    saved = saved_tensor_storages(forward)  # also the warm-up step's forward + backward
    optimizer.step()
    memory = sum(
        (state_storages(model, optimizer) | saved).values()
    )  # a weight saved for backward counts once
    optimizer.zero_grad(set_to_none=True)
    return run, memory, sum(p.numel() for p in trainable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="steps per runner per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()

    import peft

    from lmforge.models.convert import from_hf
    from lmforge.models.lora import apply_lora

    r = args.rank
    torch.manual_seed(0)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["block_size"]))
    y = torch.roll(x, -1, dims=1)
    y[:, -1] = -100  # no target for the last position, as transformers' shifted labels
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf_model(Path(tmp))
        ours_lora = apply_lora(from_hf(tmp)[0].train(), rank=r, alpha=2 * r, targets=["attn", "mlp"])
        runners["lmforge LoRA"] = runner(ours_lora, lambda: ours_lora(x, y)[1], args.precision)
        ours_full = from_hf(tmp)[0].train()
        runners["lmforge full FT"] = runner(ours_full, lambda: ours_full(x, y)[1], args.precision)
        for name, c_attn_rank in ((f"peft (c_attn {3 * r})", 3 * r), (f"peft (c_attn {r})", r)):
            config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn", "c_proj", "c_fc"],
                                     rank_pattern={"c_attn": c_attn_rank},
                                     alpha_pattern={"c_attn": 2 * c_attn_rank},
                                     fan_in_fan_out=True, lora_dropout=0.0)  # fmt: skip
            theirs = peft.get_peft_model(hf_model(Path(tmp) / name), config).train()
            # transformers shifts the labels inside: the same predictions as lmforge's (x, y)
            runners[name] = runner(
                theirs, (lambda m: lambda: m(input_ids=x, labels=x).loss)(theirs), args.precision
            )

    tokens = BATCH * SHAPE["block_size"] * args.steps
    for run, _, _ in runners.values():
        run(1)  # warm-up
    names = list(runners)
    wall: dict[str, list[float]] = {name: [] for name in names}  # tokens/s per round
    cpu: dict[str, list[float]] = {name: [] for name in names}  # tokens per CPU-second per round
    load_before = os.getloadavg()[0]
    for k in range(args.rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:  # a rotating order
            seconds, cpu_seconds = runners[name][0](args.steps)
            wall[name].append(tokens / seconds)
            cpu[name].append(tokens / cpu_seconds)
        print(f"round {k + 1}: " + ", ".join(f"{n} {wall[n][-1]:,.0f}" for n in names), file=sys.stderr)
    load_after = os.getloadavg()[0]

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.precision}; {SHAPE}, batch {BATCH}")
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores")
    print(f"\n{'runner':20s} {'trainable':>10s} {'tok/s median':>13s} {'best':>6s} {'tok/CPU-s':>10s} "
          f"{'memory MB':>10s}")  # fmt: skip
    for name, (_, memory, count) in runners.items():
        line = f"{name:20s} {count:10,d} {statistics.median(wall[name]):13,.0f} {max(wall[name]):6,.0f}"
        print(f"{line} {statistics.median(cpu[name]):10,.0f} {memory / 2**20:10.1f}")
    ours = "lmforge LoRA"
    print(f"\nratios: median over {args.rounds} rounds of the round's ratio (min-max in brackets)")
    for other in (f"peft (c_attn {3 * r})", f"peft (c_attn {r})", "lmforge full FT"):
        by_wall = [a / b for a, b in zip(wall[ours], wall[other], strict=True)]
        by_cpu = [a / b for a, b in zip(cpu[ours], cpu[other], strict=True)]
        memory = runners[ours][1] / runners[other][1]
        print(f"{ours} / {other}: {statistics.median(by_wall):.2f}x tokens/s "
              f"[{min(by_wall):.2f}-{max(by_wall):.2f}], {statistics.median(by_cpu):.2f}x tokens/CPU-s "
              f"[{min(by_cpu):.2f}-{max(by_cpu):.2f}], {memory:.2f}x memory")  # fmt: skip


if __name__ == "__main__":
    main()
