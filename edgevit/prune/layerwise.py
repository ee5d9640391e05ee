"""Layer-by-layer one-shot pruning: each layer sees the inputs the already-pruned layers before it
produce (SparseGPT's sequential mode), so errors made early are compensated later."""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch
from torch import nn

from edgevit.prune.layout import input_columns, prunable
from edgevit.prune.obs import Hessian
from edgevit.quant.partial import execution_order, run_until, stream_inputs


def candidate_layers(model: nn.Module, exclude: list[str], x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Linear / ungrouped Conv2d layers not matched by ``exclude`` that run on ``x``, in execution order."""
    named = {n: m for n, m in model.named_modules()
             if prunable(m) and not any(fnmatch.fnmatch(n, p) for p in exclude)}
    return [(n, named[n]) for n in execution_order(model, named, x[:1])]


def eligible_layers(model: nn.Module, exclude: list[str], x: torch.Tensor,
                    ineligible: Callable[[nn.Module], str | None]) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The candidate layers a method can prune, and the others with the reason ``ineligible`` gives."""
    layers, skipped = [], {}
    for name, mod in candidate_layers(model, exclude, x):
        why = ineligible(mod)
        if why:
            skipped[name] = why
        else:
            layers.append((name, mod))
    return layers, skipped


@torch.no_grad()
def layer_hessian(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch: int = 32) -> Hessian:
    """H = X^T X / n of ``layer``'s inputs (pruning-order columns) when ``model`` runs on ``x``."""
    h = None
    for i in range(0, len(x), batch):
        inp, _ = run_until(model, layer, x[i:i + batch])
        cols = input_columns(layer, inp)
        h = h or Hessian(cols.shape[1])
        h.add(cols)
    return h


@torch.no_grad()
def all_hessians(model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor,
                 batch: int = 32) -> dict[str, Hessian]:
    """Every listed layer's input Hessian from one pass of the (unchanged) model."""
    hs: dict[str, Hessian] = {}
    mods = dict(layers)

    def add(name, inp):
        cols = input_columns(mods[name], inp)
        hs.setdefault(name, Hessian(cols.shape[1])).add(cols)

    stream_inputs(model, mods, x, add, batch)
    return hs


def sequential(model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor,
               prune_layer: Callable[[str, nn.Module, Hessian | None], dict],
               needs_data: bool = True, on_layer: Callable[[str], None] | None = None) -> list[dict]:
    """Prune ``layers`` one after another with ``prune_layer(name, module, hessian)``; the Hessian of each
    layer is measured on the model as pruned so far. Returns the per-layer records."""
    records = []
    for name, layer in layers:
        h = layer_hessian(model, layer, x) if needs_data else None
        records.append({"layer": name} | prune_layer(name, layer, h))
        if on_layer:
            on_layer(name)
    return records
