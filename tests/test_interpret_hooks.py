"""Hooks: capturing changes nothing, patching with clean values is the clean run, with corrupt ones the
corrupt run, hooks are gone afterwards even after an error, and the explicit attention path equals SDPA."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.interpret.hooks import capture, hook_points, hooked, patch
from lmforge.models.gpt import GPT, GPTConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=13) | overrides
    return GPT(GPTConfig(**config)).eval()


IDS = torch.tensor([[1, 5, 2, 7, 3, 9], [4, 4, 8, 0, 12, 6]])
CORRUPT = torch.tensor([[1, 6, 2, 7, 3, 9], [4, 4, 8, 0, 11, 6]])


def hooks_left(model: GPT) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(pos_encoding="rope", n_head=4, n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False)],
)
def test_explicit_attention_equals_sdpa(overrides):
    model = tiny(**overrides)
    reference, _ = model(IDS)
    for block in model.transformer.h:
        block.attn.explicit_pattern = True
    explicit, _ = model(IDS)
    torch.testing.assert_close(explicit, reference, rtol=1e-5, atol=1e-6)


def test_capture_changes_no_output_and_shapes():
    model = tiny()
    reference, _ = model(IDS)
    without_patterns = [p for p in hook_points(model) if not p.endswith("pattern")]
    acts = capture(model, IDS, without_patterns)
    assert torch.equal(acts["logits"], reference)  # the SDPA path, bit for bit
    acts = capture(model, IDS)
    torch.testing.assert_close(acts["logits"], reference, rtol=1e-5, atol=1e-6)
    assert acts["blocks.1.attn.pattern"].shape == (2, 2, 6, 6)
    assert acts["blocks.0.mlp.hidden"].shape == (2, 6, 64)
    torch.testing.assert_close(acts["blocks.1.attn.pattern"].sum(-1), torch.ones(2, 2, 6))
    assert acts["blocks.1.attn.pattern"].triu(1).abs().max() == 0  # causal
    assert torch.equal(acts["blocks.0.resid_post"], acts["blocks.1.resid_pre"])
    # resid_post = resid_pre + attn_out + mlp_out (pre-norm block)
    parts = acts["blocks.1.resid_pre"] + acts["blocks.1.attn_out"] + acts["blocks.1.mlp_out"]
    torch.testing.assert_close(acts["blocks.1.resid_post"], parts)
    assert hooks_left(model) == 0
    assert not any(block.attn.explicit_pattern for block in model.transformer.h)


def test_patching_every_point_with_its_clean_value_is_the_clean_run():
    model = tiny()
    clean = capture(model, IDS)
    replacements = {name: value for name, value in clean.items() if name != "logits"}
    assert torch.equal(patch(model, IDS, replacements), clean["logits"])


def test_patching_with_corrupt_values_reproduces_the_corrupt_run():
    model = tiny()
    corrupt = capture(model, CORRUPT)
    # the whole stream at the input of any layer carries everything downstream needs
    for layer in range(2):
        name = f"blocks.{layer}.resid_pre"
        torch.testing.assert_close(patch(model, IDS, {name: corrupt[name]}), corrupt["logits"])
    # the last layer's two branches and their input, all from the corrupt run
    names = ["blocks.1.resid_pre", "blocks.1.attn.pattern", "blocks.1.mlp.hidden"]
    torch.testing.assert_close(patch(model, IDS, {n: corrupt[n] for n in names}), corrupt["logits"])
    # a patch that does not reach everything gives neither run
    partial = patch(model, IDS, {"blocks.1.attn.pattern": corrupt["blocks.1.attn.pattern"]})
    assert not torch.allclose(partial, corrupt["logits"])


def test_a_patched_pattern_feeds_the_computation():
    """Replace layer 0's pattern with the uniform causal average (row t = 1/(t+1) on positions 0..t):
    the attention branch must then output c_proj(mean of v over the prefix), computed here by hand."""
    model = tiny(n_layer=1)
    T = IDS.size(1)
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]  # (T, T)
    uniform = uniform.expand(2, 2, T, T)
    with torch.no_grad():
        block = model.transformer.h[0]
        x = block.ln_1(model.transformer.wte(IDS) + model.transformer.wpe.weight[:T])
        v = block.attn.c_attn(x)[..., 32:].view(2, T, 2, 8).transpose(1, 2)  # (B, nh, T, hd)
        prefix_mean = v.cumsum(2) / torch.arange(1, T + 1)[:, None]  # (B, nh, T, hd)
        expected = block.attn.c_proj(prefix_mean.transpose(1, 2).reshape(2, T, 16))
    out = {}
    hooks = {
        "blocks.0.attn.pattern": lambda a: uniform,
        "blocks.0.attn_out": lambda a: out.setdefault("x", a),
    }
    with torch.no_grad(), hooked(model, hooks):
        model(IDS)
    torch.testing.assert_close(out["x"], expected)


def test_hooks_are_removed_after_an_error():
    model = tiny()

    def boom(activation):
        raise RuntimeError("inside the forward")

    with pytest.raises(RuntimeError, match="inside the forward"):
        patch(model, IDS, {"blocks.0.attn.pattern": boom})
    assert hooks_left(model) == 0
    assert not model.transformer.h[0].attn.explicit_pattern
    with pytest.raises(ConfigError, match="shape"):
        patch(model, IDS, {"blocks.0.resid_pre": torch.zeros(1, 2, 3)})
    assert hooks_left(model) == 0
    with pytest.raises(ConfigError, match="unknown hook point 'blocks.5.resid_pre'"):
        capture(model, IDS, ["blocks.1.resid_pre", "blocks.5.resid_pre"])
    assert hooks_left(model) == 0


def test_attention_only_model_has_no_mlp_points():
    model = tiny(attn_only=True)
    assert not any("mlp" in p for p in hook_points(model))
    assert not any("mlp" in name for name, _ in model.named_parameters())
    with pytest.raises(ConfigError, match="attn_only"):
        GPTConfig(attn_only=True, norm_placement="post")
