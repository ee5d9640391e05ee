"""Stages: each one changes the run context's model (prune, tokens, quantize, fallback) and returns what it
did as a :class:`~edgevit.results.StageRecord`; the export stage then writes the artifacts.

A stage is anything with ``section`` (the report key it fills), ``step`` (its name in run.json),
``enabled(recipe)`` and ``apply(ctx) -> StageRecord``, and may have ``check(ctx)``: it raises BadInput when the
recipe's settings cannot apply to the loaded model, and runs for every enabled stage before the first one applies
(a run is refused before, not after, the minutes an earlier stage takes). :data:`STAGES` lists them in the order
they run.
"""
from __future__ import annotations

from typing import Protocol

from edgevit.results import StageRecord
from edgevit.stages.context import RunContext
from edgevit.stages.prune import PruneStage
from edgevit.stages.quantize import FallbackStage, QuantizeStage
from edgevit.stages.tokens import TokenStage


class Stage(Protocol):
    section: str
    step: str

    def enabled(self, recipe) -> bool: ...

    def apply(self, ctx: RunContext) -> StageRecord: ...


def check_stages(ctx: RunContext) -> None:
    """Run the ``check`` of every stage the recipe enables (see the module docstring)."""
    for st in STAGES:
        if st.enabled(ctx.recipe) and hasattr(st, "check"):
            st.check(ctx)


STAGES: list[Stage] = [PruneStage(), TokenStage(), QuantizeStage(), FallbackStage()]

__all__ = ["STAGES", "check_stages", "FallbackStage", "PruneStage", "QuantizeStage", "RunContext", "Stage", "TokenStage"]
