"""Fold BatchNorm into the convolution before it, so weight scales see the weights that run."""
from __future__ import annotations

import torch
from torch import nn


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        conv.weight.mul_(factor.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = beta + (bias - bn.running_mean) * factor
        conv.bias = nn.Parameter(new_bias)


def _bn_tail(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a BatchNorm after folding: nothing, or timm's fused drop + activation."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


#: (conv, norm) attribute pairs of modules that run the conv, then the norm: timm's ConvNormAct and
#: transformers' conv layers (MobileViT, MobileViTV2, ...)
CONV_NORM_PAIRS = (("conv", "bn"), ("convolution", "normalization"))


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every BatchNorm2d that directly follows a Conv2d (``CONV_NORM_PAIRS`` and ``nn.Sequential``
    neighbours). Returns the names of the folded BatchNorms; the model must be in eval mode (running
    statistics are used)."""
    folded: list[str] = []
    for name, mod in list(model.named_modules()):
        for conv_name, bn_name in CONV_NORM_PAIRS:
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                _fold_into(conv, bn)
                setattr(mod, bn_name, _bn_tail(bn))
                folded.append(f"{name}.{bn_name}" if name else bn_name)
        if isinstance(mod, nn.Sequential):
            keys = list(mod._modules)
            for a, b in zip(keys, keys[1:]):
                conv, bn = mod._modules[a], mod._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                    _fold_into(conv, bn)
                    mod._modules[b] = _bn_tail(bn)
                    folded.append(f"{name}.{b}" if name else b)
    return folded
