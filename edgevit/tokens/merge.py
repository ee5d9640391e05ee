"""Token reduction written with gather and matmul only, so that it exports with static shapes.

ToMe's reference code merges with ``scatter_reduce`` and sorts with ``argsort``; ONNX exporters and
TensorRT mishandle the first (TensorRT silently miscomputes ScatterElements-add). Here every
data-dependent step is a ``TopK``, a ``Gather`` or a matmul with a one-hot matrix built by comparing
indices with a constant range (``Equal``), and the number of tokens out of each step is fixed when
the graph is traced.

A reduction is a :class:`Reduction`: for each output token, which input tokens it sums. ``apply``
sums (optionally weighted by token size, for ToMe's size-weighted average); the same reduction
applied to a one-hot *source* matrix tracks which original tokens each output token stands for, and
``unmerge`` copies every output token back to all of its sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _one_hot(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., k) indices -> (..., k, n) one-hot, as Equal against a range (no OneHot/Scatter op)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(dtype)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, k) of ``x`` (B, N, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class Reduction:
    """Tokens out = [x[keep], then x[dst] + the x[src] assigned to each dst] (ToMe), or [x[keep], fused]
    (EViT). ``keep`` (B, K) indices of tokens passed through; ``groups`` (B, G, N) weights of the
    input tokens summed into each of the G other output tokens."""

    keep: torch.Tensor
    groups: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce (B, N, C) -> (B, K + G, C) by plain sums."""
        return torch.cat([_gather(x, self.keep), self.groups @ x], dim=1)

    def track(self, source: torch.Tensor) -> torch.Tensor:
        """The source map (B, N, N0) after this reduction: which original tokens each output token holds
        (EViT's fused token holds every token it pruned)."""
        return torch.cat([_gather(source, self.keep), (self.groups > 0).to(source.dtype) @ source], dim=1)

    def merge(self, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Size-weighted average of the merged tokens; returns the new tokens and sizes (B, N', 1)."""
        total = self.apply(x * size)
        new_size = self.apply(size)
        return total / new_size, new_size


def tome_merges(n: int, r: int, protected: int = 0) -> int:
    """How many of ``r`` requested merges ``n`` tokens allow: A tokens that may merge, B tokens that may
    receive (protected tokens do neither)."""
    n_a, n_b = (n + 1) // 2, n // 2
    return max(0, min(r, n_a - (protected + 1) // 2, n_b - protected // 2))


def bipartite_matching(metric: torch.Tensor, r: int, protected: int = 0) -> Reduction:
    """ToMe's bipartite soft matching: split the tokens alternately into A and B, give each A token its
    most similar B token (cosine of ``metric``), and merge the ``r`` best-matched A tokens into their B
    partners. The first ``protected`` tokens (class/distillation tokens) are never merged and stay
    first; the other kept A tokens keep their order."""
    B, N = metric.shape[0], int(metric.shape[1])  # token counts are static
    metric = F.normalize(metric, dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    n_a, n_b = (N + 1) // 2, N // 2
    r = tome_merges(N, r, protected)
    scores = a @ b.transpose(-1, -2)
    if protected:  # protected A tokens never merge away; protected B tokens receive no merges
        rows = torch.arange(n_a, device=scores.device).unsqueeze(1) < (protected + 1) // 2
        cols = torch.arange(n_b, device=scores.device).unsqueeze(0) < protected // 2
        scores = scores.masked_fill(rows | cols, -torch.inf)
    best, best_b = scores.max(dim=-1)  # (B, n_a)
    src = torch.topk(best, r, dim=-1).indices  # the r best-matched A tokens
    is_src = _one_hot(src, n_a, metric.dtype).sum(dim=1)  # (B, n_a)
    # unmerged A tokens in their original order: the n_a - r smallest of (index + n_a * merged)
    order_key = torch.arange(n_a, device=metric.device, dtype=metric.dtype) + n_a * is_src
    keep_a = torch.topk(order_key, n_a - r, dim=-1, largest=False).indices
    dst = torch.gather(best_b, 1, src)  # (B, r)
    # B token j = b_j + sum of its merged A tokens; as weights over all N input tokens (A at even, B at odd)
    to_b = _one_hot(dst, n_b, metric.dtype).transpose(1, 2) @ _one_hot(src, n_a, metric.dtype)  # (B, n_b, n_a)
    groups = _interleave(to_b, torch.eye(n_b, dtype=metric.dtype, device=metric.device).expand(B, -1, -1), N)
    return Reduction(keep=2 * keep_a, groups=groups)


def _interleave(even: torch.Tensor, odd: torch.Tensor, n: int) -> torch.Tensor:
    """(B, G, n_a) and (B, G, n_b) column blocks -> (B, G, n) with A's columns at even, B's at odd."""
    n_a, n_b = int(even.shape[-1]), int(odd.shape[-1])
    if n_a > n_b:  # odd N: A has one column more
        odd = F.pad(odd, (0, 1))
    return torch.stack([even, odd], dim=-1).flatten(-2)[..., :n]


def top_k_pruning(scores: torch.Tensor, keep: int, protected: int = 0, fuse: bool = True) -> Reduction:
    """EViT: keep the first ``protected`` tokens and the ``keep`` highest-scored others; with ``fuse``
    the rest become one token, their score-weighted sum (EViT does not renormalize)."""
    B, N = scores.shape[0], int(scores.shape[1])
    rest = scores[:, protected:]
    top = torch.topk(rest, keep, dim=-1).indices + protected
    prefix = torch.arange(protected, device=scores.device).expand(B, -1)
    kept = torch.cat([prefix, top], dim=1)
    if not fuse:
        return Reduction(keep=kept, groups=scores.new_zeros(B, 0, N))
    dropped = 1 - _one_hot(kept, N, scores.dtype).sum(dim=1)  # (B, N)
    return Reduction(keep=kept, groups=(scores * dropped).unsqueeze(1))


def unmerge(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Copy each token of ``x`` (B, N', C) back to every original token it stands for; ``source`` (B, N', N)
    is 1 where output token i holds original token j."""
    return source.transpose(1, 2) @ x
