"""Reading and replacing a GPT's internal activations with forward hooks on its named modules.

    acts = capture(model, ids, ["blocks.0.resid_pre", "blocks.1.attn.pattern"])   # name -> tensor
    logits = patch(model, ids, {"blocks.1.resid_pre": corrupt["blocks.1.resid_pre"]})

Hook points of layer i (all batch-first; B batch, T positions, C n_embd, nh heads, H MLP width):

    blocks.i.resid_pre     (B, T, C)      input of block i (the residual stream before it)
    blocks.i.attn.pattern  (B, nh, T, T)  attention weights, row t = where position t looks
    blocks.i.attn_out      (B, T, C)      what the attention branch adds to the stream
    blocks.i.mlp.hidden    (B, T, H)      MLP activations after the nonlinearity (absent if attn_only)
    blocks.i.mlp_out       (B, T, C)      what the MLP branch adds to the stream (absent if attn_only)
    blocks.i.resid_post    (B, T, C)      output of block i (= resid_pre of block i + 1)

Each point is a hook on a module of `lmforge.models.gpt.GPT` (`transformer.h[i]`, `.attn`,
`.attn.pattern`, `.mlp`, `.mlp.c_proj`'s input); the model file is not changed. The one exception is
the attention pattern: `F.scaled_dot_product_attention` never materialises it, so while a pattern
point is hooked the attention layers run their opt-in explicit path (`explicit_pattern`, the same
arithmetic by hand; equal to SDPA up to rounding). Without pattern points the forward pass is the
ordinary one, bit for bit. Hooks and the explicit switch are removed on exit, also after an error.

Deliberately not here: what to do with the activations (attention maps, logit lens, patching
experiments: sibling modules); models other than `GPT`; KV-cached generation (hooks see full passes).

References: Meng et al. 2022 (ROME, causal tracing); the hook-point naming follows Nanda's
TransformerLens (`blocks.i.hook_resid_pre`, `...attn.hook_pattern`), without the `hook_` prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT

# A replacement is the new activation itself, or a function from the clean activation to the new one.
Replacement = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

_KINDS = ("resid_pre", "attn.pattern", "attn_out", "mlp.hidden", "mlp_out", "resid_post")


def hook_points(model: GPT) -> list[str]:
    """Every hook point of the model, layer by layer in the order the forward pass reaches them."""
    kinds = [k for k in _KINDS if not (model.config.attn_only and k.startswith("mlp"))]
    return [f"blocks.{i}.{kind}" for i in range(model.config.n_layer) for kind in kinds]


def _parse(model: GPT, name: str) -> tuple[int, str]:
    parts = name.split(".", 2)
    valid = hook_points(model)
    if name not in valid:
        raise ConfigError(
            f"unknown hook point {name!r}; points are blocks.I.KIND with I in 0..{model.config.n_layer - 1} "
            f"and KIND one of {', '.join(k for k in _KINDS if f'blocks.0.{k}' in valid)}"
        )
    return int(parts[1]), parts[2]


def _install(model: GPT, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Any:
    """Hook `fn(activation) -> replacement | None` onto the module behind `name`; returns the handle."""
    layer, kind = _parse(model, name)
    block = model.transformer.h[layer]

    def on_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output)

    def on_first_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        new = fn(args[0])
        return None if new is None else ((new, *args[1:]), kwargs)

    if kind == "resid_pre":
        return block.register_forward_pre_hook(on_first_input, with_kwargs=True)
    if kind == "mlp.hidden":  # the input of the down projection is the post-nonlinearity hidden layer
        return block.mlp.c_proj.register_forward_pre_hook(on_first_input, with_kwargs=True)
    if kind == "attn.pattern":
        return block.attn.pattern.register_forward_hook(on_output)
    if kind == "attn_out":
        return block.attn.register_forward_hook(on_output)
    if kind == "mlp_out":
        return block.mlp.register_forward_hook(on_output)
    return block.register_forward_hook(on_output)  # resid_post


@contextlib.contextmanager
def hooked(model: GPT, hooks: Mapping[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
    """Run the body with `hooks` (point name -> fn(activation) -> replacement or None) installed.

    Pattern points switch their layer's attention to the explicit path for the duration. Everything is
    undone on exit, whatever happens in the body.
    """
    handles: list[Any] = []
    explicit: list[nn.Module] = []
    try:
        for name, fn in hooks.items():
            handles.append(_install(model, name, fn))
            layer, kind = _parse(model, name)
            if kind == "attn.pattern":
                attn = model.transformer.h[layer].attn
                if not attn.explicit_pattern:
                    attn.explicit_pattern = True
                    explicit.append(attn)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attn in explicit:
            attn.explicit_pattern = False


def capture(model: GPT, ids: torch.Tensor, points: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Run `model(ids)` (B, T) without gradients and return {point: activation} (all points if None),
    plus "logits" (B, T, V). Activations are detached copies."""
    points = hook_points(model) if points is None else list(points)
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[torch.Tensor], None]:
        def fn(activation: torch.Tensor) -> None:
            acts[name] = activation.detach().clone()

        return fn

    with torch.no_grad(), hooked(model, {name: keep(name) for name in points}):
        acts["logits"], _ = model(ids)
    return acts


def patch(model: GPT, ids: torch.Tensor, replacements: Mapping[str, Replacement]) -> torch.Tensor:
    """Run `model(ids)` (B, T) without gradients with activations replaced; returns logits (B, T, V).

    Each replacement is a tensor of the activation's shape, or a function of the activation computed
    in this run (e.g. one that copies a single position from another run).
    """

    def replace(name: str, new: Replacement) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(activation: torch.Tensor) -> torch.Tensor:
            value = new(activation) if callable(new) else new
            if value.shape != activation.shape:
                raise ConfigError(
                    f"replacement for {name} has shape {tuple(value.shape)}, "
                    f"the activation has {tuple(activation.shape)}"
                )
            return value.to(activation.dtype)

        return fn

    with torch.no_grad(), hooked(model, {name: replace(name, new) for name, new in replacements.items()}):
        logits, _ = model(ids)
    return logits
