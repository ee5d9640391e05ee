"""Model-family adapters: what the stages need to know about each family's attention, in one place.

One module per family registers an adapter for its attention class(es): how Q, K and V are projected
and laid out per head, the learned position biases, how the heads' output returns to channels and is
projected, and the whole forward with the attention product injected (``attend(q, k_t, v, bias)``:
softmax(q @ k_t + bias) @ v, where quantization puts its sites on the operands and token merging
averages the biases). Quantization sites (``edgevit.quant.sites``), token merging
(``edgevit.tokens.patch``) and bridge detection (``edgevit.quant.bridges``) read these adapters;
no other module re-states a family's attention.
"""
from __future__ import annotations

import importlib


from edgevit.models.families.base import ADAPTERS, AttentionFamily, attention_family, register

for _m in ("vit", "efficientformer", "efficientformerv2", "levit", "tiny_vit", "efficientvit_msra", "mobilevitv2"):
    importlib.import_module(f"{__name__}.{_m}")


__all__ = ["ADAPTERS", "AttentionFamily", "attention_family", "register"]
