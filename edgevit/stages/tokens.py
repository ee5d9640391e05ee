"""The token stage: token merging (ToMe) or pruning (EViT) on a copy of the model."""
from __future__ import annotations

import logging

import torch

from edgevit.errors import BadInput
from edgevit.results import StageRecord
from edgevit.stages.timing import model_timer
from edgevit.tokens import summarize
from edgevit.tokens.choose import choose_stages, keep_stages_that_pay, reduce_stages
from edgevit.tokens.patch import selected_stages

log = logging.getLogger("edgevit")
TOKENS_NAME = "pytorch-tokens"
CHOICE_IMAGES = 256  # calibration images the per-stage cost is measured on


class TokenStage:
    """Reduce tokens in a copy of the current model; the unreduced model stays the reference."""

    section, step = "tokens", "tokens"

    def enabled(self, recipe) -> bool:
        return recipe.tokens is not None

    def check(self, ctx) -> None:
        """Refuse a model with no attention stage the recipe's ``tokens`` can reduce, before any stage runs."""
        try:
            selected_stages(ctx.model, ctx.recipe.tokens)
        except ValueError as e:
            raise BadInput(f"tokens: {e}") from e

    def apply(self, ctx) -> StageRecord:
        cfg = ctx.recipe.tokens
        x = torch.zeros(1, 3, ctx.info.input_size, ctx.info.input_size)
        images = ctx.calibration_images(CHOICE_IMAGES) if ctx.recipe.calibration is not None else None
        try:
            chosen, choice = choose_stages(ctx.model, cfg, x, images)
            timing = {}
            if chosen and cfg.min_time_saving is not None:
                timer, where = model_timer(ctx)
                if timer is None:
                    timing = {"not_timed": where}
                    log.warning("tokens: not timed (%s): FLOPs decided which stages reduce tokens", where)
                else:
                    sample = (images[:1] if images is not None else x).numpy()
                    chosen, timing = keep_stages_that_pay(ctx.model, cfg, chosen, choice, timer, sample)
                    timing["where"] = where
            for r in choice:
                log.info("tokens: stage %s alone saves %.1f %% of the FLOPs%s: %s", r["stage"], 100 * r["flop_saving"],
                         f", disagreement {r['disagreement_alone']:.2f} %" if "disagreement_alone" in r else "",
                         f"reduced (r={r['r_chosen']})" if r["reduced"] else f"left as is ({r['why']})")
            if "time_saving" in timing:
                log.info("tokens: timed on %s: the reduced model saves %.1f %% at batch 1, %.1f %% in throughput",
                         timing["where"], 100 * timing["time_saving"]["batch1"],
                         100 * timing["time_saving"]["throughput"])
            if not chosen:
                warning = ("no attention stage pays for reducing tokens (see each stage's saving"
                           + (" in FLOPs and time" if "unreduced_ms" in timing else "")
                           + "): the model is left as is")
                log.warning("tokens: %s", warning)
                return StageRecord(method=cfg.method, stages=[], choice=choice, warning=warning, timing=timing)
            reduced, records = reduce_stages(ctx.model, cfg, chosen)
        except ValueError as e:
            raise BadInput(f"tokens: {e}") from e
        facts = {"method": cfg.method, "stages": records, "choice": choice, "timing": timing} | \
            summarize(ctx.model, reduced, x)
        log.info("tokens (%s): %s; FLOPs %.1f M -> %.1f M (%.2fx)", cfg.method,
                 "; ".join(f"{k}: {' -> '.join(map(str, v))}" for k, v in facts["tokens_per_block"].items()),
                 facts["flops"] / 1e6, facts["flops_reduced"] / 1e6,
                 facts["flops"] / max(facts["flops_reduced"], 1))
        if "warning" in facts:
            log.warning("tokens: %s", facts["warning"])
        ctx.model = ctx.sims[TOKENS_NAME] = reduced
        ctx.float_sim = TOKENS_NAME
        return StageRecord(**facts)
