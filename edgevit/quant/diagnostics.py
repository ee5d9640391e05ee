"""What quantization did inside the model, for the report: each quantized layer's output error, and
the activation histograms at the post-softmax and post-GELU sites with the quantizer's levels.

Both are computed once, at compress time, on a few calibration images, and stored in report.json in
a compact form (so `edgevit report RUN_DIR` can redraw the plots without the model).
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from edgevit.quant.plan import capture_activations
from edgevit.quant.sites import ActQuant, QuantWeighted

HIST_KINDS = ("attn_softmax", "post_act")


@torch.no_grad()
def layer_errors(float_model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> list[dict]:
    """Per quantized Linear/Conv (module order): SQNR in dB of its output in the quantized model against
    the same layer's output in the float model, both fed the same images (errors accumulate through
    the network, as they do on the device)."""
    # attention wrappers hold the original module as ``inner``: blocks.0.attn.inner.qkv is blocks.0.attn.qkv
    names = {re.sub(r"\.inner(?=\.)", "", n): n for n, m in qmodel.named_modules() if isinstance(m, QuantWeighted)}
    outs: dict[str, dict[str, torch.Tensor]] = {"f": {}, "q": {}}
    hooks = []
    for key, model in (("f", float_model), ("q", qmodel)):
        mods = dict(model.named_modules())
        for n, qname in names.items():
            m = mods.get(n if key == "f" else qname)
            if m is not None:
                hooks.append(m.register_forward_hook(
                    lambda m, a, o, n=n, key=key: outs[key].__setitem__(n, o.detach().float())))
    try:
        float_model.eval()(x)
        qmodel.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n in names:
        if n in outs["f"] and n in outs["q"] and outs["f"][n].shape == outs["q"][n].shape:
            ref, err = outs["f"][n], outs["q"][n] - outs["f"][n]
            if not float(ref.square().mean()) > 0:  # a layer whose float output is all zero: no SQNR to give
                continue
            sqnr = 10 * np.log10(float(ref.square().mean()) / max(float(err.square().mean()), 1e-20))
            rows.append({"layer": n, "sqnr_db": round(sqnr, 2)})
    return rows


def _levels(site: ActQuant) -> tuple[list[float], str]:
    """The values a site's quantizer can output (in the site's own input domain) and its name."""
    if site.nonuniform is not None:
        q = site.nonuniform
        shift = getattr(q, "shift", 0.0)
        grid = (q.grid().float() - shift).tolist()
        return grid, f"{q.kind} {q.bits}-bit"
    p = site.qparams
    codes = torch.arange(p.qmin, p.qmax + 1, dtype=torch.float32)
    return ((codes - float(p.zero_point)) * float(p.scale)).tolist(), f"uniform {p.bits}-bit"


@torch.no_grad()
def site_histograms(float_model: nn.Module, qmodel: nn.Module, x: torch.Tensor, max_sites: int = 6,
                    bins: int = 80) -> list[dict]:
    """Float activation histograms at up to ``max_sites`` post-softmax / post-GELU sites (spread over the
    depth), each with the levels of the quantizer edgevit put there."""
    sites = {s.site: s for s in qmodel.modules() if isinstance(s, ActQuant) and s.kind in HIST_KINDS
             and s.mode == "quant" and (s.qparams is not None or s.nonuniform is not None)}
    if not sites:
        return []
    acts = capture_activations(float_model, x, HIST_KINDS)
    names = [n for n in acts if n in sites]
    if len(names) > max_sites:
        names = [names[i] for i in np.linspace(0, len(names) - 1, max_sites).round().astype(int)]
    out = []
    for n in names:
        # float64: a near-constant float32 activation (a random-weight model's softmax) has a range too narrow
        # for 80 float32 bins, which numpy refuses
        v = acts[n].double().reshape(-1).numpy()
        counts, edges = np.histogram(v, bins=bins)
        levels, quantizer = _levels(sites[n])
        inside = [lv for lv in levels if edges[0] <= lv <= edges[-1]]
        out.append({"site": n, "kind": sites[n].kind, "quantizer": quantizer,
                    "edges": [float(f"{e:.6g}") for e in edges], "counts": counts.tolist(),
                    "levels": [float(f"{lv:.6g}") for lv in inside],
                    "levels_total": len(levels)})
    return out
