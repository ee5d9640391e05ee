"""n:m semi-structured pruning (2:4 by default) of every eligible Linear / Conv2d layer."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgevit.prune.config import PruneConfig
from edgevit.prune.layerwise import eligible_layers, sequential
from edgevit.prune.layout import from_matrix, nm_ineligible, nm_violations, to_matrix
from edgevit.prune.obs import nm_magnitude_mask, obs_prune


def prune_nm(model: nn.Module, cfg: PruneConfig, x: torch.Tensor,
             on_layer: Callable[[str], None] | None = None) -> dict:
    """Prune ``model`` in place to n:m along the input dimension; the layers TensorRT/CoreML could not run
    sparse are left dense and listed with the reason."""
    nm = cfg.nm
    layers, skipped = eligible_layers(model, cfg.exclude, x, lambda mod: nm_ineligible(mod, nm.m))

    def one(name: str, mod: nn.Module, h) -> dict:
        mat = to_matrix(mod)
        if nm.criterion == "magnitude":
            mask = nm_magnitude_mask(mat, nm.n, nm.m)
            new = mat.masked_fill(mask, 0.0)
        else:
            new, mask = obs_prune(mat, h.value, nm.n, nm.m, damp=cfg.damp)
        assert nm_violations(new, nm.n, nm.m) == 0
        from_matrix(mod, new)
        return {"shape": list(mod.weight.shape), "params": mod.weight.numel(),
                "sparsity": float(mask.float().mean())}

    records = sequential(model, layers, x, one, needs_data=nm.criterion == "sparsegpt", on_layer=on_layer)
    return {"pattern": f"{nm.n}:{nm.m}", "criterion": nm.criterion, "layers": records, "skipped": skipped}
