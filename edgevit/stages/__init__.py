"""Stages: each one changes the run context's model (prune, tokens, quantize, fallback) and returns what it
did as a :class:`~edgevit.results.StageRecord`; the export stage then writes the artifacts.

A stage is anything with ``section`` (the report key it fills), ``step`` (its name in run.json),
``enabled(recipe)`` and ``apply(ctx) -> StageRecord``; :data:`STAGES` lists them in the order they run.
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


STAGES: list[Stage] = [PruneStage(), TokenStage(), QuantizeStage(), FallbackStage()]

__all__ = ["STAGES", "FallbackStage", "PruneStage", "QuantizeStage", "RunContext", "Stage", "TokenStage"]
