"""timm ``Attention``: ViT / DeiT blocks and MobileViT's transformer blocks."""
from __future__ import annotations

import torch
from torch import nn

from edgevit.models.families.base import AttentionFamily, register


def _cls():
    from timm.layers.attention import Attention

    return Attention


@register(_cls)
class TimmAttention(AttentionFamily):
    """One fused qkv projection, per-head q/k norms, an output norm and an optional sigmoid gate."""

    name = "timm-vit"
    merges_tokens = True

    def qkv(self, a, x, batch, n):
        q, k, v = a.qkv(x).reshape(batch, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return a.q_norm(q), a.k_norm(k), v

    def output(self, a, out, x, batch, n):
        out = out.transpose(1, 2)
        out = a.norm(out.reshape(batch, n, -1) if batch != -1 else out.reshape(-1, n, out.shape[2] * out.shape[3]))
        if getattr(a, "gate", None) is not None:
            out = out * a.gate(x[:, :n]).sigmoid()
        return a.proj_drop(a.proj(out))

    def prunable_heads(self, a) -> bool:
        return a.gate is None and isinstance(a.norm, nn.Identity)

    def head_slices(self, a, keep):
        """qkv rows are laid out (q|k|v, head, dim), proj columns (head, dim)."""
        heads, hd = a.num_heads, a.head_dim
        cols = (keep.unsqueeze(1) * hd + torch.arange(hd)).reshape(-1)
        return a.qkv, a.proj, torch.cat([t * heads * hd + cols for t in range(3)]), cols

    def set_heads(self, a, heads: int, producer, consumer) -> None:
        a.qkv, a.proj = producer, consumer
        a.num_heads, a.attn_dim = heads, heads * a.head_dim
