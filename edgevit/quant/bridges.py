"""Bridge blocks of hybrid backbones: where a conv (grid) trunk hands over to attention (tokens) and back.

Q-HyViT (Lee et al., 2023) found that hybrids break ViT PTQ mostly at these transitions, and quantizes
the layers inside them against the error of the whole block's output. Detection follows the data:

1. One forward pass records every Conv2d/Linear in execution order with its *domain*: ``grid`` for
   a layer on a 4-D (B, C, H, W) tensor outside any attention module, ``tokens`` for a layer on
   (B, N, C) tokens or inside an attention module (EfficientFormerV2's Attention2d runs its q/k/v
   as 1x1 convs on the grid, but it is attention). Layers on 2-D inputs (classifier heads) are
   neither and end the search.
2. Each change of domain between consecutive layers (grid -> tokens, tokens -> grid) is a
   transition. Its unit is the smallest module that holds both layers; when that module is a plain
   container (Sequential, ModuleList, a stage, the model itself) the unit is the run of its
   children from the one holding the first layer to the one holding the second.
3. Units that overlap (the way in and the way out of one MobileViT block) are merged.

MobileViT v1/v2 give 3 bridges (the MobileViT blocks), EfficientFormer L1 one (the meta blocks around
Flat), LeViT one (stem -> first stage), as Q-HyViT counts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass
class Bridge:
    """Modules ``start`` .. ``end`` (execution order) around one or more transitions; its output is
    ``end``'s output, and ``layers`` are the Conv2d/Linear layers run in between."""

    start: str
    end: str
    layers: list[str] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)  # "grid->tokens at <layer>", ...

    @property
    def name(self) -> str:
        return self.start if self.start == self.end else f"{self.start}..{self.end}"

    def to_dict(self) -> dict:
        return {"name": self.name, "output": self.end, "layers": len(self.layers), "transitions": self.transitions}


def _is_attention(m: nn.Module) -> bool:
    name = type(m).__name__
    return "Attention" in name and not isinstance(m, (nn.Conv2d, nn.Linear))


def _inner(m: nn.Module) -> nn.Module:
    """The float layer behind a quantization wrapper (sites.QuantLinear / QuantConv2d)."""
    return getattr(m, "inner", m)


@torch.no_grad()
def layer_domains(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(layer name, ``grid`` | ``tokens`` | ``vector``) for every Conv2d/Linear, in execution order."""
    attention = [name for name, m in model.named_modules() if _is_attention(m)]
    order: list[tuple[str, str]] = []
    handles = []

    def hook(name: str):
        def fn(_m, args):
            if any(name.startswith(f"{a}.") for a in attention):
                order.append((name, "tokens"))
            else:
                nd = args[0].dim()
                order.append((name, "grid" if nd == 4 else "tokens" if nd == 3 else "vector"))
        return fn

    seen = set()
    for name, m in model.named_modules():
        leaf = _inner(m)
        if isinstance(leaf, (nn.Conv2d, nn.Linear)) and id(leaf) not in seen:
            seen.add(id(leaf))
            handles.append(m.register_forward_pre_hook(hook(name)))
    try:
        was = model.training
        model.eval()
        model(x)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return order


def is_container(m: nn.Module, name: str) -> bool:
    """Modules that only sequence their children (their own forward adds no computation we can name)."""
    return name == "" or isinstance(m, CONTAINERS) or type(m).__name__.endswith("Stage")


def holding(modules: dict, parent: str, layer: str) -> str:
    """The child of ``parent`` that holds ``layer``, descending through plain containers."""
    while True:
        rest = layer[len(parent) + 1:] if parent else layer
        head = rest.split(".", 1)[0]
        child = f"{parent}.{head}" if parent else head
        if child == layer or not is_container(modules[child], child):
            return child
        parent = child


def _inside(layer: str, module: str) -> bool:
    return layer == module or layer.startswith(f"{module}.")


def find_bridges(model: nn.Module, x: torch.Tensor) -> list[Bridge]:
    """The bridge blocks of ``model`` (see the module docstring) found on input ``x``."""
    order = layer_domains(model, x)
    names = [n for n, _ in order]
    modules = dict(model.named_modules())
    units: list[tuple[int, int, Bridge]] = []
    for (a, da), (b, db) in zip(order, order[1:]):
        if da == db or "vector" in (da, db):
            continue
        common = []
        for u, v in zip(a.split("."), b.split(".")):
            if u != v:
                break
            common.append(u)
        parent = ".".join(common)
        if is_container(modules[parent], parent):
            start, end = holding(modules, parent, a), holding(modules, parent, b)
        else:
            start = end = parent
        i0 = next(i for i, n in enumerate(names) if _inside(n, start))
        i1 = max(i for i, n in enumerate(names) if _inside(n, end))
        units.append((i0, i1, Bridge(start, end, transitions=[f"{da}->{db} at {b.replace('.inner', '')}"])))
    merged: list[list] = []
    for i0, i1, u in sorted(units, key=lambda t: t[0]):
        if merged and i0 <= merged[-1][1]:  # overlapping spans: one unit
            last = merged[-1]
            if i1 > last[1]:
                last[1], last[2].end = i1, u.end
            last[2].transitions += u.transitions
        else:
            merged.append([i0, i1, u])
    for i0, i1, u in merged:
        u.layers = names[i0:i1 + 1]
    return [u for _, _, u in merged]
