"""Streaming activation statistics: running min/max and a histogram that grows with the range.

Nothing stores the activations themselves, so calibration memory does not grow with the number of
images. The histogram re-bins its counts when a batch falls outside the current range, like
PyTorch's HistogramObserver, with the range doubled around the data to keep re-binning rare.
"""
from __future__ import annotations

import numpy as np
import torch


class HistogramObserver:
    """Per-tensor min, max and a histogram of values (``bins`` equal-width bins over [lo, hi])."""

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.min = float("inf")
        self.max = float("-inf")
        self.lo = 0.0
        self.hi = 0.0
        self.counts = np.zeros(bins, dtype=np.float64)
        self.batches = 0

    @property
    def empty(self) -> bool:
        return self.batches == 0

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of activations."""
        v = x.detach().float().reshape(-1)
        if v.numel() == 0:
            return
        bmin, bmax = float(v.min()), float(v.max())
        self.min, self.max = min(self.min, bmin), max(self.max, bmax)
        if self.batches == 0:
            self.lo, self.hi = min(bmin, 0.0), max(bmax, 0.0)
            if self.hi == self.lo:
                self.hi = self.lo + 1e-8
        elif bmin < self.lo or bmax > self.hi:
            self._grow(bmin, bmax)
        counts = torch.histc(v, bins=self.bins, min=self.lo, max=self.hi)
        self.counts += counts.double().numpy()
        self.batches += 1

    def _grow(self, bmin: float, bmax: float) -> None:
        span = self.hi - self.lo
        lo, hi = self.lo, self.hi
        while bmin < lo:
            lo -= span
            span *= 2
        while bmax > hi:
            hi += span
            span *= 2
        centers = self.edges()[:-1] + (self.hi - self.lo) / (2 * self.bins)
        self.counts, _ = np.histogram(centers, bins=self.bins, range=(lo, hi), weights=self.counts)
        self.lo, self.hi = lo, hi

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def centers(self) -> np.ndarray:
        e = self.edges()
        return (e[:-1] + e[1:]) / 2

    def percentile_range(self, pct: float) -> tuple[float, float]:
        """The (100 - pct, pct) percentiles of the observed values."""
        cdf = np.cumsum(self.counts)
        total = cdf[-1]
        if total <= 0:
            return self.min, self.max
        e = self.edges()
        lo_i = int(np.searchsorted(cdf, total * (1 - pct / 100.0), side="left"))
        hi_i = int(np.searchsorted(cdf, total * pct / 100.0, side="left"))
        lo = max(self.min, float(e[lo_i]))
        hi = min(self.max, float(e[min(hi_i + 1, self.bins)]))
        return lo, hi


class ChannelRangeObserver:
    """Running per-channel min and max along ``axis`` (channel-wise activation quantizers)."""

    def __init__(self, axis: int):
        self.axis = axis
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of activations."""
        flat = x.detach().float().movedim(self.axis, 0)
        flat = flat.reshape(flat.shape[0], -1)
        if flat.shape[1] == 0:
            return
        mn, mx = flat.min(1).values, flat.max(1).values
        self.min = mn if self.min is None else torch.minimum(self.min, mn)
        self.max = mx if self.max is None else torch.maximum(self.max, mx)
