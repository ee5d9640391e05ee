"""TinyViT ``Attention`` (window attention; normalizes its input itself)."""
from __future__ import annotations

from edgevit.models.families.base import BiasedTokenAttention, register


def _cls():
    from timm.models.tiny_vit import Attention

    return Attention


@register(_cls)
class TinyViTAttention(BiasedTokenAttention):
    name = "tiny-vit"

    def prenorm(self, a, x):
        return a.norm(x)
