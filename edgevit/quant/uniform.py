"""The uniform affine quantizer: q = clamp(round(x / s) + z, qmin, qmax), x_hat = (q - z) * s.

Symmetric quantizers are signed with zero point 0, codes [-2^(b-1), 2^(b-1) - 1] and
scale = amax / (2^(b-1) - 1), as TensorRT expects of activations; ``narrow`` ones (weights) use
[-(2^(b-1) - 1), 2^(b-1) - 1], TensorRT's int8 weight range. Asymmetric quantizers are unsigned,
[0, 2^b - 1] (the fast uint8-activation path of ONNX Runtime on x86).
Per-tensor parameters are 0-d; per-channel parameters are 1-d along ``axis``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def qrange(bits: int, symmetric: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer code range of a quantizer."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bit width must be 2..8, got {bits}")
    if symmetric:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclass
class QParams:
    """Scale and zero point of one quantizer (tensors: 0-d per tensor, 1-d per channel)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None = None
    narrow: bool = False

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None or t.dim() == 0:
            return t
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return t.view(shape)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (as an integer-valued float tensor)."""
        s, z = self._view(self.scale, x), self._view(self.zero_point, x)
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        s, z = self._view(self.scale, q), self._view(self.zero_point, q)
        return (q - z) * s

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """quantize then dequantize, in float."""
        return self.dequantize(self.quantize(x))

    def covered_range(self) -> list[float]:
        """The float range the grid covers, its end codes dequantized (per channel: the union over channels)."""
        return [float(((self.qmin - self.zero_point) * self.scale).min()),
                float(((self.qmax - self.zero_point) * self.scale).max())]

    def to_dict(self) -> dict:
        return {"bits": self.bits, "symmetric": self.symmetric, "narrow": self.narrow, "axis": self.axis,
                "scale": self.scale.tolist(), "zero_point": self.zero_point.tolist()}


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool,
                       axis: int | None = None, narrow: bool = False) -> QParams:
    """Scale and zero point that cover [lo, hi] (the range always includes 0, so 0 is exact)."""
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    qmin, qmax = qrange(bits, symmetric)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / qmax, min=eps)
        zp = torch.zeros_like(scale)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return QParams(scale=scale, zero_point=zp, bits=bits, symmetric=symmetric, axis=axis,
                   narrow=narrow and symmetric)
