"""LoRA (`lmforge.models.lora`): starts equal to the base, only adapters train, the trainable count is
sum rank * (in + out) with q/k/v as three projections, target selection, merge/unmerge tolerance, save/load
round trip, and the errors for a wrong base or a bad adapter.json. Parity with peft is in
tests/parity/test_lora_peft.py."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from lmforge.errors import ConfigError, FormatError
from lmforge.models import GPT, GPTClassifier, GPTConfig
from lmforge.models.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_modules,
    merge_lora,
    resolve_targets,
    save_adapter,
    unmerge_lora,
    weights_fingerprint,
)


def _gpt(*, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig.preset("tiny", **({"vocab_size": 61} | overrides))
    return GPT(config).eval()


def _idx(T: int = 9) -> torch.Tensor:
    return torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(5))


def _train_adapters(model: torch.nn.Module) -> None:
    """Stand-in for training: random non-zero B (and A), so merges and saves have something to carry."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_A.add_(torch.randn(module.lora_A.shape, generator=generator) * 0.1)
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)


def test_adapted_model_starts_equal_and_only_adapters_train():
    model = _gpt()
    idx = _idx()
    base = model(idx)[0]
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(idx)[0], base)  # B = 0: the update is exactly zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{part}" for n in lora_modules(model) for part in ("lora_A", "lora_B")}
    _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    # B = 0 at the start, so only B gets a gradient on the first step (dL/dA = B^T ...), as in peft
    assert all(m.lora_B.grad.abs().sum() > 0 for m in lora_modules(model).values())


def test_a_is_kaiming_uniform_and_b_zero():
    """Kaiming-uniform with a = sqrt(5): gain sqrt(2 / (1 + 5)) = sqrt(1/3), bound = gain * sqrt(3 / fan_in)
    = 1 / sqrt(fan_in) = 1/8 for n_embd 64; a uniform sample of 12 * 64 values reaches near the bound."""
    model = apply_lora(_gpt(), rank=4, alpha=8, targets="attn")
    c_attn = model.transformer.h[0].attn.c_attn
    bound = 1 / math.sqrt(64)
    assert c_attn.lora_A.abs().max() <= bound
    assert c_attn.lora_A.abs().max() > 0.95 * bound
    assert c_attn.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert torch.count_nonzero(c_attn.lora_B) == 0


def test_trainable_count_on_gpt2_preset_with_a_two_class_head():
    """Every linear layer of the 124M GPT-2 shape (built on the meta device) with a 2-class head, rank 8:
    per block q, k, v: 3 * 8 * (768 + 768) = 36,864; attn c_proj 8 * (768 + 768) = 12,288; c_fc and
    mlp c_proj 8 * (768 + 3072) = 30,720 each -> 110,592; 12 blocks = 1,327,104; head 8 * (768 + 2) = 6,160;
    total 1,333,264."""
    with torch.device("meta"):
        model = GPTClassifier(GPTConfig.preset("gpt2"), num_classes=2)
        apply_lora(model, rank=8, alpha=16, targets="all-linear")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 1_333_264
    names = list(lora_modules(model))
    assert len(names) == 12 * 4 + 1 and names[-1] == "head"


def test_trainable_count_with_grouped_query_attention():
    """tiny, n_kv_head 1: head_dim 32, so q is 64 wide and k, v 32 each. Rank 4, attention only, per block:
    q 4 * (64 + 64) + k 4 * (64 + 32) + v 4 * (64 + 32) + c_proj 4 * (64 + 64) = 512 + 384 + 384 + 512
    = 1,792; two blocks: 3,584."""
    model = apply_lora(_gpt(n_kv_head=1), rank=4, targets="attn")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3_584
    assert model.transformer.h[0].attn.c_attn.splits == [64, 32, 32]


def test_targets_by_kind_and_name():
    model = _gpt()
    assert list(resolve_targets(model, "mlp")) == [
        f"transformer.h.{i}.mlp.{x}" for i in (0, 1) for x in ("c_fc", "c_proj")
    ]
    assert list(resolve_targets(model, "head")) == ["lm_head"]
    assert len(resolve_targets(model, "all-linear")) == 2 * 4 + 1
    assert list(resolve_targets(model, "c_attn")) == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
    ]
    assert list(resolve_targets(model, ["transformer.h.1.*", "lm_head"])) == [
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj",
        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj", "lm_head",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="matches no module"):
        resolve_targets(model, "q_proj")
    with pytest.raises(ConfigError, match="not an adaptable Linear"):
        resolve_targets(model, "ln_1")
    with pytest.raises(ConfigError, match="rank"):
        apply_lora(model, rank=0)
    apply_lora(model, targets="attn")
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model)


def test_dropout_acts_in_training_only():
    model = apply_lora(_gpt(), rank=4, dropout=0.5)
    _train_adapters(model)
    idx = _idx()
    expected = model(idx)[0]
    model.train()
    assert not torch.allclose(model(idx)[0], expected)
    model.eval()
    assert torch.equal(model(idx)[0], expected)


def test_merge_unmerge_tolerance():
    """Merged logits equal the unmerged adapted ones and unmerging restores every base weight, to fp32
    rounding; the tied head gets an untied merged copy and is tied again afterwards."""
    model = _gpt(n_kv_head=1)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = _idx()
    apply_lora(model, rank=4, alpha=8)
    _train_adapters(model)
    adapted = model(idx)[0]
    merge_lora(model)
    assert all(m.merged for m in lora_modules(model).values())
    assert model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(model(idx)[0], adapted, rtol=1e-5, atol=1e-5)
    merge_lora(model)  # a second merge changes nothing
    torch.testing.assert_close(model(idx)[0], adapted, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    state = model.state_dict()
    for name, tensor in base_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(idx)[0], adapted, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    base = _gpt()
    model = apply_lora(copy.deepcopy(base), rank=4, alpha=16, targets=["attn", "head"], dropout=0.1)
    _train_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert record["rank"] == 4 and record["alpha"] == 16 and record["dropout"] == 0.1
    assert record["targets"] == list(lora_modules(model)) and record["format_version"] == 1
    assert record["base_fingerprint"] == weights_fingerprint(base)
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "adapter").eval()
    idx = _idx()
    assert torch.equal(fresh(idx)[0], model.eval()(idx)[0])
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


def test_classifier_head_trained_beside_adapters_is_saved(tmp_path):
    from lmforge.models import set_trainable

    base = GPTClassifier(GPTConfig.preset("tiny", vocab_size=61), num_classes=3)
    head_before = copy.deepcopy(base.head)
    model = set_trainable(copy.deepcopy(base), "lora", rank=2)
    _train_adapters(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert not torch.equal(fresh.head.weight, head_before.weight)
    assert torch.equal(fresh(_idx())[0], model(_idx())[0])


def test_wrong_base_is_refused(tmp_path):
    model = apply_lora(_gpt(seed=0), rank=4)
    save_adapter(model, tmp_path / "adapter")
    other = _gpt(seed=1)
    with pytest.raises(FormatError, match=r"adapter\.json.*made for base weights"):
        load_adapter(other, tmp_path / "adapter")
    assert not lora_modules(other)  # refused before touching the model
    # an explicit fingerprint (e.g. of the checkpoint files) is compared instead of the weights' hash
    save_adapter(model, tmp_path / "by-file", base_fingerprint="ckpt-sha256-abc")
    load_adapter(other, tmp_path / "by-file", base_fingerprint="ckpt-sha256-abc")
    with pytest.raises(ConfigError, match="merged"):
        weights_fingerprint(merge_lora(model))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(rank="8"), "field 'rank' must be a positive integer"),
        (lambda r: r.update(alpha=-1), "field 'alpha' must be a positive number"),
        (lambda r: r.update(dropout=1.5), "field 'dropout'"),
        (lambda r: r.pop("targets"), "missing field 'targets'"),
        (lambda r: r.update(targets=["transformer.h.0.attn.c_q"]), "does not fit this model"),
        (lambda r: r.update(format_version=99), "unsupported adapter format_version 99"),
        (lambda r: r.update(kind="prefix"), "not a LoRA adapter"),
    ],
)
def test_bad_adapter_json_is_a_format_error(tmp_path, change, message):
    base = _gpt()
    save_adapter(apply_lora(copy.deepcopy(base), rank=4), tmp_path)
    path = tmp_path / "adapter.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(FormatError, match=message) as error:
        load_adapter(copy.deepcopy(base), tmp_path)
    assert error.value.path == path


def test_bad_adapter_tensors_are_a_format_error(tmp_path):
    base = _gpt()
    save_adapter(apply_lora(copy.deepcopy(base), rank=4), tmp_path)
    (tmp_path / "adapter.json").write_text("{not json")
    with pytest.raises(FormatError, match="corrupt or truncated"):
        load_adapter(copy.deepcopy(base), tmp_path)
    save_adapter(apply_lora(copy.deepcopy(base), rank=4), tmp_path)
    weights = tmp_path / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FormatError, match="corrupt or truncated adapter weights"):
        load_adapter(copy.deepcopy(base), tmp_path)
    # a rank in adapter.json that disagrees with the tensors
    save_adapter(apply_lora(copy.deepcopy(base), rank=4), tmp_path)
    record = json.loads((tmp_path / "adapter.json").read_text())
    (tmp_path / "adapter.json").write_text(json.dumps(record | {"rank": 2}))
    fresh = copy.deepcopy(base)
    with pytest.raises(FormatError, match="has shape"):
        load_adapter(fresh, tmp_path)
    assert not lora_modules(fresh)  # checked before the model is touched
    # a non-finite tensor
    model = apply_lora(copy.deepcopy(base), rank=4)
    with torch.no_grad():
        model.lm_head.lora_B[0, 0] = float("nan")
    save_adapter(model, tmp_path)
    with pytest.raises(FormatError, match="NaN"):
        load_adapter(copy.deepcopy(base), tmp_path)


def test_lora_linear_keeps_the_base_parameters():
    """State-dict names of the base are unchanged (a GPT checkpoint's keys are a subset)."""
    model = _gpt()
    weight = model.transformer.h[0].mlp.c_fc.weight
    names = set(model.state_dict())
    apply_lora(model, targets="mlp")
    assert isinstance(model.transformer.h[0].mlp.c_fc, LoRALinear)
    assert model.transformer.h[0].mlp.c_fc.weight is weight
    assert names <= set(model.state_dict())


@pytest.mark.parametrize("tokens", [3, 64])  # 3 * (16 + 48) < 16 * 48 <= 64 * (16 + 48): both paths
def test_forward_and_gradients_equal_the_plain_formula(tokens):
    """y = x W^T + b + s diag(B_q, B_k, B_v) A x, and dL/d(x, W, b, A, B) by autograd on that formula,
    whether LoRALinear takes the unfolded path (few tokens) or folds the adapter into W (many)."""
    generator = torch.Generator().manual_seed(3)
    base = torch.nn.Linear(16, 48)
    layer = LoRALinear(base, rank=2, alpha=6, dropout=0.0, splits=[16, 16, 16])
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(48, 2, generator=generator))
    x = torch.randn(1, tokens, 16, generator=generator, requires_grad=True)
    upstream = torch.randn(1, tokens, 48, generator=generator)
    (layer(x) * upstream).sum().backward()
    got = [t.grad.clone() for t in (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B)]

    for t in (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B):
        t.grad = None
    B = torch.block_diag(*layer.lora_B.split(16))  # (48, 6)
    y = x @ layer.weight.T + layer.bias + 3.0 * (x @ layer.lora_A.T) @ B.T
    (y * upstream).sum().backward()
    torch.testing.assert_close(layer(x), y)
    for mine, plain in zip(got, (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B), strict=True):
        torch.testing.assert_close(mine, plain.grad, rtol=1e-4, atol=1e-4)  # sums in another order
    assert got[3].abs().max() > 0 and got[4].abs().max() > 0


def test_folded_path_under_bf16_autocast():
    """Under CPU autocast the folded path computes in bf16 and hands fp32 gradients to fp32 parameters,
    close to the fp32 ones (bf16 keeps ~3 significant digits)."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(32, 32), rank=4, alpha=4, dropout=0.0, splits=[32])
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(64, 32, requires_grad=True)
    layer(x).square().mean().backward()
    expected = [t.grad.clone() for t in (x, layer.lora_A, layer.lora_B)]
    for t in (x, layer.lora_A, layer.lora_B):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    for t, want in zip((x, layer.lora_A, layer.lora_B), expected, strict=True):
        assert t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, want, rtol=0.05, atol=0.02 * want.abs().max().item())
