"""EfficientFormerV2 ``Attention2d``: attention on the 2-D map (q, k, v from convs, talking heads, a
local value branch). Token merging runs inside it (``edgevit.tokens.patch.GridTokenAttention``); its
convs are quantized one by one, so the adapter gives only the position biases."""
from __future__ import annotations

from edgevit.models.families.base import AttentionFamily, register


def _cls():
    from timm.models.efficientformer_v2 import Attention2d

    return Attention2d


@register(_cls)
class EfficientFormerV2Attention(AttentionFamily):
    name = "efficientformerv2"
    unfused = False  # no token-form forward: quantization sites leave it to its convs
    position_biases = True

    def position_bias(self, a):
        return a.get_attention_biases(a.attention_biases.device)
