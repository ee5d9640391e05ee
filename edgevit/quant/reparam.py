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

The channel statistic (s_c, z_c): ``minmax`` is each channel's min and max over the calibration images
with 0 forced into the range; ``percentile`` is RepQ-ViT's: of the (1 - p, p) percentile pairs for
p = 0.999, 0.9999, 0.99999, the one whose asymmetric quantizer has the lowest squared error on the
channel, with a free zero point (narrower scales on one-sided channels).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

MAD_K = 3.0
REPQ_PERCENTILES = (0.999, 0.9999, 0.99999)  # RepQ-ViT's candidate ranges (channel ranges, log-sqrt2 scale)


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
def _each_output(model: nn.Module, norms: list[nn.LayerNorm], batches: Iterable[torch.Tensor], seen) -> None:
    """Run ``batches`` through ``model``, handing ``seen(i, rows)`` each output of ``norms[i]`` as (rows, channels)."""
    handles = [n.register_forward_hook(lambda _m, _inp, out, i=i: seen(i, out.detach().reshape(-1, out.shape[-1])))
               for i, n in enumerate(norms)]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()


def channel_ranges(model: nn.Module, norms: list[nn.LayerNorm], batches: Iterable[torch.Tensor]) -> list[tuple]:
    """Per-channel (min, max) of each LayerNorm's output over the calibration batches."""
    lo: list = [None] * len(norms)
    hi: list = [None] * len(norms)

    def seen(i, flat):
        mn, mx = flat.min(0).values, flat.max(0).values
        lo[i] = mn if lo[i] is None else torch.minimum(lo[i], mn)
        hi[i] = mx if hi[i] is None else torch.maximum(hi[i], mx)

    _each_output(model, norms, batches, seen)
    return list(zip(lo, hi))


def channel_values(model: nn.Module, norms: list[nn.LayerNorm], batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Each LayerNorm's outputs over the calibration batches, as (values, channels)."""
    rows: list[list[torch.Tensor]] = [[] for _ in norms]
    _each_output(model, norms, batches, lambda i, flat: rows[i].append(flat))
    return [torch.cat(v) for v in rows]


def percentile_ranges(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RepQ-ViT's channel ranges: per channel of ``values`` (values, channels), the (1 - p, p) percentile
    pair with the lowest squared error of its asymmetric ``bits``-bit quantizer, p in REPQ_PERCENTILES."""
    levels = 2 ** bits - 1
    x = values.float()
    step = max(1, (2 ** 24 - 1) // max(len(x), 1))  # torch.quantile's element limit, a few channels at a time
    q = torch.tensor([1 - p for p in REPQ_PERCENTILES] + list(REPQ_PERCENTILES))
    bounds = torch.cat([torch.quantile(x[:, c:c + step], q, dim=0) for c in range(0, x.shape[1], step)], dim=1)
    k = len(REPQ_PERCENTILES)
    best_err = torch.full((x.shape[1],), float("inf"))
    lo, hi = bounds[0].clone(), bounds[k].clone()
    for i in range(k):
        mn, mx = bounds[i], bounds[k + i]
        s = torch.clamp((mx - mn) / levels, min=1e-8)
        z = torch.round(-mn / s)
        err = (((torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s - x) ** 2).mean(0)
        better = err < best_err
        best_err, lo, hi = torch.where(better, err, best_err), torch.where(better, mn, lo), torch.where(better, mx, hi)
    return lo, hi


def reparam_factors(lo: torch.Tensor, hi: torch.Tensor, bits: int, method: str,
                    free_zero_point: bool = False) -> dict[str, torch.Tensor]:
    """r_c and b_c for one LayerNorm output from its channel ranges (asymmetric, ``bits`` bits); without
    ``free_zero_point`` every range is widened to hold 0."""
    levels = 2 ** bits - 1
    if not free_zero_point:
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


def reparameterize(model: nn.Module, batches: list[torch.Tensor], bits: int, method: str,
                   statistic: str = "minmax") -> dict:
    """Measure post-LayerNorm channel ranges (``statistic``: minmax or percentile, see the module
    docstring), then fold the channel-to-layer scales into ``model``."""
    pairs = layernorm_linear_pairs(model)
    if not pairs:
        return {}
    norms = [ln for _, ln, _ in pairs]
    if statistic == "percentile":
        ranges = [percentile_ranges(v, bits) for v in channel_values(model, norms, batches)]
    else:
        ranges = channel_ranges(model, norms, batches)
    factors = {name: reparam_factors(lo, hi, bits, method, free_zero_point=statistic == "percentile")
               for (name, _, _), (lo, hi) in zip(pairs, ranges)}
    apply_reparam(model, factors)
    return factors
