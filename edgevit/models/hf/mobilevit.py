"""transformers MobileViT (v1) and MobileViTV2 -> timm ``ByobNet`` built with timm's MobileViT blocks.

Both follow the paper's network: a 3x3 stem, two inverted-residual stages, three stages of an
inverted residual followed by a MobileViT block (local 3x3 conv, 1x1 to the transformer width,
unfold into 2x2 patches, transformer layers, fold, 1x1 back, 3x3 fusion with the block's input), a 1x1
expansion and a linear classifier on the pooled map. MobileViTV2 replaces the transformer by separable
linear attention over 1x1 convs with GroupNorm, drops the fusion conv and the final expansion. The timm
network is built from the transformers model's own widths, so any config converts, not only the published
sizes (and timm's fold is reshapes where transformers' is ``nn.Fold``, which ONNX opset 17 lacks).
"""
from __future__ import annotations

import torch
from torch import nn

from edgevit.models.hf import converter


def _conv_layer(dst: nn.Module, src: nn.Module) -> None:
    """A timm ConvNormAct (or bare conv) <- a transformers MobileViTConvLayer."""
    conv = dst if isinstance(dst, nn.Conv2d) else dst.conv
    conv.weight.copy_(src.convolution.weight)
    if src.convolution.bias is not None:
        conv.bias.copy_(src.convolution.bias)
    if getattr(src, "normalization", None) is not None:
        bn, hbn = dst.bn, src.normalization
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(hbn, name))
        bn.eps = hbn.eps


def _inverted_residual(dst: nn.Module, src: nn.Module) -> None:
    _conv_layer(dst.conv1_1x1, src.expand_1x1)
    _conv_layer(dst.conv2_kxk, src.conv_3x3)
    _conv_layer(dst.conv3_1x1, src.reduce_1x1)


def _linear(dst: nn.Module, src: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    if dst.bias is not None:
        dst.bias.copy_(src.bias)


def _transformer_layer(dst: nn.Module, src: nn.Module) -> None:
    _linear(dst.norm1, src.layernorm_before)
    _linear(dst.norm2, src.layernorm_after)
    a = src.attention.attention
    dst.attn.qkv.weight.copy_(torch.cat([a.query.weight, a.key.weight, a.value.weight]))
    if dst.attn.qkv.bias is not None:
        dst.attn.qkv.bias.copy_(torch.cat([a.query.bias, a.key.bias, a.value.bias]))
    _linear(dst.attn.proj, src.attention.output.dense)
    _linear(dst.mlp.fc1, src.intermediate.dense)
    _linear(dst.mlp.fc2, src.output.dense)


def timm_config(config):
    """timm's ByoModelCfg for a transformers MobileViTConfig (timm's own mobilevit_* follow this pattern)."""
    from timm.models.byobnet import ByoBlockCfg, ByoModelCfg

    n, h, br = config.neck_hidden_sizes, config.hidden_sizes, config.expand_ratio
    mvit = dict(patch_size=config.patch_size, num_heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio,
                kernel_size=config.conv_kernel_size)

    def inverted(d, c, s):
        return ByoBlockCfg(type="bottle", d=d, c=c, s=s, gs=1, br=br, block_kwargs=dict(bottle_in=True, linear_out=True))

    def stage(c, dim, depth):
        return (inverted(1, c, 2), ByoBlockCfg(type="mobilevit", d=1, c=c, s=1, block_kwargs=dict(
            transformer_dim=dim, transformer_depth=depth, **mvit)))

    return ByoModelCfg(blocks=(inverted(1, n[1], 1), inverted(3, n[2], 2), stage(n[3], h[0], 2), stage(n[4], h[1], 4),
                               stage(n[5], h[2], 3)),
                       stem_chs=n[0], stem_type="3x3", stem_pool="", downsample="", act_layer=config.hidden_act,
                       num_features=n[6])


@converter("mobilevit")
@torch.no_grad()
def to_timm_mobilevit(hf: nn.Module, config) -> tuple[nn.Module, str]:
    """The timm MobileViT that computes what ``hf`` does, weights copied."""
    from timm.models.byobnet import ByobNet

    if config.hidden_act != "silu" or config.output_stride != 32 or not config.qkv_bias:
        raise ValueError("only the classification form (silu, output stride 32, qkv bias) converts")
    model = ByobNet(timm_config(config), num_classes=config.num_labels, in_chans=config.num_channels).eval()
    _copy_network(model, hf, hf.mobilevit, _transformer_layer)
    _conv_layer(model.final_conv, hf.mobilevit.conv_1x1_exp)
    return model, "timm ByobNet (MobileViT blocks)"


def _copy_network(model: nn.Module, hf: nn.Module, body: nn.Module, transformer_layer) -> None:
    """Stem, the two inverted-residual stages, the three MobileViT(V2) stages and the classifier."""
    _conv_layer(model.stem, body.conv_stem)
    hf_stages = list(body.encoder.layer)
    for stage, layer in zip(model.stages[:2], hf_stages[:2]):
        for blk, ir in zip(stage, layer.layer):
            _inverted_residual(blk, ir)
    for stage, layer in zip(model.stages[2:], hf_stages[2:]):
        down, block = stage
        _inverted_residual(down, layer.downsampling_layer)
        _conv_layer(block.conv_kxk, layer.conv_kxk)
        _conv_layer(block.conv_1x1, layer.conv_1x1)
        for t, s in zip(block.transformer, layer.transformer.layer):
            transformer_layer(t, s)
        _linear(block.norm, layer.layernorm)
        _conv_layer(block.conv_proj, layer.conv_projection)
        if getattr(layer, "fusion", None) is not None:  # MobileViT (v1) fuses with the block's input
            _conv_layer(block.conv_fusion, layer.fusion)
    _linear(model.head.fc, hf.classifier)


def _v2_transformer_layer(dst: nn.Module, src: nn.Module) -> None:
    _linear(dst.norm1, src.layernorm_before)
    _linear(dst.norm2, src.layernorm_after)
    _conv_layer(dst.attn.qkv_proj, src.attention.qkv_proj)
    _conv_layer(dst.attn.out_proj, src.attention.out_proj)
    _conv_layer(dst.mlp.fc1, src.ffn.conv1)
    _conv_layer(dst.mlp.fc2, src.ffn.conv2)


def _v2_timm_config(hf: nn.Module, config):
    """timm's ByoModelCfg for a transformers MobileViTV2, widths read from its modules."""
    from timm.models.byobnet import ByoBlockCfg, ByoModelCfg

    layers = list(hf.mobilevitv2.encoder.layer)

    def inverted(d, ir, s):
        c_in, c_out = ir.expand_1x1.convolution.in_channels, ir.reduce_1x1.convolution.out_channels
        return ByoBlockCfg(type="bottle", d=d, c=c_out, s=s, gs=1, br=ir.expand_1x1.convolution.out_channels / c_in,
                           block_kwargs=dict(bottle_in=True, linear_out=True))

    def stage(layer):
        dim = layer.conv_1x1.convolution.out_channels
        first = layer.transformer.layer[0]
        return (inverted(1, layer.downsampling_layer, 2), ByoBlockCfg(
            type="mobilevit2", d=1, c=layer.conv_kxk.convolution.out_channels, s=1, gs=1, block_kwargs=dict(
                transformer_dim=dim, transformer_depth=len(layer.transformer.layer), patch_size=config.patch_size,
                mlp_ratio=first.ffn.conv1.convolution.out_channels / dim, kernel_size=config.conv_kernel_size)))

    return ByoModelCfg(blocks=(inverted(len(layers[0].layer), layers[0].layer[0], 1),
                               inverted(len(layers[1].layer), layers[1].layer[0], 2),
                               *(stage(layer) for layer in layers[2:])),
                       stem_chs=hf.mobilevitv2.conv_stem.convolution.out_channels, stem_type="3x3", stem_pool="",
                       downsample="", act_layer=config.hidden_act)


@converter("mobilevitv2")
@torch.no_grad()
def to_timm_mobilevitv2(hf: nn.Module, config) -> tuple[nn.Module, str]:
    """The timm MobileViTV2 that computes what ``hf`` does, weights copied."""
    from timm.models.byobnet import ByobNet

    if config.hidden_act != "swish" and config.hidden_act != "silu" or config.output_stride != 32:
        raise ValueError("only the classification form (silu, output stride 32) converts")
    model = ByobNet(_v2_timm_config(hf, config), num_classes=config.num_labels, in_chans=config.num_channels).eval()
    _copy_network(model, hf, hf.mobilevitv2, _v2_transformer_layer)
    return model, "timm ByobNet (MobileViTV2 blocks)"
