"""CNN / ResNet / ViT: layers against torch's own modules or hand counts, shapes, errors, checkpoints.

torchvision cannot be imported beside this project's torch build, so the references are torch's
`nn.MultiheadAttention` / `nn.TransformerEncoderLayer`, an unfold-and-matmul patch embedding, and
torchvision's BasicBlock parameter counts worked by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.models.vision import (
    BasicBlock,
    EncoderBlock,
    PatchEmbedding,
    VisionConfig,
    build_classifier,
    load_classifier,
    save_classifier,
)


def test_patch_embedding_is_flatten_then_linear():
    torch.manual_seed(0)
    embed = PatchEmbedding(channels=3, patch_size=4, n_embd=16)
    x = torch.randn(2, 3, 8, 12)
    patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, 2*3 patches, 3*4*4), row-major
    reference = patches @ embed.proj.weight.reshape(16, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(x), reference)
    assert embed(x).shape == (2, 6, 16)


def test_encoder_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    config = VisionConfig(arch="vit", n_embd=16, n_head=4)
    attn = EncoderBlock(config, 0).attn.eval()
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():  # same layout: q, k, v stacked in one (3D, D) projection
        reference.in_proj_weight.copy_(attn.c_attn.weight)
        reference.in_proj_bias.copy_(attn.c_attn.bias)
        reference.out_proj.weight.copy_(attn.c_proj.weight)
        reference.out_proj.bias.copy_(attn.c_proj.bias)
    x = torch.randn(2, 5, 16)
    expected, _ = reference(x, x, x, need_weights=False)  # no mask: every token sees every token
    torch.testing.assert_close(attn(x), expected)


def test_encoder_block_matches_torch_transformer_encoder_layer():
    torch.manual_seed(0)
    config = VisionConfig(arch="vit", n_embd=16, n_head=2, mlp_ratio=2)
    block = EncoderBlock(config, 0).eval()
    reference = nn.TransformerEncoderLayer(
        16,
        2,
        dim_feedforward=32,
        dropout=0.0,
        activation=lambda h: F.gelu(h, approximate="tanh"),
        batch_first=True,
        norm_first=True,
    ).eval()
    pairs = {
        "self_attn.in_proj_weight": block.attn.c_attn.weight,
        "self_attn.in_proj_bias": block.attn.c_attn.bias,
        "self_attn.out_proj.weight": block.attn.c_proj.weight,
        "self_attn.out_proj.bias": block.attn.c_proj.bias,
        "linear1.weight": block.mlp.c_fc.weight,
        "linear1.bias": block.mlp.c_fc.bias,
        "linear2.weight": block.mlp.c_proj.weight,
        "linear2.bias": block.mlp.c_proj.bias,
        "norm1.weight": block.ln_1.weight,
        "norm1.bias": block.ln_1.bias,
        "norm2.weight": block.ln_2.weight,
        "norm2.bias": block.ln_2.bias,
    }
    reference.load_state_dict({k: v.detach() for k, v in pairs.items()})
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(block(x), reference(x))


def test_basic_block_shapes_and_torchvision_parameter_counts():
    """torchvision BasicBlock(64, 64): 2 convs 64*64*9 = 36,864 + 2 BNs 2*64 -> 73,984.
    BasicBlock(64, 128, stride 2, downsample): 64*128*9 + 128*128*9 + 64*128 (1x1) = 229,376 conv weights
    + 3 BNs of 2*128 = 768 -> 230,144."""
    same, down = BasicBlock(64, 64, stride=1), BasicBlock(64, 128, stride=2)
    assert sum(p.numel() for p in same.parameters()) == 73_984
    assert sum(p.numel() for p in down.parameters()) == 230_144
    assert isinstance(same.shortcut, nn.Identity)
    x = torch.randn(2, 64, 8, 8)
    assert same(x).shape == (2, 64, 8, 8) and down(x).shape == (2, 128, 4, 4)


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vit"])
def test_classifiers_share_one_interface(arch):
    torch.manual_seed(0)
    config = VisionConfig(
        arch=arch,
        image_size=8,
        width=4,
        stages=2,
        blocks_per_stage=1,
        patch_size=4,
        n_embd=8,
        n_head=2,
        n_layer=1,
        num_classes=3,
    )
    model = build_classifier(config)
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    logits, loss = model(x, y)
    assert logits.shape == (5, 3) and model.features(x).shape == (5, model.head.in_features)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    assert model(x)[1] is None


def test_vit_attends_to_later_patches():
    """Non-causal: changing the last patch changes the [CLS] output (with causal attention it could not,
    since [CLS] is position 0)."""
    torch.manual_seed(0)
    model = build_classifier(
        VisionConfig(arch="vit", image_size=8, patch_size=4, n_embd=8, n_head=2, n_layer=1)
    )
    x = torch.randn(1, 1, 8, 8)
    changed = x.clone()
    changed[..., 4:, 4:] += 1.0
    assert not torch.allclose(model.features(x), model.features(changed))


def test_config_errors():
    with pytest.raises(ConfigError, match="patch_size=5 does not divide model.image_size=28.*2, 4, 7, 14"):
        VisionConfig(arch="vit", patch_size=5)
    with pytest.raises(ConfigError, match="n_embd \\(10\\) must be divisible by n_head \\(4\\)"):
        VisionConfig(arch="vit", n_embd=10)
    with pytest.raises(ConfigError, match="model.arch"):
        VisionConfig(arch="mlp")
    with pytest.raises(ConfigError, match="cannot be halved"):
        VisionConfig(image_size=6, stages=3)
    vit = build_classifier(
        VisionConfig(arch="vit", image_size=8, patch_size=4, n_embd=8, n_head=2, n_layer=1)
    )
    with pytest.raises(ConfigError, match="built for 8x8 images"):
        vit(torch.randn(1, 1, 12, 12))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = VisionConfig(arch="resnet", image_size=8, width=4, blocks_per_stage=1)
    model = build_classifier(config).eval()
    save_classifier(model, config, tmp_path, meta={"classes": ["a"], "mean": 0.5, "std": 0.5})
    loaded, loaded_config, meta = load_classifier(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert loaded_config == config and meta["mean"] == 0.5
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(FormatError, match="corrupt or truncated"):
        load_classifier(tmp_path)
