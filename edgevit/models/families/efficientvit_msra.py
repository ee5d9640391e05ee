"""EfficientViT (MSRA) ``CascadedGroupAttention``: each head attends over its own channel group, fed by
the previous head's output, with learned relative-position biases."""
from __future__ import annotations

import torch

from edgevit.models.families.base import AttentionFamily, float_attend, register


def _cls():
    from timm.models.efficientvit_msra import CascadedGroupAttention

    return CascadedGroupAttention


@register(_cls)
class CascadedGroupAttention(AttentionFamily):
    name = "efficientvit-msra"

    def forward(self, a, x, attend=float_attend):
        B, C, H, W = x.shape
        feats_in = x.chunk(len(a.qkvs), dim=1)
        bias = a.get_attention_biases(x.device)
        feats_out, feat = [], feats_in[0]
        for head, (qkv, dws) in enumerate(zip(a.qkvs, a.dws)):
            if head > 0:
                feat = feat + feats_in[head]
            q, k, v = qkv(feat).view(B, -1, H, W).split([a.key_dim, a.key_dim, a.val_dim], dim=1)
            q, k, v = dws(q).flatten(2), k.flatten(2), v.flatten(2)
            # v @ attn^T = (attn @ v^T)^T: the same product with V as the right-hand operand
            feat = attend(q.transpose(-2, -1) * a.scale, k, v.transpose(-2, -1), bias[head])
            feat = feat.transpose(-2, -1).reshape(B, a.val_dim, H, W)
            feats_out.append(feat)
        return a.proj(torch.cat(feats_out, 1))
