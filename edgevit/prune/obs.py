"""Second-order one-shot pruning of one layer (SparseGPT, an OBS sweep over the columns).

For a weight matrix W [out, in] (see ``layout``) and the Hessian H = X^T X / n of its inputs:
dampen H by ``damp`` times its mean diagonal, take the upper Cholesky factor U of H^-1, and sweep the
columns left to right in blocks. For n:m, the mask of every group of m columns is chosen when the
sweep reaches it, from the saliency w^2 / U_jj^2 of the weights as updated so far; a fixed mask
(block pruning) is applied as given. Each pruned weight's error (w - 0) / U_jj is spread over the
columns not yet visited (W[:, j:] -= err * U[j, j:]), the OBS update that lets the remaining weights
compensate (Frantar & Alistarh, "Optimal Brain Compression", NeurIPS 2022).
"""
from __future__ import annotations

import torch

DAMP = 0.01
BLOCK = 128


class Hessian:
    """Running X^T X / n over a layer's input rows (float64 for a stable Cholesky), and the column sums."""

    def __init__(self, cols: int):
        self.h = torch.zeros(cols, cols, dtype=torch.float64)
        self.sums = torch.zeros(cols, dtype=torch.float64)
        self.n = 0

    def add(self, rows: torch.Tensor) -> None:
        r = rows.double()
        self.h += r.t() @ r
        self.sums += r.sum(0)
        self.n += len(r)

    @property
    def value(self) -> torch.Tensor:
        return self.h / max(self.n, 1)


def inverse_cholesky(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1; dead inputs (zero diagonal) get 1."""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    for extra in (0.0, 1e-6, 1e-4, 1e-2):  # nearly singular H (few calibration rows): more damping
        try:
            hh = h + extra * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
            return torch.linalg.cholesky(inv, upper=True)
        except RuntimeError:
            continue
    raise RuntimeError("the input Hessian is not positive definite even after damping")


def inverse_diag(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """diag((H + damp mean(diag H) I)^-1)."""
    h = h + damp * torch.diag(h).mean().clamp_min(1e-12) * torch.eye(len(h), dtype=h.dtype)
    return torch.diag(torch.cholesky_inverse(torch.linalg.cholesky(h))).float()


def nm_magnitude_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where a weight is pruned: all but the n largest |w| in every group of m consecutive columns."""
    out, cols = w.shape
    groups = w.abs().reshape(out, cols // m, m)
    drop = torch.zeros_like(groups, dtype=torch.bool)
    drop.scatter_(2, groups.topk(m - n, dim=2, largest=False).indices, True)
    return drop.reshape(out, cols)


def obs_prune(w: torch.Tensor, h: torch.Tensor, n: int = 2, m: int = 4, mask: torch.Tensor | None = None,
              damp: float = DAMP, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``w`` [out, in] with the OBS sweep: keep n of every m columns (``mask`` None) or apply the
    given mask (True = pruned). Returns the pruned, compensated weight and the mask."""
    w = w.double().clone()
    dead = torch.diag(h) == 0
    w[:, dead] = 0
    u = inverse_cholesky(h, damp)
    out, cols = w.shape
    chosen = torch.zeros(out, cols, dtype=torch.bool) if mask is None else mask.clone()
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        wb = w[:, b0:b1].clone()
        ub = u[b0:b1, b0:b1]
        errs = torch.zeros_like(wb)
        for i in range(b1 - b0):
            j = b0 + i
            if mask is None and j % m == 0:
                sal = wb[:, i:i + m] ** 2 / torch.diag(ub)[i:i + m].unsqueeze(0) ** 2
                idx = sal.topk(m - n, dim=1, largest=False).indices
                chosen[:, j:j + m].scatter_(1, idx, True)
            col = wb[:, i]
            pruned = torch.where(chosen[:, j], torch.zeros_like(col), col)
            err = (col - pruned) / ub[i, i]
            wb[:, i:] -= err.unsqueeze(1) * ub[i, i:].unsqueeze(0)
            wb[:, i] = pruned
            errs[:, i] = err
        w[:, b0:b1] = wb
        w[:, b1:] -= errs @ u[b0:b1, b1:]
    w[chosen] = 0  # exact zeros whatever the float rounding of the updates
    return w.float(), chosen
