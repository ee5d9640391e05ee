"""Built-in reference models: small CIFAR-10 networks trained here and shipped with the package.

Each entry is an architecture (built from timm parts, random init) plus a weights file in
``edgevit/models/weights/<name>.safetensors`` and a JSON sidecar with labels, preprocessing and
the measured accuracy. ``benchmarks/train_reference.py`` produces both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"

CIFAR10_LABELS = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class BuiltinSpec:
    """What a built-in model is: how to build it and how its inputs look."""

    name: str
    arch: str
    build: Callable[[], nn.Module]
    description: str
    input_size: int = 32
    labels: tuple[str, ...] = tuple(CIFAR10_LABELS)
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.json"

    def card(self) -> dict:
        """The model card written by the training script (accuracy, command, seed), or {}."""
        if self.card_path.is_file():
            return json.loads(self.card_path.read_text())
        return {}


def build_hybrid_cifar10() -> nn.Module:
    """timm MobileViT-XXS (conv + MobileViT attention blocks) adapted to 32x32 input.

    The stem convolution runs at stride 1 instead of 2, so the feature maps are those of a
    64 px input (last map 2x2 instead of 1x1) without upsampling the images.
    """
    import timm

    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10)
    model.stem.conv.stride = (1, 1)
    return model


def build_vit_cifar10() -> nn.Module:
    """A DeiT-tiny-like plain ViT: patch 4 on 32x32 (64 tokens + CLS), width 128, depth 6."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6,
        num_heads=4, mlp_ratio=3.0, class_token=True, global_pool="token",
    )


def build_efficientvit_cifar10() -> nn.Module:
    """timm EfficientViT-M0 (conv stem, cascaded group attention, depthwise-conv FFNs) at 64 px.

    A second hybrid of a different family than MobileViT; CIFAR images are upsampled to 64 px by the
    preprocessing (bilinear), as the model card states.
    """
    import timm

    return timm.create_model("efficientvit_m0", pretrained=False, num_classes=10)


BUILTINS: dict[str, BuiltinSpec] = {
    spec.name: spec
    for spec in (
        BuiltinSpec(
            name="hybrid-cifar10",
            arch="mobilevit_xxs (stem stride 1, 32 px)",
            build=build_hybrid_cifar10,
            description="MobileViT-XXS hybrid (conv + attention), CIFAR-10, 32x32",
        ),
        BuiltinSpec(
            name="vit-cifar10",
            arch="vit (patch 4, dim 128, depth 6, 4 heads)",
            build=build_vit_cifar10,
            description="plain DeiT-tiny-like ViT, CIFAR-10, 32x32, 64 tokens + CLS",
        ),
        BuiltinSpec(
            name="efficientvit-cifar10",
            arch="efficientvit_m0 (64 px, CIFAR upsampled)",
            build=build_efficientvit_cifar10,
            description="EfficientViT-M0 hybrid (conv + cascaded group attention), CIFAR-10 upsampled to 64x64",
            input_size=64,
        ),
    )
}
