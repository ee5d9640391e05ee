"""Block pruning (LPViT, post-training): blocks of Linear / 1x1-conv weights zeroed, with the per-layer
sparsity allocated under a global budget from measured output distortion.

1. Score every block of every prunable layer: the sum over the block of w^2 (magnitude) or of the OBS
   saliency w^2 / [H^-1]_jj, H the Hessian of the layer's calibration inputs.
2. Distortion curves: for each layer alone and each sparsity level, zero that fraction of its
   lowest-scored blocks and measure the mean squared change of the model's logits on the calibration
   images (``allocation: distortion``).
3. Allocation: per-layer levels that minimize the summed distortion with at least ``sparsity`` of the
   prunable weights removed (Lagrangian relaxation: each layer takes argmin D_l(s) - lambda s n_l, lambda
   bisected until the budget is met). LPViT constrains FLOPs with a power term; at equal tokens per
   layer the weight count is the FLOP count.
4. Layer by layer in execution order, on the model pruned so far: recompute the scores, zero the
   allocated blocks and (obs) let the kept weights of the layer compensate (SparseGPT's sweep with a
   fixed mask).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from edgevit.progress import phase
from edgevit.prune.config import BlockSparsity, PruneConfig
from edgevit.prune.layerwise import all_hessians, eligible_layers, sequential
from edgevit.prune.layout import from_matrix, to_matrix
from edgevit.prune.obs import inverse_diag, obs_prune

LEVELS = [i / 10 for i in range(10)]


def block_shape(block, shape: tuple[int, int]) -> tuple[int, int]:
    """[rows, cols] of a block for a weight of ``shape`` (row: whole output units; column: whole inputs)."""
    if block == "row":
        return 1, shape[1]
    if block == "column":
        return shape[0], 1
    return int(block[0]), int(block[1])


def block_ineligible(mod: nn.Module, block) -> str | None:
    if isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) != (1, 1):
        return f"{mod.kernel_size[0]}x{mod.kernel_size[1]} convolution: block pruning takes Linear and 1x1 conv layers"
    out, cin = mod.weight.shape[:2]
    bo, bi = block_shape(block, (out, cin))
    if out % bo or cin % bi:
        return f"shape {out}x{cin} is not a multiple of the {bo}x{bi} block"
    return None


def block_scores(mat: torch.Tensor, bshape: tuple[int, int], inv_diag: torch.Tensor | None) -> torch.Tensor:
    """Score of every block: [out / rows, in / cols]."""
    sal = mat ** 2 if inv_diag is None else mat ** 2 / inv_diag.unsqueeze(0)
    bo, bi = bshape
    out, cin = mat.shape
    return sal.reshape(out // bo, bo, cin // bi, bi).sum(dim=(1, 3))


def block_mask(scores: torch.Tensor, bshape: tuple[int, int], sparsity: float) -> torch.Tensor:
    """True on the weights of the round(sparsity * blocks) lowest-scored blocks."""
    k = int(round(sparsity * scores.numel()))
    drop = torch.zeros(scores.numel(), dtype=torch.bool)
    if k:
        drop[scores.reshape(-1).argsort()[:k]] = True
    drop = drop.view_as(scores)
    return drop.repeat_interleave(bshape[0], 0).repeat_interleave(bshape[1], 1)


def allocate(curves: dict[str, list[float]], sizes: dict[str, int], levels: list[float], target: float) -> dict[str, float]:
    """Per-layer sparsity levels minimizing the summed distortion with >= ``target`` of all weights removed."""
    total = sum(sizes.values())

    def pick(lam: float) -> dict[str, float]:
        return {n: levels[min(range(len(levels)), key=lambda i: c[i] - lam * levels[i] * sizes[n])]
                for n, c in curves.items()}

    def removed(choice: dict[str, float]) -> float:
        return sum(choice[n] * sizes[n] for n in choice) / total

    lo, hi = 0.0, 1.0
    while removed(pick(hi)) < target and hi < 1e12:
        hi *= 4
    for _ in range(60):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1024
        if removed(pick(mid)) >= target:
            hi = mid
        else:
            lo = mid
    return pick(hi)


@torch.no_grad()
def distortion_curves(model: nn.Module, layers: list[tuple[str, nn.Module]], scores: dict[str, torch.Tensor],
                      bshapes: dict[str, tuple[int, int]], levels: list[float], x: torch.Tensor,
                      on_layer: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Mean squared logit change when each layer alone loses each level's fraction of its blocks."""
    ref = model(x)
    curves = {}
    phase(on_layer, "distortion of each layer", len(layers))
    for name, mod in layers:
        dense = mod.weight.detach().clone()
        curve = []
        for s in levels:
            mask = block_mask(scores[name], bshapes[name], s)
            mat = to_matrix(mod).masked_fill(mask, 0.0)
            from_matrix(mod, mat)
            curve.append(float(((model(x) - ref) ** 2).mean()))
            mod.weight.copy_(dense)
        curves[name] = [max(curve[:i + 1]) for i in range(len(curve))]  # more pruning never helps
        if on_layer:
            on_layer(name)
    return curves


def prune_blocks(model: nn.Module, cfg: PruneConfig, x: torch.Tensor,
                 on_layer: Callable[[str], None] | None = None) -> dict:
    """Block-prune ``model`` in place; returns the allocation and per-layer records."""
    b: BlockSparsity = cfg.block
    layers, skipped = eligible_layers(model, cfg.exclude, x, lambda mod: block_ineligible(mod, b.block))
    if not layers:
        raise ValueError("no layer can be block-pruned (Linear or 1x1 conv whose shape the block divides)")
    bshapes = {n: block_shape(b.block, tuple(m.weight.shape[:2])) for n, m in layers}
    sizes = {n: m.weight.numel() for n, m in layers}
    levels = [s for s in LEVELS if b.min_layer_sparsity <= s <= b.max_layer_sparsity] or [b.min_layer_sparsity]
    if levels[0] > b.min_layer_sparsity:
        levels.insert(0, b.min_layer_sparsity)
    if b.allocation == "uniform":
        alloc = {n: b.sparsity for n, _ in layers}
        curves = None
    else:
        hs = all_hessians(model, layers, x) if b.criterion == "obs" else {}
        scores = {n: block_scores(to_matrix(m), bshapes[n], inverse_diag(hs[n].value, cfg.damp) if hs else None)
                  for n, m in layers}
        curves = distortion_curves(model, layers, scores, bshapes, levels, x[:64], on_layer)
        alloc = allocate(curves, sizes, levels, b.sparsity)

    def one(name: str, mod: nn.Module, h) -> dict:
        mat = to_matrix(mod)
        inv = inverse_diag(h.value, cfg.damp) if h is not None else None
        mask = block_mask(block_scores(mat, bshapes[name], inv), bshapes[name], alloc[name])
        new = obs_prune(mat, h.value, mask=mask, damp=cfg.damp)[0] if h is not None else mat.masked_fill(mask, 0.0)
        from_matrix(mod, new)
        return {"shape": list(mod.weight.shape), "params": sizes[name], "block": list(bshapes[name]),
                "sparsity": float(mask.float().mean()),
                "distortion_curve": curves[name] if curves else None}

    phase(on_layer, "block-pruned weights", len(layers))
    records = sequential(model, layers, x, one, needs_data=b.criterion == "obs", on_layer=on_layer)
    achieved = sum(r["sparsity"] * r["params"] for r in records) / sum(sizes.values())
    return {"block": b.block, "criterion": b.criterion, "allocation": b.allocation, "target": b.sparsity,
            "achieved": achieved, "levels": levels, "layers": records, "skipped": skipped}
