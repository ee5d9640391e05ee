"""Non-uniform activation quantizers for post-softmax and post-GELU activations 
(log2: FQ-ViT, Lin et al. 2022; AdaLog: Wu et al. 2024; TanQ: DopQ-ViT, Yang et al. 2024).

Post-softmax values lie in [0, 1] and follow a power law: most are tiny, a few near 1 carry the
attention. A uniform grid spends its levels evenly; these quantizers place them where they matter.

* ``LogQuantizer``: levels ``s * 2^(-code * step)``, codes 0 .. 2^b - 1; a value whose code would be
  2^b or more underflows to 0. ``step`` = 1 is log2, 1/2 is RepQ-ViT's log-sqrt2 and ``base_q / 37``
  is AdaLog (base 2^(q/37), q an integer searched in 10..138).
* ``TanQuantizer``: a compander ``code = round((2^b - 1) g(x/s) / g(1))`` with ``g(u) = tan(alpha u)``,
  whose slope grows toward 1, so the grid is densest near 1 (DopQ-ViT's TanQ intent; the paper's exact
  formula is not reproduced here). ``alpha`` -> 0 is the uniform grid.

Both compute ``fake_quant`` with plain torch ops (log, round, clamp, pow, where; tan and a table lookup), so the ONNX
exporter writes them as a float decomposition that reproduces the simulation exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

ADALOG_R = 37  # AdaLog's fixed denominator: base = 2^(q / 37)
ADALOG_Q_RANGE = (10, 138)  # searched integer q (eq_n = 128)
GELU_SHIFT = 0.16997124254703522  # -min GELU(x): post-GELU values + this are >= 0


@dataclass
class LogQuantizer:
    """x_hat = scale * 2^(-code * step), code = clamp(round(-log2(x / scale) / step), 0, 2^b - 1)."""

    bits: int
    scale: float
    step: float
    kind: str = "log2"  # log2 | logsqrt2 | adalog (its registry name)
    base_q: int | None = None  # AdaLog's q (step = q / 37)
    shift: float = 0.0  # added to the input before quantizing (post-GELU); see apply_plan for the bias fold
    table: bool = False  # AdaLog: dequantize with the fixed-point table an integer accelerator stores
    dequant_rule: ClassVar[str] = "x = scale * 2^(-code * step), code in 0..2^bits-1; values past the last code are 0"

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def log_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """log(x / scale), x <= 0 clamped to a ratio of 1e-30 (a huge code: underflow); the part of
        :meth:`codes` that depends on the scale alone."""
        return torch.log(torch.clamp(x / self.scale, min=1e-30))

    def raw_codes(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Unclamped integer codes (float tensor) from :meth:`log_ratio`."""
        # log(.) * constant rather than log2: the same ops (Log, Mul, Round) as the exported ONNX
        return torch.round(log_ratio * (-1.0 / (math.log(2.0) * self.step)))

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (float tensor) and the mask of values that underflow to 0."""
        raw = self.raw_codes(self.log_ratio(x))
        underflow = raw > self.levels - 1
        return torch.clamp(raw, 0, self.levels - 1), underflow

    def fake_quant_log_ratio(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """:meth:`fake_quant` from a precomputed :meth:`log_ratio`, bit for bit: each value looked up in
        the dequantized codes (then 0 past the last code, NaN for NaN). A search over many quantizers of one
        scale computes the logarithm once; the lookup is several times faster than :meth:`dequantize`."""
        levels = self.dequantize(torch.arange(self.levels, dtype=log_ratio.dtype))
        table = torch.cat([levels, torch.tensor([0.0, float("nan")], dtype=levels.dtype)])
        codes = self.raw_codes(log_ratio).clamp_(0, self.levels).nan_to_num_(self.levels + 1)
        return torch.take(table, codes.long())

    def dequantize(self, code: torch.Tensor, underflow: torch.Tensor | None = None) -> torch.Tensor:
        if self.table:  # code * q = 37 k + j (exact in float: < 2^24), x = scale * T[j] / 2^k
            prod = code * float(self.base_q)
            k = torch.floor(prod / ADALOG_R)
            t = adalog_table(self.bits).to(code.dtype)
            value = self.scale * t[(prod - k * ADALOG_R).long()] * torch.pow(2.0, -k)
        else:
            value = self.scale * torch.pow(2.0, code * -self.step)  # exports as Pow (ONNX has no Exp2)
        return value if underflow is None else torch.where(underflow, torch.zeros_like(value), value)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized values: traced (ONNX, CoreML) or with a gradient, as the ops the exporters write;
        else by :meth:`fake_quant_log_ratio`, the same values at a fraction of the time."""
        if torch.jit.is_tracing() or x.requires_grad:
            return self.dequantize(*self.codes(x))
        return self.fake_quant_log_ratio(self.log_ratio(x))

    def grid(self) -> torch.Tensor:
        """Every representable value, ascending (0 included)."""
        codes = torch.arange(self.levels, dtype=torch.float64)
        v = adalog_integer_dequantize(codes, self, adalog_table(self.bits)) if self.table else \
            self.scale * torch.exp2(-codes * self.step)
        return torch.cat([torch.zeros(1, dtype=torch.float64), v.flip(0)])

    def to_dict(self) -> dict:
        d = {"type": self.kind, "bits": self.bits, "scale": self.scale, "step": self.step, "shift": self.shift}
        if self.base_q is not None:
            d.update(base_q=self.base_q, base=2 ** (self.base_q / ADALOG_R), r=ADALOG_R,
                     form="table" if self.table else "float")
        return d


def log2_quantizer(bits: int, scale: float = 1.0) -> LogQuantizer:
    return LogQuantizer(bits, scale, 1.0, "log2")


def logsqrt2_quantizer(bits: int, scale: float = 1.0) -> LogQuantizer:
    return LogQuantizer(bits, scale, 0.5, "logsqrt2")


def adalog_quantizer(bits: int, scale: float, base_q: int, shift: float = 0.0, table: bool = True) -> LogQuantizer:
    """AdaLog with base 2^(q/37); ``table``: dequantized as deployed, with the fixed-point table (else the
    float form 2^(-code q / 37), which the table rounds to 1 / (2^(b+1) - 2))."""
    return LogQuantizer(bits, scale, base_q / ADALOG_R, "adalog", base_q, shift, table)


def adalog_table(bits: int) -> torch.Tensor:
    """AdaLog's fixed-point table T[j] = round(2^(-j/37) (2^(b+1) - 2)) / (2^(b+1) - 2), j = 0..36."""
    denom = 2 ** (bits + 1) - 2
    j = torch.arange(ADALOG_R, dtype=torch.float64)
    return torch.round(torch.exp2(-j / ADALOG_R) * denom) / denom


def adalog_integer_dequantize(code: torch.Tensor, q: LogQuantizer, table: torch.Tensor | None = None) -> torch.Tensor:
    """AdaLog's hardware form: code * q = 37 k + j, x_hat = scale * 2^(-k) * T[j] (shift + lookup).

    With ``table`` None the exact table 2^(-j/37) is used (equals the float form); pass
    :func:`adalog_table` for the fixed-point table an integer accelerator stores."""
    prod = code.to(torch.int64) * q.base_q
    k, j = prod // ADALOG_R, prod % ADALOG_R
    t = torch.exp2(-torch.arange(ADALOG_R, dtype=torch.float64) / ADALOG_R) if table is None else table
    return q.scale * t[j] / (2.0 ** k.to(torch.float64))



@dataclass
class TanQuantizer:
    """code = round((2^b - 1) tan(alpha x / s) / tan(alpha)), x_hat = s atan(code tan(alpha) / (2^b - 1)) / alpha
    (dequantization by table lookup)."""

    bits: int
    alpha: float
    scale: float = 1.0
    kind: str = "tanq"
    dequant_rule: ClassVar[str] = "x = scale * atan(code * tan(alpha) / (2^bits - 1)) / alpha"

    @property
    def top(self) -> int:
        return 2 ** self.bits - 1

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Integer codes (float tensor); nothing underflows (code 0 is the value 0)."""
        u = torch.clamp(x / self.scale, 0.0, 1.0)
        return torch.round(torch.tan(u * self.alpha) * (self.top / math.tan(self.alpha))), None

    def dequantize(self, code: torch.Tensor, underflow: torch.Tensor | None = None) -> torch.Tensor:
        """A lookup in the 2^b-entry table (exported as Gather: bit-exact in any runtime, unlike atan)."""
        table = self.grid().to(code.dtype if code.is_floating_point() else torch.float32)
        return table[code.long()]

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequantize(*self.codes(x))

    def grid(self) -> torch.Tensor:
        code = torch.arange(self.top + 1, dtype=torch.float64)
        return torch.atan(code * (math.tan(self.alpha) / self.top)) * (self.scale / self.alpha)

    def to_dict(self) -> dict:
        return {"type": self.kind, "bits": self.bits, "alpha": self.alpha, "scale": self.scale}


NONUNIFORM = ("log2", "logsqrt2", "adalog", "tanq")
