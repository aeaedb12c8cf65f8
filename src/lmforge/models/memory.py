"""Per-rank training memory of a GPT under data parallelism: the planner behind `lmforge model info`.

Model and optimizer states follow the accounting of Rajbhandari et al. 2020 ("ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models", section 3.1 and figure 1). Mixed-precision
Adam keeps, per parameter, 2 bytes of 16-bit weights, 2 bytes of 16-bit gradients and K = 12 bytes of
optimizer state (a 4-byte fp32 master copy of the weights and the two 4-byte Adam moments): 16 bytes.
With W data-parallel ranks, ZeRO stage 1 (P_os) divides the optimizer state by W, stage 2 (P_os+g) the
gradients as well, stage 3 (P_os+g+p) the weights as well:

    ddp    2 + 2 + 12            = 16 bytes/parameter on every rank
    zero1  2 + 2 + 12 / W        (W = 8: 5.5)
    zero2  2 + (2 + 12) / W      (W = 8: 3.75)
    fsdp   (2 + 2 + 12) / W      (W = 8: 2; FSDP's full shard, FSDP2 `fully_shard`, is stage 3)

`PRECISIONS` holds the variants: fp32 everywhere (4 + 4 + 8 = 16, no master copy), lmforge's own
`train.precision = "bf16"` (fp32 weights, gradients and moments, matmuls under bf16 autocast: 16 bytes
plus the bf16 weight copies autocast keeps for backward) and the 18-byte mixed precision that
accumulates gradients in fp32 (2 + 4 + 4 + 8, as Megatron-LM's distributed optimizer documents it).

Activations are counted from the model's own shapes: per token and block, every tensor autograd saves
for backward in lmforge's `Block` with SDPA (flash-style: no T x T scores are kept). For a GPT-2 block
(LayerNorm, tanh-GELU, hidden 4C) in fp32 that is 16 C floats per token: the two norms' inputs (2C) and
outputs (2C), q, k and v (3C), the attention output (C) and the MLP's pre- and post-activation (8C),
plus two fp32 statistics per LayerNorm and one log-sum-exp per head. `tests/test_memory_planner.py`
checks the count against autograd's saved tensors. The LM head adds the final norm and three fp32 rows
of V per token at the start of backward (the log-probabilities the loss saved, their gradient and the
logits' gradient). With activation checkpointing only each block's input is kept, and one block at a
time is recomputed in full.

FSDP and DDP also hold communication buffers, counted from the same shapes: DDP's gradient buckets are a
second copy of the gradients (PyTorch's default `gradient_as_bucket_view=False`); FSDP all-gathers one
block ahead of the one computing, keeps the root module's parameters (embeddings, final norm, head)
unsharded through forward and backward, and holds a block's and the root's full gradients until they
are reduce-scattered. A single process has no such buffers.

Does not model: the process itself (interpreter, torch libraries, CUDA context, NCCL buffers; the CPU
figure is measured beside the planner's in BENCHMARKS.md), allocator caching and fragmentation, dropout
masks and the T x T attention weights SDPA keeps when dropout is on, temporaries inside a kernel or the
optimizer step, and tensor or pipeline parallelism. It is arithmetic on a configuration: no model is
built except on the meta device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.errors import check, is_int
from lmforge.models.gpt import GPT, GPTConfig

STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")  # how the W data-parallel ranks split the states


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each state, and bytes per element of saved activations."""

    weights: int  # the weights the forward pass reads
    gradients: int  # the gradients backward writes (and the all-reduce / reduce-scatter sends)
    master: int  # an fp32 copy of the weights kept by the optimizer (0 when the weights are fp32)
    moments: int  # AdamW's exp_avg and exp_avg_sq
    activations: int  # matmul inputs and outputs saved for backward
    residual: int  # the residual stream and the norms' inputs: the weights' dtype
    autocast_copies: int  # 16-bit copies of each matmul weight that autocast keeps for backward


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(4, 4, 0, 8, activations=4, residual=4, autocast_copies=0),
    # lmforge's train.precision = "bf16": fp32 weights, bf16 matmuls under torch.autocast
    "bf16": Precision(4, 4, 0, 8, activations=2, residual=4, autocast_copies=2),
    # ZeRO's mixed precision: bf16 weights and gradients, fp32 master weights and moments (K = 12)
    "bf16-mixed": Precision(2, 2, 4, 8, activations=2, residual=2, autocast_copies=0),
    # the same with gradients accumulated in fp32 (Megatron-LM's "18 bytes per parameter")
    "bf16-mixed-fp32-grads": Precision(2, 4, 4, 8, activations=2, residual=2, autocast_copies=0),
}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one rank holds at its peak (the start of backward), by part."""

    weights: int
    gradients: int
    optimizer: int  # fp32 master weights (if any) + AdamW moments
    activations: int
    buffers: int  # communication buffers and autocast's weight copies (see the module docstring)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers

    def fits(self, capacity: int) -> bool:
        """Whether the estimate fits `capacity` bytes (an estimate: leave headroom for the process)."""
        return self.total <= capacity


def _shard(total: int, world_size: int, sharded: bool) -> int:
    """Bytes per rank of a state of `total` bytes, split evenly over the ranks when sharded.
    Example: _shard(10, 4, True) -> 3 (the last rank's share is padded up); _shard(10, 4, False) -> 10."""
    return math.ceil(total / world_size) if sharded else total


def block_activation_bytes(config: GPTConfig, precision: Precision) -> int:
    """Bytes one block saves for backward, per token.

    Example (GPT-2 block, C = 768, 12 heads, fp32): 16 C floats = 49,152 bytes, plus 2 LayerNorms x 2
    statistics x 4 bytes = 16 and a log-sum-exp per head 12 x 4 = 48 -> 49,216 bytes.
    """
    C, a, r = config.n_embd, precision.activations, precision.residual
    norm_stats = 8 if config.norm == "layernorm" else 4  # fp32 mean and 1/std, or RMSNorm's 1/rms only
    norm_extra = 0 if config.norm == "layernorm" else C * r  # RMSNorm (composite) also keeps x / rms
    norm = (
        C * r + norm_stats + norm_extra + C * a
    )  # its input, statistics, and its output (next matmul's input)
    q_width, kv_width = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    attention = (q_width + 2 * kv_width) * a  # q, k, v (one c_attn output)
    if config.pos_encoding == "rope":
        # the rotated q and k are new tensors, and SDPA's output then follows q's (B, nh, T, hd) layout,
        # so the transpose back to (B, T, C) for c_proj is a copy that is saved as well
        attention += (q_width + kv_width + C) * a
    attention += config.n_head * 4 + C * a  # SDPA's fp32 log-sum-exp per head, its output (c_proj's input)
    if config.attn_only:
        return norm + attention
    hidden = config.mlp_hidden
    mlp = (
        (4 if config.mlp == "swiglu" else 2) * hidden * a
    )  # gelu/relu2: before and after; swiglu: gate, value, silu, product
    return 2 * norm + attention + mlp


def head_activation_bytes(config: GPTConfig, precision: Precision) -> int:
    """Bytes per token of the final norm and the loss at the start of backward: three fp32 rows of V.
    Example (V = 50,257, C = 768, LayerNorm, fp32): 768 x 4 + 8 + 768 x 4 + 3 x 4 x 50,257 = 609,236."""
    C, a, r = config.n_embd, precision.activations, precision.residual
    if config.norm_placement == "pre":
        final_norm = C * r + (8 if config.norm == "layernorm" else 4 + C * r) + C * a
    else:
        final_norm = C * a  # post-norm blocks end in a norm: only the head's input is added
    return final_norm + 3 * 4 * config.vocab_size


def activation_bytes(
    config: GPTConfig, precision: Precision, *, tokens: int, activation_checkpointing: bool = False
) -> int:
    """Saved activations of one rank's micro-batch of `tokens` tokens (batch x sequence length).
    With checkpointing each block keeps its input (C in the residual dtype) and one block is recomputed."""
    block = block_activation_bytes(config, precision)
    if activation_checkpointing:
        per_token = config.n_layer * config.n_embd * precision.residual + block
    else:
        per_token = config.n_layer * block
    return tokens * (per_token + head_activation_bytes(config, precision))


def plan_memory(
    config: GPTConfig,
    *,
    world_size: int,
    strategy: str,
    batch_size: int,
    seq_len: int | None = None,
    precision: str = "bf16-mixed",
    activation_checkpointing: bool = False,
) -> MemoryPlan:
    """Per-rank peak bytes of AdamW training of `config` on `world_size` data-parallel ranks.

    `batch_size` is the micro-batch of one rank (each rank keeps the activations of its own batch).
    Example: GPT-2 (124,439,808 parameters), "bf16-mixed", fsdp on 8 ranks: weights and gradients
    124,439,808 x 2 / 8 = 31,109,952 bytes each, optimizer 124,439,808 x 12 / 8 = 186,659,712.
    """
    check(strategy in STRATEGIES, "strategy", strategy, f"choose one of {', '.join(STRATEGIES)}")
    check(precision in PRECISIONS, "precision", precision, f"choose one of {', '.join(PRECISIONS)}")
    check(is_int(world_size, 1), "world_size", world_size, "use a positive integer")
    check(is_int(batch_size, 1), "batch_size", batch_size, "use a positive integer")
    seq_len = config.block_size if seq_len is None else seq_len
    check(
        is_int(seq_len, 1) and seq_len <= config.block_size,
        "seq_len",
        seq_len,
        f"use an integer in [1, block_size={config.block_size}]",
    )
    p = PRECISIONS[precision]
    with torch.device("meta"):
        model = GPT(config)
    n = model.num_params()
    block = sum(t.numel() for t in model.transformer.h[0].parameters())
    root = n - config.n_layer * block  # embeddings, final norm, an untied head
    matmul = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )  # tied head included

    stage = STRATEGIES.index(strategy)  # 0 ddp, 1 zero1, 2 zero2, 3 fsdp
    weights = _shard(n * p.weights, world_size, stage >= 3)
    gradients = _shard(n * p.gradients, world_size, stage >= 2)
    optimizer = _shard(n * (p.master + p.moments), world_size, stage >= 1)
    if world_size == 1:
        buffers = 0  # one process trains without a DDP or FSDP wrapper
    elif strategy in ("ddp", "zero1"):
        buffers = n * p.gradients  # DDP's gradient buckets
    elif strategy == "zero2":
        buffers = (root + block) * p.gradients  # full gradients awaiting reduce-scatter
    else:  # all-gathered: root + the block computing + the next; full gradients of root + one block
        buffers = (root + 2 * block) * p.activations + (root + block) * p.gradients
    if p.autocast_copies and (strategy != "fsdp" or world_size == 1):  # FSDP gathers 16-bit weights directly
        buffers += matmul * p.autocast_copies
    tokens = batch_size * seq_len
    activations = activation_bytes(
        config, p, tokens=tokens, activation_checkpointing=activation_checkpointing
    )
    return MemoryPlan(weights, gradients, optimizer, activations, buffers)
