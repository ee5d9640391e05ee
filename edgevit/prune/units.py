"""What structured pruning needs for any kind of unit (MLP hidden units, heads, conv channels): the
Hessian of a layer's inputs, the OBS saliency of column groups, the least-squares refit of the
consuming layer, and how many units to keep."""
from __future__ import annotations

import torch
from torch import nn

from edgevit.prune.layerwise import layer_hessian
from edgevit.prune.obs import DAMP, inverse_diag


def input_hessian(model: nn.Module, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """E[[x, 1]^T [x, 1]] over ``layer``'s inputs when ``model`` runs on ``x`` (bias column last)."""
    h = layer_hessian(model, layer, x)
    n = h.n
    s = h.h.new_zeros(len(h.h) + 1, len(h.h) + 1)
    s[:-1, :-1] = h.h
    s[:-1, -1] = s[-1, :-1] = h.sums
    s[-1, -1] = n
    return s / max(n, 1)


def unit_saliency(w: torch.Tensor, h_aug: torch.Tensor | None, groups: int, damp: float = DAMP) -> torch.Tensor:
    """Score of each of ``groups`` equal column groups of ``w`` [out, in] (OBS or, without H, the norm)."""
    if h_aug is None:
        per_col = (w ** 2).sum(0)
    else:
        per_col = (w.double() ** 2).sum(0) / inverse_diag(h_aug[:-1, :-1], damp).double()
    return per_col.reshape(groups, -1).sum(1).float()


def refit(w: torch.Tensor, b: torch.Tensor | None, h_aug: torch.Tensor, keep: torch.Tensor,
          damp: float = DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares weights/bias on the kept input columns that reproduce the full layer's output."""
    full = torch.cat([w.double(), (b.double() if b is not None else w.new_zeros(len(w)).double()).unsqueeze(1)], 1)
    cols = torch.cat([keep, torch.tensor([len(h_aug) - 1])])
    hss = h_aug[cols][:, cols]
    hss = hss + damp * torch.diag(hss).mean() * torch.eye(len(cols), dtype=hss.dtype)
    sol = torch.linalg.solve(hss, (full @ h_aug[:, cols]).t()).t()
    return sol[:, :-1].float(), sol[:, -1].float()


def keep_count(total: int, ratio: float, multiple: int) -> int:
    """Units kept of ``total`` when pruning ``ratio`` of them, rounded to a multiple of ``multiple``."""
    keep = total - int(round(ratio * total))
    keep = int(round(keep / multiple)) * multiple if total >= 2 * multiple else keep
    return min(total, max(keep, min(multiple, total)))
