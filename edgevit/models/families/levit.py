"""LeViT ``Attention`` and ``AttentionDownsample`` (linear mode; the conv mode lays heads out
differently and is not adapted)."""
from __future__ import annotations

from edgevit.models.families.base import AttentionFamily, BiasedTokenAttention, float_attend, register


def _cls():
    from timm.models.levit import Attention

    return Attention


def _downsample_cls():
    from timm.models.levit import AttentionDownsample

    return AttentionDownsample


@register(_cls)
class LeViTAttention(BiasedTokenAttention):
    name = "levit"

    def accepts(self, m) -> bool:
        return not getattr(m, "use_conv", False)


@register(_downsample_cls)
class LeViTAttentionDownsample(AttentionFamily):
    """The shrinking attention between stages: queries from the subsampled tokens, keys and values
    from all of them, biases by query-key distance; its projection widens the channels."""

    name = "levit-downsample"

    def accepts(self, m) -> bool:
        return not getattr(m, "use_conv", False)

    def projection_units(self, a):
        # its key/value, query and output projections run faster on INT8 in ONNX Runtime while the small
        # product (4-16 queries) does not: one region for all would ship them in float together
        return ("kv", "q", "proj")

    def forward(self, a, x, attend=float_attend):
        batch, n = x.shape[0], x.shape[1]
        k, v = a.kv(x).view(batch, n, a.num_heads, -1).split([a.key_dim, a.val_dim], dim=3)
        q = a.q(x).view(batch, -1, a.num_heads, a.key_dim).permute(0, 2, 1, 3)
        out = attend(q * a.scale, k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3), a.get_attention_biases(x.device))
        return a.proj(out.transpose(1, 2).reshape(batch, -1, a.val_attn_dim))
