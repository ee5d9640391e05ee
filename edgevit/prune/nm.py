"""n:m semi-structured pruning (2:4 by default) of every eligible Linear / Conv2d layer, or of the layers
that pay for it (``max_disagreement``: see edgevit.prune.allocate; each chosen layer then takes the weights
it was measured with, pruned alone from the unpruned model's Hessian, so the allowance holds for what ships)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgevit.costs import disagreement, outputs
from edgevit.progress import phase
from edgevit.prune.allocate import GAINS, choose_layers, layer_macs
from edgevit.prune.config import PruneConfig
from edgevit.prune.layerwise import all_hessians, eligible_layers, sequential
from edgevit.prune.layout import from_matrix, nm_ineligible, nm_violations, to_matrix
from edgevit.prune.obs import nm_magnitude_mask, obs_prune


def _pruned_matrix(mat: torch.Tensor, h, nm, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    if nm.criterion == "magnitude":
        mask = nm_magnitude_mask(mat, nm.n, nm.m)
        return mat.masked_fill(mask, 0.0), mask
    return obs_prune(mat, h.value, nm.n, nm.m, damp=damp)


@torch.no_grad()
def trial_weights(model: nn.Module, layers: list[tuple[str, nn.Module]], cfg: PruneConfig,
                  x: torch.Tensor, on_layer: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Each layer's weight pruned alone (its Hessian from the unpruned model), in the module's own shape."""
    hs = all_hessians(model, layers, x) if cfg.nm.criterion == "sparsegpt" else {}
    trial = {}
    phase(on_layer, f"{cfg.nm.n}:{cfg.nm.m} weights of each layer alone", len(layers))
    for name, mod in layers:
        dense = mod.weight.detach().clone()
        from_matrix(mod, _pruned_matrix(to_matrix(mod), hs.get(name), cfg.nm, cfg.damp)[0])
        trial[name] = mod.weight.detach().clone()
        mod.weight.copy_(dense)
        if on_layer:
            on_layer(name)
    return trial


def prune_nm(model: nn.Module, cfg: PruneConfig, x: torch.Tensor,
             on_layer: Callable[[str], None] | None = None, gain: tuple[str, str] = ("weights", "")) -> dict:
    """Prune ``model`` in place to n:m along the input dimension; the layers TensorRT/CoreML could not run
    sparse, and with ``max_disagreement`` those that cost more than they gain, are left dense and listed
    with the reason. ``gain``: (``macs`` | ``weights``, why) for the allocation."""
    nm = cfg.nm
    layers, skipped = eligible_layers(model, cfg.exclude, x, lambda mod: nm_ineligible(mod, nm.m))
    allocation = trial = None
    if nm.max_disagreement is not None and layers:
        ref = outputs(model, x)
        gains = layer_macs(model, layers, x) if gain[0] == "macs" else {n: m.weight.numel() for n, m in layers}
        trial = trial_weights(model, layers, cfg, x, on_layer)
        chosen, records = choose_layers(model, layers, trial, gains, x, nm.max_disagreement, on_layer, ref)
        for r in records:
            if not r["pruned"]:
                skipped[r["layer"]] = (f"kept dense: pruned with the layers that gain more per cost, the model "
                                       f"disagrees on {r['disagreement_if_pruned']:.2f} % of the calibration images "
                                       f"(allowed {nm.max_disagreement:g} %)")
        layers = [(n, m) for n, m in layers if n in chosen]
        allocation = {"max_disagreement": nm.max_disagreement, "gain": gain[0], "gain_unit": GAINS[gain[0]],
                      "gain_why": gain[1], "images": int(len(x)), "layers": records,
                      "gain_kept": sum(r["gain"] for r in records if r["pruned"]),
                      "gain_total": sum(r["gain"] for r in records)}

    def one(name: str, mod: nn.Module, h) -> dict:
        if trial is not None:  # what the allocation measured is what ships
            mod.weight.copy_(trial[name])
            mask = to_matrix(mod) == 0
        else:
            new, mask = _pruned_matrix(to_matrix(mod), h, nm, cfg.damp)
            from_matrix(mod, new)
        assert nm_violations(to_matrix(mod), nm.n, nm.m) == 0
        return {"shape": list(mod.weight.shape), "params": mod.weight.numel(),
                "sparsity": float(mask.float().mean())}

    phase(on_layer, f"{nm.n}:{nm.m} weights", len(layers))
    records = sequential(model, layers, x, one, needs_data=nm.criterion == "sparsegpt" and trial is None,
                         on_layer=on_layer)
    if allocation is not None:
        allocation["disagreement"] = round(disagreement(outputs(model, x), ref), 3)
    return {"pattern": f"{nm.n}:{nm.m}", "criterion": nm.criterion, "layers": records, "skipped": skipped} | \
        ({"choice": allocation} if allocation else {})
