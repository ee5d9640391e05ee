"""The token stage: token merging (ToMe) or pruning (EViT) on a copy of the model."""
from __future__ import annotations

import copy
import logging

import torch

from edgevit.errors import BadInput
from edgevit.results import StageRecord
from edgevit.tokens import apply_tokens, summarize

log = logging.getLogger("edgevit")
TOKENS_NAME = "pytorch-tokens"


class TokenStage:
    """Reduce tokens in a copy of the current model; the unreduced model stays the reference."""

    section, step = "tokens", "tokens"

    def enabled(self, recipe) -> bool:
        return recipe.tokens is not None

    def apply(self, ctx) -> StageRecord:
        cfg = ctx.recipe.tokens
        reduced = copy.deepcopy(ctx.model)
        try:
            records = apply_tokens(reduced, cfg)
        except ValueError as e:
            raise BadInput(f"tokens: {e}") from e
        x = torch.zeros(1, 3, ctx.info.input_size, ctx.info.input_size)
        facts = {"method": cfg.method, "stages": records} | summarize(ctx.model, reduced, x)
        log.info("tokens (%s): %s; FLOPs %.1f M -> %.1f M (%.2fx)", cfg.method,
                 "; ".join(f"{k}: {' -> '.join(map(str, v))}" for k, v in facts["tokens_per_block"].items()),
                 facts["flops"] / 1e6, facts["flops_reduced"] / 1e6,
                 facts["flops"] / max(facts["flops_reduced"], 1))
        if "warning" in facts:
            log.warning("tokens: %s", facts["warning"])
        ctx.model = ctx.sims[TOKENS_NAME] = reduced
        ctx.float_sim = TOKENS_NAME
        return StageRecord(**facts)
