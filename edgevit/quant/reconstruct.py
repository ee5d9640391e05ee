"""Block reconstruction for low-bit weights (BRECQ with AdaRound rounding and QDrop), block by block.

Rounding each weight to its nearest grid point is optimal for the weight, not for the block's output.
For every block (see ``units``: conv blocks, bridge blocks such as MobileViT blocks, transformer
blocks), in execution order:

1. inputs: the float model's input to the unit (target side) and the quantized model's input, where
   every unit before is already reconstructed (BRECQ); QDrop mixes the two element-wise (p = 0.5)
   and, inside the unit, lets each activation element skip its quantizer with p = 0.5;
2. AdaRound: each weight is s * clamp(floor(W / s) + h(V), qmin, qmax) with h(V) = clip(sigmoid(V)
   (zeta - gamma) + gamma, 0, 1), V initialized so that h(V) = frac(W / s); Adam on V minimizes
   ||unit_q(x) - unit_fp(x_fp)||^2 + lambda * sum(1 - |2 h(V) - 1|^beta), beta annealed 20 -> 2 after
   a 20 % warm-up without the regularizer;
   With ``learn_scale`` the weight scales (one per output channel) are learned too, as s * exp(g) with
   g starting at 0 (the codes stay on the grid of the initial scale; only their step changes).
   With ``learn_act_scale`` the step of every uniform per-tensor activation quantizer inside the unit is learned
   the same way, with LSQ's gradient, as BRECQ and QDrop do for low-bit activations (zero points stay);
   With ``learn_bias`` the float biases of the unit's layers are learned too (as AdaQuant, Hubara et al. 2021,
   does per layer): they absorb the mean shift that low-bit activations leave in the unit's output;
3. the rounding is fixed (h(V) >= 0.5 -> up); the integer codes go into the plan (``plan.rounded``)
   and the learned scales into its weight and activation quantizers, so ``apply_plan`` and the ONNX
   export carry them.

The recipe gives the iterations per unit, the images and a time budget (split evenly over units;
a unit stops early when its share is spent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.quant.bridges import is_container
from edgevit.quant.partial import execution_order, run_until
from edgevit.quant.sites import QuantWeighted, act_sites, bias_on_int32_grid, set_mode, weighted_sites

ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 0.01
WARMUP = 0.2
SCALE_LR_RATIO = 0.1  # the log-scale gains move ~10x slower than the rounding variables


def units(qm: nn.Module, x: torch.Tensor) -> list[str]:
    """The blocks to reconstruct, in execution order: the outermost modules that hold quantized weights
    and are not plain containers (stem, each conv block, each bridge block such as a MobileViT block,
    each transformer block, the head). Every quantized layer belongs to exactly one block, so errors
    made early in the conv trunk are reconstructed too instead of reaching the bridges unchecked."""
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if not any(isinstance(m, QuantWeighted) for m in child.modules()):
                continue
            if is_container(child, name):
                visit(child, f"{name}.")
            else:
                names.append(name)

    visit(qm, "")
    set_mode(qm, "off")
    try:
        return execution_order(qm, {n: qm.get_submodule(n) for n in names}, x[:1])
    finally:
        set_mode(qm, "quant")


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


class _AdaRound:
    """Learnable rounding of one wrapped layer's weight on its quantizer's grid."""

    def __init__(self, mod, w: torch.Tensor):
        """``w``: the layer's float weight (``apply_plan`` already rounded ``mod``'s to nearest)."""
        q = mod.weight_qparams
        w = w.detach()
        self.mod, self.q = mod, q
        self.pruned = w == 0  # pruned weights (2:4, blocks) stay exactly zero whatever the rounding learns
        s, z = q._view(q.scale, w), q._view(q.zero_point, w)
        self.s, self.z = s, z
        scaled = w / s
        self.floor = torch.floor(scaled)
        rest = (scaled - self.floor).clamp(0.01, 0.99)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(v) = rest
        self.gain = nn.Parameter(torch.zeros_like(q.scale))  # log of the learned scale's ratio to q.scale

    def soft(self) -> torch.Tensor:
        codes = torch.clamp(self.floor + _h(self.v) + self.z, self.q.qmin, self.q.qmax)
        return ((codes - self.z) * self.s * self.q._view(self.gain.exp(), self.s)).masked_fill(self.pruned, 0.0)

    def qparams(self):
        """The weight quantizer with the learned scale."""
        return replace(self.q, scale=(self.q.scale * self.gain.detach().exp()).contiguous())

    def codes(self) -> torch.Tensor:
        """The fixed integer codes (round up where h(V) >= 0.5)."""
        up = (self.v.detach() >= 0).float()
        codes = torch.clamp(self.floor + up + self.z, self.q.qmin, self.q.qmax)
        return torch.where(self.pruned, self.z.expand_as(codes), codes).to(torch.int8)

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * _h(self.v) - 1).abs().pow(beta)).sum()


def unit_io(model: nn.Module, unit: nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of ``unit`` when ``model`` runs on ``x`` (in batches)."""
    ins, outs = zip(*(run_until(model, unit, x[i:i + batch]) for i in range(0, len(x), batch)))
    return torch.cat(ins), torch.cat(outs)


@dataclass
class Reconstruction:
    """What reconstruction learned: integer weight codes and weight quantizers per layer, activation
    quantizers per site (only where their steps were learned), one record per unit."""

    rounded: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, object] = field(default_factory=dict)
    activations: dict[str, object] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)


def reconstruct(fm: nn.Module, qm: nn.Module, x: torch.Tensor, iters: int = 500, batch: int = 32,
                lr: float = 1e-2, budget_s: float | None = None, seed: int = 0, drop_prob: float = 0.5,
                learn_scale: bool = False, learn_act_scale: bool = False, learn_bias: bool = False,
                on_unit: Callable[[str, dict], None] | None = None) -> Reconstruction:
    """Reconstruct ``qm`` (``apply_plan`` output, modified in place) against ``fm`` (the float model with
    the same structure: ``prepare`` output) on images ``x``. Returns the integer weight codes of every
    reconstructed layer, their weight quantizers (scales learned when ``learn_scale``), the activation
    quantizers whose steps were learned (``learn_act_scale``), the learned biases (``learn_bias``) and one record
    per unit (loss with nearest rounding, before and after learning, iterations, seconds). Learned activation
    steps are kept only where they reconstruct the unit better than its calibrated steps under the learned
    rounding; a unit whose learning reconstructs worse than nearest rounding keeps its calibrated activation
    steps and float biases."""
    gen = torch.Generator().manual_seed(seed)
    names = units(qm, x)
    share = budget_s / max(len(names), 1) if budget_s else None
    out = Reconstruction()
    rounded, qparams, records = out.rounded, out.weights, out.records
    for name in names:
        t0 = time.time()
        q_unit, f_unit = qm.get_submodule(name), fm.get_submodule(name)
        set_mode(qm, "quant")
        x_q, _ = unit_io(qm, q_unit, x, batch)
        x_fp, target = unit_io(fm, f_unit, x, batch)
        layers = [m for m in weighted_sites(q_unit) if m.weight_qparams is not None]
        if not layers:
            continue
        nearest = unit_loss(q_unit, x_q, target, batch)  # apply_plan rounded every weight to nearest
        kept = {m.site: (m.inner.weight.detach().clone(), m.weight_qparams) for m in layers}
        float_w = {m.site: m.inner.weight for m in weighted_sites(f_unit)}
        rounders = [_AdaRound(m, float_w[m.site]) for m in layers]
        for m, r in zip(layers, rounders):
            m.weight_override = r.soft
        # the soft start is the float weight (clamped to the grid): its error is what the activation quantizers cost
        before = unit_loss(q_unit, x_q, target, batch)  # (before QDrop is switched on: no dropped elements)
        sites = act_sites(q_unit)
        for s in sites:  # QDrop's masks from the seeded stream: the same seed learns the same rounding in any process
            s.drop_prob, s.drop_generator = drop_prob, gen
        stepped = [s for s in sites if learn_act_scale and s.qparams is not None and s.qparams.axis is None
                   and s.nonuniform is None]
        for s in stepped:
            s.scale_gain = torch.zeros_like(s.qparams.scale, requires_grad=True)
        biased = [m for m in layers if learn_bias and getattr(m.inner, "bias", None) is not None]
        start_bias = {m.site: m.inner.bias.detach().clone() for m in biased}
        for m in biased:
            m.inner.bias.requires_grad_(True)
            m.gemm_bias = None  # a 2-D Linear adds inner.bias while it learns (apply_plan puts it back on its grid)
        groups = [{"params": [r.v for r in rounders]}]
        if learn_scale:
            groups.append({"params": [r.gain for r in rounders], "lr": lr * SCALE_LR_RATIO})
        if stepped:
            groups.append({"params": [s.scale_gain for s in stepped], "lr": lr * SCALE_LR_RATIO})
        if biased:
            groups.append({"params": [m.inner.bias for m in biased], "lr": lr * SCALE_LR_RATIO})
        opt = torch.optim.Adam(groups, lr=lr)
        done = 0
        for it in range(iters):
            if share is not None and time.time() - t0 > share:
                break
            idx = torch.randint(0, len(x_q), (min(batch, len(x_q)),), generator=gen)
            inp = torch.where(torch.rand(x_q[idx].shape, generator=gen) < drop_prob, x_fp[idx], x_q[idx])
            with torch.enable_grad():  # calibration runs under no_grad
                loss = F.mse_loss(q_unit(inp), target[idx], reduction="sum") / len(idx)
                progress = it / iters
                if progress >= WARMUP:
                    beta = 20 + (2 - 20) * (progress - WARMUP) / (1 - WARMUP)
                    loss = loss + REG_WEIGHT * sum(r.regularizer(beta) for r in rounders)
                opt.zero_grad()
                loss.backward()
            opt.step()
            done = it + 1
        for s in sites:
            s.drop_prob, s.drop_generator = 0.0, None
        for m in biased:
            m.inner.bias.requires_grad_(False)
            bias_on_int32_grid(m)  # of the steps before learning; apply_plan regrids it for the steps that ship
        calibrated = {s.site: s.qparams for s in stepped}
        for s in stepped:
            s.qparams = replace(s.qparams, scale=(s.qparams.scale * s.scale_gain.detach().exp()).contiguous())
            s.scale_gain = None
        for m, r in zip(layers, rounders):
            codes = r.codes()
            rounded[m.site], qparams[m.site] = codes, r.qparams()
            m.weight_qparams, m.weight_override = qparams[m.site], None
            with torch.no_grad():
                m.inner.weight.copy_(m.weight_qparams.dequantize(codes.float()))
        after = unit_loss(q_unit, x_q, target, batch)
        learned_steps, steps_record = {s.site: s.qparams for s in stepped}, {}
        if stepped:  # learned steps ship only where they beat the calibrated ones under the learned rounding
            for s in stepped:
                s.qparams = calibrated[s.site]
            with_calibrated = unit_loss(q_unit, x_q, target, batch)
            steps_record = {"loss_learned_steps": after, "loss_calibrated_steps": with_calibrated}
            if with_calibrated < after:
                after, learned_steps = with_calibrated, {}
            else:
                for s in stepped:
                    s.qparams = learned_steps[s.site]
        # the learned rounding ships only if it reconstructs the unit at least as well as nearest rounding
        # (a step too large for the unit, or too few iterations in the time budget, can end worse)
        learned = after <= nearest
        if learned:
            out.activations.update(learned_steps)
            out.biases.update({m.site: m.inner.bias.detach().clone() for m in biased})
        else:
            for m in layers:
                w, q = kept[m.site]
                with torch.no_grad():
                    m.inner.weight.copy_(w)
                m.weight_qparams = qparams[m.site] = q
                rounded[m.site] = q.quantize(w).to(torch.int8)
            for s in stepped:
                s.qparams = calibrated[s.site]
            for m in biased:
                with torch.no_grad():
                    m.inner.bias.copy_(start_bias[m.site])
                bias_on_int32_grid(m)
        records.append({"unit": name, "layers": len(layers), "iters": done, "loss_before": before,
                        "loss_nearest": nearest, "loss_after": after, "kept": "learned" if learned else "nearest",
                        "activation_steps": len(learned_steps) if learned else 0,
                        "activation_steps_tried": len(stepped), "biases": len(biased) if learned else 0,
                        **steps_record,
                        "seconds": round(time.time() - t0, 1)})
        if on_unit:
            on_unit(name, records[-1])
    return out


@torch.no_grad()
def unit_loss(unit: nn.Module, x: torch.Tensor, target: torch.Tensor, batch: int) -> float:
    """Mean over images of the summed squared error of ``unit(x)`` against ``target``."""
    total = sum(float(F.mse_loss(unit(x[i:i + batch]), target[i:i + batch], reduction="sum"))
                for i in range(0, len(x), batch))
    return total / len(x)
