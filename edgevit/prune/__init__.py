"""Pruning: n:m semi-structured sparsity, block pruning and structured (shrinking) pruning, one-shot
with calibration data: ``report = prune(model, cfg, images)`` changes ``model`` in place."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from edgevit.prune.config import BlockSparsity, NMSparsity, PruneConfig, PruneReconstruction, StructuredPruning

__all__ = ["BlockSparsity", "NMSparsity", "PruneConfig", "PruneReconstruction", "StructuredPruning", "prune",
           "sparsity_summary"]


def prune(model: nn.Module, cfg: PruneConfig, x: torch.Tensor,
          on_layer: Callable[[str], None] | None = None, gain: tuple[str, str] = ("weights", "")) -> dict:
    """Prune ``model`` (eval mode, in place) on calibration images ``x``; returns what was done. ``gain``
    (n:m with ``max_disagreement``): what the targets gain from a sparse layer, see prune.allocate."""
    from edgevit.prune.block import prune_blocks
    from edgevit.prune.nm import prune_nm
    from edgevit.prune.structured import prune_structured

    params_before = sum(p.numel() for p in model.parameters())
    model.eval()
    x = x[:cfg.images]
    dense = copy.deepcopy(model) if cfg.reconstruct else None
    with torch.no_grad():
        if cfg.method == "nm":
            report = prune_nm(model, cfg, x, on_layer, gain)
        elif cfg.method == "block":
            report = prune_blocks(model, cfg, x, on_layer)
        else:
            report = prune_structured(model, cfg, x, on_layer=on_layer)
        if dense is not None:
            report["reconstruction"] = _reconstruct(dense, model, cfg, report, x, on_layer)
    return {"method": cfg.method, "images": int(len(x)), "params_before": params_before} | report | \
        {"summary": sparsity_summary(model)}


def _reconstruct(dense: nn.Module, model: nn.Module, cfg: PruneConfig, report: dict, x: torch.Tensor,
                 on_layer: Callable[[str], None] | None) -> dict:
    from edgevit.costs import disagreement, outputs
    from edgevit.prune.reconstruct import reconstruct_pruned

    r = cfg.reconstruct
    layers = [rec["layer"] for rec in report["layers"]]
    ref = outputs(dense, x)
    before = disagreement(outputs(model, x), ref)
    blocks = reconstruct_pruned(dense, model, layers, x, r.iters, r.lr, r.batch, on_block=on_layer)
    return {"iters": r.iters, "lr": r.lr, "blocks": blocks, "disagreement_before": round(before, 3),
            "disagreement_after": round(disagreement(outputs(model, x), ref), 3)}


def sparsity_summary(model: nn.Module) -> dict:
    """Parameter count and the fraction of Linear/Conv weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"params": sum(p.numel() for p in model.parameters()), "weights": total, "zero_weights": zeros,
            "weight_sparsity": zeros / max(total, 1)}
