"""CPU inference layout: a model's Linear weights in the memory order that one-row products read fastest.

Batch-1 decoding multiplies a single row by every weight matrix, so its speed is the speed at which the
CPU streams the weights. `F.linear(x, W)` computes x @ W.T. For float32, W kept as the transpose of a
contiguous (in, out) matrix (the layout GPT-2's Conv1D uses) goes through a faster BLAS path than torch's
default (out, in) order; for bfloat16 and other dtypes, ATen's kernel (which the engine uses for
decoding, see `engine.py`) is the other way round, so they get, or keep, the default layout. Figures and
the command that measures them: BENCHMARKS.md, section "Generation".

`for_cpu_inference(model)` returns a copy in that layout and leaves `model` untouched: use it when the
model is still needed as it is (training continues, an optimizer holds its parameters).
`for_cpu_inference(model, copy=False)` takes ownership instead: the weights of `model` itself are
re-laid out, one matrix at a time, so memory never holds a second copy of the model. That is for a
model loaded only to generate (the `generate`, `chat` and `sample` commands, `lmforge.generate` given
a checkpoint directory); a model handed over this way is for inference from then on (training it would
run on the inference layout).
The trade-off: the copy costs a second set of weights for as long as both are alive; taking ownership
costs nothing but changes the caller's model. `Engine(model)` does neither, so a model being trained
(the arithmetic recipe's evaluation) is decoded in its own layout, a little slower in float32.

Either way values, shapes and checkpoints (saved contiguous) are unchanged, tied weights stay one tensor
(the LM head and the token embedding), and applying it again changes nothing. Apply it after choosing
the dtype: `.to(dtype)` keeps a tensor's strides, so a float32 layout cast to bfloat16 keeps the layout
that is slow for bfloat16 until this is applied again.

Deliberately not here: the choice of matmul kernels while decoding (`engine.py`), quantization, devices
other than the CPU.
"""

from __future__ import annotations

import copy as copying

import torch


def for_cpu_inference(model: torch.nn.Module, *, copy: bool = True) -> torch.nn.Module:
    """`model` with every Linear weight in the memory order its dtype's one-row kernel reads fastest.

    With `copy=True` (the default) a deep copy is re-laid out and returned, and `model` is left exactly
    as it was. With `copy=False` the function takes ownership: `model` itself is re-laid out and
    returned (each Parameter object stays the same, its storage is replaced).
    """
    if copy:
        model = copying.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                # .data keeps the Parameter object, so a weight tied to an embedding stays tied
                module.weight.data = _matvec_order(module.weight.data)
    return model


def _matvec_order(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in) weight, same values, in the memory order the one-row kernel of its dtype prefers:
    float32 as the transpose of a contiguous (in, out) matrix, other dtypes contiguous. Returns `weight`
    itself when it is already in that order.

    Example: a contiguous float32 (3, 2) weight has strides (2, 1); the result has strides (1, 3).
    """
    if weight.dtype == torch.float32:
        return weight if weight.t().is_contiguous() else weight.t().contiguous().t()
    return weight.contiguous()
