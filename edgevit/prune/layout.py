"""Weights as matrices: rows are outputs, columns are inputs, in the order pruning groups them.

n:m sparsity groups *consecutive input channels at one kernel position* (TensorRT: for each output
channel k and kernel pixel (r, s), every 4 consecutive input channels of a [K, C, R, S] weight hold
at most 2 non-zeros). A Linear weight [out, in] is already that matrix; a Conv2d weight is permuted
to [K, R, S, C] and flattened, and the Hessian of its im2col inputs is permuted the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# NVIDIA ASP's eligibility rule for 2:4 (also what TensorRT's sparse tactics and CoreML's n:m need)
MIN_OUT_MULTIPLE, MIN_IN_MULTIPLE = 8, 16


def column_order(module: nn.Module) -> torch.Tensor | None:
    """Permutation from the im2col column order (c, r, s) to the pruning order (r, s, c); None for Linear."""
    if isinstance(module, nn.Linear):
        return None
    c, r, s = module.weight.shape[1:]
    return torch.arange(c * r * s).view(c, r * s).t().reshape(-1)


def to_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] in pruning order (a copy, float32)."""
    w = module.weight.detach().float()
    if isinstance(module, nn.Linear):
        return w.clone()
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).clone()


def from_matrix(module: nn.Module, mat: torch.Tensor) -> None:
    """Write a pruning-order matrix back into the module's weight."""
    w = module.weight
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            w.copy_(mat.to(w.dtype))
        else:
            k, c, r, s = w.shape
            w.copy_(mat.view(k, r, s, c).permute(0, 3, 1, 2).to(w.dtype))


def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as rows of its matrix's columns (tokens x in), in pruning order."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).float()
    cols = F.unfold(x.float(), module.kernel_size, module.dilation, module.padding, module.stride)  # B, C*R*S, L
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return cols[:, column_order(module)]


def prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def nm_ineligible(module: nn.Module, m: int) -> str | None:
    """Why a layer cannot take n:m sparsity on TensorRT/CoreML, or None when it can."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"grouped convolution (groups={module.groups}): no sparse kernels"
    if not prunable(module):
        return "not a Linear/Conv2d"
    out, cin = module.weight.shape[:2]
    if cin % max(m, MIN_IN_MULTIPLE) or out % MIN_OUT_MULTIPLE:
        return (f"shape {out}x{cin}: sparse kernels need input channels divisible by "
                f"{max(m, MIN_IN_MULTIPLE)} and output channels divisible by {MIN_OUT_MULTIPLE}")
    return None


def nm_violations(mat: torch.Tensor, n: int, m: int) -> int:
    """How many groups of m consecutive columns hold more than n non-zeros (n:m keeps n of every m)."""
    out, cols = mat.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of {m}")
    return int(((mat.reshape(out, cols // m, m) != 0).sum(-1) > n).sum())
