"""Which attention stages pay for reducing tokens, and how much: each stage reduced alone at the recipe's
merge rate ``r`` and at its halvings (r, r/2, ..., 1), its FLOP saving measured on one image and its cost
(top-1 disagreement and logit KL against the unreduced model) on calibration images.

A stage whose reduction saves less than ``min_saving`` of the model's FLOPs is left unreduced (MobileViT at
32 px merges inside 4-token patches; EfficientFormerV2's 49-token attention costs more to merge than it
saves). Without ``max_disagreement`` every other stage takes the recipe's ``r``. With it, stages are visited
in order of saving per cost and each takes the largest rate at which the model with every stage taken so
far disagrees with the unreduced one on at most that percent of the images (or stays unreduced).
EViT and per-block ``r`` lists are measured as given (one option per stage).

FLOPs are not time: ToMe's matching (TopK, gathers, a small assignment matmul) costs time FLOP counts do not
see (the built-in ViT at r=2 saves 16 % of its FLOPs and runs 0.83x as fast at batch 1 in ONNX Runtime, 1.12x
at batch 64). So, with ``min_time_saving``, the stages chosen are then timed as FP32 artifacts on the target
device (:func:`keep_stages_that_pay`): a stage whose reduction alone does not save that share of the unreduced
model's time is left unreduced, and so is every stage when the reduced stages together do not.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgevit.costs import disagreement, kl_cost, outputs
from edgevit.tokens.config import TokenConfig
from edgevit.tokens.patch import apply_tokens, selected_stages
from edgevit.tokens.summary import count_flops


def rates(cfg: TokenConfig) -> list[int | list[int]]:
    """The merge rates tried per stage, largest first."""
    if cfg.method != "tome" or isinstance(cfg.r, list) or cfg.r == 0:
        return [cfg.r]
    return sorted({max(1, cfg.r >> k) for k in range(cfg.r.bit_length())}, reverse=True)


def reduce_stages(model: nn.Module, cfg: TokenConfig,
                  picks: dict[str, int | list[int]]) -> tuple[nn.Module, list[dict]]:
    """A copy of ``model`` with each picked stage reducing tokens at its own rate; the stage records."""
    m = copy.deepcopy(model)
    records = []
    for name, r in picks.items():
        records += apply_tokens(m, cfg.model_copy(update={"stages": [name], "r": r}))
    return m, records


@torch.no_grad()
def choose_stages(model: nn.Module, cfg: TokenConfig, one: torch.Tensor,
                  x: torch.Tensor | None) -> tuple[dict[str, int | list[int]], list[dict]]:
    """The stages to reduce tokens in, with their rate, and one record per candidate stage (each rate's
    saving and cost, the decision and why). ``one``: an input of the model's shape (FLOPs are counted on it);
    ``x``: calibration images (None: costs not measured, ``max_disagreement`` not applied)."""
    candidates = selected_stages(model, cfg)
    flops = count_flops(model, one)
    ref = outputs(model, x) if x is not None else None
    records: dict[str, dict] = {}
    for name in candidates:
        options = []
        for r in rates(cfg):
            m, _ = reduce_stages(model, cfg, {name: r})
            o = {"r": r, "flop_saving": round((flops - count_flops(m, one)) / flops, 4)}
            if ref is not None:
                out = outputs(m, x)
                o |= {"cost_kl": kl_cost(out, ref), "disagreement_alone": round(disagreement(out, ref), 3)}
            options.append(o)
            if ref is None or cfg.max_disagreement is None:
                break  # only the recipe's rate is used
        records[name] = {"stage": name, "options": options} | options[0]
        if cfg.min_saving is not None and options[0]["flop_saving"] < cfg.min_saving:
            records[name] |= {"reduced": False, "why": f"saves {100 * options[0]['flop_saving']:.1f} % of the FLOPs "
                              f"(< {100 * cfg.min_saving:g} %)"}
    open_ = [n for n in candidates if "reduced" not in records[n]]
    picks: dict[str, int | list[int]] = {}
    if cfg.max_disagreement is None or ref is None:
        picks = {n: cfg.r for n in open_}
    else:
        def ratio(n):
            return -records[n]["flop_saving"] / max(records[n]["cost_kl"], 1e-9)

        for name in sorted(open_, key=ratio):
            tried = []
            for o in records[name]["options"]:
                if cfg.min_saving is not None and o["flop_saving"] < cfg.min_saving:
                    break
                m, _ = reduce_stages(model, cfg, picks | {name: o["r"]})
                dis = disagreement(outputs(m, x), ref)
                tried.append(f"r={o['r']}: {dis:.2f} %")
                if dis <= cfg.max_disagreement:
                    picks[name] = o["r"]
                    break
            if name not in picks:
                records[name] |= {"reduced": False, "why": "with it the model disagrees on more than the allowed "
                                  f"{cfg.max_disagreement:g} % of the calibration images ({', '.join(tried)})"}
    for name, r in picks.items():
        records[name] |= {"reduced": True, "r_chosen": r}
    return {n: picks[n] for n in candidates if n in picks}, [records[n] for n in candidates]


UNREDUCED, TOGETHER = "unreduced", "together"


def time_saving(times: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    """The share of the unreduced model's time that model ``name`` saves, per timing (batch1, throughput)."""
    return {k: round(1 - times[name][k] / ms, 4) for k, ms in times[UNREDUCED].items()}


def pays(saving: dict[str, float], cfg: TokenConfig) -> bool:
    """Whether a time saving reaches ``min_time_saving`` on the timing ``time_at`` names."""
    keys = ("batch1", "throughput") if cfg.time_at == "either" else (cfg.time_at,)
    return any(saving[k] >= cfg.min_time_saving for k in keys)


def _saving_text(saving: dict[str, float]) -> str:
    """'saves 18.2 % at batch 1, adds 4.5 % in throughput' (of the unreduced model's time)."""
    return ", ".join(f"{'saves' if v >= 0 else 'adds'} {abs(100 * v):.1f} % {where}" for v, where in
                     ((saving["batch1"], "at batch 1"), (saving["throughput"], "in throughput")))


def keep_stages_that_pay(model: nn.Module, cfg: TokenConfig, picks: dict[str, int | list[int]],
                         records: list[dict], timer, x) -> tuple[dict[str, int | list[int]], dict]:
    """The picked stages whose reduction pays in time, and the timing record. ``timer(models, x)`` returns
    each model's milliseconds ``{"batch1": ..., "throughput": ...}`` (edgevit.stages.timing.ModelTimer);
    each picked stage is timed reduced alone against the unreduced model, and with more than one, all of them
    together; a stage that alone saves less than ``min_time_saving`` is left unreduced (its record says why),
    and every stage is when the ones left do not pay together."""
    by = {r["stage"]: r for r in records}
    models = {UNREDUCED: model} | {n: reduce_stages(model, cfg, {n: r})[0] for n, r in picks.items()}
    if len(picks) > 1:
        models[TOGETHER] = reduce_stages(model, cfg, picks)[0]
    times = timer(models, x)
    kept = {}
    for name, r in picks.items():
        saving = by[name]["time_saving"] = time_saving(times, name)
        if pays(saving, cfg):
            kept[name] = r
        else:
            by[name] |= {"reduced": False, "why": f"reduced alone it {_saving_text(saving)} of the unreduced "
                         f"model's time (needs to save {100 * cfg.min_time_saving:g} %)"}
            by[name].pop("r_chosen", None)
    timing = {"unreduced_ms": times[UNREDUCED]}
    if kept:
        final = TOGETHER if kept == picks and len(kept) > 1 else next(iter(kept)) if len(kept) == 1 else None
        if final is None:  # some stages dropped, more than one left: time the ones left together
            times = timer({UNREDUCED: model, TOGETHER: reduce_stages(model, cfg, kept)[0]}, x)
            final, timing["unreduced_ms"] = TOGETHER, times[UNREDUCED]
        timing |= {"reduced_ms": times[final], "time_saving": time_saving(times, final)}
        if not pays(timing["time_saving"], cfg):
            why = f"the reduced stages together: {_saving_text(timing['time_saving'])} of the unreduced " \
                  f"model's time (needs to save {100 * cfg.min_time_saving:g} %)"
            for name in kept:
                by[name] |= {"reduced": False, "why": why}
                by[name].pop("r_chosen", None)
            kept = {}
    return kept, timing
