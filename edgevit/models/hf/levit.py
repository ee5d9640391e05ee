"""transformers LeViT -> timm ``Levit`` / ``LevitDistilled`` (linear mode).

The same network: a 16x-stride stem of four conv+BN layers with Hardswish, stages of attention and MLP
residual blocks whose linear layers carry BatchNorm, attention with learned biases per relative offset,
a subsampling attention + MLP between stages (transformers puts it at the end of a stage, timm at the
start of the next), and a BatchNorm + linear head on the mean token (with teacher: the mean of two
heads). The two number the relative offsets differently; the biases are moved through both index maps.
"""
from __future__ import annotations

import torch
from torch import nn

from edgevit.models.hf import converter


def _norm(dst: nn.Module, src: nn.Module) -> None:
    """timm ConvNorm / LinearNorm / NormLinear parts <- transformers (conv or linear, batch_norm)."""
    lin = getattr(src, "convolution", None) or getattr(src, "linear")
    dst.linear.weight.copy_(lin.weight)
    if getattr(dst.linear, "bias", None) is not None:
        dst.linear.bias.copy_(lin.bias)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.bn, name).copy_(getattr(src.batch_norm, name))
    dst.bn.eps = src.batch_norm.eps


def _biases(dst: nn.Module, src: nn.Module) -> None:
    """Learned biases per relative offset, through each side's (queries, keys) -> offset index."""
    dst.attention_biases[:, dst.attention_bias_idxs.flatten()] = src.attention_biases[:, src.attention_bias_idxs.flatten()]


def _units_hf(body) -> list[tuple[str, nn.Module]]:
    from transformers.models.levit.modeling_levit import LevitAttention, LevitAttentionSubsample, LevitMLPLayer

    units = []
    for stage in body.encoder.stages:
        for layer in stage.layers:
            m = getattr(layer, "module", layer)
            kind = {LevitAttention: "attn", LevitMLPLayer: "mlp", LevitAttentionSubsample: "sub"}[type(m)]
            units.append((kind, m))
    return units


def _units_timm(model) -> list[tuple[str, nn.Module]]:
    units = []
    for stage in model.stages:
        if not isinstance(stage.downsample, nn.Identity):
            units += [("sub", stage.downsample.attn_downsample), ("mlp", stage.downsample.mlp)]
        for blk in stage.blocks:
            units += [("attn", blk.attn), ("mlp", blk.mlp)]
    return units


@converter("levit")
@torch.no_grad()
def to_timm_levit(hf: nn.Module, config) -> tuple[nn.Module, str]:
    """The timm LeViT that computes what ``hf`` does, weights copied."""
    from timm.models.levit import Levit, LevitDistilled

    same = {"key_dim": set(config.key_dim), "attention_ratio": set(config.attention_ratio),
            "mlp_ratio": set(config.mlp_ratio)}
    if any(len(v) != 1 for v in same.values()) or config.patch_size != 16:
        raise ValueError("only LeViTs with one key_dim, attention and MLP ratio and a 16x stem convert")
    for i, op in enumerate(config.down_ops[:len(config.depths) - 1]):
        if op[:1] != ["Subsample"] or op[1] != config.key_dim[0] or op[2] != config.hidden_sizes[i] // op[1] \
                or op[3:] != [4, 2, 2]:
            raise ValueError(f"down_ops {op} is not timm's subsampling (key_dim, in/key_dim heads, ratios 4, 2, stride 2)")
    teacher = hasattr(hf, "classifier_distill")
    cls = LevitDistilled if teacher else Levit
    model = cls(img_size=config.image_size, in_chans=config.num_channels, num_classes=config.num_labels,
                embed_dim=tuple(config.hidden_sizes), key_dim=config.key_dim[0], depth=tuple(config.depths),
                num_heads=tuple(config.num_attention_heads), attn_ratio=config.attention_ratio[0],
                mlp_ratio=config.mlp_ratio[0]).eval()
    body = hf.levit
    emb = body.patch_embeddings
    for i in range(1, 5):
        _norm(getattr(model.stem, f"conv{i}"), getattr(emb, f"embedding_layer_{i}"))
    hf_units, timm_units = _units_hf(body), _units_timm(model)
    if [k for k, _ in hf_units] != [k for k, _ in timm_units]:
        raise ValueError("the stages are laid out differently")
    for (kind, src), (_, dst) in zip(hf_units, timm_units):
        if kind == "mlp":
            _norm(dst.ln1, src.linear_up)
            _norm(dst.ln2, src.linear_down)
        elif kind == "attn":
            _norm(dst.qkv, src.queries_keys_values)
            _norm(dst.proj.ln, src.projection)
            _biases(dst, src)
        else:
            _norm(dst.kv, src.keys_values)
            _norm(dst.q.ln, src.queries)
            _norm(dst.proj.ln, src.projection)
            _biases(dst, src)
    _norm(model.head, hf.classifier)
    if teacher:
        _norm(model.head_dist, hf.classifier_distill)
    return model, f"timm {cls.__name__}"
