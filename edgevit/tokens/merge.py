"""Token reduction written with gather and matmul only, so that it exports with static shapes.

ToMe's reference code merges with ``scatter_reduce`` and sorts with ``argsort``; ONNX exporters and
TensorRT mishandle the first (TensorRT silently miscomputes ScatterElements-add). Here every
data-dependent step is a ``TopK``, a ``Gather`` or a matmul with a one-hot matrix built by comparing
indices with a constant range (``Equal``), and the number of tokens out of each step is fixed when
the graph is traced.

A reduction is a :class:`Reduction`: one (B, N', N) matrix saying which input tokens each output
token sums, so applying it is a single matmul (few graph nodes: at batch 1 a small ViT pays for every
node). ``merge`` averages weighted by token size (ToMe); the same matrix applied to a one-hot
*source* map tracks which original tokens each output token stands for, and ``unmerge`` copies every
output token back to all of its sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _one_hot(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., k) indices -> (..., k, n) one-hot, as Equal against a range (no OneHot/Scatter op)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device, dtype=idx.dtype)).to(dtype)


@dataclass
class Reduction:
    """``assign`` (B, N', N): row i holds the weights of the input tokens summed into output token i
    (one-hot rows for tokens passed through, several ones for a ToMe merge, EViT's fused token has the
    attention weights of the tokens it replaces). Every step is one matmul."""

    assign: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce (B, N, C) -> (B, N', C) by plain (weighted) sums."""
        return self.assign @ x

    def track(self, source: torch.Tensor) -> torch.Tensor:
        """The source map (B, N', N0) after this reduction: which original tokens each output token holds
        (EViT's fused token holds every token it pruned)."""
        return (self.assign > 0).to(source.dtype) @ source

    def merge(self, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Size-weighted average of the merged tokens (``size`` None: every token has size 1); returns the
        new tokens and sizes (B, N', 1). The weights are folded into the (small) assignment matrix, so the
        tokens themselves go through one matmul and no elementwise op."""
        new_size = self.sizes(size)
        weights = self.assign if size is None else self.assign * size.transpose(1, 2)
        return (weights / new_size) @ x, new_size

    def sizes(self, size: torch.Tensor | None) -> torch.Tensor:
        """Token sizes (B, N', 1) after this reduction (``size`` None: every input token has size 1)."""
        return self.assign.sum(dim=-1, keepdim=True) if size is None else self.apply(size)


def tome_merges(n: int, r: int, protected: int = 0) -> int:
    """How many of ``r`` requested merges ``n`` tokens allow: A tokens that may merge, B tokens that may
    receive (protected tokens do neither)."""
    n_a, n_b = (n + 1) // 2, n // 2
    return max(0, min(r, n_a - (protected + 1) // 2, n_b - protected // 2))


def bipartite_matching(metric: torch.Tensor, r: int, protected: int = 0) -> Reduction:
    """ToMe's bipartite soft matching: split the tokens alternately into A and B, give each A token its
    most similar B token (cosine of ``metric``), and merge the ``r`` best-matched A tokens into their B
    partners. Output, as in ToMe's reference code: the first ``protected`` tokens (class/distillation
    tokens: never merged, stay where the head reads them), the unmerged A tokens, then the B tokens in
    order. The unmerged A tokens come in their original order when there are protected tokens, and from the
    best matched to the least when there are none (the reference sorts them back only to keep its class
    token first); the order decides the next block's alternate split."""
    N = int(metric.shape[1])  # token counts are static
    n_a, n_b = (N + 1) // 2, N // 2
    p_a, p_b = (protected + 1) // 2, protected // 2  # protected tokens among A and B
    r = tome_merges(N, r, protected)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # not F.normalize: no Expand node
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # (B, n_a, n_b)
    # protected A tokens never merge away and protected B tokens receive nothing: leave them out
    best, best_b = scores[:, p_a:, p_b:].max(dim=-1)
    order = torch.topk(best, n_a - p_a, dim=-1).indices  # A tokens, best matched first (ToMe's argsort)
    src, unm = order[:, :r], order[:, r:]
    if protected and r < n_a - p_a:
        unm = unm.sort(dim=-1).values
    dst = best_b.gather(1, src)  # (B, r): the B token (after the protected) each merges into
    # Rows of the reduction in output order; A token i is token 2i, B token j is token 2j + 1.
    rows_b = np.zeros((n_b - p_b, N), dtype=np.float32)  # a graph constant: each B token keeps itself
    rows_b[np.arange(n_b - p_b), 2 * np.arange(p_b, n_b) + 1] = 1
    merged_in = _one_hot(dst, n_b - p_b, metric.dtype).transpose(1, 2) @ _one_hot(2 * (src + p_a), N, metric.dtype)
    rows = [torch.from_numpy(rows_b).to(metric) + merged_in]
    if r < n_a - p_a:  # no empty (B, 0, N) block when every A token merges: CoreML mis-infers zero-size slices
        rows.insert(0, _one_hot(2 * (unm + p_a), N, metric.dtype))
    if protected:
        rows.insert(0, torch.eye(protected, N, dtype=metric.dtype, device=metric.device).expand(metric.shape[0], -1, -1))
    return Reduction(assign=torch.cat(rows, dim=1))


def top_k_pruning(scores: torch.Tensor, keep: int, protected: int = 0, fuse: bool = True) -> Reduction:
    """EViT: keep the first ``protected`` tokens and the ``keep`` highest-scored others; with ``fuse``
    the rest become one token, their score-weighted sum (EViT does not renormalize)."""
    B, N = scores.shape[0], int(scores.shape[1])
    top = torch.topk(scores[:, protected:], keep, dim=-1).indices + protected
    kept = torch.cat([torch.arange(protected, device=scores.device).expand(B, -1), top], dim=1)
    rows = _one_hot(kept, N, scores.dtype)  # (B, protected + keep, N)
    if not fuse:
        return Reduction(assign=rows)
    dropped = 1 - rows.sum(dim=1)  # (B, N)
    return Reduction(assign=torch.cat([rows, (scores * dropped).unsqueeze(1)], dim=1))


def unmerge(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Copy each token of ``x`` (B, N', C) back to every original token it stands for; ``source`` (B, N', N)
    is 1 where output token i holds original token j."""
    return source.transpose(1, 2) @ x
