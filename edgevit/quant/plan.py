"""QuantPlan: site -> quantizer parameters, the single source of truth of a quantized model.

``calibrate`` measures a model on calibration batches and returns a plan; ``apply_plan`` builds the
fake-quant PyTorch model from a plan (the simulation, and what the ONNX exporter traces into
QuantizeLinear/DequantizeLinear pairs); ``plan.to_dict()`` is what the report lists.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from edgevit.quant.config import QuantConfig
from edgevit.quant.fold import fold_batchnorm
from edgevit.quant.granularity import search_granularity
from edgevit.quant.nonuniform import adalog_table
from edgevit.quant.nonuniform_search import fpcs_uniform, search_softmax
from edgevit.quant.partial import stream_inputs
from edgevit.quant.quantizers import QUANTIZERS, ActivationQuantizer, quantizer
from edgevit.quant.reconstruct import reconstruct
from edgevit.quant.reparam import apply_reparam, reparameterize
from edgevit.quant.search import ChannelClipSearch, activation_range, weight_qparams
from edgevit.quant.sites import (AttentionSites, act_sites, bias_on_int32_grid, clamp_weight, insert_sites,
                                 set_mode, weighted_sites)
from edgevit.quant.uniform import QParams, qparams_from_range


def dequant_rules() -> dict[str, str]:
    """How every kind of quantizer in quant_params.json dequantizes (the registered ones included)."""
    return {"uniform": "x = (code - zero_point) * scale; weights per output channel (axis 0)",
            **{name: e.dequant_rule for name, e in sorted(QUANTIZERS.items())},
            "adalog (integer)": "code * base_q = 37 k + j; x = scale * table[j] / 2^k (table: fixed point, "
                                "2^(bits+1)-2 steps)",
            "shift": "a site with shift quantizes x + shift; the consuming Linear's bias already holds -W shift",
            "layernorm_reparam": "LayerNorm gamma/r, beta/r - b and the next Linear's W*r, B + W b are already "
                                 "folded in"}


@dataclass
class PlanEntry:
    """One activation site's quantizer: the uniform grid (``qparams``) over the chosen range, or a
    registered non-uniform ``quantizer`` (the uniform grid then stands for it where a runtime needs
    one), and how it was chosen."""

    kind: str  # the site's kind: attn_softmax, post_act, linear_in, ...
    observed: list[float]  # calibration min, max
    range: list[float]  # the range the grid covers
    qparams: QParams
    quantizer: ActivationQuantizer | None = None
    granularity: str | None = None  # set by the granularity / scheme search
    scheme: str | None = None
    search: str | None = None  # fpcs | layer | bridge: what chose the grid
    search_errors: dict[str, float] | None = None
    bridge: str | None = None

    def summary(self, full: bool = False) -> dict:
        """Plain data for plan.json / report.json (the searched fields only where a search ran)."""
        d = {"kind": self.kind, "observed": self.observed, "range": self.range}
        d |= {k: getattr(self, k) for k in ("granularity", "scheme", "search", "search_errors", "bridge")
              if getattr(self, k) is not None}
        return d | _act_summary(self.qparams, full) | (
            {"nonuniform": self.quantizer.to_dict()} if self.quantizer is not None else {})


@dataclass
class QuantPlan:
    """Everything needed to rebuild the quantized model from the float one."""

    config: QuantConfig
    activations: dict[str, PlanEntry] = field(default_factory=dict)
    weights: dict[str, QParams] = field(default_factory=dict)
    folded_bn: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unobserved: list[str] = field(default_factory=list)
    reparam: dict[str, dict] = field(default_factory=dict)  # LayerNorm name -> r, b, target scale
    bridges: list[dict] = field(default_factory=list)  # bridge blocks the granularity search used
    float_layers: list[str] = field(default_factory=list)  # kept in float by the accuracy-budget fallback
    float_regions: list[str] = field(default_factory=list)  # left in float by the latency placement
    float_sites: list[str] = field(default_factory=list)  # quantizers the placement dropped (layout chains)
    rounded: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> int8 weight codes (reconstruction)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> learned float bias (reconstruction)
    reconstruction: list[dict] = field(default_factory=list)  # per block: loss before/after, iterations

    def drop_weight(self, layer: str) -> None:
        """Leave ``layer``'s weight in float: its quantizer and what reconstruction learned for it go."""
        for learned in (self.weights, self.rounded, self.biases):
            learned.pop(layer, None)

    def to_dict(self, full: bool = False) -> dict:
        """Plain data for report.json / plan.json (``full`` includes every per-channel scale)."""
        def wsum(q: QParams) -> dict:
            d = {"bits": q.bits, "symmetric": q.symmetric, "granularity": "tensor" if q.axis is None else "channel",
                 "channels": int(q.scale.numel()), "scale_min": float(q.scale.min()),
                 "scale_max": float(q.scale.max())}
            if full:
                d.update(scale=q.scale.tolist(), zero_point=q.zero_point.tolist())
            return d

        reparam = {k: {"target_scale": float(f["target_scale"]), "target_zero_point": int(f["target_zero_point"]),
                       "r_min": float(f["r"].min()), "r_max": float(f["r"].max())} |
                   ({"r": f["r"].tolist(), "b": f["b"].tolist()} if full else {}) for k, f in self.reparam.items()}
        return {"config": self.config.model_dump(), "folded_batchnorm": self.folded_bn, "layernorm_reparam": reparam,
                "skipped": self.skipped, "unobserved_sites": self.unobserved, "float_layers": self.float_layers,
                "float_regions": self.float_regions, "float_sites": self.float_sites,
                "reconstruction": self.reconstruction,
                "bridge_blocks": self.bridges,
                "activations": {k: v.summary(full) for k, v in self.activations.items()},
                "weights": {k: wsum(q) for k, q in self.weights.items()}}

    def quant_params(self) -> dict:
        """The sidecar an integer-only accelerator toolchain reads (quant_params.json): every site's
        quantizer with its dequantization rule, per-channel weight scales, LayerNorm reparameterization."""
        acts = {}
        for name, v in self.activations.items():
            q, nu = v.qparams, v.quantizer
            if nu is None:
                acts[name] = {"kind": v.kind, "type": "uniform", **_act_summary(q, full=True)}
            else:
                acts[name] = {"kind": v.kind, **nu.to_dict()}
                if nu.kind == "adalog":
                    acts[name]["table"] = adalog_table(nu.bits).tolist()
        return {"format": "edgevit.quant_params/1", "dequantization": dequant_rules(), "activations": acts,
                "weights": {k: q.to_dict() for k, q in self.weights.items()},
                "layernorm_reparam": {k: {"r": f["r"].tolist(), "b": f["b"].tolist(),
                                          "target_scale": float(f["target_scale"]),
                                          "target_zero_point": int(f["target_zero_point"])}
                                      for k, f in self.reparam.items()}}

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for v in self.activations.values():
            kinds[v.kind] = kinds.get(v.kind, 0) + 1
            if v.quantizer is not None:
                key = f"nonuniform_{v.quantizer.kind}"
                kinds[key] = kinds.get(key, 0) + 1
        return {"activation_sites": len(self.activations), "weight_tensors": len(self.weights),
                "reparameterized_layernorms": len(self.reparam),
                "folded_batchnorm": len(self.folded_bn), "skipped_modules": len(self.skipped), **kinds}


def _act_summary(q: QParams, full: bool) -> dict:
    """An activation quantizer as plain data: scalars per tensor; per channel the axis and the scale
    range (with ``full``, every scale and zero point)."""
    d = {"bits": q.bits, "symmetric": q.symmetric}
    if q.axis is None:
        return d | {"scale": float(q.scale), "zero_point": int(q.zero_point)}
    d |= {"axis": q.axis, "channels": int(q.scale.numel()), "scale_min": float(q.scale.min()),
          "scale_max": float(q.scale.max())}
    return d | ({"scale": q.scale.tolist(), "zero_point": [int(z) for z in q.zero_point]} if full else {})


def _float_copy(model: nn.Module, cfg: QuantConfig) -> tuple[nn.Module, list[str]]:
    m = copy.deepcopy(model).eval()
    return m, fold_batchnorm(m) if cfg.fold_bn else []


def prepare(model: nn.Module, cfg: QuantConfig, reparam: dict | None = None) -> tuple[nn.Module, list[str], list[str]]:
    """A float copy of ``model`` (BatchNorm folded, LayerNorms reparameterized) with its sites inserted, all off;
    returns it with the folded BatchNorms and the modules left unwrapped."""
    m, folded = _float_copy(model, cfg)
    if reparam:
        apply_reparam(m, reparam)
    skipped = insert_sites(m, attention=cfg.attention, skip=cfg.skip, conv_output=cfg.conv_output,
                           post_act=cfg.gelu_sites)
    return m, folded, skipped


@torch.no_grad()
def calibrate(model: nn.Module, cfg: QuantConfig, batches: Iterable[torch.Tensor],
              on_batch: Callable[[int], None] | None = None,
              on_unit: Callable[[str, dict], None] | None = None) -> QuantPlan:
    """Observe activations on calibration batches and choose every quantizer's parameters."""
    factors = {}
    if cfg.layernorm != "none":
        batches = list(batches)[:cfg.calibration_batches]  # two passes: LayerNorm channel ranges, then sites
        factors = reparameterize(_float_copy(model, cfg)[0], batches, cfg.activations.bits, cfg.layernorm,
                                 cfg.layernorm_ranges)
    m, folded, skipped = prepare(model, cfg, factors)
    set_mode(m, "observe")
    seen, kept = 0, []
    for i, x in enumerate(batches):
        if cfg.calibration_batches is not None and i >= cfg.calibration_batches:
            break
        m(x)
        seen += len(x)
        if sum(len(k) for k in kept) < max(cfg.search_images, cfg.reconstruct.images if cfg.reconstruct else 0):
            kept.append(x)
        if on_batch:
            on_batch(len(x))
    if seen == 0:
        raise ValueError("no calibration images were given")
    plan = QuantPlan(config=cfg, folded_bn=folded, skipped=skipped, reparam=factors)
    a = cfg.activations
    for site in act_sites(m):
        if site.observer is None or site.observer.empty:
            plan.unobserved.append(site.site)
            continue
        obs = site.observer
        bits = _bits(m, site.site.rsplit(".", 1)[0], a.bits, cfg)
        if site.kind == "attn_softmax" and not a.symmetric:
            lo, hi = 0.0, max(obs.max, 1e-8)  # probabilities: [0, max], no search below 0
        else:
            lo, hi = activation_range(obs, "mse" if a.method == "fpcs" else a.method, bits, a.symmetric,
                                      a.percentile)
        plan.activations[site.site] = PlanEntry(site.kind, [obs.min, obs.max], [lo, hi],
                                                qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits,
                                                                   a.symmetric))
    w = cfg.weights
    for mod in weighted_sites(m):
        plan.weights[mod.site] = weight_qparams(mod.inner.weight, _bits(m, mod.site, w.bits, cfg), w.symmetric,
                                                w.granularity == "channel", w.method)
    if a.method == "fpcs":
        _search_uniform_fpcs(m, plan, torch.cat(kept)[:cfg.search_images])
    if a.depthwise == "channel":
        _search_depthwise_channels(m, plan, torch.cat(kept))
    if cfg.softmax != "uniform" or cfg.gelu != "uniform":
        _search_nonuniform(m, plan, torch.cat(kept)[:cfg.search_images])
    if cfg.search is not None:
        s = cfg.search
        observers = {site.site: (site.observer, site.channel_observer) for site in act_sites(m)}
        plan.bridges = [b.to_dict() for b in search_granularity(
            apply_plan(model, plan), plan, torch.cat(kept)[:cfg.search_images], observers, s.granularity,
            s.symmetric, s.bridges, s.hessian)]
    if cfg.reconstruct is not None:
        r = cfg.reconstruct
        rec = reconstruct(
            prepare(model, cfg, plan.reparam)[0], apply_plan(model, plan), torch.cat(kept)[:r.images], r.iters,
            r.batch, r.lr, r.time_budget_s, drop_prob=r.drop_prob, learn_scale=r.learn_scale,
            learn_act_scale=r.learn_act_scale, learn_bias=r.learn_bias, on_unit=on_unit)
        plan.rounded, plan.biases, plan.reconstruction = rec.rounded, rec.biases, rec.records
        plan.weights.update(rec.weights)
        for site, q in rec.activations.items():
            entry = plan.activations[site]
            entry.qparams, entry.search = q, "reconstruction"
            entry.range = q.covered_range()
    return plan


def _search_uniform_fpcs(m: nn.Module, plan: QuantPlan, x: torch.Tensor) -> None:
    """Re-search the input quantizer of every Linear against its output error (FPCS)."""
    if plan.config.activations.symmetric:
        raise ValueError("quantize.activations.method: fpcs searches asymmetric quantizers; set symmetric: false")
    mods = [mod for mod in weighted_sites(m) if isinstance(mod.inner, nn.Linear)
            and mod.input_quant.site in plan.activations
            and not (mod.input_quant.kind == "post_act" and plan.config.gelu != "uniform")]
    for mod in mods:
        mod.input_quant.mode, mod.input_quant.samples = "capture", []
    m(x)
    for mod in mods:
        entry = plan.activations[mod.input_quant.site]
        w_hat = plan.weights[mod.site].fake_quant(mod.inner.weight.detach())
        q = fpcs_uniform(entry.qparams.bits, torch.cat(mod.input_quant.samples), w_hat)
        entry.qparams = q
        entry.range = q.covered_range()
        entry.search = "fpcs"
        mod.input_quant.mode, mod.input_quant.samples = "off", []


def _bits(m: nn.Module, module: str, bits: int, cfg: QuantConfig) -> int:
    """8 for a layer the recipe keeps at 8 bits (``keep_8bit`` patterns, ``keep_8bit_depthwise``), else ``bits``."""
    if any(fnmatch.fnmatch(module, p) for p in cfg.keep_8bit):
        return 8
    if cfg.keep_8bit_depthwise:
        try:
            layer = m.get_submodule(module)
        except AttributeError:  # a site named after an operation, not a module
            layer = None
        if is_depthwise(layer):
            return 8
    return bits


def is_depthwise(layer: nn.Module | None) -> bool:
    """A wrapped Conv2d with one group per input channel."""
    conv = getattr(layer, "inner", None)
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


@torch.no_grad()
def _search_depthwise_channels(m: nn.Module, plan: QuantPlan, x: torch.Tensor, batch: int = 64) -> None:
    """Give every depthwise conv input a per-channel quantizer clipped for its own MSE (``ChannelClipSearch``)
    on the float activations of ``x``, starting from the calibrated channel ranges."""
    searches = {}
    for mod in weighted_sites(m):
        site = mod.input_quant
        entry = plan.activations.get(site.site)
        obs = site.channel_observer
        if is_depthwise(mod) and entry is not None and obs is not None and obs.min is not None:
            searches[site.site] = ChannelClipSearch(obs.min, obs.max, entry.qparams.bits,
                                                    plan.config.activations.symmetric, obs.axis)
    if not searches:
        return
    modes = {s: s.mode for s in act_sites(m)}  # restored: the later searches run as they would without this one
    set_mode(m, "off")
    try:
        stream_inputs(m, {s.site: s for s in act_sites(m) if s.site in searches}, x,
                      lambda name, inp: searches[name].update(inp), batch)
    finally:
        for s, mode in modes.items():
            s.mode = mode
    for name, search in searches.items():
        entry, q = plan.activations[name], search.qparams()
        entry.qparams, entry.range = q, q.covered_range()
        entry.granularity, entry.scheme = "channel", "symmetric" if q.symmetric else "asymmetric"
        entry.search = "depthwise-channel"


def _search_nonuniform(m: nn.Module, plan: QuantPlan, x: torch.Tensor) -> None:
    """Capture the operands of the sites that get log/tan quantizers and search their parameters."""
    cfg = plan.config
    attns = [a for a in m.modules() if isinstance(a, AttentionSites)] if cfg.softmax != "uniform" else []
    posts = [mod for mod in weighted_sites(m) if mod.input_quant.kind == "post_act"] if cfg.gelu != "uniform" else []
    capture = [s for a in attns for s in (a.attn_quant, a.v_quant)] + [mod.input_quant for mod in posts]
    for s in capture:
        s.mode, s.samples = "capture", []
    m(x)
    for a in attns:
        entry = plan.activations.get(a.attn_quant.site)
        if entry is None:
            continue
        v_entry = plan.activations.get(a.v_quant.site)
        entry.quantizer = search_softmax(cfg.softmax, entry.qparams.bits, a.attn_quant.samples,
                                         a.v_quant.samples, v_entry.qparams if v_entry else None,
                                         table=cfg.adalog_form == "table")
    for mod in posts:
        entry = plan.activations.get(mod.input_quant.site)
        if entry is None:
            continue
        wq = plan.weights[mod.site]
        w_hat = wq.fake_quant(mod.inner.weight.detach()).flatten(1)  # a 1x1 conv's weight as a matrix
        x = torch.cat(mod.input_quant.samples)
        if isinstance(mod.inner, nn.Conv2d):
            x = x.movedim(1, -1)  # channels last: rows x channels, as for a Linear
        entry.quantizer = quantizer(cfg.gelu).post_activation(entry.qparams.bits, x, w_hat, mod.input_quant.shift,
                                                              table=cfg.adalog_form == "table")
    for s in capture:
        s.mode, s.samples = "off", []


def apply_plan(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """The fake-quant model a plan describes (a copy; the float model is untouched)."""
    m, _, _ = prepare(model, plan.config, plan.reparam)
    for site in act_sites(m):
        entry = plan.activations.get(site.site)
        site.qparams = entry.qparams if entry else None
        site.nonuniform = entry.quantizer if entry else None
    for mod in weighted_sites(m):
        mod.weight_qparams = plan.weights.get(mod.site)
        if mod.weight_qparams is not None:
            clamp_weight(mod.inner.weight, mod.weight_qparams)
            with torch.no_grad():  # weights on the grid: every rounding (torch, numpy, ORT) gives the same codes
                codes = plan.rounded.get(mod.site)
                mod.inner.weight.copy_(mod.weight_qparams.dequantize(codes.float()) if codes is not None
                                       else mod.weight_qparams.fake_quant(mod.inner.weight))
    set_mode(m, "quant")
    for mod in weighted_sites(m):
        shift = getattr(mod.input_quant.nonuniform, "shift", 0.0)
        learned = plan.biases.get(mod.site)
        if learned is not None:  # learned on the model with the shift already folded in
            with torch.no_grad():
                if mod.inner.bias is None:  # a bias-less layer got one when its shift was folded in
                    mod.inner.bias = nn.Parameter(learned.clone())
                else:
                    mod.inner.bias.copy_(learned)
        elif shift:
            _fold_shift_into_bias(mod, shift)
        bias_on_int32_grid(mod)
    return m


@torch.no_grad()
def _fold_shift_into_bias(mod, shift: float) -> None:
    """The site passes on Q(x + shift); B' = B - W_hat (shift 1) keeps the Linear's (or unpadded 1x1
    conv's) output (AdaLog's reparam_bias)."""
    lin = mod.inner
    correction = mod.weight().flatten(1).sum(dim=1) * shift
    if lin.bias is None:
        lin.bias = nn.Parameter(-correction)
    else:
        lin.bias.sub_(correction)


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The float activations at every site of the given kinds (e.g. ``attn_softmax``, ``post_act``) on ``x``."""
    m, _, _ = prepare(model, QuantConfig())
    sites = [s for s in act_sites(m) if s.kind in kinds]
    for s in sites:
        s.mode = "capture"
    m(x)
    return {s.site: torch.cat(s.samples) for s in sites}


def quantize(model: nn.Module, cfg: QuantConfig, batches: Iterable[torch.Tensor],
             on_batch: Callable[[int], None] | None = None,
             on_unit: Callable[[str, dict], None] | None = None) -> tuple[nn.Module, QuantPlan]:
    """Calibrate and build the fake-quant model: ``qmodel, plan = quantize(model, cfg, batches)``
    (``on_unit`` hears of each block reconstruction finished)."""
    plan = calibrate(model, cfg, batches, on_batch, on_unit)
    return apply_plan(model, plan), plan
