"""Post-LayerNorm scale reparameterization (RepQ-ViT), with MOSF's robust target scale (DopQ-ViT).

Post-LayerNorm activations have a few channels with far wider ranges than the rest; one per-tensor
scale wastes most levels on them. RepQ-ViT computes channel-wise (s_c, z_c) and folds the
channel-to-layer conversion into the model:

    r_c = s_c / s~,   b_c = min_c / r_c - min~     (min_c = -z_c s_c,  min~ = -z~ s~)
    LayerNorm:  gamma'_c = gamma_c / r_c,  beta'_c = beta_c / r_c - b_c
    next Linear: W'[:, c] = W[:, c] r_c,   B' = B + W' b

so the float model computes the same function and the LayerNorm output X'_c = X_c / r_c - b_c is
quantized with one layer-wise (s~, z~). RepQ-ViT takes s~ = mean_c s_c; a few outlier channels
drag that mean up. MOSF (MAD-guided optimal scaling factor) takes a robust statistic instead:
``median`` or ``mosf`` = the mean of the channel scales within k MAD of the median (k = 3). The
paper's exact formula could not be read; this is the documented stand-in.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

MAD_K = 3.0


def layernorm_linear_pairs(model: nn.Module) -> list[tuple[str, nn.LayerNorm, list[tuple[str, nn.Linear]]]]:
    """(LayerNorm, Linears it feeds) in timm transformer blocks: norm1 -> attn.qkv, norm2 -> mlp.fc1."""
    pairs = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for norm, path in (("norm1", ("attn", "qkv")), ("norm2", ("mlp", "fc1"))):
            ln = getattr(m, norm, None)
            target = m
            for p in path:
                target = getattr(target, p, None)
            if isinstance(ln, nn.LayerNorm) and ln.elementwise_affine and isinstance(target, nn.Linear):
                pairs.append((f"{prefix}{norm}", ln, [(f"{prefix}{'.'.join(path)}", target)]))
    return pairs


def target_scale(scales: torch.Tensor, method: str) -> torch.Tensor:
    """The layer-wise scale s~ from channel scales: mean (RepQ-ViT), median, or mosf (inlier mean)."""
    if method == "reparam":
        return scales.mean()
    med = scales.median()
    if method == "median":
        return med
    if method == "mosf":
        mad = (scales - med).abs().median()
        inliers = scales[(scales - med).abs() <= MAD_K * mad]  # never empty: holds the median itself
        return inliers.mean()
    raise ValueError(f"unknown layernorm reparameterization {method!r} (known: reparam, median, mosf)")


@torch.no_grad()
def channel_ranges(model: nn.Module, norms: list[nn.LayerNorm], batches: Iterable[torch.Tensor]) -> list[tuple]:
    """Per-channel (min, max) of each LayerNorm's output over the calibration batches."""
    lo = [None] * len(norms)
    hi = [None] * len(norms)

    def hook(i):
        def fn(_m, _inp, out):
            flat = out.detach().reshape(-1, out.shape[-1])
            mn, mx = flat.min(0).values, flat.max(0).values
            lo[i] = mn if lo[i] is None else torch.minimum(lo[i], mn)
            hi[i] = mx if hi[i] is None else torch.maximum(hi[i], mx)
        return fn

    handles = [n.register_forward_hook(hook(i)) for i, n in enumerate(norms)]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return list(zip(lo, hi))


def reparam_factors(lo: torch.Tensor, hi: torch.Tensor, bits: int, method: str) -> dict[str, torch.Tensor]:
    """r_c and b_c for one LayerNorm output from its channel ranges (asymmetric, ``bits`` bits)."""
    levels = 2 ** bits - 1
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    s = torch.clamp((hi - lo) / levels, min=1e-8)
    z = torch.round(-lo / s)
    s_t = target_scale(s, method)
    z_t = torch.round(z.mean())
    r = s / s_t
    b = (-z * s) / r - (-z_t * s_t)
    return {"r": r, "b": b, "target_scale": s_t, "target_zero_point": z_t}


@torch.no_grad()
def apply_reparam(model: nn.Module, factors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Fold r and b into each LayerNorm and the Linears it feeds (in place); the function is unchanged."""
    for ln_name, ln, linears in layernorm_linear_pairs(model):
        f = factors.get(ln_name)
        if f is None:
            continue
        r, b = f["r"].to(ln.weight.dtype), f["b"].to(ln.weight.dtype)
        ln.weight.div_(r)
        ln.bias.div_(r).sub_(b)
        for _, lin in linears:
            lin.weight.mul_(r[None, :])
            extra = lin.weight @ b
            if lin.bias is None:
                lin.bias = nn.Parameter(extra)
            else:
                lin.bias.add_(extra)


def reparameterize(model: nn.Module, batches: list[torch.Tensor], bits: int, method: str) -> dict:
    """Measure post-LayerNorm channel ranges, then fold the channel-to-layer scales into ``model``."""
    pairs = layernorm_linear_pairs(model)
    if not pairs:
        return {}
    ranges = channel_ranges(model, [ln for _, ln, _ in pairs], batches)
    factors = {name: reparam_factors(lo, hi, bits, method) for (name, _, _), (lo, hi) in zip(pairs, ranges)}
    apply_reparam(model, factors)
    return factors
