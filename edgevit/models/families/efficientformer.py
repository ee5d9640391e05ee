"""EfficientFormer (v1) ``Attention`` in its last stage (tokens after ``Flat``)."""
from __future__ import annotations

from edgevit.models.families.base import BiasedTokenAttention, register


def _cls():
    from timm.models.efficientformer import Attention

    return Attention


@register(_cls)
class EfficientFormerAttention(BiasedTokenAttention):
    name = "efficientformer"
    merges_tokens = True  # the position biases are averaged over the positions each merged token holds
