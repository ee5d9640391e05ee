"""Accuracy-budget fallback: keep the most quantization-sensitive layers in float until the top-1
drop on the evaluation images is within ``quantize.max_accuracy_drop``.

1. Sensitivity of each quantized Conv/Linear: how much the KL divergence between the float and the
   quantized model's predictions falls when that one layer (its input site and its weight) goes back
   to float, everything else quantized; measured on a few images (``search_images``).
2. Layers sorted by sensitivity; a binary search finds the fewest leading layers whose return to
   float brings the drop within budget (the drop is re-measured on the evaluation images for each
   candidate count, about log2(layers) evaluations).

The layers kept in float are removed from the plan (no Q/DQ, float weights in the ONNX), and listed
in ``plan.float_layers`` and the report.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.quant.plan import apply_plan
from edgevit.quant.sites import weighted_sites


def _logits(m: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([m(x[i:i + batch]) for i in range(0, len(x), batch)])


def _kl(fp: torch.Tensor, q: torch.Tensor) -> float:
    return float(F.kl_div(F.log_softmax(q, -1), F.log_softmax(fp, -1), log_target=True, reduction="batchmean"))


def without_layers(plan, layers: list[str]):
    """A copy of ``plan`` with the given layers (their input site and weight) left in float."""
    out = copy.deepcopy(plan)
    for name in layers:
        out.drop_weight(name)
        out.activations.pop(f"{name}.input", None)
    out.float_layers = list(plan.float_layers) + list(layers)
    return out


@torch.no_grad()
def layer_sensitivity(model: nn.Module, plan, fp_logits: torch.Tensor, x: torch.Tensor,
                      on_layer: Callable[[], None] | None = None) -> dict[str, float]:
    """KL(float || quantized) minus the same with one layer back in float, for every quantized layer.
    Each candidate is built from the plan without that layer (``without_layers``), so it is the model the
    fallback would ship: toggling the layer in place would miss what apply_plan folded into its bias
    (a post-GELU log quantizer's shift, the int32 bias grid)."""
    qm = apply_plan(model, plan)
    base = _kl(fp_logits, _logits(qm, x))
    out = {}
    for mod in weighted_sites(qm):
        if mod.weight_qparams is None and mod.input_quant.qparams is None:
            continue
        out[mod.site] = base - _kl(fp_logits, _logits(apply_plan(model, without_layers(plan, [mod.site])), x))
        if on_layer:
            on_layer()
    return out


def fit_budget(model: nn.Module, plan, x_eval: np.ndarray, labels: np.ndarray,
               x_search: torch.Tensor, max_drop: float, on_step: Callable[[], None] | None = None):
    """The plan with the fewest most-sensitive layers in float whose top-1 drop on ``x_eval`` is within
    ``max_drop`` points. Returns (plan, facts) where facts lists the sensitivities and each tried count."""
    xe = torch.from_numpy(x_eval)

    def top1(m) -> float:
        return float((_logits(m, xe).argmax(1).numpy() == labels).mean() * 100)

    fp = top1(model)
    qm = apply_plan(model, plan)
    quant = top1(qm)
    facts = {"budget_pts": max_drop, "fp32_top1": fp, "quantized_top1": quant, "tried": []}
    if fp - quant <= max_drop:
        return plan, facts | {"float_layers": [], "final_top1": quant}
    sens = layer_sensitivity(model, plan, _logits(model, x_search), x_search, on_step)
    order = sorted(sens, key=sens.get, reverse=True)
    facts["sensitivity"] = {k: sens[k] for k in order}
    lo, hi, best = 1, len(order), None
    while lo <= hi:  # fewest layers in float that meet the budget (drop is nearly monotone in the count)
        k = (lo + hi) // 2
        cand = without_layers(plan, order[:k])
        acc = top1(apply_plan(model, cand))
        facts["tried"].append({"float_layers": k, "top1": acc})
        if fp - acc <= max_drop:
            best, hi = (cand, acc), k - 1
        else:
            lo = k + 1
        if on_step:
            on_step()
    if best is None:  # even all in float misses it (cannot happen unless evaluation is noisy)
        best = (without_layers(plan, order), top1(model))
    chosen, acc = best
    return chosen, facts | {"float_layers": chosen.float_layers, "final_top1": acc,
                            "met": fp - acc <= max_drop}

