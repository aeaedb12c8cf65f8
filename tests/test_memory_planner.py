"""The memory planner (`lmforge.models.memory`): ZeRO accounting worked by hand, and the activation count
checked against the tensors autograd actually saves."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models import GPT, GPTConfig
from lmforge.models.memory import (
    PRECISIONS,
    activation_bytes,
    block_activation_bytes,
    head_activation_bytes,
    plan_memory,
)

GPT2_PARAMS = 124_439_808  # 85,056,000 in the blocks and ln_f + wte 50,257 x 768 + wpe 1,024 x 768


def states(plan) -> int:
    return plan.weights + plan.gradients + plan.optimizer


def test_zero_stages_divide_the_16_bytes_as_the_paper_does():
    """ZeRO (Rajbhandari et al. 2020, figure 1) with K = 12, W = 8, GPT-2's N = 124,439,808 (divisible by 8):
    ddp   16 N              = 1,991,036,928
    zero1 (2 + 2 + 12/8) N  = 5.5 N  =   684,418,944
    zero2 (2 + 14/8) N      = 3.75 N =   466,649,280
    fsdp  16 N / 8          = 2 N    =   248,879,616"""
    config = GPTConfig.preset("gpt2")
    expected = {"ddp": 1_991_036_928, "zero1": 684_418_944, "zero2": 466_649_280, "fsdp": 248_879_616}
    for strategy, total in expected.items():
        plan = plan_memory(config, world_size=8, strategy=strategy, batch_size=1, precision="bf16-mixed")
        assert states(plan) == total, strategy
    fsdp = plan_memory(config, world_size=8, strategy="fsdp", batch_size=1, precision="bf16-mixed")
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (31_109_952, 31_109_952, 186_659_712)


def test_18_byte_variant_and_fp32():
    """fp32 gradients: 2 + 4 + 4 + 8 = 18 B -> 18 N = 2,239,916,544 under ddp; fsdp on 8: 18 N / 8 =
    279,989,568. Plain fp32 is 4 + 4 + 0 + 8 = 16 B, but zero1 keeps 8 B of weights and gradients:
    (8 + 8/8) N = 9 N = 1,119,958,272 on 8 ranks (against 5.5 N in bf16)."""
    config = GPTConfig.preset("gpt2")
    plan = plan_memory(config, world_size=8, strategy="ddp", batch_size=1, precision="bf16-mixed-fp32-grads")
    assert states(plan) == 2_239_916_544
    plan = plan_memory(config, world_size=8, strategy="fsdp", batch_size=1, precision="bf16-mixed-fp32-grads")
    assert states(plan) == 279_989_568
    plan = plan_memory(config, world_size=8, strategy="zero1", batch_size=1, precision="fp32")
    assert states(plan) == 1_119_958_272


def test_buffers_worked_by_hand():
    """GPT-2, fp32, W = 2. A block holds 12 C^2 + 13 C = 7,087,872 parameters; the root (wte, wpe, ln_f)
    N - 12 x 7,087,872 = 124,439,808 - 85,054,464 = 39,385,344.
    ddp: gradient buckets 4 N = 497,759,232.
    fsdp: gathered root + 2 blocks = 53,561,088 x 4 = 214,244,352, plus the full gradients of root + one
    block 46,473,216 x 4 = 185,892,864 -> 400,137,216.
    bf16 autocast under ddp adds 2 bytes per matmul weight, 12 x (3 + 1 + 4 + 4) C^2 + tied head V C
    = 84,934,656 + 38,597,376 = 123,532,032 -> 247,064,064, to the fp32 buckets 4 N = 497,759,232:
    744,823,296 in all."""
    config = GPTConfig.preset("gpt2")
    assert (
        plan_memory(config, world_size=2, strategy="ddp", batch_size=1, precision="fp32").buffers
        == 497_759_232
    )
    assert (
        plan_memory(config, world_size=2, strategy="fsdp", batch_size=1, precision="fp32").buffers
        == 400_137_216
    )
    assert (
        plan_memory(config, world_size=2, strategy="ddp", batch_size=1, precision="bf16").buffers
        == 744_823_296
    )


def test_activations_worked_by_hand():
    """GPT-2 block, fp32: (16 x 768) x 4 + 16 + 48 = 49,216 bytes per token (see block_activation_bytes);
    the head 768 x 4 + 8 + 768 x 4 + 12 x 50,257 = 609,236. Batch 8 x 1024 = 8,192 tokens:
    8,192 x (12 x 49,216 + 609,236) = 8,192 x 1,199,828 = 9,828,990,976 bytes.
    Checkpointed: 8,192 x (12 x 768 x 4 + 49,216 + 609,236) = 8,192 x 695,316 = 5,696,028,672."""
    config, fp32 = GPTConfig.preset("gpt2"), PRECISIONS["fp32"]
    assert block_activation_bytes(config, fp32) == 49_216
    assert head_activation_bytes(config, fp32) == 609_236
    assert activation_bytes(config, fp32, tokens=8192) == 9_828_990_976
    assert activation_bytes(config, fp32, tokens=8192, activation_checkpointing=True) == 5_696_028_672
    plan = plan_memory(config, world_size=4, strategy="fsdp", batch_size=8, precision="fp32")
    assert plan.activations == 9_828_990_976  # activations are per rank: never divided by W


def _saved_bytes_per_token(config: GPTConfig, *, bf16: bool) -> float:
    """Bytes of the tensors autograd saves in one block, per token: the difference between a batch of
    2 and of 1 rows (which cancels per-layer constants such as autocast's weight copies)."""
    torch.manual_seed(0)
    model = GPT(config)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    T = config.block_size
    rope = (model.rope_cos[:T], model.rope_sin[:T]) if config.pos_encoding == "rope" else None

    def saved(B: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in own:
                storages[s.data_ptr()] = s.nbytes()
            return t

        x = torch.randn(B, T, config.n_embd, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.transformer.h[0](x, rope=rope)
        return sum(storages.values())

    return (saved(2) - saved(1)) / T


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mlp": "swiglu", "pos_encoding": "rope", "norm": "rmsnorm", "bias": False},
        {"n_kv_head": 2, "mlp": "relu2"},
        {"attn_only": True},
    ],
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_block_activations_match_what_autograd_saves(overrides, precision):
    config = GPTConfig(n_layer=1, n_head=4, n_embd=64, block_size=16, vocab_size=32, **overrides)
    measured = _saved_bytes_per_token(config, bf16=precision == "bf16")
    assert block_activation_bytes(config, PRECISIONS[precision]) == measured


def test_fits_and_bad_options():
    """gpt2, bf16-mixed, ddp, batch 1 x 1024: 16 N = 1.99 GB of states alone, so 1 GB cannot fit."""
    config = GPTConfig.preset("gpt2")
    plan = plan_memory(config, world_size=1, strategy="ddp", batch_size=1)
    assert plan.fits(80 * 10**9) and not plan.fits(10**9)
    assert plan.total == states(plan) + plan.activations + plan.buffers
    with pytest.raises(ConfigError, match="strategy"):
        plan_memory(config, world_size=2, strategy="zero4", batch_size=1)
    with pytest.raises(ConfigError, match="seq_len"):
        plan_memory(config, world_size=2, strategy="ddp", batch_size=1, seq_len=4096)
    with pytest.raises(ConfigError, match="world_size"):
        plan_memory(config, world_size=0, strategy="ddp", batch_size=1)


def test_model_info_prints_the_plan_and_whether_it_fits(capsys):
    """tiny (N = 120,576, C = 64, 2 heads, V = 256), fp32, one process, batch 8 x 64 = 512 tokens:
    states 16 N = 1,929,216; a block 16 x 64 x 4 + 16 + 2 x 4 = 4,120 per token, the head
    64 x 4 + 8 + 64 x 4 + 12 x 256 = 3,592, so 512 x (2 x 4,120 + 3,592) = 6,057,984 of activations;
    no buffers in one process: 7,987,200 bytes = 7.6 MiB, inside 8 MB (8,000,000) but not 7.9 MB."""
    from lmforge.cli import main

    assert main(["model", "info", "tiny", "--batch", "8", "--memory", "8MB"]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "7.6 MiB" in out and "fits in 8MB per rank" in out
    assert main(["model", "info", "tiny", "--batch", "8", "--memory", "7.9MB"]) == 0
    assert "does NOT fit in 7.9MB" in capsys.readouterr().out
    args = ["model", "info", "gpt2", "--world-size", "8", "--strategy", "fsdp", "--precision", "bf16-mixed"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "29.7 MiB   2 B/param / 8" in out  # 124,439,808 x 2 / 8 = 31,109,952 B = 29.67 MiB
    assert main(["model", "info", "gpt2", "--strategy", "zero4"]) == 2
    assert main(["model", "info", "gpt2", "--memory", "lots"]) == 2
    assert "--memory='lots' is invalid" in capsys.readouterr().err
