"""Parity of lmforge's LoRA with peft's on Hugging Face models: the same A/B matrices give the same
logits unmerged and merged, unmerging restores the base, and the peft-layout export of our adapters
loads in `peft.PeftModel.from_pretrained` with the same logits (GPT-2's fused c_attn and Llama's
q/k/v with grouped-query attention). Tiny random configs; no network."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lmforge.models import GPT, GPTConfig  # noqa: E402
from lmforge.models.convert import from_hf, to_hf, to_peft_adapter  # noqa: E402
from lmforge.models.lora import apply_lora, lora_modules, merge_lora, unmerge_lora  # noqa: E402

RANK, ALPHA = 4, 12  # scale alpha/rank = 3, not 1, so a wrong scale shows
# adapters of std 0.1 keep the logits O(1): fp32 rounding differs by ~1e-6, a mapping mistake by O(0.1)


def _random_adapters(model: torch.nn.Module) -> None:
    """Non-zero A and B (a fresh adapter has B = 0 and would hide every mapping mistake)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_A.copy_(torch.randn(module.lora_A.shape, generator=generator) * 0.1)
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)


def _hf_gpt2(tmp_path) -> tuple[transformers.GPT2LMHeadModel, GPT]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                     attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-initialises biases and unit-initialises norms: randomise everything
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours, _ = from_hf(tmp_path / "hf")
    return hf, ours.eval()


def _peft_twin(hf: transformers.GPT2LMHeadModel, ours: GPT) -> torch.nn.Module:
    """peft's LoRA on `hf` holding exactly our adapters: per c_attn one rank-3r adapter with
    A' = [A_q; A_k; A_v], block-diagonal B' = diag(B_q, B_k, B_v) and lora_alpha 3*alpha (same alpha/r)."""
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj", "c_fc"],
                             rank_pattern={"c_attn": 3 * RANK}, alpha_pattern={"c_attn": 3 * ALPHA},
                             fan_in_fan_out=True, lora_dropout=0.0)  # fmt: skip
    theirs = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for name, module in lora_modules(ours).items():
            target = theirs.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(module.lora_A)
            target.lora_B["default"].weight.copy_(module.block_B())  # (3 n_embd, 3 rank) for c_attn
    return theirs


def test_same_adapters_same_logits_as_peft_on_gpt2(tmp_path):
    """Our separate q/k/v adapters on c_attn are, in HF GPT-2 (fused c_attn, Conv1D), one peft adapter of
    rank 3r (see _peft_twin). The test builds that peft model itself and copies the matrices in. 22
    tokens: every adapter takes the unfolded path (tokens * (in + out) < in * out)."""
    hf, ours = _hf_gpt2(tmp_path)
    idx = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    base_logits = hf(idx).logits
    apply_lora(ours, rank=RANK, alpha=ALPHA, targets=["attn", "mlp"])
    _random_adapters(ours)
    theirs = _peft_twin(hf, ours).eval()

    adapted = ours(idx)[0]
    assert (adapted - base_logits).abs().max() > 1e-2  # the adapters do change the model
    torch.testing.assert_close(adapted, theirs(idx).logits, rtol=1e-5, atol=1e-5)

    merge_lora(ours)
    theirs.merge_adapter()
    torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(idx)[0], adapted, rtol=1e-5, atol=1e-5)

    unmerge_lora(ours)
    theirs.unmerge_adapter()
    with theirs.disable_adapter():
        torch.testing.assert_close(theirs(idx).logits, base_logits, rtol=1e-5, atol=1e-5)
    for module in lora_modules(ours).values():  # the base restored: zero adapters give the base logits
        module.lora_B.data.zero_()
    torch.testing.assert_close(ours(idx)[0], base_logits, rtol=1e-5, atol=1e-5)


def test_same_loss_and_adapter_gradients_as_peft_on_a_training_batch(tmp_path):
    """A training step's loss and the gradients of every A and B equal peft's on 2 x 32 = 64 tokens, where
    every adapter takes the folded path (64 * (in + out) >= in * out for each projection of this model).
    c_attn's B gradient is compared on the diagonal blocks, the values our block-diagonal B trains."""
    hf, ours = _hf_gpt2(tmp_path)
    ours.train()
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    apply_lora(ours, rank=RANK, alpha=ALPHA, targets=["attn", "mlp"])
    _random_adapters(ours)
    theirs = _peft_twin(hf, ours).train()
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100  # transformers shifts the labels itself: the same predictions
    loss = ours(idx, targets)[1]
    their_loss = theirs(input_ids=idx, labels=idx).loss
    torch.testing.assert_close(loss, their_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    their_loss.backward()
    for name, module in lora_modules(ours).items():
        target = theirs.base_model.model.get_submodule(name)
        their_B_grad = target.lora_B["default"].weight.grad
        if name.endswith("c_attn"):  # the diagonal blocks, stacked: (3 n_embd, rank)
            their_B_grad = torch.cat(
                [block.chunk(3, dim=1)[i] for i, block in enumerate(their_B_grad.chunk(3))]
            )
        assert module.lora_A.grad.abs().max() > 1e-4  # non-zero B: A trains too
        torch.testing.assert_close(
            module.lora_A.grad, target.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(module.lora_B.grad, their_B_grad, rtol=1e-4, atol=1e-6)


def _llama(n_kv_head: int) -> GPT:
    llama_block = dict(bias=False, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False)
    config = GPTConfig(
        vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=64, **llama_block
    )
    torch.manual_seed(0)
    return GPT(config).eval()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_exported_peft_adapter_loads_with_the_same_logits(tmp_path, architecture):
    """`to_hf` + `to_peft_adapter`, then transformers + `PeftModel.from_pretrained`: the same logits, with
    every linear layer adapted (GPT-2: tied head too; Llama: GQA, so k and v are narrower than q)."""
    if architecture == "gpt2":
        _, ours = _hf_gpt2(tmp_path)
    else:
        ours = _llama(n_kv_head=2)
    apply_lora(ours, rank=RANK, alpha=ALPHA, targets="all-linear")
    _random_adapters(ours)
    assert to_hf(ours, tmp_path / "export") == architecture
    assert to_peft_adapter(ours, tmp_path / "adapter") == architecture
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    idx = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(3))
    expected = ours(idx)[0]
    torch.testing.assert_close(theirs(idx).logits, expected, rtol=1e-5, atol=1e-5)
    merge_lora(ours)
    torch.testing.assert_close(ours(idx)[0], expected, rtol=1e-5, atol=1e-5)
