"""Per-runtime lowering of a QuantPlan: what each runtime's integer kernels can execute.

* ``onnxruntime``: the plan as calibrated (uint8 asymmetric activations are ORT's fast x86 path).
* ``tensorrt``: explicit quantization needs signed int8 with zero point 0 everywhere, so every
  activation quantizer becomes symmetric over the same calibrated range (weights already are).
"""
from __future__ import annotations

import copy

import torch

from edgevit.quant.plan import QuantPlan
from edgevit.quant.uniform import qparams_from_range

TARGETS = ("onnxruntime", "tensorrt")


def lower_plan(plan: QuantPlan, target: str) -> QuantPlan:
    """A copy of ``plan`` whose quantizers the target runtime can run as they are."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    if target == "onnxruntime":
        return plan
    lowered = copy.deepcopy(plan)
    for entry in lowered.activations.values():
        q = entry["qparams"]
        if not q.symmetric:
            lo, hi = entry["range"]
            entry["qparams"] = qparams_from_range(torch.tensor(lo), torch.tensor(hi), q.bits, symmetric=True)
    for name, q in lowered.weights.items():
        if not q.symmetric:
            raise ValueError(f"TensorRT needs symmetric weights; {name} is asymmetric "
                             "(set quantize.weights.symmetric: true)")
    return lowered
