"""Regions: the units a placement puts in INT8 or leaves in float, as one piece each.

A region is the deepest enclosing unit of a quantized layer: an attention module (its family adapter
knows it), an MLP, or else the block a Sequential / ModuleList holds (a conv unit, a MobileViT
block's conv bridge around its transformer, a stem, a head). Every site of the plan (activation
quantizers and weights) belongs to exactly one region, and so does every ONNX node the exporter
named after a module path ("stages.2.1/transformer.0/attn/MatMul" is in "stages.2.1.transformer.0.attn").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from edgevit.models.families import attention_family


@dataclass
class Region:
    """One placement unit: its name (a module path), kind, and the plan entries it holds."""

    name: str
    kind: str  # attention | projection | mlp | bridge | stem | head | block
    weights: list[str] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)

    @property
    def sites(self) -> int:
        """How many quantizers the region holds (activation sites and weight tensors)."""
        return len(self.weights) + len(self.activations)


def _unit_kind(name: str, module: nn.Module) -> str | None:
    """The kind of unit ``module`` is (None: not a unit)."""
    if attention_family(module) is not None:
        return "attention"
    if "mlp" in type(module).__name__.lower():
        return "mlp"
    if name.rsplit(".", 1)[-1].isdigit():
        return "block"
    return None


def region_of(path: str, units: dict[str, str]) -> str:
    """The region of a module path: its deepest enclosing unit, else its top-level module."""
    parts = path.split(".")
    best = parts[0]
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in units:
            best = prefix
    return best


def plan_regions(model: nn.Module, plan) -> dict[str, Region]:
    """The regions of ``model`` that hold a quantizer of ``plan``, in model order."""
    units: dict[str, str] = {}
    for n, m in model.named_modules():
        if n and (kind := _unit_kind(n, m)) is not None:
            units[n] = kind
        family = attention_family(m)
        units.update({f"{n}.{child}": "projection" for child in (family.projection_units(m) if family else ())})
    out: dict[str, Region] = {}

    def get(path: str) -> Region:
        name = region_of(path, units)
        if name not in out:
            out[name] = Region(name, units.get(name) or _top_kind(name))
        return out[name]

    for w in plan.weights:
        get(w).weights.append(w)
    for a in plan.activations:
        get(a.rsplit(".", 1)[0]).activations.append(a)
    for r in out.values():  # a block enclosing attention regions is the conv bridge around them
        if r.kind == "block" and any(o.name.startswith(r.name + ".") and o.kind == "attention" for o in out.values()):
            r.kind = "bridge"
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def _top_kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("head", "classifier", "fc_norm", "final")):
        return "head"
    if any(k in low for k in ("stem", "patch_embed")):
        return "stem"
    return "block"


def node_region(node_name: str, regions) -> str | None:
    """The region of an ONNX node named after its module path (``a.b/c/Op``), or None when it is in none
    (nodes a runtime inserts, the graph's own input and output)."""
    parts = node_name.replace("/", ".").split(".")[:-1]
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in regions:
            return prefix
    return None


def without_regions(plan, regions: dict[str, Region], names) -> object:
    """A copy of ``plan`` with every quantizer of the named regions removed (they run in float)."""
    out = copy.deepcopy(plan)
    for name in names:
        r = regions[name]
        for w in r.weights:
            out.drop_weight(w)
        for a in r.activations:
            out.activations.pop(a, None)
    out.float_regions = list(getattr(plan, "float_regions", [])) + list(names)
    return out


def without_sites(plan, sites) -> object:
    """A copy of ``plan`` without the named activation quantizers and, for a layer input, without that
    layer's weight quantizer too (a layer whose input stays float runs in float: integer weights would
    only be dequantized at every call)."""
    out = copy.deepcopy(plan)
    for site in sites:
        out.activations.pop(site, None)
        layer, kind = site.rsplit(".", 1)
        if kind == "input":
            out.drop_weight(layer)
    out.float_sites = list(getattr(plan, "float_sites", [])) + list(sites)
    return out
