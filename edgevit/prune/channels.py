"""Structured pruning of conv hidden channels: the conv counterpart of an MLP's hidden units.

A unit is ``producer 1x1 conv [-> BN] -> act [-> depthwise conv -> BN -> act] -> consumer conv [-> BN]``:
MobileViT / MobileNet inverted residuals (timm ``BottleneckBlock`` with a depthwise middle), EfficientViT's
``ConvMlp`` (pw1 -> act -> pw2), EfficientFormerV2's ``ConvMlpWithNorm`` (fc1 -> act [-> depthwise mid ->
act] -> fc2), EfficientFormer's (fc1 -> norm1 -> act -> fc2 -> norm2) and FastViT's / timm's ``ConvMlp``
(plain 1x1 convs, no norm on the hidden channels). Removing hidden channel j removes the producer's output j
(and its BN entry), the depthwise filter j, and the consumer's input column j; the consumer is refit by least
squares to what the removed channels contributed, the refit bias going into the conv's bias, or into the BN
after it (running mean) where the conv has none.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgevit.prune.units import input_hessian, keep_count, refit, unit_saliency


@dataclass(frozen=True)
class Part:
    """One conv of a unit: ``owner.<conv>`` and the BatchNorm after it, ``owner.<bn>`` (None: no norm)."""

    owner: nn.Module
    conv_attr: str = "conv"
    bn_attr: str | None = "bn"

    @property
    def conv(self) -> nn.Conv2d:
        return getattr(self.owner, self.conv_attr)

    @property
    def bn(self) -> nn.BatchNorm2d | None:
        return getattr(self.owner, self.bn_attr) if self.bn_attr else None

    def replace(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> None:
        setattr(self.owner, self.conv_attr, conv)
        if bn is not None:
            setattr(self.owner, self.bn_attr, bn)


def _part(owner: nn.Module | None, conv: str = "conv", bn: str | None = "bn") -> Part | None:
    """A Part if ``owner.<conv>`` is a Conv2d and ``owner.<bn>`` (when named) a BatchNorm2d."""
    if not isinstance(getattr(owner, conv, None), nn.Conv2d):
        return None
    if bn is not None and not isinstance(getattr(owner, bn, None), nn.BatchNorm2d):
        return None
    return Part(owner, conv, bn)


def _depthwise(p: Part | None) -> bool:
    return p is not None and p.conv.groups == p.conv.in_channels == p.conv.out_channels


def _unit(m: nn.Module) -> tuple | None:
    """(producer, middle or None, consumer) Parts of one conv MLP / inverted residual, or None."""
    if all(hasattr(m, k) for k in ("conv1_1x1", "conv2_kxk", "conv3_1x1")):  # timm BottleneckBlock
        parts = [_part(getattr(m, k)) for k in ("conv1_1x1", "conv2_kxk", "conv3_1x1")]
        quiet = all(isinstance(getattr(m, k, nn.Identity()), nn.Identity) for k in ("conv2b_kxk", "attn"))
        return tuple(parts) if quiet and all(parts) and _depthwise(parts[1]) else None
    if _part(getattr(m, "pw1", None)) and _part(getattr(m, "pw2", None)):  # EfficientViT ConvMlp
        return _part(m.pw1), None, _part(m.pw2)
    if _part(getattr(m, "fc1", None)) and _part(getattr(m, "fc2", None)):  # EfficientFormerV2 ConvMlpWithNorm
        mid = getattr(m, "mid", None)
        if _depthwise(_part(mid)):
            return _part(m.fc1), _part(mid), _part(m.fc2)
        return (_part(m.fc1), None, _part(m.fc2)) if mid is None or isinstance(mid, nn.Identity) else None
    if _part(m, "fc1", "norm1") and _part(m, "fc2", "norm2"):  # EfficientFormer ConvMlpWithNorm
        return _part(m, "fc1", "norm1"), None, _part(m, "fc2", "norm2")
    if _part(m, "fc1", None) and _part(m, "fc2", None) and isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        return _part(m, "fc1", None), None, _part(m, "fc2", None)  # FastViT ConvMlp: plain 1x1 convs
    return None


def conv_units(model: nn.Module) -> dict[str, tuple]:
    """name -> (producer, middle or None, consumer) Parts: 1x1 producer and consumer convs (no groups)."""
    out = {name: u for name, m in model.named_modules() if (u := _unit(m)) is not None}
    return {n: u for n, u in out.items() if u[0].conv.groups == 1 and u[2].conv.groups == 1
            and tuple(u[0].conv.kernel_size) == (1, 1)}


def slice_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, keep: torch.Tensor) -> nn.BatchNorm2d | nn.BatchNorm1d:
    """A copy of ``bn`` with only the ``keep`` features."""
    new = copy.deepcopy(bn)
    new.num_features = len(keep)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(bn, name) is not None:
                setattr(new, name, nn.Parameter(getattr(bn, name)[keep].clone()))
        new.running_mean = bn.running_mean[keep].clone()
        new.running_var = bn.running_var[keep].clone()
    return new


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, groups: int, bias: bool | None = None) -> nn.Conv2d:
    new = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, groups, bias=conv.bias is not None if bias is None else bias,
                    padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


@torch.no_grad()
def narrow_conv_unit(model: nn.Module, unit: tuple, ratio: float, multiple: int, obs: bool, x: torch.Tensor,
                     damp: float, shrink: bool = True) -> tuple[int, int]:
    """Remove the lowest-scored ``ratio`` of the unit's hidden channels; returns (hidden, kept)."""
    producer, middle, consumer = unit
    pc, pbn = producer.conv, producer.bn
    cc, cbn = consumer.conv, consumer.bn
    hidden = pc.out_channels
    keep_n = keep_count(hidden, ratio, multiple)
    kernel = cc.weight.shape[2] * cc.weight.shape[3]
    w = cc.weight.detach().permute(0, 2, 3, 1).reshape(cc.out_channels, -1)  # [out, (r, s, c)]
    h_aug = input_hessian(model, cc, x) if obs else None
    if obs:
        per_col = unit_saliency(w, h_aug, kernel * hidden, damp).view(kernel, hidden)
        score = per_col.sum(0)
    else:
        score = pc.weight.detach().flatten(1).norm(dim=1) * cc.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    keep = score.argsort(descending=True)[:keep_n].sort().values
    cols = (torch.arange(kernel).unsqueeze(1) * hidden + keep).reshape(-1)  # (r, s, c) column order
    if obs:
        w_k, b_new = refit(w, cc.bias, h_aug, cols, damp)
    else:
        w_k, b_new = w[:, cols], cc.bias
    new_w = w_k.view(cc.out_channels, cc.weight.shape[2], cc.weight.shape[3], keep_n).permute(0, 3, 1, 2)
    if b_new is not None and cc.bias is None and cbn is not None:  # no conv bias: the BN after it absorbs the shift
        cbn.running_mean -= b_new
        b_new = None
    if not shrink:
        masked = torch.zeros_like(cc.weight)
        masked[:, keep] = new_w
        if b_new is not None and cc.bias is None:
            consumer.replace(_conv_like(cc, masked, cc.groups, bias=True))
            consumer.conv.bias.copy_(b_new)
            return hidden, keep_n
        cc.weight.copy_(masked)
        if b_new is not None:
            cc.bias.copy_(b_new)
        return hidden, keep_n
    consumer.replace(_conv_like(cc, new_w, cc.groups, bias=b_new is not None))
    if b_new is not None:
        consumer.conv.bias.copy_(b_new)
    new_pc = _conv_like(pc, pc.weight[keep], 1)
    if pc.bias is not None:
        new_pc.bias.copy_(pc.bias[keep])
    producer.replace(new_pc, slice_bn(pbn, keep) if pbn is not None else None)
    if middle is not None:
        mc, mbn = middle.conv, middle.bn
        new_mc = _conv_like(mc, mc.weight[keep], keep_n)
        if mc.bias is not None:
            new_mc.bias.copy_(mc.bias[keep])
        middle.replace(new_mc, slice_bn(mbn, keep) if mbn is not None else None)
    return hidden, keep_n
