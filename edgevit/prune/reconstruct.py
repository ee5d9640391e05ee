"""Recover what one-shot pruning lost, training-free of labels: block by block, in execution order, the
pruned model's block is fitted to the unpruned block's output on the calibration images, its pruned
weights staying zero (the masks are fixed) and every other parameter of the block free.

The input of each block is what the pruned model, already reconstructed up to that block, feeds it; the
target is the unpruned block's output on the unpruned model's input (BRECQ's block reconstruction, with
pruning masks in place of quantization grids). A block whose reconstruction error does not fall keeps
its one-shot weights.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.progress import phase
from edgevit.quant.bridges import holding
from edgevit.quant.partial import execution_order
from edgevit.quant.reconstruct import unit_io, unit_loss


def blocks_holding(model: nn.Module, layers: list[str], x: torch.Tensor) -> list[str]:
    """The outermost non-container modules that hold one of ``layers``, in execution order."""
    modules = dict(model.named_modules())
    found = {holding(modules, "", layer) for layer in layers}
    return execution_order(model, {n: modules[n] for n in found}, x[:1])


def reconstruct_pruned(dense: nn.Module, pruned: nn.Module, layers: list[str], x: torch.Tensor,
                       iters: int = 500, lr: float = 1e-3, batch: int = 32, seed: int = 0,
                       on_block: Callable[[str], None] | None = None) -> list[dict]:
    """Fit each block of ``pruned`` (changed in place) that holds one of the pruned ``layers`` to ``dense``'s
    block output on ``x``; the zeros of the pruned layers stay zero. Returns a record per block."""
    gen = torch.Generator().manual_seed(seed)
    records = []
    blocks = blocks_holding(pruned, layers, x)
    phase(on_block, "reconstruct blocks", len(blocks))
    for name in blocks:
        t0 = time.time()
        p_block, d_block = pruned.get_submodule(name), dense.get_submodule(name)
        x_p, _ = unit_io(pruned, p_block, x, batch)
        _, target = unit_io(dense, d_block, x, batch)
        masks = {n: m.weight != 0 for n, m in p_block.named_modules() if (f"{name}.{n}" if n else name) in layers}
        params = [p for p in p_block.parameters() if p.dtype.is_floating_point]
        saved = [p.detach().clone() for p in params]
        before = unit_loss(p_block, x_p, target, batch)
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iters):
            idx = torch.randint(0, len(x_p), (min(batch, len(x_p)),), generator=gen)
            with torch.enable_grad():  # pruning runs under no_grad
                loss = F.mse_loss(p_block(x_p[idx]), target[idx], reduction="sum") / len(idx)
                opt.zero_grad()
                loss.backward()
            opt.step()
            with torch.no_grad():
                for n, keep in masks.items():
                    p_block.get_submodule(n).weight.mul_(keep)
        after = unit_loss(p_block, x_p, target, batch)
        if not after < before:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        records.append({"block": name, "loss_before": before, "loss_after": min(after, before),
                        "kept": after < before, "seconds": round(time.time() - t0, 1)})
        if on_block:
            on_block(name)
    return records
