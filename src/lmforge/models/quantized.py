"""4-bit weights kept 4-bit: a Linear layer whose weight is stored as llama.cpp stores Q4_0/Q4_1 blocks.

At batch 1 a decode step reads every weight once, so its speed is set by bytes read, not by arithmetic:
a 4-bit weight is a quarter of a bfloat16 one. ggml's Q4_1 stores each row in blocks of 32 values, every
block as 32 4-bit codes q in 0..15, a scale d and a minimum m, and means w = d*q + m (Q4_0: w = d*(q - 8)).
That is group-wise affine quantization, which PyTorch's CPU kernel `aten._weight_int4pack_mm_for_cpu`
computes directly from packed codes, with one (scale, zero) pair per group of the input dimension and
w = (q - 8)*scale + zero. So Q4_1 maps on it exactly: scale = d, zero = m + 8d; Q4_0: scale = d, zero = 0.
`Int4Linear` holds the packed codes and those pairs; its forward is that one kernel call.

`q4_blocks(raw, kind)` unpacks a GGUF tensor's raw bytes into codes, scales and zeros; `Int4Linear.quantize`
makes the same from a float weight (Q4_1's recipe: per group, the minimum and (max - min)/15), for models
that never were GGUF files.

Deliberately not here: other ggml types (Q8_0, K-quants: they are dequantized on load), training
(the codes have no gradient), GPUs (the CUDA kernel packs codes differently), float32 activations (the
CPU kernel has a fast path for bfloat16 only, so `Int4Linear` computes in bfloat16).
References: ggml `ggml-common.h` (block_q4_0, block_q4_1) and `ggml-quants.c` (dequantize_row_q4_1);
PyTorch `aten/src/ATen/native/cpu/int4mm_kernel.cpp`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

GROUP_SIZE = 32  # values per ggml Q4 block, and per (scale, zero) pair of the kernel
_BLOCK_BYTES = {"Q4_0": 2 + 16, "Q4_1": 2 + 2 + 16}  # f16 d, [f16 m], 16 bytes of 32 nibbles


class Q4Weight(NamedTuple):
    """A 4-bit weight before it becomes an `Int4Linear`: codes (out, in) in 0..15, scales and zeros
    (out, in / 32), w = (codes - 8) * scale + zero group by group along a row. Rows are in the same order
    in all three, so rows are permuted or concatenated the same way in each (`map_rows`, `cat`)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Q4Weight:
        return Q4Weight(*(fn(t) for t in self))

    @staticmethod
    def cat(parts: Sequence[Q4Weight]) -> Q4Weight:
        return Q4Weight(*(torch.cat(column) for column in zip(*parts, strict=True)))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in)."""
        scales, zeros = (t.repeat_interleave(GROUP_SIZE, dim=1) for t in (self.scales, self.zeros))
        return (self.codes.float() - 8) * scales + zeros


def q4_blocks(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> Q4Weight:
    """The Q4Weight of a GGUF tensor of `kind` Q4_0 or Q4_1 and `shape` (out, in) from its raw bytes."""
    out_features, in_features = shape
    blocks = np.ascontiguousarray(raw, dtype=np.uint8)
    blocks = blocks.reshape(
        out_features, in_features // GROUP_SIZE, _BLOCK_BYTES[kind]
    )  # (out, groups, bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (out, groups)
    if kind == "Q4_1":
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zeros = m + 8 * d  # d*q + m = d*(q - 8) + (m + 8d)
    else:
        zeros = np.zeros_like(d)
    nibbles = blocks[..., -16:]  # byte j holds value j (low nibble) and value j + 16 (high nibble)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # (out, groups, 32)
    return Q4Weight(torch.from_numpy(codes.reshape(shape)), torch.from_numpy(d), torch.from_numpy(zeros))


def fits_int4(shape: Sequence[int]) -> bool:
    """Whether the kernel takes a weight of `shape` (out, in): rows in groups of 32, outputs in 16s."""
    return len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % GROUP_SIZE == 0


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W a Q4Weight, computed in bfloat16 by the int4 kernel. Inference only."""

    def __init__(self, weight: Q4Weight, bias: nn.Parameter | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if not fits_int4(weight.shape) or weight.scales.shape != (
            self.out_features,
            self.in_features // GROUP_SIZE,
        ):
            raise ValueError(
                f"Int4Linear: codes {tuple(weight.shape)} and scales {tuple(weight.scales.shape)} do not fit"
            )
        # The kernel's layout: codes packed two to a byte, (scale, zero) pairs as (groups, out, 2).
        self.register_buffer(
            "packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.codes.int(), 2)
        )
        pairs = torch.stack([weight.scales.float().T, weight.zeros.float().T], dim=-1)
        self.register_buffer("scales_and_zeros", pairs.to(torch.bfloat16).contiguous())
        self.bias = bias  # the replaced layer's own Parameter (or None), so a loader can still fill it

    @classmethod
    def quantize(cls, linear: nn.Linear) -> Int4Linear:
        """Q4_1's recipe on a float layer: per group of 32, zero at the minimum, 15 steps to the maximum."""
        w = linear.weight.detach().float()
        groups = w.reshape(w.shape[0], -1, GROUP_SIZE)  # (out, groups, 32)
        low, high = groups.amin(-1), groups.amax(-1)
        d = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
        codes = ((groups - low[..., None]) / d[..., None]).round().clamp(0, 15).to(torch.uint8)
        return cls(Q4Weight(codes.reshape(w.shape), d, low + 8 * d), linear.bias)

    def dequantize(self) -> torch.Tensor:
        """The weight (out, in) the kernel multiplies by, in float32 (scales and zeros are bfloat16)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        columns = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, GROUP_SIZE, self.scales_and_zeros
        )
        return columns.float().T  # row i of x W^T with x = e_i is column i of W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(torch.bfloat16), self.packed, GROUP_SIZE, self.scales_and_zeros
        )  # (B*T, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 4-bit, group {GROUP_SIZE}"
