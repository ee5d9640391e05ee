"""The pruning stage: a pruned copy of the model replaces it; the dense model stays the reference."""
from __future__ import annotations

import copy
import logging
import time

from edgevit.errors import BadInput
from edgevit.progress import Steps, new_progress
from edgevit.prune import prune
from edgevit.prune.allocate import sparse_gain
from edgevit.results import StageRecord

log = logging.getLogger("edgevit")
PRUNED_NAME = "pytorch-pruned"


class PruneStage:
    """Prune on the first ``prune.images`` calibration images (see edgevit.prune)."""

    section, step = "pruning", "prune"

    def enabled(self, recipe) -> bool:
        return recipe.prune is not None

    def check(self, ctx) -> None:
        """Refuse structured settings that shrink nothing in this model, before any stage runs."""
        if ctx.recipe.prune.structured is not None:
            from edgevit.prune.structured import check_structured

            try:
                check_structured(ctx.model, ctx.recipe.prune)
            except ValueError as e:
                raise BadInput(f"prune: {e}") from e

    def apply(self, ctx) -> StageRecord:
        cfg = ctx.recipe.prune
        x = ctx.calibration_images(cfg.images)
        pruned = copy.deepcopy(ctx.model)
        t0 = time.time()
        with new_progress() as progress:
            steps = Steps(progress, f"prune ({cfg.method})")
            try:
                facts = prune(pruned, cfg, x, steps, sparse_gain(ctx.recipe.export))
            except ValueError as e:
                raise BadInput(f"prune: {e}") from e
        facts["seconds"] = round(time.time() - t0, 1)
        s = facts["summary"]
        log.info("pruned (%s): %d -> %d parameters, %.1f %% of Linear/Conv weights zero", cfg.method,
                 facts["params_before"], s["params"], 100 * s["weight_sparsity"])
        if "choice" in facts:
            a = facts["choice"]
            log.info("pruned %d of %d eligible layers (%.0f %% of the %s; %s): top-1 disagreement %.2f %% on %d "
                     "calibration images (allowed %g %%)", sum(r["pruned"] for r in a["layers"]), len(a["layers"]),
                     100 * a["gain_kept"] / max(a["gain_total"], 1), a["gain_unit"], a["gain_why"],
                     a["disagreement"], a["images"], a["max_disagreement"])
        ctx.model = ctx.sims[PRUNED_NAME] = pruned
        ctx.float_sim = PRUNED_NAME
        return StageRecord(**facts)
