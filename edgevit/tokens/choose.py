"""Which attention stages pay for reducing tokens: each stage reduced alone, its FLOP saving measured on
one image and its cost (top-1 disagreement and logit KL against the unreduced model) on calibration images.
A stage whose reduction saves less than ``min_saving`` of the model's FLOPs is left unreduced (MobileViT at
32 px merges inside 4-token patches and EfficientFormerV2's 49-token attention costs more to merge than it
saves); with ``max_disagreement`` the remaining stages are taken in order of saving per cost while the
model with all of them disagrees with the unreduced one on at most that percent of the images."""
from __future__ import annotations

import copy
import fnmatch

import torch
from torch import nn

from edgevit.costs import disagreement, kl_cost, outputs
from edgevit.tokens.config import TokenConfig
from edgevit.tokens.patch import apply_tokens, find_stages
from edgevit.tokens.summary import count_flops


def _reduced(model: nn.Module, cfg: TokenConfig, stages: list[str]) -> nn.Module:
    m = copy.deepcopy(model)
    apply_tokens(m, cfg.model_copy(update={"stages": stages}))
    return m


@torch.no_grad()
def choose_stages(model: nn.Module, cfg: TokenConfig, one: torch.Tensor,
                  x: torch.Tensor | None) -> tuple[list[str], list[dict]]:
    """The stages to reduce tokens in and one record per candidate stage (saving, cost, decision, why).
    ``one``: an input of the model's shape (FLOPs are counted on it); ``x``: calibration images (None: costs
    not measured, ``max_disagreement`` not applied)."""
    candidates = [s for s in find_stages(model) if any(fnmatch.fnmatch(s, p) for p in cfg.stages)]
    if not candidates:
        apply_tokens(copy.deepcopy(model), cfg)  # raises the error that names the supported families
    flops = count_flops(model, one)
    ref = outputs(model, x) if x is not None else None
    records = {}
    for name in candidates:
        m = _reduced(model, cfg, [name])
        saving = (flops - count_flops(m, one)) / flops
        r = {"stage": name, "flop_saving": round(saving, 4)}
        if ref is not None:
            out = outputs(m, x)
            r |= {"cost_kl": kl_cost(out, ref), "disagreement_alone": round(disagreement(out, ref), 3)}
        if cfg.min_saving is not None and saving < cfg.min_saving:
            r |= {"reduced": False, "why": f"saves {100 * saving:.1f} % of the FLOPs (< {100 * cfg.min_saving:g} %)"}
        records[name] = r
    chosen = [n for n in candidates if "reduced" not in records[n]]
    if cfg.max_disagreement is not None and ref is not None:
        order = sorted(chosen, key=lambda n: -records[n]["flop_saving"] / max(records[n]["cost_kl"], 1e-9))
        taken: list[str] = []
        for name in order:
            dis = disagreement(outputs(_reduced(model, cfg, taken + [name]), x), ref)
            if dis <= cfg.max_disagreement:
                taken.append(name)
            else:
                records[name] |= {"reduced": False, "why": f"with it the model disagrees on {dis:.2f} % of the "
                                  f"calibration images (allowed {cfg.max_disagreement:g} %)"}
        chosen = [n for n in chosen if n in taken]
    for name in chosen:
        records[name] |= {"reduced": True}
    return chosen, [records[n] for n in candidates]
