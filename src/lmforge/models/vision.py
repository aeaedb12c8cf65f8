"""Image classifiers: a CNN, a small ResNet and a Vision Transformer, their config and checkpoints.

Read top to bottom: `VisionConfig` (every option, validated) -> `CNN` -> `BasicBlock` / `ResNet` ->
`PatchEmbedding` / `EncoderBlock` / `ViT` -> `build_classifier` and checkpoint I/O.

Every classifier has the same interface, so training, evaluation, FID and transfer learning treat them
alike:
    logits, loss = model(images, labels)   # images (B, C, H, W) float, labels (B,) or None -> loss None
    features = model.features(images)      # (B, F): the penultimate layer, the input of `model.head`
    model.head                             # nn.Linear(F, num_classes): replaced for transfer learning

- CNN: stages of [conv3x3-BN-ReLU] x 2 + 2x2 max-pooling, channels doubling per stage, then global
  average pooling (Simonyan & Zisserman 2014 style, with Ioffe & Szegedy 2015 batch norm).
- ResNet: a 3x3 stem, then stages of `BasicBlock`s (two 3x3 conv-BN, identity shortcut; the first block
  of a later stage halves the resolution and doubles the channels, with a 1x1 stride-2 conv-BN
  projection shortcut: He et al. 2016, option B), global average pooling. The block is torchvision's
  `BasicBlock` in layout and parameter count.
- ViT: the image cut into P x P patches by a stride-P convolution (the same as flattening each patch and
  applying one linear map), a learned [CLS] token, learned positions, pre-norm encoder blocks made of
  `layers.py`'s attention (non-causal) and MLP, a final LayerNorm and a linear head on [CLS]
  (Dosovitskiy et al. 2021). The MLP's GELU is the tanh approximation of `layers.MLP`.

Deliberately not here: data loading and augmentation (`lmforge.data.images`), the training loop
(`lmforge.training.vision`), generative models (`generative.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError, FormatError
from lmforge.fileio import atomic_write_json, load_safetensors, read_json, save_safetensors
from lmforge.models.layers import MLP, CausalSelfAttention

CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
ARCHITECTURES = ("cnn", "resnet", "vit")


@dataclass
class VisionConfig:
    """Every architectural choice of an image classifier; fields an architecture does not use are ignored."""

    arch: str = "cnn"  # "cnn" | "resnet" | "vit"
    channels: int = 1  # input channels (1 = grayscale, 3 = RGB)
    image_size: int = 28  # input height = width, in pixels
    num_classes: int = 10  # outputs of the head
    width: int = 32  # cnn/resnet: channels of the first stage (doubling at each later stage)
    stages: int = 2  # cnn/resnet: number of stages (each later one halves the resolution)
    blocks_per_stage: int = 2  # resnet: residual blocks per stage
    patch_size: int = 4  # vit: side of the square patches; must divide image_size
    n_embd: int = 64  # vit: width of the token stream
    n_layer: int = 4  # vit: encoder blocks
    n_head: int = 4  # vit: attention heads; n_embd must be divisible by it
    mlp_ratio: int = 2  # vit: MLP hidden width = mlp_ratio * n_embd
    dropout: float = 0.0  # dropout before the head (all) and inside the encoder blocks (vit)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        for name in (
            "channels",
            "image_size",
            "num_classes",
            "width",
            "stages",
            "blocks_per_stage",
            "patch_size",
            "n_embd",
            "n_layer",
            "n_head",
            "mlp_ratio",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.arch == "vit":
            if self.image_size % self.patch_size:
                raise ConfigError(
                    f"model.patch_size={self.patch_size} does not divide model.image_size={self.image_size} "
                    f"into whole patches; choose a divisor of {self.image_size} (e.g. "
                    f"{', '.join(str(p) for p in range(2, self.image_size) if self.image_size % p == 0)})"
                )
            if self.n_embd % self.n_head:
                raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        elif self.image_size % 2 ** (self.stages - 1):
            raise ConfigError(
                f"model.image_size={self.image_size} cannot be halved {self.stages - 1} times by "
                f"{self.stages} stages; use fewer stages"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


class Classifier(nn.Module):
    """The shared forward: features -> dropout -> head, and the cross-entropy when labels are given."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.head(self.dropout(self.features(x)))  # (B, num_classes)
        loss = F.cross_entropy(logits, targets) if targets is not None else None
        return logits, loss


# ---------------------------------------------------------------------------------------------------
# CNN


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias: the batch norm's shift replaces it), batch norm, ReLU; size kept."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class CNN(Classifier):
    def __init__(self, config: VisionConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = config.channels
        for stage in range(config.stages):
            c_out = config.width * 2**stage
            layers += [conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out)]
            if stage < config.stages - 1:
                layers.append(nn.MaxPool2d(2))  # (B, c, H, W) -> (B, c, H/2, W/2)
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))  # global average pooling: (B, c, h, w) -> (B, c)


# ---------------------------------------------------------------------------------------------------
# ResNet


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); shortcut = 1x1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, *, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection: match channels and resolution of the branch
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/stride, W/stride)
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet(Classifier):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.stem = conv_bn_relu(config.channels, config.width)
        blocks = []
        c_in = config.width
        for stage in range(config.stages):
            c_out = config.width * 2**stage
            for i in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride=stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))  # (B, c_last)


# ---------------------------------------------------------------------------------------------------
# ViT


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, N, D) with N = (H/P) * (W/P) patches in row-major order.

    A Conv2d with kernel = stride = P computes, for each patch, W_e . flatten(patch) + b: exactly the
    "flatten each patch, multiply by a (C*P*P, D) matrix" of the ViT paper, as one kernel.
    """

    def __init__(self, *, channels: int, patch_size: int, n_embd: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, n_embd, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/P, W/P) -> (B, N, D)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(ln(x)), then x + mlp(ln(x)); attention sees all tokens."""

    def __init__(self, config: VisionConfig, layer: int):
        super().__init__()
        D = config.n_embd
        self.ln_1 = nn.LayerNorm(D)
        self.attn = CausalSelfAttention(
            n_embd=D,
            n_head=config.n_head,
            n_kv_head=config.n_head,
            bias=True,
            dropout=config.dropout,
            layer=layer,
            causal=False,
        )
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = MLP(
            n_embd=D, hidden=config.mlp_ratio * D, activation="gelu", bias=True, dropout=config.dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(Classifier):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D = config.n_embd
        n_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embedding = PatchEmbedding(
            channels=config.channels, patch_size=config.patch_size, n_embd=D
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.positions = nn.Parameter(torch.randn(1, n_patches + 1, D) * 0.02)  # learned, [CLS] first
        self.blocks = nn.ModuleList(EncoderBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(D, config.num_classes)
        self.image_size = config.image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):  # positions are fixed to one patch grid
            raise ConfigError(
                f"the ViT was built for {self.image_size}x{self.image_size} images, got {tuple(x.shape)}"
            )
        tokens = self.patch_embedding(x)  # (B, N, D)
        cls = self.cls_token.expand(x.size(0), -1, -1)  # (B, 1, D)
        h = torch.cat([cls, tokens], dim=1) + self.positions  # (B, N + 1, D)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h[:, 0])  # the [CLS] token: (B, D)


# ---------------------------------------------------------------------------------------------------
# Building and checkpoints


def build_classifier(config: VisionConfig) -> Classifier:
    return {"cnn": CNN, "resnet": ResNet, "vit": ViT}[config.arch](config)


def save_classifier(
    model: Classifier, config: VisionConfig, directory: str | Path, *, meta: dict[str, Any]
) -> Path:
    """model.safetensors + meta.json (format version, the config, and `meta`: classes, normalisation...)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(directory / WEIGHTS_FILE, {k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write_json(
        directory / META_FILE,
        {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "kind": "image-classifier",
            "config": config.to_dict(),
            **meta,
        },
    )
    return directory


def load_classifier(directory: str | Path) -> tuple[Classifier, VisionConfig, dict[str, Any]]:
    """The classifier saved in `directory`, in eval mode, with its config and meta."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    meta = read_json(meta_path, what="classifier meta")
    if not isinstance(meta, dict) or meta.get("kind") != "image-classifier":
        raise FormatError(
            meta_path, "not an lmforge image-classifier checkpoint (kind != 'image-classifier')"
        )
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise FormatError(
            meta_path, f"format_version {meta.get('format_version')!r} is not {CHECKPOINT_FORMAT_VERSION}"
        )
    config = VisionConfig.from_dict(meta["config"])
    model = build_classifier(config)
    weights = load_safetensors(directory / WEIGHTS_FILE, what="classifier weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise FormatError(directory / WEIGHTS_FILE, f"weights do not fit the config ({e})") from None
    return model.eval(), config, meta
