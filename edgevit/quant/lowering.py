"""Per-runtime lowering of a QuantPlan: what each runtime's integer kernels can execute.

Targets:

* ``onnxruntime``: the plan as calibrated (uint8 asymmetric activations are ORT's fast x86 path).
* ``tensorrt``: explicit quantization needs signed int8 with zero point 0 everywhere and one scale
  per activation tensor, so every activation quantizer becomes symmetric and per tensor over the
  same calibrated range (the union of the channel ranges for channel-wise ones; weights already are).
* ``coreml``: the same symmetric int8 per-tensor activations (CoreML's W8A8 ``quantize`` /
  ``dequantize`` ops; Apple's own activation quantizer is symmetric too) and symmetric per-channel
  weights, which ``linear_quantize_weights`` stores as int8.

Policies for what no integer kernel runs (log/tan activation quantizers, fewer than 8 bits):

* ``exact``: keep them; the exporter writes a float decomposition (Log, Round, Clip, Pow, Where ...)
  and 8-bit Q/DQ + Clip for sub-8-bit grids, which reproduces the simulation in ONNX Runtime. For
  validating a scheme, and for accelerators that implement it (see ``quant_params.json``).
* ``uniform``: replace each log/tan quantizer by the uniform 8-bit grid over the range calibrated
  for that site; sub-8-bit plans are refused.
* ``float``: leave the log/tan sites unquantized; sub-8-bit plans are refused.
"""
from __future__ import annotations

import copy

import torch

from edgevit.quant.plan import QuantPlan
from edgevit.quant.targets import LOWERINGS, Lowering
from edgevit.quant.uniform import QParams, qparams_from_range, qrange

POLICIES = ("exact", "uniform", "float")


#: weights of this many bits go into int8 files as they are (codes -63..63)
WEIGHT_BITS_IN_INT8 = 7


def plan_bits(plan: QuantPlan) -> set[int]:
    """Every bit width the plan uses (weights and activations)."""
    return {q.bits for q in plan.weights.values()} | {e.qparams.bits for e in plan.activations.values()}


def has_nonuniform(plan: QuantPlan) -> bool:
    """Whether any site has a non-uniform (log/tan) quantizer."""
    return any(e.quantizer is not None for e in plan.activations.values())


def lower_plan(plan: QuantPlan, target: str | Lowering, policy: str = "uniform") -> QuantPlan:
    """A copy of ``plan`` whose quantizers the target kernels (a :class:`Lowering` or its name) run as they are."""
    if isinstance(target, str):
        if target not in LOWERINGS:
            raise ValueError(f"unknown target {target!r} (known: {', '.join(LOWERINGS)})")
        target = LOWERINGS[target]
    if policy not in POLICIES:
        raise ValueError(f"unknown lowering {policy!r} (known: {', '.join(POLICIES)})")
    if not target.exact and policy == "exact":
        raise ValueError(f"lowering: exact cannot target {target.label}: its kernels take only uniform int8 "
                         "quantize/dequantize pairs; use lowering: uniform or float")
    # 7-bit weights are int8 codes in -63..63, which int8 kernels run as they are (and which cannot saturate x86
    # kernels without VNNI); fewer bits gain nothing in an int8 file, and narrower activations are not int8 codes
    low = sorted({q.bits for q in plan.weights.values() if q.bits not in (WEIGHT_BITS_IN_INT8, 8)}
                 | {e.qparams.bits for e in plan.activations.values() if e.qparams.bits < 8})
    if low and policy != "exact":
        raise ValueError(f"the plan uses {low[0]}-bit quantizers, which no {target.name} integer kernel runs; "
                         "export them with lowering: exact (a float decomposition that reproduces the "
                         "simulation) or quantize with 8 bits")
    if not target.symmetric and (policy == "exact" or not has_nonuniform(plan)):
        return plan
    lowered = copy.deepcopy(plan)
    for name, entry in list(lowered.activations.items()):
        if entry.quantizer is None:
            continue
        if policy == "float":
            del lowered.activations[name]
        elif policy == "uniform":
            entry.quantizer = None
    if target.symmetric:
        for entry in lowered.activations.values():
            q = entry.qparams
            if not q.symmetric or q.axis is not None:  # one symmetric int8 scale per activation tensor
                lo, hi = entry.range
                entry.qparams = qparams_from_range(torch.tensor(lo), torch.tensor(hi), q.bits, symmetric=True)
        for name, q in lowered.weights.items():
            if not q.symmetric:
                raise ValueError(f"{target.label} needs symmetric weights; {name} is asymmetric "
                                 "(set quantize.weights.symmetric: true)")
    return lowered


def seven_bit_weights(plan: QuantPlan) -> QuantPlan:
    """A copy of ``plan`` whose 8-bit weights use the 7-bit grid over the same range (codes -63..63, the scale
    times 127/63): what an int8 file needs where x86 kernels without VNNI add pairs of uint8 x int8 products in
    16 bits, which 8-bit weights can saturate. Learned roundings (reconstruction) map to the nearest 7-bit code."""
    out = copy.deepcopy(plan)
    out.config = plan.config.model_copy(update={"weights": plan.config.weights.model_copy(
        update={"bits": WEIGHT_BITS_IN_INT8})})
    top = qrange(WEIGHT_BITS_IN_INT8, True)[1]
    ratio = qrange(8, True)[1] / top
    for name, q in plan.weights.items():
        if q.bits != 8 or not q.symmetric:
            continue
        out.weights[name] = QParams(q.scale * ratio, torch.zeros_like(q.zero_point), WEIGHT_BITS_IN_INT8, True,
                                    q.axis, narrow=True)
        if name in plan.rounded:
            out.rounded[name] = torch.clamp(torch.round(plan.rounded[name].float() / ratio), -top, top).to(torch.int8)
    return out
