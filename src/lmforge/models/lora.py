"""LoRA: low-rank adapters applied to a model from outside, merged, unmerged, saved and loaded.

`apply_lora(model, rank=8, alpha=8, targets="all-linear", dropout=0.0)` freezes every parameter and
swaps each targeted `nn.Linear` for a `LoRALinear` that keeps the very same weight and bias Parameters
(state-dict names unchanged) and adds a trainable low-rank update:

    y = W x + b + (alpha / rank) * B A dropout(x)        A: (rank, in), B: (out, rank)

computed, for a batch of many tokens without dropout, as one matmul with the folded weight
W + (alpha/rank) B A (`_FoldedLoRA`, a custom autograd function whose backward gets the adapters'
gradients from thin matmuls), and otherwise as the base matmul plus B's matmul accumulated into it.

A is initialised Kaiming-uniform with a = sqrt(5) (nn.Linear's own init, as peft does) and B with zeros,
so the adapted model starts out computing exactly what the base computes. Afterwards the parameters with
`requires_grad` are exactly the adapters.

Fused projections get one adapter per part: the attention's `c_attn` computes [q; k; v] in one matmul, and
each of q, k and v gets its own (A_i, B_i) of rank `rank` (as litgpt's LoRAQKVLinear, or separate
W_query/W_key/W_value layers each with LoRA). They are stored stacked, A = [A_q; A_k; A_v]
(3 rank, in) and B = [B_q; B_k; B_v] (out, rank) where the rows of B_i only see the i-th rank-chunk of
A x, i.e. the update is diag(B_q, B_k, B_v) A. The number of trainable
values is therefore sum over adapted projections of rank * (in + out), with q, k and v counted as three
projections (k and v narrower under grouped-query attention).

Targets are kinds or module-name patterns (a mix is allowed):
    "attn"        every attention c_attn (as q, k, v) and c_proj
    "mlp"         every MLP c_fc and c_proj (a SwiGLU c_fc, [gate; up], is one projection)
    "head"        the model's output layer: `lm_head` of a GPT, `head` of a GPTClassifier
    "all-linear"  all of the above, i.e. every Linear the model uses (unlike peft's "all-linear", which
                  leaves the output layer out)
    anything else a module name or glob (fnmatch) matched against the full module name or its end after
                  a dot: "c_attn", "transformer.h.11.*", "*.mlp.c_fc"; it selects the adaptable Linears
                  it matches (an error if it matches none)

`merge_lora` folds W += (alpha/rank) B A so inference runs at the base model's speed; `unmerge_lora`
subtracts it again (the base comes back to float rounding). A head whose weight is shared with the token
embedding (tied) is merged into an untied copy, since folding in place would change the embedding too;
unmerging ties it again.

`save_adapter` writes `adapter.safetensors` (the A and B of every adapted module, plus any other
parameter that was trained alongside, such as a classifier head) and `adapter.json` (format version,
rank, alpha, dropout, the adapted module names as targets, and the base model's fingerprint).
`load_adapter` refuses an adapter made for different base weights with a FormatError naming the file.
Exporting an adapter in peft's layout lives with the other Hugging Face conversions (`convert.py`).

Deliberately not here: training loops, DoRA/rsLoRA/quantised bases, several adapters on one model.
References: Hu et al. 2021, LoRA (arXiv:2106.09685); peft's `tuners/lora/layer.py` (init and scaling);
litgpt's `lora.py` (separate q/k/v adapters on a fused projection).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.layers import MLP, CausalSelfAttention

ADAPTER_FORMAT_VERSION = 1
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter.json"
KINDS = ("attn", "mlp", "head", "all-linear")
HEAD_NAMES = ("lm_head", "head")  # a GPT's output layer, a GPTClassifier's


class LoRALinear(nn.Linear):
    """An nn.Linear (the base layer's own weight and bias Parameters) plus a rank-`rank` update per part.

    `splits` are the output sizes of the parts sharing this matmul: [out] for a plain projection,
    [q, k, v] widths for a fused attention projection. `lora_A` is (len(splits) * rank, in), the parts'
    A matrices stacked; `lora_B` is (out, rank), the parts' B matrices stacked by output rows.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float, splits: Sequence[int]):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the weight and bias are the base layer's own
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha, self.splits = rank, alpha, list(splits)
        self.scaling = alpha / rank
        self.merged = False
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(len(self.splits) * rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        # Kaiming-uniform with a=sqrt(5) on (rows, in) gives every part's (rank, in) block the bound
        # 1/sqrt(in), as nn.Linear and peft initialise A
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else None  # None: not even an identity call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        tokens = x.numel() // self.in_features
        dropping = self.lora_dropout is not None and self.training  # the adapter reads dropout(x)
        if not dropping and tokens * (self.in_features + self.out_features) >= self.weight.numel():
            return _FoldedLoRA.apply(x, self.weight, self.bias, self.lora_A, self.block_B(), self.scaling)
        source = self.lora_dropout(x) if dropping else x
        h = F.linear(source, self.lora_A) * self.scaling  # (..., parts * rank), scaled where it is narrow
        # B's matmul accumulates into the base output: no (..., out) temporary and no separate add
        y = torch.addmm(
            F.linear(x, self.weight, self.bias).flatten(0, -2), h.flatten(0, -2), self.block_B().t()
        )
        return y.view(*x.shape[:-1], self.out_features)

    def block_B(self) -> torch.Tensor:
        """diag(B_1, .., B_n), (out, parts * rank): part i's rows read only the i-th rank-chunk of A x.
        One matmul with the zero blocks is faster on CPU than n small matmuls and a concatenation."""
        if len(self.splits) == 1:
            return self.lora_B
        return torch.block_diag(*self.lora_B.split(self.splits))

    def delta_weight(self) -> torch.Tensor:
        """(alpha/rank) * diag(B_1..B_n) [A_1; ..; A_n], the (out, in) update that merging adds to W."""
        return self.block_B() @ self.lora_A * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, splits={self.splits}"


class _FoldedLoRA(torch.autograd.Function):
    """y = x (W + s B A)^T + b with gradients for x, A and B (and W, b if they require one).

    The forward folds the adapter into an effective weight, (out, rank) x (rank, in) work, and runs one
    matmul; the backward recomputes that weight for dL/dx = g W_eff and gets the adapters' gradients
    from thin matmuls, dL/dA = (g sB)^T x and dL/dB = g^T (x (sA)^T). Against the unfolded form
    (x A^T, then B on it, then an add) this saves two (tokens, out) and (tokens, in) passes per step
    and keeps no weight copy for the backward. It pays when tokens * (in + out) >= in * out (training
    batches); a handful of tokens (decoding) takes the unfolded path. `block_B` is LoRALinear.block_B().
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, block_B, scaling):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, weight, lora_A, block_B)
        ctx.scaling = scaling
        return F.linear(x, torch.addmm(weight, block_B, lora_A, alpha=scaling), bias)  # (..., out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, lora_A, block_B = ctx.saved_tensors
        need_x, need_w, need_b, need_A, need_B, _ = ctx.needs_input_grad
        s, dtype = ctx.scaling, grad.dtype  # under autocast the output (and grad) is lower precision
        g = grad.reshape(-1, grad.size(-1))  # (N, out)
        x2 = x.reshape(-1, x.size(-1)).to(dtype)  # (N, in)
        grad_x = grad_w = grad_b = grad_A = grad_B = None
        if need_x:
            folded = torch.addmm(weight, block_B, lora_A, alpha=s).to(dtype)  # (out, in)
            grad_x = (g @ folded).view(x.shape)
        if need_w:
            grad_w = g.t() @ x2  # (out, in)
        if need_b:
            grad_b = g.sum(0)
        # the thin products with the small matrix on the left, (r, big) @ (big, N): on CPU several times
        # faster than the same products as (N, big) @ (big, r) or (big, N) @ (N, r)
        if need_A:
            gate_t = (block_B * s).to(dtype).t() @ g.t()  # (parts * rank, N) = (g sB)^T
            grad_A = gate_t @ x2  # (parts * rank, in)
        if need_B:
            h_t = (lora_A * s).to(dtype) @ x2.t()  # (parts * rank, N) = (x (sA)^T)^T
            grad_B = (h_t @ g).t()  # (out, parts * rank)
        return grad_x, grad_w, grad_b, grad_A, grad_B, None


# ---------------------------------------------------------------------------------------------------
# Choosing targets


def _candidates(model: nn.Module) -> dict[str, tuple[str, list[int]]]:
    """Every Linear LoRA may adapt: name -> (kind, output splits)."""
    found: dict[str, tuple[str, list[int]]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, CausalSelfAttention):
            hd = module.head_dim
            qkv = [module.n_head * hd, module.n_kv_head * hd, module.n_kv_head * hd]
            found[prefix + "c_attn"] = ("attn", qkv)
            found[prefix + "c_proj"] = ("attn", [module.c_proj.out_features])
        elif isinstance(module, MLP):
            found[prefix + "c_fc"] = ("mlp", [module.c_fc.out_features])
            found[prefix + "c_proj"] = ("mlp", [module.c_proj.out_features])
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            found[name] = ("head", [head.out_features])
    return found


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> dict[str, list[int]]:
    """The modules `targets` selects: name -> output splits (see the module docstring for the syntax).

    A pattern that matches nothing, or matches a module that is not an adaptable Linear, is a ConfigError.
    """
    wanted = [targets] if isinstance(targets, str) else list(targets)
    if not wanted or not all(isinstance(t, str) and t for t in wanted):
        raise ConfigError(f"LoRA targets must be a non-empty string or list of strings, got {targets!r}")
    candidates = _candidates(model)
    modules = dict(model.named_modules())
    chosen: dict[str, list[int]] = {}
    for target in wanted:
        if target in KINDS:
            hits = [n for n, (kind, _) in candidates.items() if target in ("all-linear", kind)]
        else:
            hits = [n for n in candidates if _matches(target, n)]
            other = next((n for n in modules if n and n not in candidates and _matches(target, n)), None)
            if not hits and other is not None:
                raise ConfigError(
                    f"LoRA target {target!r} matches {other!r}, which is not an adaptable Linear "
                    f"(adaptable: attention c_attn/c_proj, MLP c_fc/c_proj, the output head)"
                )
        if not hits:
            raise ConfigError(
                f"LoRA target {target!r} matches no module; use one of {', '.join(KINDS)} or a module name "
                f"such as {next(iter(candidates), 'c_attn')!r}"
            )
        chosen |= {n: candidates[n][1] for n in hits}
    return {n: chosen[n] for n in candidates if n in chosen}  # in model order


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted modules of `model`, by name (empty if LoRA was never applied)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


# ---------------------------------------------------------------------------------------------------
# Apply, merge, unmerge


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 8,
    targets: str | Sequence[str] = "all-linear",
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze `model` and add LoRA adapters to the targeted projections, in place; returns `model`."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConfigError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if lora_modules(model):
        raise ConfigError("the model already has LoRA adapters (apply_lora once per model)")
    chosen = resolve_targets(model, targets)
    for param in model.parameters():
        param.requires_grad_(False)
    for name, splits in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        adapted = LoRALinear(base, rank=rank, alpha=alpha, dropout=dropout, splits=splits)
        setattr(parent, child, adapted.train(base.training))  # the new dropout follows the model's mode
    return model


def _adapted(model: nn.Module) -> dict[str, LoRALinear]:
    modules = lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters (call apply_lora or load_adapter first)")
    return modules


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += (alpha/rank) B A), in place; returns `model`.

    The adapters are kept (the forward no longer uses them) so `unmerge_lora` can undo the fold; merging
    twice is a no-op. A head tied to the token embedding gets an untied merged copy (the embedding must
    not change), and unmerging ties it again.
    """
    modules = _adapted(model)
    shared = _shared_parameter_ids(model)
    for module in modules.values():
        if module.merged:
            continue
        delta = module.delta_weight().to(module.weight.dtype)
        if id(module.weight) in shared:
            object.__setattr__(module, "tied_weight", module.weight)  # unregistered: the embedding owns it
            module.weight = nn.Parameter(module.weight + delta, requires_grad=False)
        else:
            module.weight += delta
        module.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora` (W -= (alpha/rank) B A, or re-tie a tied head), in place; returns `model`."""
    for module in _adapted(model).values():
        if not module.merged:
            continue
        tied = module.__dict__.pop("tied_weight", None)
        if tied is not None:
            module.weight = tied
        else:
            module.weight -= module.delta_weight().to(module.weight.dtype)
        module.merged = False
    return model


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


# ---------------------------------------------------------------------------------------------------
# Saving and loading


def _is_lora_tensor(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B")) or name in ("lora_A", "lora_B")


def weights_fingerprint(model: nn.Module, *, exclude: Sequence[str] = ()) -> str:
    """SHA-256 of the model's base weights: every state-dict tensor except LoRA's and those in `exclude`,
    by sorted name, each as name, dtype, shape and raw bytes. Changes with any weight, dtype or shape.

    Refuses a merged model (its weights are not the base's).
    """
    if any(m.merged for m in lora_modules(model).values()):
        raise ConfigError("the model's adapters are merged; unmerge_lora before fingerprinting the base")
    digest = hashlib.sha256()
    state = model.state_dict()
    skip = set(exclude)
    for name in sorted(state):
        if _is_lora_tensor(name) or name in skip:
            continue
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, no copy
    return digest.hexdigest()


def _trained_extras(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters that are not LoRA's (e.g. a classifier head trained beside the adapters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not _is_lora_tensor(n)}


def save_adapter(model: nn.Module, directory: str | Path, *, base_fingerprint: str | None = None) -> None:
    """Write `adapter.safetensors` + `adapter.json` for the adapters of `model`.

    `base_fingerprint` identifies the base the adapter belongs to (e.g. a hash of the checkpoint files);
    None computes `weights_fingerprint` of the model's base weights (the model must be unmerged then).
    Parameters trained beside the adapters (requires_grad and not LoRA, such as a classifier head) are
    saved too and listed under "trained_parameters"; they are left out of the computed fingerprint.
    """
    modules = _adapted(model)
    first = next(iter(modules.values()))
    settings = {(m.rank, m.alpha, _dropout_p(m)) for m in modules.values()}
    if len(settings) != 1:
        raise ConfigError(f"the model's adapters differ in rank/alpha/dropout: {sorted(settings)}")
    extras = _trained_extras(model)
    if base_fingerprint is None:
        base_fingerprint = weights_fingerprint(model, exclude=list(extras))
    tensors = {}
    for name, module in modules.items():
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = module.lora_A, module.lora_B
    tensors |= extras
    directory = Path(directory)
    save_safetensors(directory / ADAPTER_WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    record: dict[str, Any] = {
        "format_version": ADAPTER_FORMAT_VERSION,
        "kind": "lora",
        "rank": first.rank,
        "alpha": first.alpha,
        "dropout": _dropout_p(first),
        "targets": list(modules),
        "trained_parameters": list(extras),
        "base_fingerprint": base_fingerprint,
    }
    atomic_write_json(directory / ADAPTER_CONFIG_FILE, record)


def _dropout_p(module: LoRALinear) -> float:
    return module.lora_dropout.p if isinstance(module.lora_dropout, nn.Dropout) else 0.0


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Read and validate `adapter.json`; any problem is a FormatError naming the file and the field."""
    path = Path(directory) / ADAPTER_CONFIG_FILE
    record = read_json(path, what="adapter config")
    if not isinstance(record, dict):
        raise FormatError(path, f"adapter config must be a JSON object, found {type(record).__name__}")
    if record.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise FormatError(
            path,
            f"unsupported adapter format_version {record.get('format_version')!r} "
            f"(this lmforge reads {ADAPTER_FORMAT_VERSION})",
        )
    if record.get("kind") != "lora":
        raise FormatError(path, f"not a LoRA adapter (kind = {record.get('kind')!r})")
    checks = {
        "rank": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "alpha": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "dropout": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
        "targets": lambda v: isinstance(v, list) and v and all(isinstance(t, str) and t for t in v),
        "trained_parameters": lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
        "base_fingerprint": lambda v: isinstance(v, str) and v,
    }
    needs = {
        "rank": "a positive integer",
        "alpha": "a positive number",
        "dropout": "a number in [0, 1)",
        "targets": "a non-empty list of module names",
        "trained_parameters": "a list of parameter names",
        "base_fingerprint": "a non-empty string",
    }
    for field, ok in checks.items():
        if field not in record:
            raise FormatError(path, f"missing field {field!r}")
        if not ok(record[field]):
            raise FormatError(path, f"field {field!r} must be {needs[field]}, got {record[field]!r}")
    return record


def load_adapter(
    model: nn.Module, directory: str | Path, *, base_fingerprint: str | None = None
) -> nn.Module:
    """Load a `save_adapter` directory onto `model` (applying LoRA with the recorded settings if the model
    has none yet), in place; returns `model`.

    Everything is checked before the model is touched: `base_fingerprint` (None: `weights_fingerprint` of
    the model) must equal the recorded one, and the tensors must be exactly the ones the recorded targets
    and rank need, finite; any mismatch is a FormatError naming the file.
    """
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG_FILE, directory / ADAPTER_WEIGHTS_FILE
    record = read_adapter_config(directory)
    rank, extras = record["rank"], record["trained_parameters"]
    if base_fingerprint is None:
        base_fingerprint = weights_fingerprint(model, exclude=extras)
    if base_fingerprint != record["base_fingerprint"]:
        raise FormatError(
            config_path,
            f"this adapter was made for base weights {record['base_fingerprint'][:12]}, but the model's are "
            f"{base_fingerprint[:12]}; load it onto the checkpoint it was trained from",
        )
    existing = lora_modules(model)
    if existing:
        if list(existing) != record["targets"] or {m.rank for m in existing.values()} != {rank}:
            raise ConfigError(
                f"the model already has different LoRA adapters than {config_path} (load onto a fresh model)"
            )
        if any(m.merged for m in existing.values()):
            raise ConfigError("the model's adapters are merged; unmerge_lora before loading adapter weights")
        chosen = {name: m.splits for name, m in existing.items()}
    else:
        try:
            chosen = resolve_targets(model, record["targets"])
        except ConfigError as e:
            raise FormatError(config_path, f"adapter does not fit this model: {e}") from None
        if list(chosen) != record["targets"]:
            raise FormatError(
                config_path, "adapter does not fit this model: its targets select other modules"
            )
    params = dict(model.named_parameters())
    shapes: dict[str, tuple[int, ...]] = {}
    for name, splits in chosen.items():
        linear = model.get_submodule(name)
        shapes[f"{name}.lora_A"] = (len(splits) * rank, linear.in_features)
        shapes[f"{name}.lora_B"] = (linear.out_features, rank)
    for name in extras:
        if name not in params or _is_lora_tensor(name):
            raise FormatError(config_path, f"trained parameter {name!r} is not a parameter of this model")
        shapes[name] = tuple(params[name].shape)
    tensors = load_safetensors(weights_path, what="adapter weights")
    missing, unexpected = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise FormatError(
            weights_path,
            f"tensors do not match adapter.json (missing: {missing[:3]}, unexpected: {unexpected[:3]})",
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            raise FormatError(
                weights_path, f"{name} has shape {tuple(tensor.shape)}, the model needs {shapes[name]}"
            )
        if not torch.isfinite(tensor).all():
            raise FormatError(weights_path, f"{name} contains NaN or infinite values")
    if not existing:
        apply_lora(model, rank, record["alpha"], record["targets"], record["dropout"])
        params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    for name in extras:
        params[name].requires_grad_(True)
    return model
