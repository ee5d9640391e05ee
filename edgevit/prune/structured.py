"""Structured pruning: whole MLP hidden units and attention heads (and, in ``channels``, conv hidden
channels) removed, layers physically shrunk.

For every MLP (timm ``Mlp`` and TinyViT's ``NormMlp``, fc1 -> act -> fc2; LeViT's Linear + BatchNorm pairs,
ln1 -> act -> ln2) and ``Attention`` (qkv -> heads -> proj), in execution order on the model pruned so far:

* score each hidden unit (a column of fc2) or head (a group of proj columns) by its OBS saliency,
  the sum of ||W[:, j]||^2 / [H^-1]_jj over its columns, H the Hessian of the consuming layer's
  inputs on the calibration images (or by the weight norms, ``criterion: magnitude``);
* drop the lowest-scored units (the kept count rounded to ``multiple_of``) or heads;
* (obs) refit the consuming layer to what the removed units contributed: least squares over the
  calibration inputs, bias included (the OBS group update in closed form);
* shrink: new, narrower fc1/fc2 (qkv/proj) modules replace the old ones, so every runtime runs
  smaller dense matmuls. With ``shrink=False`` the same weights are masked instead (for tests).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgevit.models.families import attention_family
from edgevit.prune.channels import conv_units, narrow_conv_unit, slice_bn
from edgevit.prune.config import PruneConfig
from edgevit.prune.units import input_hessian, keep_count, refit, unit_saliency
from edgevit.quant.partial import execution_order


def _is_levit_mlp(m: nn.Module) -> bool:
    """LeViT's MLP: ``ln1`` (Linear + BatchNorm1d) -> act -> ``ln2`` (Linear + BatchNorm1d)."""
    return all(isinstance(getattr(getattr(m, k, None), "linear", None), nn.Linear) and
               isinstance(getattr(getattr(m, k, None), "bn", None), nn.BatchNorm1d) for k in ("ln1", "ln2"))


def _is_mlp(m: nn.Module) -> bool:
    # timm's Mlp may normalize its hidden units (a norm the removed units would change); TinyViT's NormMlp
    # normalizes its input, before fc1
    return (all(isinstance(getattr(m, k, None), nn.Linear) for k in ("fc1", "fc2")) and
            (isinstance(getattr(m, "norm", nn.Identity()), nn.Identity) or type(m).__name__ == "NormMlp")) \
        or _is_levit_mlp(m)


def _mlp_layers(m: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The (producer, consumer) Linear layers of a timm or LeViT MLP."""
    return (m.ln1.linear, m.ln2.linear) if _is_levit_mlp(m) else (m.fc1, m.fc2)


def _set_mlp_layers(m: nn.Module, fc1: nn.Linear, fc2: nn.Linear, keep: torch.Tensor | None) -> None:
    """Put the narrowed layers back; with ``keep`` (shrunk) LeViT's norm after the producer loses the removed
    units too (masked, it stays: the consumer's zero columns ignore what it makes of them)."""
    if not _is_levit_mlp(m):
        m.fc1, m.fc2 = fc1, fc2
        return
    m.ln1.linear, m.ln2.linear = fc1, fc2
    if keep is not None:
        m.ln1.bn = slice_bn(m.ln1.bn, keep)


def _is_attention(m: nn.Module) -> bool:
    family = attention_family(m)
    return family is not None and family.prunable_heads(m)


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def _narrow(consumer: nn.Linear, producer_rows: torch.Tensor, producer: nn.Linear, keep_cols: torch.Tensor,
            h_aug: torch.Tensor | None, damp: float, shrink: bool) -> tuple[nn.Linear, nn.Linear]:
    """New (producer, consumer) pair with only ``producer_rows`` / ``keep_cols`` (or masked, same shapes)."""
    w, b = consumer.weight.detach(), consumer.bias.detach() if consumer.bias is not None else None
    if h_aug is not None:
        w_k, b_new = refit(w, b, h_aug, keep_cols, damp)
    else:
        w_k, b_new = w[:, keep_cols], b
    pw, pb = producer.weight.detach(), producer.bias.detach() if producer.bias is not None else None
    if shrink:
        return _linear(pw[producer_rows], pb[producer_rows] if pb is not None else None), _linear(w_k, b_new)
    pw_m, w_m = torch.zeros_like(pw), torch.zeros_like(w)
    pw_m[producer_rows], w_m[:, keep_cols] = pw[producer_rows], w_k
    pb_m = None
    if pb is not None:
        pb_m = torch.zeros_like(pb)
        pb_m[producer_rows] = pb[producer_rows]
    return _linear(pw_m, pb_m), _linear(w_m, b_new)


def _shrinkable(model: nn.Module) -> dict[str, int]:
    """How many units of each setting's kind the model holds: ``mlp_hidden`` (timm, TinyViT or LeViT MLP),
    ``heads`` (attention whose heads can be removed) and ``conv_hidden`` (conv MLPs / inverted residuals)."""
    mods = [m for _, m in model.named_modules()]
    return {"mlp_hidden": sum(map(_is_mlp, mods)), "heads": sum(map(_is_attention, mods)),
            "conv_hidden": len(conv_units(model))}


def check_structured(model: nn.Module, cfg: PruneConfig) -> None:
    """ValueError naming the settings that would shrink something when the recipe's settings shrink nothing in
    this model (so the run stops before calibrating)."""
    s = cfg.structured
    have = _shrinkable(model)
    if any(getattr(s, k) > 0 and n for k, n in have.items()):
        return
    asked = ", ".join(f"{k}={getattr(s, k)}" for k in have)
    kinds = {"mlp_hidden": "MLP (fc1 -> act -> fc2)", "heads": "attention with removable heads",
             "conv_hidden": "conv MLP / inverted residual"}
    found = [f"{n} {kinds[k]} unit(s): set prune.structured.{k} (e.g. --set prune.structured.{k}=0.3)"
             for k, n in have.items() if n]
    raise ValueError(f"structured pruning with {asked} finds nothing to shrink in this model; "
                     + ("it has " + "; ".join(found) if found else
                        "it has no " + ", ".join(kinds.values()) + " to shrink; use prune.nm or prune.block"))


def prune_structured(model: nn.Module, cfg: PruneConfig, x: torch.Tensor, shrink: bool = True,
                     on_layer: Callable[[str], None] | None = None) -> dict:
    """Remove MLP hidden units / attention heads from ``model`` in place; returns per-module records."""
    check_structured(model, cfg)
    s = cfg.structured
    obs = s.criterion == "obs"

    targets = {n: m for n, m in model.named_modules()
               if (s.mlp_hidden > 0 and _is_mlp(m)) or (s.heads > 0 and _is_attention(m))}
    units = conv_units(model) if s.conv_hidden > 0 else {}
    targets |= {n: model.get_submodule(n) for n in units}
    records = []
    for name in execution_order(model, targets, x[:1]):
        m = targets[name]
        if name in units:
            hidden, kept = narrow_conv_unit(model, units[name], s.conv_hidden, s.multiple_of, obs, x, cfg.damp, shrink)
            records.append({"module": name, "kind": "conv", "units": hidden, "kept": kept})
        elif _is_mlp(m):
            fc1, fc2 = _mlp_layers(m)
            hidden = fc1.out_features
            keep_n = keep_count(hidden, s.mlp_hidden, s.multiple_of)
            h_aug = input_hessian(model, fc2, x) if obs else None
            score = unit_saliency(fc2.weight.detach(), h_aug, hidden, cfg.damp) if obs else \
                fc1.weight.detach().norm(dim=1) * fc2.weight.detach().norm(dim=0)
            keep = score.argsort(descending=True)[:keep_n].sort().values
            _set_mlp_layers(m, *_narrow(fc2, keep, fc1, keep, h_aug, cfg.damp, shrink), keep if shrink else None)
            records.append({"module": name, "kind": "mlp", "units": hidden, "kept": keep_n})
        else:
            family, heads = attention_family(m), m.num_heads
            keep_n = max(1, heads - int(round(s.heads * heads)))
            h_aug = input_hessian(model, m.proj, x) if obs else None
            score = unit_saliency(m.proj.weight.detach(), h_aug, heads, cfg.damp)
            keep_heads = score.argsort(descending=True)[:keep_n].sort().values
            producer, consumer, rows, cols = family.head_slices(m, keep_heads)
            family.set_heads(m, keep_n if shrink else heads, *_narrow(consumer, rows, producer, cols, h_aug,
                                                                       cfg.damp, shrink))
            records.append({"module": name, "kind": "attention", "units": heads, "kept": keep_n})
        if on_layer:
            on_layer(name)
    return {"criterion": s.criterion, "mlp_hidden": s.mlp_hidden, "heads": s.heads, "conv_hidden": s.conv_hidden,
            "shrunk": shrink,
            "modules": records}
