"""Per-layer search of activation granularity and scheme (Q-HyViT, Lee et al., 2023).

Hybrid backbones have activations whose channel ranges differ by orders of magnitude (depthwise
convs, the convs around bridge blocks), and tensors that are entirely positive. For every Conv/Linear
input site this search tries each candidate quantizer of the space

    granularity in {tensor, channel}  x  scheme in {asymmetric (uint8), symmetric (int8, zp 0)}

with MSE-searched ranges, and keeps the one with the smallest output error:

* a layer outside any bridge block: the error of the layer's own output, the layer fed with the
  float activation and the candidate's quantized copy of it;
* a layer inside a bridge block (see ``bridges.py``): the error of the bridge block's output, with
  the layers before the block in float and the block's other sites quantized as currently chosen
  (sites are visited in execution order, so each choice sees the previous ones).

With ``hessian``, each output element's squared error is weighted by the squared gradient of
KL(softmax(quantized logits) || softmax(float logits)) with respect to that output, measured once on
the initially calibrated model (Q-HyViT's objective E[dO^T diag((dL/dO)^2) dO]).

Channel-wise ranges always contain 0, so an all-positive channel gets zero point qmin and never
overflows (Q-HyViT's zero-point overflow at bridge blocks); zero-range channels get the smallest
positive scale. Channel-wise activations deploy as per-axis QuantizeLinear/DequantizeLinear; ONNX
Runtime runs the consuming layer in float, TensorRT's lowering makes them per tensor again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.quant.bridges import Bridge, find_bridges
from edgevit.quant.observers import ChannelRangeObserver, HistogramObserver
from edgevit.quant.partial import run_until
from edgevit.quant.search import activation_range
from edgevit.quant.sites import act_sites, fake_quant_activation, set_mode, weighted_sites
from edgevit.quant.uniform import QParams, qparams_from_range

SEARCHED_KINDS = ("conv_input", "linear_input", "post_act")


def candidates(observer: HistogramObserver, channels: ChannelRangeObserver | None, bits: int,
               granularities, schemes, method: str = "mse", percentile: float = 99.99) -> dict[str, QParams]:
    """Candidate quantizers of one site from its calibration statistics: per tensor, the range
    ``method`` picks on the histogram; per channel, each channel's min-max (clipping channels one by one
    on a few search images over-fits them). Keys: ``"tensor/asymmetric"``, ``"channel/symmetric"``..."""
    out = {}
    for symmetric in schemes:
        scheme = "symmetric" if symmetric else "asymmetric"
        for g in granularities:
            if g == "tensor":
                lo, hi = activation_range(observer, method, bits, symmetric, percentile)
                out[f"tensor/{scheme}"] = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
            elif channels is not None and channels.min is not None and channels.min.numel() > 1:
                out[f"channel/{scheme}"] = qparams_from_range(channels.min, channels.max, bits, symmetric,
                                                              axis=channels.axis)
    return out


@torch.no_grad()
def _capture(qm: nn.Module, sites: list, x: torch.Tensor) -> None:
    """Float run of the whole model keeping each given site's input (``site.samples``)."""
    set_mode(qm, "off")
    for s in sites:
        s.mode, s.samples = "capture", []
    qm(x)
    for s in sites:
        s.mode = "off"


def _output_grads(qm: nn.Module, fp_logits: torch.Tensor, x: torch.Tensor, targets: dict[str, nn.Module]) -> dict:
    """Squared gradients of KL(quantized || float) w.r.t. the outputs of the ``targets`` modules."""
    outs: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(_m, _i, out):
            out.retain_grad()
            outs[name] = out
        return fn

    handles = [m.register_forward_hook(keep(n)) for n, m in targets.items()]
    set_mode(qm, "quant")
    try:
        with torch.enable_grad():
            logits = qm(x)
            loss = F.kl_div(F.log_softmax(fp_logits, -1), F.log_softmax(logits, -1), log_target=True,
                            reduction="batchmean")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        qm.zero_grad(set_to_none=True)
    return {n: (o.grad.detach() ** 2 if o.grad is not None else None) for n, o in outs.items()}


def _weighted_err(out: torch.Tensor, ref: torch.Tensor, w: torch.Tensor | None) -> float:
    d = (out - ref) ** 2
    return float((d * (w + 1e-12)).sum() if w is not None else d.sum())


def search_granularity(qm: nn.Module, plan, x: torch.Tensor, observers: dict, granularities=("tensor", "channel"),
                       schemes=(False, True), bridges: bool = True, hessian: bool = False) -> list[Bridge]:
    """Choose each Conv/Linear input quantizer of ``plan`` (in place) on the search images ``x``.

    ``qm`` is ``apply_plan(model, plan)``; its sites are updated with the choices too. ``observers``
    maps each site to its calibration (HistogramObserver, ChannelRangeObserver). Returns the bridge
    blocks used as objectives."""
    layers = [mod for mod in weighted_sites(qm)
              if mod.input_quant.kind in SEARCHED_KINDS and mod.input_quant.site in plan.activations
              and plan.activations[mod.input_quant.site].quantizer is None
              and plan.activations[mod.input_quant.site].search != "depthwise-channel"]
    found = find_bridges(qm, x[:1]) if bridges else []
    bridge_of = {layer: b for b in found for layer in b.layers}
    modules = dict(qm.named_modules())
    path = {id(m): n for n, m in modules.items()}  # module paths (".inner" inside wrapped attention)
    fp_logits, order = _float_run(qm, x)
    members = {b.end: _bridge_sites(b, order) for b in found}
    _capture(qm, [mod.input_quant for mod in layers], x)
    grads = {}
    if hessian:
        grads = _output_grads(qm, fp_logits, x, {mod.site: mod for mod in layers} |
                              {b.end: modules[b.end] for b in found})
    set_mode(qm, "off")  # the references: the float model's bridge outputs
    bridge_ref = {b.end: run_until(qm, modules[b.end], x)[1] for b in found}
    a = plan.config.activations
    method = "mse" if a.method == "fpcs" else a.method  # fpcs applies to Linear inputs, searched before
    for mod in layers:
        site = mod.input_quant
        entry = plan.activations[site.site]
        inp = torch.cat(site.samples)
        site.samples = []
        cands = candidates(*observers[site.site], entry.qparams.bits, granularities, schemes, method, a.percentile)
        bridge = bridge_of.get(path[id(mod)])
        errors = {}
        if bridge is None:
            ref = _layer_forward(mod, inp)
            for key, q in cands.items():
                errors[key] = _weighted_err(_layer_forward(mod, fake_quant_activation(inp, q)), ref, grads.get(mod.site))
        else:
            for s in act_sites(qm):  # layers before the bridge in float, the bridge quantized as chosen so far
                s.mode = "quant" if s.site in members[bridge.end] else "off"
            for w in weighted_sites(qm):
                w.quantize_weight = True
            end = modules[bridge.end]
            for key, q in cands.items():
                site.qparams = q
                errors[key] = _weighted_err(run_until(qm, end, x)[1], bridge_ref[bridge.end], grads.get(bridge.end))
        best = min(errors, key=errors.get)
        q = cands[best]
        site.qparams = q
        entry.qparams, entry.range = q, q.covered_range()
        entry.granularity, entry.scheme = best.split("/")
        entry.search = "bridge" if bridge is not None else "layer"
        entry.search_errors = {k: float(v) for k, v in errors.items()}
        if bridge is not None:
            entry.bridge = bridge.name
    set_mode(qm, "quant")
    return found


@torch.no_grad()
def _float_run(qm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The float logits, and the activation sites in the order the forward pass reaches them."""
    order: list[str] = []
    handles = [s.register_forward_pre_hook(lambda m, _a: order.append(m.site)) for s in act_sites(qm)]
    set_mode(qm, "off")
    try:
        logits = qm(x)
    finally:
        for h in handles:
            h.remove()
    return logits, list(dict.fromkeys(order))


def _bridge_sites(bridge: Bridge, order: list[str]) -> set[str]:
    """The sites run between the bridge's first layer and its output (attention operands included)."""
    prefixes = tuple(f"{m.replace('.inner', '')}." for m in (*bridge.layers, bridge.end))  # site names: no .inner
    inside = [i for i, s in enumerate(order) if s.startswith(prefixes)]
    return set(order[min(inside):max(inside) + 1]) if inside else set()


@torch.no_grad()
def _layer_forward(mod, x: torch.Tensor) -> torch.Tensor:
    """The wrapped layer's output on an already-quantized input (its weight quantized as planned)."""
    site = mod.input_quant
    mode, site.mode = site.mode, "off"
    was, mod.quantize_weight = mod.quantize_weight, True
    try:
        return mod(x)
    finally:
        site.mode, mod.quantize_weight = mode, was
