"""Structured pruning of conv hidden channels: the conv counterpart of an MLP's hidden units.

A unit is ``producer 1x1 conv -> BN(+act) [-> depthwise conv -> BN(+act)] -> consumer conv -> BN``:
MobileViT / MobileNet inverted residuals (timm ``BottleneckBlock`` with a depthwise middle), EfficientViT's
``ConvMlp`` (pw1 -> act -> pw2) and EfficientFormerV2's ``ConvMlpWithNorm`` (fc1 -> act [-> depthwise mid ->
act] -> fc2). Removing hidden channel j removes the producer's output j (and its BN entry), the depthwise
filter j, and the consumer's input column j; the consumer is refit by least squares to what the removed
channels contributed, the refit bias going into the conv's bias, or into the BN after it (running mean) where
the conv has none.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgevit.prune.units import input_hessian, keep_count, refit, unit_saliency


def _conv_bn(m: nn.Module | None) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    return None


def conv_units(model: nn.Module) -> dict[str, tuple]:
    """name -> (producer, middle or None, consumer), each a module holding ``.conv`` and ``.bn``."""
    out = {}
    for name, m in model.named_modules():
        if all(hasattr(m, k) for k in ("conv1_1x1", "conv2_kxk", "conv3_1x1")):
            p, mid, c = m.conv1_1x1, m.conv2_kxk, m.conv3_1x1
            quiet = all(isinstance(getattr(m, k, nn.Identity()), nn.Identity) for k in ("conv2b_kxk", "attn"))
            if quiet and _conv_bn(p) and _conv_bn(mid) and _conv_bn(c) and \
                    mid.conv.groups == mid.conv.in_channels == mid.conv.out_channels:
                out[name] = (p, mid, c)
        elif all(_conv_bn(getattr(m, k, None)) for k in ("pw1", "pw2")):
            out[name] = (m.pw1, None, m.pw2)
        elif all(_conv_bn(getattr(m, k, None)) for k in ("fc1", "fc2")):
            mid = getattr(m, "mid", None)
            if _conv_bn(mid) and mid.conv.groups == mid.conv.in_channels == mid.conv.out_channels:
                out[name] = (m.fc1, mid, m.fc2)
            elif mid is None or isinstance(mid, nn.Identity):
                out[name] = (m.fc1, None, m.fc2)
    return {n: u for n, u in out.items() if _conv_bn(u[0])[0].groups == 1 and _conv_bn(u[2])[0].groups == 1
            and tuple(_conv_bn(u[0])[0].kernel_size) == (1, 1)}


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


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, groups: int) -> nn.Conv2d:
    new = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


@torch.no_grad()
def narrow_conv_unit(model: nn.Module, unit: tuple, ratio: float, multiple: int, obs: bool, x: torch.Tensor,
                     damp: float, shrink: bool = True) -> tuple[int, int]:
    """Remove the lowest-scored ``ratio`` of the unit's hidden channels; returns (hidden, kept)."""
    producer, middle, consumer = unit
    pc, pbn = _conv_bn(producer)
    cc, cbn = _conv_bn(consumer)
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
    if b_new is not None and cc.bias is None:  # the conv has no bias: the BN after it absorbs the shift
        cbn.running_mean -= b_new
        b_new = None
    if not shrink:
        masked = torch.zeros_like(cc.weight)
        masked[:, keep] = new_w
        cc.weight.copy_(masked)
        if b_new is not None:
            cc.bias.copy_(b_new)
        return hidden, keep_n
    consumer.conv = _conv_like(cc, new_w, cc.groups)
    if b_new is not None:
        consumer.conv.bias.copy_(b_new)
    producer.conv = _conv_like(pc, pc.weight[keep], 1)
    if pc.bias is not None:
        producer.conv.bias.copy_(pc.bias[keep])
    producer.bn = slice_bn(pbn, keep)
    if middle is not None:
        mc, mbn = _conv_bn(middle)
        middle.conv = _conv_like(mc, mc.weight[keep], keep_n)
        if mc.bias is not None:
            middle.conv.bias.copy_(mc.bias[keep])
        middle.bn = slice_bn(mbn, keep)
    return hidden, keep_n
