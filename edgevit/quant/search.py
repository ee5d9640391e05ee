"""Choosing clipping ranges: min-max, percentile, and MSE search over candidate ranges.

Activations (per tensor) are searched on the streamed histogram: the expected squared error of a
candidate range is sum over bins of count * (center - fake_quant(center))^2. Weights (per output
channel) are searched directly on the weight tensor; per-channel activations (``ChannelClipSearch``)
on streamed batches.
"""
from __future__ import annotations

import numpy as np
import torch

from edgevit.quant.observers import HistogramObserver
from edgevit.quant.uniform import QParams, qparams_from_range, qrange

METHODS = ("minmax", "percentile", "mse")


def _fake_quant_np(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Fake-quantize x (bins,) under many candidate ranges (cands,) at once -> (cands, bins)."""
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / qmax, 1e-12)
        zp = np.zeros_like(scale)
    else:
        scale = np.maximum((hi - lo) / (qmax - qmin), 1e-12)
        zp = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    s, z = scale[:, None], zp[:, None]
    return (np.clip(np.round(x[None, :] / s) + z, qmin, qmax) - z) * s


def activation_range(obs: HistogramObserver, method: str, bits: int, symmetric: bool,
                     percentile: float = 99.99, candidates: int = 32) -> tuple[float, float]:
    """The clipping range [lo, hi] for one activation tensor."""
    if obs.empty:
        raise ValueError("the observer saw no data")
    if method == "minmax":
        return obs.min, obs.max
    if method == "percentile":
        return obs.percentile_range(percentile)
    if method != "mse":
        raise ValueError(f"unknown range method {method!r} (known: {', '.join(METHODS)})")
    centers, counts = obs.centers(), obs.counts
    keep = counts > 0
    centers, counts = centers[keep], counts[keep]
    fractions = np.linspace(0.2, 1.0, candidates)
    lo0, hi0 = min(obs.min, 0.0), max(obs.max, 0.0)
    if symmetric or lo0 == 0.0 or hi0 == 0.0:
        lo, hi = lo0 * fractions, hi0 * fractions
    else:  # both ends shrink independently: a grid of candidate pairs
        fl, fh = np.meshgrid(fractions, fractions, indexing="ij")
        lo, hi = lo0 * fl.ravel(), hi0 * fh.ravel()
    err = ((_fake_quant_np(centers, lo, hi, bits, symmetric) - centers[None, :]) ** 2 * counts[None, :]).sum(1)
    best = int(np.argmin(err))
    return float(lo[best]), float(hi[best])


def channel_ranges(flat: torch.Tensor, bits: int, symmetric: bool, method: str = "mse", narrow: bool = False,
                   candidates: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping ranges of ``flat`` (channels x values): min-max, or the ``mse`` search of each
    row's clip fraction in 0.5..1."""
    lo, hi = flat.min(1).values, flat.max(1).values
    if method == "mse":
        fractions = torch.linspace(0.5, 1.0, candidates)
        best = _clip_errors(flat, lo, hi, fractions, bits, symmetric, narrow).argmin(0)
        lo, hi = lo * fractions[best], hi * fractions[best]
    elif method not in ("minmax", "percentile"):
        raise ValueError(f"unknown per-channel range method {method!r} (known: minmax, mse)")
    return lo, hi


def _clip_errors(flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fractions: torch.Tensor, bits: int,
                 symmetric: bool, narrow: bool = False) -> torch.Tensor:
    """Summed squared quantization error of each row of ``flat`` (channels x values) for the ranges
    ``fraction * (lo, hi)`` of every fraction: a (fractions x channels) tensor."""
    out = torch.empty(len(fractions), flat.shape[0])
    for i, frac in enumerate(fractions):
        qp = qparams_from_range(lo * frac, hi * frac, bits, symmetric, axis=0, narrow=narrow)
        out[i] = ((qp.fake_quant(flat) - flat) ** 2).sum(1)
    return out


class ChannelClipSearch:
    """Per-channel MSE clipping of an activation, searched on streamed batches: channel c's range is a
    fraction of its calibrated (min, max), the fraction with the least squared error summed over every
    batch. The fractions reach down to 0.05 because at 4 bits a heavy-tailed channel's best clip is far
    inside its maximum (the weights' search stops at 0.5)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, axis: int = 1,
                 candidates: int = 96):
        self.lo, self.hi, self.bits, self.symmetric, self.axis = lo.float(), hi.float(), bits, symmetric, axis
        self.fractions = torch.linspace(0.05, 1.0, candidates)
        self.errors = torch.zeros(candidates, lo.numel(), dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of the activation."""
        flat = x.detach().float().movedim(self.axis, 0).reshape(self.lo.numel(), -1)
        self.errors += _clip_errors(flat, self.lo, self.hi, self.fractions, self.bits, self.symmetric).double()

    def qparams(self) -> QParams:
        """The per-channel quantizer of the best fraction of each channel (the first on ties)."""
        f = self.fractions[self.errors.argmin(0)]
        return qparams_from_range(self.lo * f, self.hi * f, self.bits, self.symmetric, axis=self.axis)


def weight_qparams(w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, method: str,
                   candidates: int = 40) -> QParams:
    """Quantizer for a weight tensor (axis 0 = output channels); ``mse`` searches each channel's clip.
    Symmetric weights use the narrow range (int8: -127..127) that TensorRT requires."""
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    lo, hi = channel_ranges(flat, bits, symmetric, method, narrow=True, candidates=candidates)
    if per_channel:
        return qparams_from_range(lo, hi, bits, symmetric, axis=0, narrow=True)
    return qparams_from_range(lo[0], hi[0], bits, symmetric, axis=None, narrow=True)
