"""transformers ViT and DeiT -> timm ``VisionTransformer`` / ``VisionTransformerDistilled``.

The two compute the same function: patch embedding conv, class (and distillation) token plus learned
position embeddings, pre-norm blocks whose q, k and v projections timm fuses into one ``qkv``, a final
LayerNorm and a head on the class token (DeiT with teacher: the mean of the class and distillation
heads). DeiT without teacher reads the class token alone: its head goes into timm's two-head form as
(2 W, 2 b) on the class token and zero on the distillation token, so the mean is the same logits.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgevit.models.hf import converter

_ACT = {"gelu": nn.GELU, "gelu_new": partial(nn.GELU, approximate="tanh"),
        "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh")}


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    if getattr(dst, "bias", None) is not None:
        dst.bias.copy_(src.bias)


@converter("vit", "deit")
@torch.no_grad()
def to_timm_vit(hf: nn.Module, config) -> tuple[nn.Module, str]:
    """The timm ViT (DeiT: distilled ViT) that computes what ``hf`` does, weights copied."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if config.hidden_act not in _ACT:
        raise ValueError(f"hidden_act {config.hidden_act!r}")
    body = hf.deit if config.model_type == "deit" else hf.vit
    distilled = config.model_type == "deit"
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    model = cls(img_size=config.image_size, patch_size=config.patch_size, in_chans=config.num_channels,
                num_classes=config.num_labels, embed_dim=config.hidden_size, depth=config.num_hidden_layers,
                num_heads=config.num_attention_heads, mlp_ratio=config.intermediate_size / config.hidden_size,
                qkv_bias=config.qkv_bias, norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
                act_layer=_ACT[config.hidden_act])
    emb = body.embeddings
    model.cls_token.copy_(emb.cls_token)
    if distilled:
        model.dist_token.copy_(emb.distillation_token)
    model.pos_embed.copy_(emb.position_embeddings)
    _copy(model.patch_embed.proj, emb.patch_embeddings.projection)
    for blk, layer in zip(model.blocks, body.layers):
        _copy(blk.norm1, layer.layernorm_before)
        _copy(blk.norm2, layer.layernorm_after)
        a = layer.attention
        blk.attn.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        if config.qkv_bias:
            blk.attn.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        _copy(blk.attn.proj, a.o_proj)
        _copy(blk.mlp.fc1, layer.mlp.fc1)
        _copy(blk.mlp.fc2, layer.mlp.fc2)
    _copy(model.norm, body.layernorm)
    if not distilled:
        _copy(model.head, hf.classifier)
        return model, "timm VisionTransformer"
    if hasattr(hf, "cls_classifier"):  # DeiTForImageClassificationWithTeacher
        _copy(model.head, hf.cls_classifier)
        _copy(model.head_dist, hf.distillation_classifier)
    else:  # DeiTForImageClassification: the class token's head alone
        model.head.weight.copy_(2 * hf.classifier.weight)
        model.head.bias.copy_(2 * hf.classifier.bias)
        model.head_dist.weight.zero_()
        model.head_dist.bias.zero_()
    return model, "timm VisionTransformerDistilled"
