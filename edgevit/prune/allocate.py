"""Which layers pay for being pruned: each layer's gain per unit of cost, measured on calibration images,
then layers taken greedily by that ratio while the pruned model stays within an allowed disagreement.

- cost of a layer: the KL divergence of the model's class probabilities from the unpruned model's when
  that layer alone is pruned (its trial weights swapped in), on the calibration images;
- gain of a layer: what the deployment targets get from it: multiply-accumulates per image (TensorRT's
  sparse kernels skip half the math of a 2:4 layer) or weights (CoreML stores the pruned tensors sparse);
- allocation: layers in order of gain / cost; each one is kept pruned only if the model with it and every
  layer taken before it disagrees in top-1 with the unpruned model on at most ``max_disagreement`` percent
  of the calibration images (which bounds the top-1 drop there: see edgevit.costs).

LPViT (Xu et al., 2024) allocates per-layer sparsity from measured sensitivity and hardware gain; this is
its greedy form for a fixed pattern (a layer is n:m sparse or dense).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgevit.costs import disagreement, kl_cost, outputs
from edgevit.progress import phase

GAINS = {"macs": "multiply-accumulates per image", "weights": "weights"}


def sparse_gain(exports: list) -> tuple[str, str]:
    """What the recipe's export targets gain from n:m sparse layers: ``macs`` when a TensorRT artifact can
    use sparse kernels, else ``weights`` (CoreML sparse storage), with a sentence saying why."""
    if any(getattr(e, "format", None) == "tensorrt" and getattr(e, "sparse", False)
           or getattr(e, "target", None) == "tensorrt" for e in exports):
        return "macs", ("TensorRT's 2:4 sparse kernels (kSPARSE_WEIGHTS, trtexec --sparsity=enable) skip the "
                        "pruned multiply-accumulates")
    if any(getattr(e, "compression", None) in ("sparse", "w8-sparse") for e in exports):
        return "weights", "CoreML stores the pruned weights sparse"
    return "weights", ("no export runs 2:4 sparse (ONNX Runtime and OpenVINO run the pruned weights dense): "
                       "the gain counted is the weights zeroed, which only compression tools use")


@torch.no_grad()
def layer_macs(model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per image of each listed Linear / Conv2d layer, measured on one image."""
    macs: dict[str, int] = {}

    def hook(name):
        def fn(mod, args, out):
            macs[name] = macs.get(name, 0) + out.numel() // mod.weight.shape[0] * mod.weight.numel()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return {n: macs.get(n, 0) for n, _ in layers}


@torch.no_grad()
def choose_layers(model: nn.Module, layers: list[tuple[str, nn.Module]], trial: dict[str, torch.Tensor],
                  gains: dict[str, int], x: torch.Tensor, max_disagreement: float,
                  on_layer: Callable[[str], None] | None = None,
                  ref: torch.Tensor | None = None) -> tuple[list[str], list[dict]]:
    """The layers to prune (execution order) and a record per layer: its cost, gain, their ratio and whether
    it was taken. ``trial`` holds each layer's pruned weight (same shape as ``weight``); ``ref``: the model's
    logits on ``x`` when already computed; ``model`` is left unchanged."""
    dense = {n: m.weight.detach().clone() for n, m in layers}
    ref = outputs(model, x) if ref is None else ref
    cost = {}
    phase(on_layer, "cost of each layer pruned alone", len(layers))
    for name, mod in layers:
        mod.weight.copy_(trial[name])
        cost[name] = kl_cost(outputs(model, x), ref)
        mod.weight.copy_(dense[name])
        if on_layer:
            on_layer(name)
    order = sorted(layers, key=lambda nl: (-gains[nl[0]] / max(cost[nl[0]], 1e-9), nl[0]))
    taken, records = set(), {}
    phase(on_layer, "layers taken by gain per cost", len(layers))
    try:
        for name, mod in order:
            mod.weight.copy_(trial[name])
            dis = disagreement(outputs(model, x), ref)
            ok = dis <= max_disagreement and gains[name] > 0
            if ok:
                taken.add(name)
            else:
                mod.weight.copy_(dense[name])
            records[name] = {"cost_kl": cost[name], "gain": int(gains[name]),
                             "gain_per_cost": gains[name] / max(cost[name], 1e-9), "pruned": ok,
                             "disagreement_if_pruned": round(dis, 3)}
            if on_layer:
                on_layer(name)
    finally:
        for name, mod in layers:
            mod.weight.copy_(dense[name])
    return [n for n, _ in layers if n in taken], [{"layer": n} | records[n] for n, _ in layers]
