"""MobileViTV2 ``LinearSelfAttention`` (separable self-attention, Mehta & Rastegari 2022): one score per
token, softmax over the patches, a context vector = the scores' weighted sum of the keys, gating ReLU(V).

The weighted sum is stated as a MatMul, scores (B, P, 1, N) @ keys (B, P, N, d), so the softmax output
and the keys are the operands of one product, as in token attention: the post-softmax quantizer
(log / AdaLog / TanQ) and a key site apply. Self-attention only (MobileViTV2 does not use the cross form).
"""
from __future__ import annotations

import torch.nn.functional as F

from edgevit.models.families.base import AttentionFamily, float_attend, register


def _cls():
    from timm.models.mobilevit import LinearSelfAttention

    return LinearSelfAttention


@register(_cls)
class SeparableAttention(AttentionFamily):
    name = "mobilevitv2"

    def forward(self, a, x, attend=float_attend):
        # x: (B, C, P, N), P pixels per patch, N patches
        query, key, value = a.qkv_proj(x).split([1, a.embed_dim, a.embed_dim], dim=1)
        context = attend(None, query.transpose(1, 2), key.permute(0, 2, 3, 1))  # (B, P, 1, d)
        out = F.relu(value) * context.permute(0, 3, 1, 2)  # (B, d, P, 1) broadcast over the patches
        return a.out_drop(a.out_proj(out))
