"""Which LayerNorms may run in FP16: measured on images, then kept in FP32 in every FP16 artifact.

A LayerNorm sums the squared deviations of a row before it divides; an FP16 accumulator (or an FP16
square) holds at most 65504. Transformers' residual streams grow outlier channels (hundreds on
ImageNet ViTs), and TensorRT warns about exactly this ("layernorm after self-attention in FP16 may
overflow"). The policy here: run the model on images, record per LayerNorm the largest input and
the largest row sum of squared deviations; if any exceeds FP16's range, the FP16 artifacts
(ONNX FP16, CoreML FP16, TensorRT FP16/INT8 engines) keep their LayerNorms in FP32. Without images
there is nothing to measure, so LayerNorms stay in FP32 (safe; they are a small share of the time).
"""
from __future__ import annotations

import torch
from torch import nn

FP16_MAX = 65504.0


def _reduced_dims(m: nn.LayerNorm, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    if x.dim() == 4 and type(m).__name__ == "LayerNorm2d":  # timm's channels-first LayerNorm
        x = x.permute(0, 2, 3, 1)
    return x, tuple(range(-len(m.normalized_shape), 0))


@torch.no_grad()
def layernorm_ranges(model: nn.Module, images: torch.Tensor, batch: int = 64) -> dict[str, dict]:
    """Per LayerNorm (module name): the largest |input| and the largest row sum of squared
    deviations from the row mean, over ``images``."""
    stats: dict[str, dict] = {}

    def hook(name: str, m: nn.LayerNorm, args) -> None:
        x, dims = _reduced_dims(m, args[0].float())
        dev = x - x.mean(dim=dims, keepdim=True)
        s = stats.setdefault(name, {"max_abs": 0.0, "max_sum_sq": 0.0})
        s["max_abs"] = max(s["max_abs"], float(x.abs().max()))
        s["max_sum_sq"] = max(s["max_sum_sq"], float(dev.square().sum(dim=dims).max()))

    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: hook(name, m, a))
             for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    try:
        was_training = model.training
        model.eval()
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return stats


def layernorm_policy(model: nn.Module, images: torch.Tensor | None, mode: str = "auto") -> dict:
    """Whether FP16 artifacts keep LayerNorm in FP32 (``keep_fp32``), and why, for the report.
    ``mode``: auto (measure on ``images``), fp32 (always) or fp16 (never)."""
    count = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    if count == 0:
        return {"keep_fp32": False, "mode": mode, "layernorms": 0, "reason": "the model has no LayerNorm"}
    if mode != "auto":
        return {"keep_fp32": mode == "fp32", "mode": mode, "layernorms": count, "reason": f"fp16_layernorm: {mode}"}
    if images is None:
        return {"keep_fp32": True, "mode": mode, "layernorms": count,
                "reason": "no images to measure LayerNorm ranges on; kept in FP32 to be safe"}
    stats = layernorm_ranges(model, images)
    worst = max(stats, key=lambda n: stats[n]["max_sum_sq"])
    over = sorted(n for n, s in stats.items() if max(s["max_abs"], s["max_sum_sq"]) > FP16_MAX)
    w = stats[worst]
    reason = (f"{len(over)} of {count} LayerNorms exceed FP16's range (worst {worst}: row sum of squared "
              f"deviations {w['max_sum_sq']:.3g}, |x| up to {w['max_abs']:.3g}; FP16 max 65504)" if over else
              f"largest row sum of squared deviations {w['max_sum_sq']:.3g} ({worst}), |x| up to "
              f"{max(s['max_abs'] for s in stats.values()):.3g}: within FP16's 65504")
    return {"keep_fp32": bool(over), "mode": mode, "layernorms": count, "overflowing": over,
            "images": int(len(images)), "reason": reason}
