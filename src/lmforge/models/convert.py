"""Weights interop with Hugging Face GPT-2: import a `model.safetensors` + `config.json` directory as a
`GPT`, and export a `GPT` to a directory that `transformers.GPT2LMHeadModel.from_pretrained` loads.

Our module names already follow GPT-2's (`transformer.h.N.attn.c_attn` ...), so conversion is a
rename-free copy except for the layout: HF stores its projections as `Conv1D` with weight
(in_features, out_features), the transpose of `nn.Linear`. Hub checkpoints may omit the
`transformer.` prefix and the tied `lm_head.weight`; both are accepted.

Deliberately not here: tokenizers (the `lmforge convert` command carries those, so that this module
stays free of text), downloading (pass a local directory), `pytorch_model.bin` pickles, and any
architecture GPT-2 cannot express (RoPE, RMSNorm, SwiGLU, GQA, no biases: export refuses them).
Reference: transformers/models/gpt2/modeling_gpt2.py and pytorch_utils.Conv1D.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.gpt import GPT, GPTConfig

# Conv1D weights: (in, out) in HF, (out, in) in nn.Linear
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _is_conv1d(name: str) -> bool:
    return name.endswith(_CONV1D_SUFFIXES)


def _config_from_hf(hf: dict, path: Path) -> GPTConfig:
    """GPTConfig from an HF GPT-2 config.json dict; options GPT-2 has but we do not are an error."""
    if hf.get("model_type") != "gpt2":
        raise FormatError(path, f"not a GPT-2 config (model_type = {hf.get('model_type')!r})")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise FormatError(path, f"activation_function {hf['activation_function']!r} is not supported")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") is True:
        raise FormatError(path, "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
    if hf.get("scale_attn_weights", True) is not True:
        raise FormatError(path, "scale_attn_weights=false is not supported")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            n_inner=hf.get("n_inner"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            init_std=hf.get("initializer_range", 0.02),
        )
    except KeyError as e:
        raise FormatError(path, f"missing field {e.args[0]!r}") from None
    except ConfigError as e:
        raise FormatError(path, str(e)) from None


def from_hf_gpt2(directory: str | Path) -> GPT:
    """Load a Hugging Face GPT-2 directory (config.json + model.safetensors) as an lmforge GPT (fp32)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = _config_from_hf(read_json(config_path, what="HF config"), config_path)
    weights_path = directory / "model.safetensors"
    tensors = load_safetensors(weights_path, what="HF GPT-2 weights")
    model = GPT(config)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of old transformers
            continue
        ours = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        if ours not in expected:
            raise FormatError(weights_path, f"unexpected tensor {name!r} for a GPT-2 model")
        state[ours] = tensor.t() if _is_conv1d(ours) else tensor
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same matrix as wte
        del expected["lm_head.weight"]
    missing = sorted(set(expected) - set(state))
    if missing:
        raise FormatError(weights_path, f"missing tensors: {', '.join(missing[:5])}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise FormatError(
                weights_path, f"{name}: shape {tuple(tensor.shape)} != expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # only the tied head absent
    return model


def to_hf_gpt2(model: GPT, directory: str | Path, *, eot_id: int | None = None) -> None:
    """Write `config.json` + `model.safetensors` that `transformers.GPT2LMHeadModel.from_pretrained` loads.

    `eot_id`, the tokenizer's end-of-text id, becomes bos_token_id and eos_token_id (GPT-2's own config
    uses <|endoftext|> for both), so that HF generation stops there; None leaves them null.
    """
    c = model.config
    if eot_id is not None and not 0 <= eot_id < c.vocab_size:
        raise ConfigError(f"eot_id={eot_id} is outside the model's vocabulary (vocab_size={c.vocab_size})")
    unsupported = {
        "pos_encoding": (c.pos_encoding, "learned"),
        "norm": (c.norm, "layernorm"),
        "norm_placement": (c.norm_placement, "pre"),
        "mlp": (c.mlp, "gelu"),
        "n_kv_head": (c.n_kv_head, c.n_head),
        "bias": (c.bias, True),
    }
    bad = [
        f"{key}={value!r} (GPT-2 needs {need!r})"
        for key, (value, need) in unsupported.items()
        if value != need
    ]
    if bad:
        raise ConfigError(f"cannot export to HF GPT-2: {'; '.join(bad)}")
    directory = Path(directory)
    tensors = {name: (t.t() if _is_conv1d(name) else t) for name, t in model.state_dict().items()}
    if c.tie_embeddings:
        del tensors["lm_head.weight"]  # HF re-ties it from transformer.wte.weight
    save_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    atomic_write_json(
        directory / "config.json",
        {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.n_inner,
            "layer_norm_epsilon": c.norm_eps,
            "initializer_range": c.init_std,
            "attn_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "resid_pdrop": c.dropout,
            "tie_word_embeddings": c.tie_embeddings,
            "scale_attn_weights": True,
            "bos_token_id": eot_id,
            "eos_token_id": eot_id,
        },
    )
