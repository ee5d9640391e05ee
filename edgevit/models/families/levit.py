"""LeViT ``Attention`` (linear mode; the conv mode lays heads out differently and is not adapted)."""
from __future__ import annotations

from edgevit.models.families.base import BiasedTokenAttention, register


def _cls():
    from timm.models.levit import Attention

    return Attention


@register(_cls)
class LeViTAttention(BiasedTokenAttention):
    name = "levit"

    def accepts(self, m) -> bool:
        return not getattr(m, "use_conv", False)
