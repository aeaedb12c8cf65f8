"""Weights interop with Hugging Face: GPT-2 (`GPT2LMHeadModel`), the Llama-style block
(`LlamaForCausalLM`) and BERT (`BertModel` and its masked-LM and classification models), each as a
`model.safetensors` + `config.json` directory, both ways.

GPT-2: our module names already follow GPT-2's (`transformer.h.N.attn.c_attn` ...), so conversion is a
rename-free copy except for the layout: HF stores its projections as `Conv1D` with weight
(in_features, out_features), the transpose of `nn.Linear`. Hub checkpoints may omit the
`transformer.` prefix and the tied `lm_head.weight`; both are accepted.

Llama: a GPT with rotary positions, pre-RMSNorm, a SwiGLU MLP and no biases (any number of key/value
heads) is a Llama. Only names and fusion differ: our `c_attn` is Llama's q_proj, k_proj and v_proj
stacked by output rows ([q; k; v], the same rotate-half RoPE layout, so no permutation), and our `c_fc`
is [gate_proj; up_proj].

BERT: our encoder fuses HF's query, key and value into one `c_attn` ([q; k; v] by output rows); every
other tensor is renamed one to one (`_bert_names`). HF's task models keep the encoder under `bert.`.

Deliberately not here: tokenizers (the `lmforge convert` command carries those, so that this module
stays free of text), downloading (pass a local directory), `pytorch_model.bin` pickles (except BERT's,
read with `torch.load(weights_only=True)`, which refuses anything but plain tensors), and any
architecture neither format expresses (export refuses it; import refuses options we lack, such as RoPE
scaling or biases in a Llama).
Reference: transformers/models/gpt2/modeling_gpt2.py, pytorch_utils.Conv1D, models/llama/modeling_llama.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.bert import BERT, BERTConfig
from lmforge.models.config import LLAMA_BLOCK
from lmforge.models.gpt import GPT, GPTConfig

# Conv1D weights: (in, out) in HF, (out, in) in nn.Linear
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _is_conv1d(name: str) -> bool:
    return name.endswith(_CONV1D_SUFFIXES)


def _read_hf_config(path: Path) -> dict[str, Any]:
    config = read_json(path, what="HF config")
    if not isinstance(config, dict):
        raise FormatError(path, f"HF config must hold a JSON object, found {type(config).__name__}")
    return config


def _read_hf(
    directory: str | Path, parse: Callable[[dict, Path], GPTConfig], what: str
) -> tuple[GPTConfig, dict[str, torch.Tensor], Path]:
    """(config, tensors, weights path) of an HF directory: config.json through `parse` (a missing field
    or a value GPTConfig refuses is a FormatError naming config.json) and model.safetensors."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        config = parse(_read_hf_config(config_path), config_path)
    except KeyError as e:
        raise FormatError(config_path, f"missing field {e.args[0]!r}") from None
    except ConfigError as e:
        raise FormatError(config_path, str(e)) from None
    weights_path = directory / "model.safetensors"
    return config, load_safetensors(weights_path, what=f"HF {what} weights"), weights_path


def _load_checked(model: Any, state: dict[str, torch.Tensor], weights_path: Path) -> Any:
    """Load `state` (every tensor but a tied head) into `model` in fp32, after checking every shape."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise FormatError(
                weights_path, f"{name}: shape {tuple(tensor.shape)} != expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # only the tied head absent
    return model


def _export_state(model: GPT) -> dict[str, torch.Tensor]:
    """The weights to export: the state dict without LoRA tensors, so a model with unmerged adapters
    exports its base and a merged one its merged weights (adapters go out through `to_peft_adapter`)."""
    if model.config.tie_embeddings and model.lm_head.weight is not model.transformer.wte.weight:
        raise ConfigError(
            "the LM head's merged adapter unties it from the embedding, which a tied export cannot hold; "
            "unmerge_lora and export the adapter with to_peft_adapter"
        )
    return {k: v for k, v in model.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}


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


def from_hf_gpt2(directory: str | Path) -> GPT:
    """Load a Hugging Face GPT-2 directory (config.json + model.safetensors) as an lmforge GPT (fp32)."""
    config, tensors, weights_path = _read_hf(directory, _config_from_hf, "GPT-2")
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
    return _load_checked(model, state, weights_path)


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
        "attn_only": (c.attn_only, False),
    }
    bad = [
        f"{key}={value!r} (GPT-2 needs {need!r})"
        for key, (value, need) in unsupported.items()
        if value != need
    ]
    if bad:
        raise ConfigError(f"cannot export to HF GPT-2: {'; '.join(bad)}")
    directory = Path(directory)
    tensors = {name: (t.t() if _is_conv1d(name) else t) for name, t in _export_state(model).items()}
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


# ---------------------------------------------------------------------------------------------------
# Llama


def _llama_names(c: GPTConfig) -> list[tuple[str, str]]:
    """(our name, Llama's name) of every tensor that is copied as it is (not the fused projections)."""
    names = [
        ("transformer.wte.weight", "model.embed_tokens.weight"),
        ("transformer.ln_f.weight", "model.norm.weight"),
    ]
    if not c.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    for i in range(c.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        names += [
            (ours + "ln_1.weight", theirs + "input_layernorm.weight"),
            (ours + "ln_2.weight", theirs + "post_attention_layernorm.weight"),
            (ours + "attn.c_proj.weight", theirs + "self_attn.o_proj.weight"),
            (ours + "mlp.c_proj.weight", theirs + "mlp.down_proj.weight"),
        ]
    return names


def _qkv_rows(c: GPTConfig) -> list[int]:
    return [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]


def to_hf_llama(model: GPT, directory: str | Path, *, eot_id: int | None = None) -> None:
    """Write `config.json` + `model.safetensors` that `transformers.LlamaForCausalLM.from_pretrained` loads.

    `eot_id` becomes bos_token_id and eos_token_id, as in `to_hf_gpt2`.
    """
    c = model.config
    bad = [f"{key}={getattr(c, key)!r} (Llama needs {need!r})" for key, need in LLAMA_BLOCK.items()
           if getattr(c, key) != need]  # fmt: skip
    if bad:
        raise ConfigError(f"cannot export to HF Llama: {'; '.join(bad)}")
    if eot_id is not None and not 0 <= eot_id < c.vocab_size:
        raise ConfigError(f"eot_id={eot_id} is outside the model's vocabulary (vocab_size={c.vocab_size})")
    sd = _export_state(model)
    tensors = {theirs: sd[ours] for ours, theirs in _llama_names(c)}
    for i in range(c.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(_qkv_rows(c))
        gate, up = sd[ours + "mlp.c_fc.weight"].chunk(2)
        tensors |= {theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                    theirs + "self_attn.v_proj.weight": v, theirs + "mlp.gate_proj.weight": gate,
                    theirs + "mlp.up_proj.weight": up}  # fmt: skip
    directory = Path(directory)
    save_safetensors(
        directory / "model.safetensors",
        {n: t.contiguous() for n, t in tensors.items()},
        metadata={"format": "pt"},
    )
    atomic_write_json(
        directory / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd,
            "intermediate_size": c.mlp_hidden,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.block_size,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,  # transformers < 5
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers >= 5
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": c.tie_embeddings,
            "initializer_range": c.init_std,
            "bos_token_id": eot_id,
            "eos_token_id": eot_id,
        },
    )


def _config_from_hf_llama(hf: dict, path: Path) -> GPTConfig:
    """GPTConfig from an HF Llama config.json dict; Llama options we do not have are an error."""
    if hf.get("model_type") != "llama":
        raise FormatError(path, f"not a Llama config (model_type = {hf.get('model_type')!r})")
    rope = hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise FormatError(path, f"rope_parameters must be an object, found {type(rope).__name__}")
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise FormatError(
            path, "RoPE scaling (rope_scaling / a rope_type other than 'default') is not supported"
        )
    unsupported = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
    for key, need in unsupported.items():
        if hf.get(key, need) != need:
            raise FormatError(
                path, f"{key}={hf[key]!r} is not supported (lmforge's Llama block needs {need!r})"
            )
    config = GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        n_embd=hf["hidden_size"],
        n_inner=hf["intermediate_size"],
        dropout=0.0,
        bias=False,
        pos_encoding="rope",
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        tie_embeddings=hf.get("tie_word_embeddings", False),
        init_std=hf.get("initializer_range", 0.02),
    )
    if hf.get("head_dim", config.head_dim) != config.head_dim:  # checked after GPTConfig's own validation
        raise FormatError(path, "head_dim * num_attention_heads != hidden_size is not supported")
    return config


def from_hf_llama(directory: str | Path) -> GPT:
    """Load a Hugging Face Llama directory (config.json + one model.safetensors) as an lmforge GPT (fp32)."""
    c, tensors, weights_path = _read_hf(directory, _config_from_hf_llama, "Llama")
    if c.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # the same matrix as embed_tokens
    try:
        state = {ours: tensors.pop(theirs) for ours, theirs in _llama_names(c)}
        for i in range(c.n_layer):
            ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
            state[ours + "attn.c_attn.weight"] = torch.cat(
                [tensors.pop(theirs + f"self_attn.{x}_proj.weight") for x in "qkv"]
            )
            state[ours + "mlp.c_fc.weight"] = torch.cat(
                [tensors.pop(theirs + f"mlp.{x}_proj.weight") for x in ("gate", "up")]
            )
    except KeyError as e:
        raise FormatError(weights_path, f"missing tensor {e.args[0]!r}") from None
    leftover = sorted(name for name in tensors if not name.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise FormatError(weights_path, f"unexpected tensors for a Llama model: {', '.join(leftover[:5])}")
    return _load_checked(GPT(c), state, weights_path)


# ---------------------------------------------------------------------------------------------------
# Either architecture


def hf_architecture(config: GPTConfig) -> str:
    """Which HF architecture a config maps to: "llama" for the Llama-style block, else "gpt2"."""
    return "llama" if all(getattr(config, key) == need for key, need in LLAMA_BLOCK.items()) else "gpt2"


def to_hf(model: GPT, directory: str | Path, *, eot_id: int | None = None) -> str:
    """Export as `LlamaForCausalLM` or `GPT2LMHeadModel`, whichever the model's block is; returns which."""
    architecture = hf_architecture(model.config)
    (to_hf_llama if architecture == "llama" else to_hf_gpt2)(model, directory, eot_id=eot_id)
    return architecture


def from_hf(directory: str | Path) -> tuple[GPT | BERT, str]:
    """Import an HF GPT-2, Llama or BERT directory by its config.json's model_type: (model, which)."""
    path = Path(directory) / "config.json"
    model_type = _read_hf_config(path).get("model_type")
    if model_type == "gpt2":
        return from_hf_gpt2(directory), "gpt2"
    if model_type == "llama":
        return from_hf_llama(directory), "llama"
    if model_type == "bert":
        return from_hf_bert(directory), "bert"
    raise FormatError(
        path, f"model_type {model_type!r} is not supported (lmforge converts gpt2, llama and bert)"
    )


# ---------------------------------------------------------------------------------------------------
# LoRA adapters in peft's layout


def to_peft_adapter(model: GPT, directory: str | Path) -> str:
    """Write the LoRA adapters of `model` as `adapter_config.json` + `adapter_model.safetensors` that
    `peft.PeftModel.from_pretrained` loads onto the `to_hf` export of the same model; returns which
    architecture ("gpt2" or "llama").

    The mapping is exact (the same logits, unmerged or merged):
    - Llama: q_proj, k_proj and v_proj get our separate q/k/v adapters as they are; gate_proj and up_proj
      both get c_fc's A with the gate and up halves of its B; o_proj, down_proj and lm_head map one to one.
    - GPT-2: HF keeps q, k, v fused in one `c_attn`, and peft adapts it as one projection. Our update of
      c_attn is s * diag(B_q, B_k, B_v) [A_q; A_k; A_v] with s = alpha/rank, which is one LoRA of rank
      3*rank with A' = [A_q; A_k; A_v] (3r, in) and the block-diagonal B' (3 n_embd, 3r). peft scales by
      lora_alpha / r, so c_attn gets r = 3*rank and lora_alpha = 3*alpha (rank_pattern/alpha_pattern),
      keeping the scale s. No rank-r peft adapter can hold it in general: the update has rank up to 3r.
      Trained further in peft, the off-diagonal blocks of B' would become non-zero (a superset of ours).
    Dropout is applied once per fused matmul here and once per projection in peft (training only).
    """
    from lmforge.models.lora import lora_modules

    modules = lora_modules(model)
    if not isinstance(model, GPT) or not modules:
        raise ConfigError("to_peft_adapter needs a GPT with LoRA adapters (apply_lora or load_adapter first)")
    first = next(iter(modules.values()))
    if {(m.rank, m.alpha) for m in modules.values()} != {(first.rank, first.alpha)}:
        raise ConfigError("to_peft_adapter needs one rank and alpha for every adapter")
    rank, alpha = first.rank, first.alpha
    architecture = hf_architecture(model.config)
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}

    def put(name: str, A: torch.Tensor, B: torch.Tensor) -> None:
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.detach().clone()  # own storage: safetensors
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.detach().clone()  # refuses shared tensors

    for name, module in modules.items():
        A, B = module.lora_A, module.lora_B
        if architecture == "gpt2":
            if len(module.splits) > 1:  # the fused c_attn: one rank-3r adapter
                put(name, A, module.block_B())  # (3 n_embd, 3 rank)
                rank_pattern["c_attn"] = len(module.splits) * rank
                alpha_pattern["c_attn"] = len(module.splits) * alpha
            else:
                put(name, A, B)
            continue
        if name == "lm_head":
            put(name, A, B)
            continue
        layer, _, local = name.removeprefix("transformer.h.").partition(".")
        prefix = f"model.layers.{layer}."
        if local == "attn.c_attn":
            for x, A_x, B_x in zip("qkv", A.split(rank), B.split(module.splits), strict=True):
                put(f"{prefix}self_attn.{x}_proj", A_x, B_x)
        elif local == "mlp.c_fc":
            gate, up = B.chunk(2)
            put(f"{prefix}mlp.gate_proj", A, gate)
            put(f"{prefix}mlp.up_proj", A, up)
        else:
            put(prefix + {"attn.c_proj": "self_attn.o_proj", "mlp.c_proj": "mlp.down_proj"}[local], A, B)
    targets = sorted({key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for key in tensors})
    directory = Path(directory)
    save_safetensors(directory / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    atomic_write_json(
        directory / "adapter_config.json",
        {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": None,
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": first.lora_dropout.p if isinstance(first.lora_dropout, torch.nn.Dropout) else 0.0,
            "target_modules": targets,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "fan_in_fan_out": architecture == "gpt2",  # HF GPT-2's Conv1D stores (in, out)
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
        },
    )
    return architecture


# ---------------------------------------------------------------------------------------------------
# BERT

HF_BERT_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
_HF_BERT_HEADS = ("cls.", "classifier.")  # names outside the encoder, which task models put under "bert."


def _bert_names(c: BERTConfig) -> list[tuple[str, str]]:
    """(our name, HF's name) of every tensor copied as it is (all but the fused q/k/v). Encoder names are
    BertModel's; HF's task models (BertForMaskedLM ...) put them under "bert."."""
    names = [
        ("wte.weight", "embeddings.word_embeddings.weight"),
        ("wpe.weight", "embeddings.position_embeddings.weight"),
        ("wtt.weight", "embeddings.token_type_embeddings.weight"),
        ("ln_emb.weight", "embeddings.LayerNorm.weight"),
        ("ln_emb.bias", "embeddings.LayerNorm.bias"),
    ]
    for i in range(c.n_layer):
        ours, theirs = f"h.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            names += [
                (f"{ours}attn.c_proj.{part}", f"{theirs}attention.output.dense.{part}"),
                (f"{ours}ln_1.{part}", f"{theirs}attention.output.LayerNorm.{part}"),
                (f"{ours}mlp.c_fc.{part}", f"{theirs}intermediate.dense.{part}"),
                (f"{ours}mlp.c_proj.{part}", f"{theirs}output.dense.{part}"),
                (f"{ours}ln_2.{part}", f"{theirs}output.LayerNorm.{part}"),
            ]
    if c.pooler:
        names += [("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias")]
    if c.mlm_head:
        names += [
            ("mlm.dense.weight", "cls.predictions.transform.dense.weight"),
            ("mlm.dense.bias", "cls.predictions.transform.dense.bias"),
            ("mlm.ln.weight", "cls.predictions.transform.LayerNorm.weight"),
            ("mlm.ln.bias", "cls.predictions.transform.LayerNorm.bias"),
            ("mlm.bias", "cls.predictions.bias"),
        ]
    if c.num_labels:
        names += [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    return names


def _read_hf_bert_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of model.safetensors, or else of pytorch_model.bin (read with weights_only=True: plain
    tensors only, never arbitrary pickled objects)."""
    safetensors_path, pickle_path = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_path.exists() or not pickle_path.exists():
        return load_safetensors(safetensors_path, what="HF BERT weights"), safetensors_path
    try:
        tensors = torch.load(pickle_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for a bad file
        raise FormatError(pickle_path, f"not a plain tensor checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise FormatError(pickle_path, "must hold a dict of tensor names to tensors")
    return tensors, pickle_path


def _config_from_hf_bert(hf: dict, path: Path, tensors: dict[str, torch.Tensor]) -> BERTConfig:
    """BERTConfig from an HF BERT config.json dict; which heads exist is read from the unprefixed tensors."""
    if hf.get("model_type") != "bert":
        raise FormatError(path, f"not a BERT config (model_type = {hf.get('model_type')!r})")
    if hf.get("hidden_act", "gelu") not in HF_BERT_ACTIVATIONS:
        raise FormatError(path, f"hidden_act {hf['hidden_act']!r} is not supported (gelu, gelu_new)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise FormatError(path, f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise FormatError(path, "decoder BERTs (is_decoder / add_cross_attention) are not supported")
    classifier = tensors.get("classifier.weight")
    return BERTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        n_inner=hf.get("intermediate_size"),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=HF_BERT_ACTIVATIONS[hf.get("hidden_act", "gelu")],
        init_std=hf.get("initializer_range", 0.02),
        pooler="pooler.dense.weight" in tensors,
        mlm_head="cls.predictions.bias" in tensors,
        num_labels=0 if classifier is None else classifier.shape[0],
    )


def from_hf_bert(directory: str | Path) -> BERT:
    """Load a Hugging Face BERT directory (config.json + model.safetensors, or pytorch_model.bin) as an
    lmforge BERT (fp32): `BertModel`, `BertForMaskedLM`, `BertForSequenceClassification` or
    `BertForPreTraining` (whose next-sentence head is dropped: lmforge has none). Which heads the model
    gets is read from the tensors present."""
    directory = Path(directory)
    config_path = directory / "config.json"
    hf = _read_hf_config(config_path)
    if hf.get("model_type") != "bert":  # refuse a GPT-2 or Llama directory before reading its weights
        _config_from_hf_bert(hf, config_path, {})
    raw, weights_path = _read_hf_bert_weights(directory)
    tensors = {
        name.removeprefix("bert."): t
        for name, t in raw.items()
        if not name.endswith("position_ids")  # a buffer of positions 0..511 in older transformers
        and not name.startswith("cls.seq_relationship")  # the next-sentence prediction head
        and name not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")  # tied copies
    }
    try:
        c = _config_from_hf_bert(hf, config_path, tensors)
    except KeyError as e:
        raise FormatError(config_path, f"missing field {e.args[0]!r}") from None
    except ConfigError as e:
        raise FormatError(config_path, str(e)) from None
    try:
        state = {ours: tensors.pop(theirs) for ours, theirs in _bert_names(c)}
        for i in range(c.n_layer):
            theirs = f"encoder.layer.{i}.attention.self."
            for part in ("weight", "bias"):  # our c_attn is [query; key; value] stacked by output rows
                state[f"h.{i}.attn.c_attn.{part}"] = torch.cat(
                    [tensors.pop(f"{theirs}{x}.{part}") for x in ("query", "key", "value")]
                )
    except KeyError as e:
        raise FormatError(weights_path, f"missing tensor {e.args[0]!r}") from None
    if tensors:
        raise FormatError(
            weights_path, f"unexpected tensors for a BERT model: {', '.join(sorted(tensors)[:5])}"
        )
    return _load_checked(BERT(c), state, weights_path)


def to_hf_bert(model: BERT, directory: str | Path, *, pad_id: int | None = 0) -> str:
    """Write `config.json` + `model.safetensors` that transformers loads as `BertForSequenceClassification`
    (with a classification head), `BertForMaskedLM` (with an MLM head) or `BertModel`; returns which.
    `pad_id` becomes config.json's pad_token_id (BERT's [PAD] is 0)."""
    c = model.config
    if c.num_labels and c.classifier_pooling != "cls":
        raise ConfigError(
            f"cannot export a classifier on {c.classifier_pooling} pooling: transformers' "
            "BertForSequenceClassification reads the pooler ([CLS]) only"
        )
    if c.mlm_head and c.num_labels:
        raise ConfigError(
            "cannot export a BERT with both a masked-LM and a classification head: no transformers class "
            "holds both; build the classifier with mlm_head = false"
        )
    sd = model.state_dict()
    tensors = {theirs: sd[ours] for ours, theirs in _bert_names(c)}
    for i in range(c.n_layer):
        theirs = f"encoder.layer.{i}.attention.self."
        for part in ("weight", "bias"):
            for x, t in zip(("query", "key", "value"), sd[f"h.{i}.attn.c_attn.{part}"].chunk(3), strict=True):
                tensors[f"{theirs}{x}.{part}"] = t
    if c.mlm_head or c.num_labels:
        tensors = {(n if n.startswith(_HF_BERT_HEADS) else f"bert.{n}"): t for n, t in tensors.items()}
    if c.mlm_head:
        tensors["cls.predictions.decoder.bias"] = sd["mlm.bias"]  # HF keeps both names for one vector
    if c.num_labels:
        architecture = "BertForSequenceClassification"
    elif c.mlm_head:
        architecture = "BertForMaskedLM"
    else:
        architecture = "BertModel"
    directory = Path(directory)
    save_safetensors(
        directory / "model.safetensors",
        {n: t.detach().clone().contiguous() for n, t in tensors.items()},  # own storage each
        metadata={"format": "pt"},
    )
    hf: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.n_inner or 4 * c.n_embd,
        "hidden_act": "gelu" if c.activation == "gelu_exact" else "gelu_new",
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
        "max_position_embeddings": c.block_size,
        "type_vocab_size": c.type_vocab_size,
        "initializer_range": c.init_std,
        "layer_norm_eps": c.norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
    }
    if c.num_labels:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
    atomic_write_json(directory / "config.json", hf)
    return architecture
