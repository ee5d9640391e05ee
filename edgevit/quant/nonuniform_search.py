"""Output-error parameter searches: the non-uniform quantizers, and FPCS for uniform activations.

* Post-softmax (attention probabilities A, scale fixed at 1): the objective is
  ||Q(A) V_hat - A V_hat||^2 over the captured calibration samples (V_hat: V through its own quantizer,
  what the next matmul receives). AdaLog's reference code uses A V in full precision; on the built-in
  ViT at W4A4 (AdaLog softmax and GELU, 10,000 test images) the two measure the same (68.78 % vs 68.81 %).
  AdaLog scans every base q in 10..138; TanQ scans its alpha and the top of its grid (P99.9, P99.99,
  max of the probabilities, or 1); log-sqrt2 takes RepQ-ViT's scale (the percentile with the lowest
  error on the probabilities themselves); log2 has nothing to search.
* Post-activation (the MLP's hidden activation X, fc2 weight W): AdaLog on X + shift with FPCS
  (AdaLog's fast progressive combining search, Wu et al., ECCV 2024): scan all bases at the max
  scale and keep 8; cross them with 16 percentile scales (P90..P100, plus the shift) and keep 32;
  refine 5 rounds with 4 new scales around each survivor, shrinking the step 7.5x a round. The
  objective is ||(Q(X + shift) - shift) W^T - X W^T||^2, the fc2 output error (bias cancels).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edgevit.quant.nonuniform import (ADALOG_Q_RANGE, LogQuantizer, TanQuantizer, adalog_quantizer,
                                      log2_quantizer, logsqrt2_quantizer)
from edgevit.quant.quantizers import ActivationQuantizer, QuantizerEntry, quantizer, register
from edgevit.quant.reparam import REPQ_PERCENTILES
from edgevit.quant.uniform import QParams, qrange

FPCS_TOP_BASES = 8
FPCS_SCALES = 16
FPCS_KEEP = 32
FPCS_ROUNDS = 5
FPCS_NEW_SCALES = 4
TANQ_ALPHAS = 30
MAX_ROWS = 512  # token rows of the post-activation search (each candidate costs one fc2 matmul over them)


def _sample(t: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``t`` (seeded, so a recipe always picks the same ones)."""
    if len(t) <= n:
        return t
    return t[torch.randperm(len(t), generator=torch.Generator().manual_seed(0))[:n]]


def _log_ratios(xs: list[torch.Tensor]):
    """``LogQuantizer.log_ratio`` of each of ``xs`` for a quantizer's scale, kept for the last scale asked: the
    searches evaluate their candidates grouped by scale, so each logarithm is computed once per scale."""
    last: dict[float, list[torch.Tensor]] = {}

    def of(q: LogQuantizer) -> list[torch.Tensor]:
        if q.scale not in last:
            last.clear()
            last[q.scale] = [q.log_ratio(x) for x in xs]
        return last[q.scale]
    return of


def _refine_scales(pool: list[tuple], err, step: float, rounds: int, new_scales: int, keep: int) -> tuple:
    """FPCS refinement: ``rounds`` rounds of ``new_scales`` scales around each survivor (scale, tag) of
    ``pool`` (entries (error, scale, tag)), the step shrinking 7.5x a round; returns the best entry."""
    for r in range(rounds):
        offsets = [float(o) for o in (torch.linspace(0, 1, new_scales) - 0.5) * step]
        cands = {(sc, tag) for _, sc, tag in pool} | {(sc + o, tag) for _, sc, tag in pool for o in offsets if sc + o > 0}
        # evaluated in scale order (``err`` may reuse work between candidates of one scale); the same sort
        pool = sorted((err(sc, tag), sc, tag) for sc, tag in sorted(cands))[:1 if r == rounds - 1 else keep]
        step /= 7.5
    return pool[0]


def search_softmax(kind: str, bits: int, attn: list[torch.Tensor], v: list[torch.Tensor],
                   v_qparams: QParams | None = None, table: bool = True) -> ActivationQuantizer:
    """The post-softmax quantizer registered as ``kind`` that best preserves attn @ V_hat on the samples
    (``table``: AdaLog candidates dequantize with the fixed-point table, as deployed)."""
    entry = quantizer(kind)
    if entry.fixed is not None:
        return entry.fixed(bits)
    if entry.softmax_candidates is None:
        raise ValueError(f"{kind} is not a post-softmax quantizer")
    v_hat = [v_qparams.fake_quant(t) if v_qparams is not None else t for t in v]
    ref = [a @ vh for a, vh in zip(attn, v_hat)]

    logs = _log_ratios(attn)  # AdaLog's candidates share scale 1: one logarithm for all

    def fake_quant(q, i: int, a: torch.Tensor) -> torch.Tensor:
        return q.fake_quant_log_ratio(logs(q)[i]) if isinstance(q, LogQuantizer) else q.fake_quant(a)

    def err(q) -> float:
        return float(sum(((fake_quant(q, i, a) @ vh - r) ** 2).sum()
                         for i, (a, vh, r) in enumerate(zip(attn, v_hat, ref))))

    candidates = [dataclasses.replace(q, table=table) if getattr(q, "base_q", None) is not None else q
                  for q in entry.softmax_candidates(bits, attn)]
    return min(candidates, key=err)


def _adalog_softmax(bits: int, attn: list[torch.Tensor]) -> list[LogQuantizer]:
    """Every AdaLog base (q = 10..138) at scale 1 (probabilities reach 1)."""
    return [adalog_quantizer(bits, 1.0, q) for q in range(ADALOG_Q_RANGE[0], ADALOG_Q_RANGE[1] + 1)]


def _logsqrt2_softmax(bits: int, attn: list[torch.Tensor]) -> list[LogQuantizer]:
    """RepQ-ViT's log-sqrt2 scale (Li et al., ICCV 2023): of the probabilities' 99.9th, 99.99th and
    99.999th percentiles, the one whose quantizer has the lowest mean squared error on the probabilities
    themselves (RepQ-ViT's criterion; the attention-output error is not used). One candidate."""
    flat = torch.cat([a.reshape(-1) for a in attn]).float()
    if flat.numel() < 2 ** 24:  # as RepQ-ViT: torch.quantile, numpy beyond its element limit
        tops = [float(torch.quantile(flat, p)) for p in REPQ_PERCENTILES]
    else:
        tops = [float(np.float32(np.percentile(flat.numpy(), 100 * p))) for p in REPQ_PERCENTILES]
    cands = [logsqrt2_quantizer(bits, t) for t in tops if t > 0]
    return [min(cands, key=lambda q: float(((q.fake_quant(flat) - flat) ** 2).mean()))] if cands \
        else [logsqrt2_quantizer(bits)]


def _tanq_softmax(bits: int, attn: list[torch.Tensor]) -> list[TanQuantizer]:
    """TanQ's alpha and the top of its grid (attention rarely reaches 1: P99.9, P99.99, max, 1)."""
    flat = _sample(torch.cat([a.reshape(-1) for a in attn]), 1_000_000)
    tops = sorted({min(1.0, float(t)) for t in torch.quantile(flat, torch.tensor([0.999, 0.9999, 1.0]))} | {1.0})
    return [TanQuantizer(bits, float(a), t) for a in torch.linspace(0.05, 1.5, TANQ_ALPHAS) for t in tops]


def search_post_activation(bits: int, x: torch.Tensor, weight: torch.Tensor, shift: float,
                           table: bool = True) -> LogQuantizer:
    """AdaLog for a post-GELU/SiLU activation ``x`` (rows x channels) feeding ``weight`` (out x channels);
    ``table``: dequantized with the fixed-point table, as deployed."""
    x = _sample(x.reshape(-1, x.shape[-1]).float(), MAX_ROWS)
    w = weight.float()
    ref = x @ w.t()
    xs = x + shift

    seen: dict[tuple[float, int], float] = {}
    logs = _log_ratios([xs])

    def err(scale: float, base_q: int) -> float:
        if (scale, base_q) not in seen:
            q = adalog_quantizer(bits, scale, base_q, shift, table)
            seen[scale, base_q] = float((((q.fake_quant_log_ratio(logs(q)[0]) - shift) @ w.t() - ref) ** 2).sum())
        return seen[scale, base_q]

    top = float(xs.max())
    bases = list(range(ADALOG_Q_RANGE[0], ADALOG_Q_RANGE[1] + 1))
    bases = sorted(bases, key=lambda b: err(top, b))[:FPCS_TOP_BASES]
    positive = xs[xs > 0]
    pcts = torch.quantile(positive, torch.linspace(0.90, 1.0, FPCS_SCALES)).tolist()
    scales = sorted({s for s in pcts + [shift] if s > 0})
    pool = sorted((err(s, b), s, b) for s in scales for b in bases)[:FPCS_KEEP]
    step = (max(scales) - min(scales)) / max(len(scales) - 1, 1)
    _, scale, base_q = _refine_scales(pool, err, step, FPCS_ROUNDS, FPCS_NEW_SCALES, FPCS_KEEP)
    return adalog_quantizer(bits, scale, base_q, shift, table)


def quantizer_mse(q, x: torch.Tensor) -> float:
    """Mean squared quantization error of ``q`` on ``x`` (for the benchmark's quantizer table)."""
    return float(((q.fake_quant(x) - x) ** 2).mean())


def fpcs_uniform(bits: int, x: torch.Tensor, weight: torch.Tensor, steps: int = 6, keep: int = 16,
                 new_scales: int = 8, budget: int = 128) -> QParams:
    """FPCS for a uniform asymmetric activation quantizer against the consuming Linear's output error.

    Candidates: up to 16 consecutive zero points around 2^(b-1) x scales spaced from (P90 - P10) to
    (max - min) over the levels (about 128 pairs); keep the best 16; then ``steps - 1`` rounds of 8
    new scales around each survivor (its zero point kept), the step shrinking 7.5x a round, the last
    round keeping one (AdaLog, Wu et al., ECCV 2024)."""
    x = _sample(x.reshape(-1, x.shape[-1]).float(), MAX_ROWS)
    w = weight.float()
    ref = x @ w.t()
    qmin, qmax = qrange(bits, False)
    levels = qmax - qmin
    flat = x.reshape(-1)
    p10, p90 = torch.quantile(_sample(flat, 1_000_000), torch.tensor([0.1, 0.9])).tolist()
    lo_s = max((p90 - p10) / levels, 1e-8)
    hi_s = max(float(flat.max() - flat.min()) / levels, lo_s * 1.01)
    num_zp = min(16, 2 ** bits)
    zps = [2 ** (bits - 1) - num_zp // 2 + i for i in range(num_zp)]
    # the zero point that puts the tensor's minimum at code 0, so strongly one-sided tensors are covered
    zps = sorted(set(zps) | {int(min(max(round(-float(flat.min()) / hi_s), qmin), qmax))})
    scales = torch.linspace(lo_s, hi_s, max(2, budget // len(zps))).tolist()

    def err(s: float, z: int) -> float:
        q = QParams(torch.tensor(s), torch.tensor(float(z)), bits, False)
        return float(((q.fake_quant(x) @ w.t() - ref) ** 2).sum())

    pool = sorted((err(s, z), s, z) for s in scales for z in zps)[:keep]
    delta = (hi_s - lo_s) / max(len(scales) - 1, 1)
    _, s, z = _refine_scales(pool, err, delta, steps - 1, new_scales, keep)
    return QParams(torch.tensor(s), torch.tensor(float(z)), bits, False)


register(QuantizerEntry("log2", LogQuantizer.dequant_rule, fixed=log2_quantizer))
register(QuantizerEntry("logsqrt2", LogQuantizer.dequant_rule, softmax_candidates=_logsqrt2_softmax))
register(QuantizerEntry("adalog", LogQuantizer.dequant_rule, softmax_candidates=_adalog_softmax,
                        post_activation=search_post_activation))
register(QuantizerEntry("tanq", TanQuantizer.dequant_rule, softmax_candidates=_tanq_softmax))
